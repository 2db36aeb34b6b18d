"""One sandboxed Python kernel as the server sees it: start it, run a cell with a wall-clock limit,
capture its output with a bound, kill it. The program inside is `kernel_main.py`; the sandbox is
`herd.tools.sandbox`.

Output: stdout and stderr are pipes drained all the time in 64 KiB reads; a cell keeps at most
`max_chars` characters of each and only counts the rest, so a 100 MB flood costs the server a few
hundred KiB. The kernel ends each cell's output with a marker carrying the cell's nonce; what follows
(output of a process the cell left running) counts towards the next cell.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import secrets
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from herd.tools import sandbox

log = logging.getLogger("herd.tools")
KERNEL_SOURCE = Path(__file__).with_name("kernel_main.py")
READ_CHUNK = 64 * 1024
MAX_REPLY_BYTES = 16 * 1024 * 1024  # one reply line, figures included (at most 16 figures a call)
START_TIMEOUT_S = 30.0
MARKER_GRACE_S = 2.0  # how long to wait for the end markers once the reply is in
EXIT_GRACE_S = 2.0  # how long a kernel that closed its control channel has to exit by itself


class KernelError(Exception):
    """The kernel could not be started or stopped answering; the message says why."""


class Capture:
    """What one cell wrote to one stream: the first `limit` characters and the number of bytes cut."""

    def __init__(self, limit_chars: int) -> None:
        self.limit_bytes = 4 * limit_chars  # enough bytes for `limit_chars` characters of any UTF-8
        self.limit_chars = limit_chars
        self.kept = bytearray()
        self.total = 0
        self.marker: bytes | None = None
        self.done = asyncio.Event()

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.limit_bytes - len(self.kept)
        if room > 0:
            self.kept += data[:room]

    def text(self) -> tuple[str, int]:
        """(the kept text, at most `limit_chars` characters; bytes not shown)."""
        text = self.kept.decode("utf-8", errors="replace")
        if len(text) > self.limit_chars:
            text = text[:self.limit_chars]
        shown = len(text.encode("utf-8", errors="replace"))
        return text, max(0, self.total - shown)


class _Pump:
    """Drains one pipe forever, feeding the current cell's Capture and spotting its end marker."""

    def __init__(self, reader: asyncio.StreamReader, limit_chars: int) -> None:
        self.reader = reader
        self.limit_chars = limit_chars
        self.capture = Capture(limit_chars)
        self.held = b""  # bytes that may be the start of the marker
        self.eof = False
        self.task = asyncio.ensure_future(self._run())

    def arm(self, marker: bytes) -> Capture:
        """Start the next cell: the capture so far (output left over) now ends at `marker`."""
        self.capture.marker = marker
        if self.eof:
            self.capture.done.set()
        return self.capture

    def _next(self, rest: bytes) -> None:
        self.capture.done.set()
        self.capture = Capture(self.limit_chars)
        self.capture.feed(rest)

    def _take(self, chunk: bytes) -> None:
        data, self.held = self.held + chunk, b""
        marker = self.capture.marker
        if marker is None:
            self.capture.feed(data)
            return
        at = data.find(marker)
        if at >= 0:
            self.capture.feed(data[:at])
            self._next(data[at + len(marker):])
            return
        keep = min(len(marker) - 1, len(data))
        self.capture.feed(data[:len(data) - keep])
        self.held = data[len(data) - keep:]

    async def _run(self) -> None:
        while chunk := await self.reader.read(READ_CHUNK):
            self._take(chunk)
        self.capture.feed(self.held)
        self.held = b""
        self.eof = True
        self.capture.done.set()

    def flush(self) -> Capture:
        """End the current cell without its marker (timeout, death): what was captured so far."""
        cap = self.capture
        cap.feed(self.held)
        self.held = b""
        self._next(b"")
        return cap


@dataclass
class CellOutcome:
    """What one cell produced; exactly one of reply / timed_out / exit_code describes how it ended."""

    stdout: tuple[str, int]
    stderr: tuple[str, int]
    reply: dict | None = None
    timed_out: bool = False
    exit_code: int | None = None  # the kernel died: its exit status (128 + signal when killed)
    figures: list[bytes] = field(default_factory=list)


