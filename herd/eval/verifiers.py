"""A verifier that runs code: the reply's Python program against the record's unit tests, in Herd's sandbox
(herd/tools/sandbox.py, through herd/eval/tasks/humaneval.py's runner: passed only when the tests really
return). Used by rejection sampling (`herd train rejection-sample --verifier unit_tests`, `herd sdg
rejection`): a record carries `tests` (Python code: asserts, or a check(...) call), the reply's code is its
first fenced Python block (or the whole reply), and the score is 1.0 when code + tests run to the end
within the limits, else 0.0."""
from __future__ import annotations

import asyncio
import math
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from herd.errors import HerdError
from herd.eval.tasks.humaneval import run_program
from herd.tokenizer.messages import Message
from herd.tools import sandbox

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def reply_code(text: str) -> str:
    """The first fenced code block of a reply (an unterminated one included), else the reply itself."""
    m = _FENCE.search(text or "")
    return m.group(1) if m else (text or "")


def unit_tests(timeout: float = 10.0, memory_mb: int = 1024, workers: int = 2, isolation: str = "auto"):
    """A verifier (record, reply) -> 0.0 / 1.0 (see the module docstring)."""
    if isolation not in ("auto", "none"):
        raise HerdError(f"isolation must be 'auto' or 'none', got {isolation!r}")
    state: dict[str, Any] = {}

    async def verify(record: dict[str, Any], reply: Message) -> float:
        tests = record.get("tests")
        if not isinstance(tests, str) or not tests.strip():
            raise HerdError("the unit_tests verifier needs `tests` (Python code) in every record")
        if "ready" not in state:  # the first call probes the sandbox; concurrent ones wait for it
            state["gate"] = asyncio.Semaphore(workers)
            state["ready"] = asyncio.ensure_future(asyncio.to_thread(
                lambda: "none" if isolation == "none" else sandbox.isolation_available()))
        state["mode"] = mode = await state["ready"]
        if mode is None:
            raise HerdError("the unit_tests verifier runs model-written code and needs a sandbox; none works "
                            f"here ({sandbox.unavailable_reason()})")
        source = reply_code(reply.content) + "\n\n" + tests + "\n"
        limits = sandbox.Limits(cpu_s=math.ceil(timeout) + 1, memory_mb=memory_mb)
        async with state["gate"]:
            base = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="herd-verify-"))
            try:
                workdir = sandbox.make_workdir(base, state["mode"])
                run = await run_program(source, workdir=workdir, isolation=state["mode"], limits=limits,
                                        timeout=timeout)
            finally:
                await asyncio.to_thread(shutil.rmtree, base, True)
        return float(run.passed)

    return verify
