"""`builtin::code_interpreter`: the tool `code_interpreter(code)` runs model-written Python in a sandbox.

Each session (the `session_id` of `invoke`) has its own kernel: a Python process in its own sandbox
(`herd.tools.sandbox`: no network, its own work dir as the only writable place, an unprivileged uid,
rlimits) whose variables persist from call to call, like a notebook. A call with no session gets a
throwaway kernel. The result is the cell's stdout, its stderr (labelled) and the repr of a final
expression; an exception is an error result with the traceback's last lines (code 1); a call over
`timeout_s` kills the kernel (code 124) and the session's next call starts a fresh one, saying so.
matplotlib figures left open by a cell come back as PNG attachments. SECURITY.md describes the sandbox.
"""
from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herd.errors import HerdError
from herd.tools.base import Attachment, Tool, ToolResult
from herd.tools.kernel_process import CellOutcome, Kernel, KernelError, exit_reason
from herd.tools.sandbox import Limits, isolation_available, unavailable_reason

__all__ = ["CodeInterpreterGroup", "CodeInterpreterSettings", "isolation_available"]

log = logging.getLogger("herd.tools")
TOOL_NAME = "code_interpreter"
DESCRIPTION = ("Run Python 3 code in a sandboxed, stateful kernel, like a notebook cell: variables and imports "
               "persist between calls of the same session. Print what you need; the value of a final expression "
               "is shown; open matplotlib figures are returned as images. There is no network access, the "
               "current directory is the only writable place, and processes a call starts end with the call.")
CodeShield = Callable[[str], Awaitable[str | None]]


@dataclass
class CodeInterpreterSettings:
    """Limits and isolation of the code interpreter's kernels."""

    timeout_s: float = 30.0          # wall clock per call
    cpu_s: int = 30                  # RLIMIT_CPU per kernel process (a kernel's whole life)
    memory_mb: int = 1024            # RLIMIT_AS
    file_size_mb: int = 64           # RLIMIT_FSIZE
    max_processes: int = 64          # RLIMIT_NPROC (effective for the unprivileged uid the kernels run as)
    max_output_chars: int = 20000    # stdout/stderr each, truncated with a note saying how much was cut
    isolation: str = "auto"          # "auto": the strongest available, refuse without; "none": unisolated
    max_kernels: int = 16            # live session kernels; the least recently used idle one makes room

    def check(self) -> None:
        """HerdError naming the first setting out of range."""
        for name in ("timeout_s", "cpu_s", "memory_mb", "file_size_mb", "max_processes", "max_output_chars",
                     "max_kernels"):
            if not getattr(self, name) > 0:
                raise HerdError(f"code interpreter: {name} must be > 0, not {getattr(self, name)!r}", name)
        if self.isolation not in ("auto", "none"):
            raise HerdError(f"code interpreter: isolation must be 'auto' or 'none', not {self.isolation!r}",
                            "isolation")

    def limits(self) -> Limits:
        return Limits(cpu_s=self.cpu_s, memory_mb=self.memory_mb, file_size_mb=self.file_size_mb,
                      max_processes=self.max_processes)


def _choose_isolation(setting: str) -> str:
    if setting == "none":
        log.warning("code interpreter: isolation 'none': model-written code runs unisolated, with this "
                    "process's user, files and network (rlimits and the timeout still apply)")
        return "none"
    mode = isolation_available()
    if mode is None:
        raise HerdError("the code interpreter needs a sandbox with its own network namespace and none works "
                        f"here ({unavailable_reason()}). Run herd as root, or enable unprivileged user namespaces "
                        "(sysctl kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > 0), or set "
                        "isolation: none to run model-written code unisolated, as your own user (unsafe; see "
                        "SECURITY.md)", "isolation")
    return mode