class Kernel:
    """A Python process in a sandbox with a work dir of its own, running cells one at a time."""

    def __init__(self, base: Path, *, isolation: str, limits: sandbox.Limits, max_chars: int) -> None:
        self.isolation = isolation
        self.limits = limits
        self.max_chars = max_chars
        self.workdir = sandbox.make_workdir(base, isolation)
        self.proc: asyncio.subprocess.Process | None = None
        self.pid_in_sandbox: int | None = None
        self.lock = asyncio.Lock()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._out: _Pump | None = None
        self._err: _Pump | None = None
        self._killed = False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None and not self._killed

    def sandbox_pids(self) -> list[int]:
        """Host pids of every process of this kernel's sandbox (launcher not included)."""
        return sandbox.sandbox_pids(self.proc.pid) if self.proc is not None else []

    async def start(self) -> None:
        """Launch the kernel and wait for its hello; KernelError with the sandbox's stderr if it fails."""
        ours, theirs = socket.socketpair()
        try:
            argv = [sys.executable, "-I", "-c", KERNEL_SOURCE.read_text(), str(self.max_chars),
                    "sandboxed" if self.isolation != "none" else "unsandboxed"]
            self.proc = await sandbox.launch(argv, workdir=self.workdir, mode=self.isolation,
                                             limits=self.limits, pass_fds=[theirs.fileno()])
        except OSError as e:
            ours.close()
            raise KernelError(f"the sandboxed Python kernel could not be launched: {e}") from None
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._reader, self._writer = await asyncio.open_connection(sock=ours, limit=MAX_REPLY_BYTES)
        self._out = _Pump(self.proc.stdout, self.max_chars)
        self._err = _Pump(self.proc.stderr, self.max_chars)
        try:
            hello = await asyncio.wait_for(self._reader.readline(), START_TIMEOUT_S)
            self.pid_in_sandbox = json.loads(hello)["pid"]
        except (asyncio.TimeoutError, ValueError, KeyError, TypeError, OSError) as e:
            status = await sandbox.kill(self.proc)
            await asyncio.wait([self._err.task], timeout=1.0)
            err, _ = self._err.flush().text()
            why = err.strip() or (f"exit status {status}" if status is not None else type(e).__name__)
            raise KernelError(f"the sandboxed Python kernel did not start: {why}") from None

    async def run(self, code: str, timeout_s: float) -> CellOutcome:
        """Run one cell; on timeout the kernel is killed (its state is lost)."""
        if not self.alive or self._writer is None:
            raise KernelError("the kernel is not running")
        nonce = secrets.token_hex(12)
        marker = b"\x00herd-cell-end:" + nonce.encode() + b"\x00"
        out, err = self._out.arm(marker), self._err.arm(marker)
        try:
            reply = await asyncio.wait_for(self._exchange(code, nonce, out, err), timeout_s)
        except asyncio.TimeoutError:
            await self.kill()
            return CellOutcome(self._out.flush().text(), self._err.flush().text(), timed_out=True)
        except asyncio.CancelledError:  # the caller gave up: a cell still running must not outlive the call
            self._killed = True
            sandbox.kill_now(self.proc)
            raise
        if reply is None:  # the kernel died during the cell: let the launcher report how, then make sure
            try:
                status = await asyncio.wait_for(asyncio.shield(self.proc.wait()), EXIT_GRACE_S)
            except asyncio.TimeoutError:
                status = await sandbox.kill(self.proc)
            await asyncio.wait([self._out.task, self._err.task], timeout=1.0)
            return CellOutcome(self._out.flush().text(), self._err.flush().text(),
                               exit_code=status if status is not None else -1)
        figures = _decode_figures(reply.get("figures"))
        return CellOutcome(out.text(), err.text(), reply=reply, figures=figures)

    async def _exchange(self, code: str, nonce: str, out: Capture, err: Capture) -> dict | None:
        """Send the cell, read its reply (skipping lines that are not it), wait for the end markers."""
        try:
            self._writer.write(json.dumps({"code": code, "nonce": nonce}).encode() + b"\n")
            await self._writer.drain()
            while True:
                line = await self._reader.readline()
                if not line:
                    return None
                try:
                    reply = json.loads(line)
                except ValueError:
                    continue
                if isinstance(reply, dict) and reply.get("nonce") == nonce:
                    break
        except (OSError, ValueError, asyncio.LimitOverrunError):
            return None  # a broken or flooded control channel: treated as a dead kernel
        waiters = [asyncio.ensure_future(out.done.wait()), asyncio.ensure_future(err.done.wait())]
        try:
            await asyncio.wait(waiters, timeout=MARKER_GRACE_S)
        finally:
            for w in waiters:
                w.cancel()
        if not out.done.is_set():
            self._out.flush()
        if not err.done.is_set():
            self._err.flush()
        return reply

    async def kill(self) -> None:
        """Kill the whole sandbox (every process in it) and stop reading from it."""
        self._killed = True
        if self._writer is not None:
            self._writer.close()
        if self.proc is not None:
            await sandbox.kill(self.proc)
        for pump in (self._out, self._err):
            if pump is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(pump.task), 1.0)

    async def close(self) -> None:
        """Kill it and remove its work dir."""
        await self.kill()
        for pump in (self._out, self._err):
            if pump is not None and not pump.task.done():
                pump.task.cancel()
        await asyncio.to_thread(shutil.rmtree, self.workdir, True)


def _decode_figures(raw: object) -> list[bytes]:
    figures = []
    for item in raw if isinstance(raw, list) else []:
        try:
            data = base64.b64decode(item, validate=True)
        except (binascii.Error, TypeError, ValueError):
            continue
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            figures.append(data)
    return figures


def exit_reason(code: int, limits: sandbox.Limits) -> str:
    """Why a kernel exited with this status, in words."""
    if code > 128:
        sig = code - 128
        names = {9: "killed (SIGKILL)", 24: f"over its CPU time limit ({limits.cpu_s} s, SIGXCPU)",
                 25: f"over its file size limit ({limits.file_size_mb} MB, SIGXFSZ)",
                 11: "crashed (SIGSEGV)", 6: "aborted (SIGABRT)"}
        return names.get(sig, f"killed by signal {sig}")
    return f"exited with status {code}"