class CodeInterpreterGroup:
    """The builtin code interpreter: one tool, one sandboxed kernel per session."""

    id = "builtin::code_interpreter"
    provider_id = "code-interpreter"

    def __init__(self, settings: CodeInterpreterSettings | None = None, *,
                 code_shield: CodeShield | None = None) -> None:
        self.settings = settings or CodeInterpreterSettings()
        self.settings.check()
        self.isolation = _choose_isolation(self.settings.isolation)
        self._shield = code_shield
        self._base: Path | None = None
        self._kernels: dict[str, Kernel] = {}   # insertion order = least recently used first
        self._locks: dict[str, asyncio.Lock] = {}
        self._ended: dict[str, str] = {}        # session -> how its previous kernel ended

    def list_tools(self) -> list[Tool]:
        params = {"type": "object", "properties": {"code": {
            "type": "string", "description": "The Python code to run (Python 3; a notebook cell)."}},
            "required": ["code"]}
        return [Tool(TOOL_NAME, DESCRIPTION, params, toolgroup_id=self.id, provider_id=self.provider_id,
                     metadata={"isolation": self.isolation})]

    # ---- calls --------------------------------------------------------------------------------
    async def invoke(self, tool_name: str, kwargs: dict[str, Any], *, session_id: str | None = None) -> ToolResult:
        """Run `kwargs["code"]`; every failure (refusal, exception, timeout, crash) is a ToolResult."""
        if tool_name != TOOL_NAME:
            return ToolResult.error(f"{self.id} has no tool {tool_name!r} (it has {TOOL_NAME})", code=1)
        code = kwargs.get("code") if isinstance(kwargs, dict) else None
        if not isinstance(code, str):
            return ToolResult.error(f"{TOOL_NAME}: the argument 'code' (Python source, a string) is required", code=1)
        refusal = await self._screen(code)
        if refusal is not None:
            return refusal
        try:
            if session_id is None:
                return await self._run_once(code)
            lock = self._locks.setdefault(session_id, asyncio.Lock())
            async with lock:
                return await self._run_in_session(session_id, code)
        except (KernelError, OSError) as e:
            return ToolResult.error(str(e), code=2)

    async def _screen(self, code: str) -> ToolResult | None:
        if self._shield is None:
            return None
        try:
            message = await self._shield(code)
        except Exception as e:  # fail closed: unscreened code does not run
            log.exception("code shield failed")
            return ToolResult.error(f"the code was not run: the code shield failed ({type(e).__name__}: {e})", 2)
        if message is None:
            return None
        return ToolResult.error(f"the code was not run: {message}", code=1, refused_by="code_shield")

    async def _run_once(self, code: str) -> ToolResult:
        kernel = await self._start_kernel()
        try:
            return self._result(await kernel.run(code, self.settings.timeout_s), session=False)
        finally:
            await kernel.close()

    async def _run_in_session(self, session_id: str, code: str) -> ToolResult:
        kernel = self._kernels.pop(session_id, None)
        note = None
        if kernel is not None and not kernel.alive:  # killed when its caller gave up, or died between calls
            self._ended[session_id] = "was killed (a call was cancelled) or exited between calls"
            await kernel.close()
            kernel = None
        if kernel is None:
            note = self._ended.pop(session_id, None)
            try:
                await self._make_room()
                kernel = await self._start_kernel()
            except BaseException:
                if note is not None:
                    self._ended[session_id] = note
                raise
        self._kernels[session_id] = kernel  # (re)inserted last: the most recently used
        outcome = await kernel.run(code, self.settings.timeout_s)
        result = self._result(outcome, session=True)
        if not kernel.alive:
            self._ended[session_id] = ("was killed when a call timed out" if outcome.timed_out
                                       else exit_reason(outcome.exit_code or 0, self.settings.limits()))
            self._kernels.pop(session_id, None)
            await kernel.close()
        if note is not None:
            result.content = (f"[note: a new Python kernel was started; the previous one {note}, so its variables, "
                              f"imports and files are lost]\n{result.content}").rstrip("\n")
        result.metadata.update(session_id=session_id, kernel_restarted=note is not None)
        return result

    async def _start_kernel(self) -> Kernel:
        if self._base is None:
            self._base = Path(tempfile.mkdtemp(prefix="herd-code-interpreter-"))
        kernel = Kernel(self._base, isolation=self.isolation, limits=self.settings.limits(),
                        max_chars=self.settings.max_output_chars)
        try:
            await kernel.start()
        except BaseException:
            await kernel.close()
            raise
        return kernel

    async def _make_room(self) -> None:
        """Stop the least recently used idle kernel when `max_kernels` are alive."""
        if len(self._kernels) < self.settings.max_kernels:
            return
        for sid, kernel in list(self._kernels.items()):
            if not self._locks.get(sid, asyncio.Lock()).locked():
                del self._kernels[sid]
                self._ended[sid] = f"was stopped to make room (more than {self.settings.max_kernels} sessions)"
                await kernel.close()
                return
        raise KernelError(f"too many code interpreter sessions are running ({self.settings.max_kernels}); "
                          "try again when one has finished")

    # ---- results ------------------------------------------------------------------------------
    def _result(self, outcome: CellOutcome, *, session: bool) -> ToolResult:
        parts, metadata = [], {"isolation": self.isolation}
        for label, (text, cut) in (("", outcome.stdout), ("[stderr]\n", outcome.stderr)):
            name = "stderr" if label else "stdout"
            if text or cut:
                note = f"\n[{name} truncated: {cut:,} more bytes not shown]" if cut else ""
                parts.append(f"{label}{text.rstrip(chr(10))}{note}")
            metadata[f"{name}_cut_bytes"] = cut
        reply = outcome.reply or {}
        if reply.get("value") is not None:
            parts.append(str(reply["value"]))
        result = ToolResult(content="\n".join(parts), metadata=metadata,
                            attachments=[Attachment("image/png", png, f"figure-{i}.png")
                                         for i, png in enumerate(outcome.figures, start=1)])
        lost = ("its state (variables, imports, files) is lost; the next call starts a fresh kernel" if session
                else "it was a one-off kernel")
        if outcome.timed_out:
            result.error_message = f"timed out after {self.settings.timeout_s:g} s: the kernel was killed and {lost}"
            result.error_code = 124
        elif outcome.exit_code is not None:
            code = outcome.exit_code if outcome.exit_code > 0 else 2
            result.error_message = (f"the Python kernel {exit_reason(outcome.exit_code, self.settings.limits())} "
                                    f"during the call; {lost}")
            result.error_code = code
        elif reply.get("error"):
            result.error_message = str(reply["error"])
            result.error_code = 1
        return result

    # ---- lifetime -----------------------------------------------------------------------------
    def kernel(self, session_id: str) -> Kernel | None:
        """The session's live kernel, if any (its work dir, its sandbox's pids: for checks and tests)."""
        kernel = self._kernels.get(session_id)
        return kernel if kernel is not None and kernel.alive else None

    async def end_session(self, session_id: str) -> None:
        """Kill the session's kernel and remove its work dir."""
        kernel = self._kernels.pop(session_id, None)
        self._ended.pop(session_id, None)
        self._locks.pop(session_id, None)
        if kernel is not None:
            await kernel.close()

    async def close(self) -> None:
        """Kill every kernel and remove the work dirs."""
        kernels, self._kernels = list(self._kernels.values()), {}
        await asyncio.gather(*(k.close() for k in kernels), return_exceptions=True)
        self._ended.clear()
        self._locks.clear()
        if self._base is not None:
            await asyncio.to_thread(shutil.rmtree, self._base, True)
            self._base = None
