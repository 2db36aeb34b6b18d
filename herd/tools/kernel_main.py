"""The Python kernel that runs inside the sandbox: a notebook-like loop over a control socket.

Started by `herd.tools.kernel_process` as `python -I -c <this file's text> MAX_CHARS sandboxed` (so its uid needs
no read access to herd's sources); stdlib only. Protocol on descriptor 3 (a socket), one JSON object
per line: the server sends {"code", "nonce"}; the kernel runs the code in one persistent namespace,
ends every other process of the sandbox (nothing a cell starts outlives it), flushes stdout/stderr,
writes the end marker (NUL "herd-cell-end:" nonce NUL) to both, and answers
{"nonce", "value", "error", "figures"}: the repr of a final expression, the traceback of an exception,
and the open matplotlib figures as base64 PNGs (then closed). stdout/stderr are the process's own
descriptors 1 and 2 (pipes the server reads with a bound), so output of child processes is captured too.
"""
from __future__ import annotations

import ast
import base64
import contextlib
import io
import json
import linecache
import os
import signal
import socket
import sys
import traceback
import warnings

CONTROL_FD = 3
MAX_FIGURES = 16
MAX_TRACEBACK_LINES = 30
MAIN_PID = os.getpid()


def _limit(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"... [{len(text) - limit} more characters cut]"


def _traceback(exc: BaseException, limit: int) -> str:
    """The traceback without the kernel's own frame, its last lines when long."""
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    lines = "".join(traceback.format_exception(type(exc), exc, tb)).rstrip("\n").split("\n")
    if len(lines) > MAX_TRACEBACK_LINES:
        lines = ["Traceback (last lines):", *lines[-MAX_TRACEBACK_LINES:]]
    return _limit("\n".join(lines), limit)


def _compile_cell(code: str, name: str) -> tuple[object, object | None]:
    """The cell as (statements, final expression or None), like a notebook cell."""
    tree = ast.parse(code, name, "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    return compile(tree, name, "exec"), (compile(last, name, "eval") if last is not None else None)


def run_cell(code: str, namespace: dict, number: int, limit: int) -> dict:
    """Run one cell; {"value": repr or None, "error": traceback or None}."""
    name = f"<cell {number}>"
    linecache.cache[name] = (len(code), None, code.splitlines(True), name)  # source lines in tracebacks
    try:
        body, last = _compile_cell(code, name)
        exec(body, namespace)  # noqa: S102 - running the cell is the point (inside the sandbox)
        value = eval(last, namespace) if last is not None else None
    except BaseException as e:  # noqa: BLE001 - SystemExit and KeyboardInterrupt end the cell, not the kernel
        if os.getpid() != MAIN_PID:  # a forked child of the cell failed: it must not answer the server
            os._exit(1)
        if isinstance(e, SyntaxError):
            return {"value": None, "error": _limit("".join(traceback.format_exception_only(type(e), e)), limit)}
        return {"value": None, "error": _traceback(e, limit)}
    if os.getpid() != MAIN_PID:
        os._exit(0)
    if value is None:
        return {"value": None, "error": None}
    namespace["_"] = value
    try:
        return {"value": _limit(repr(value), limit), "error": None}
    except Exception as e:  # noqa: BLE001 - a broken __repr__ is the cell's error
        return {"value": None, "error": _traceback(e, limit)}


def figures() -> tuple[list[str], str | None]:
    """The open matplotlib figures as base64 PNGs, then closed (only if the cell imported pyplot)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return [], None
    out, problem = [], None
    try:
        for num in plt.get_fignums()[:MAX_FIGURES]:
            buf = io.BytesIO()
            plt.figure(num).savefig(buf, format="png")
            out.append(base64.b64encode(buf.getvalue()).decode())
    except Exception as e:  # noqa: BLE001
        problem = f"saving a figure failed: {type(e).__name__}: {e}"
    finally:
        with contextlib.suppress(Exception):
            plt.close("all")
    return out, problem


def _end_streams(nonce: str) -> None:
    marker = b"\x00herd-cell-end:" + nonce.encode() + b"\x00"
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):  # the cell may have replaced or closed them
            stream.flush()
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            os.write(fd, marker)


def end_other_processes() -> None:
    """Kill every other process of the sandbox (what the cell left running: a fork bomb, a server) and
    reap the kernel's own children. Only inside a PID namespace of its own, where kill(-1) reaches
    nothing but the sandbox: the kernel is PID 2 there (init is 1)."""
    if os.getpid() != 2:
        return
    try:
        os.kill(-1, signal.SIGKILL)  # the tasklist lock makes this atomic with respect to fork
    except ProcessLookupError:
        return
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def main() -> None:
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    reap = len(sys.argv) > 2 and sys.argv[2] == "sandboxed"
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True, errors="backslashreplace")  # output survives a kill
    warnings.filterwarnings("ignore", message=".*non-interactive.*")  # plt.show() under Agg
    sys.path.insert(0, os.getcwd())  # a cell may import modules it wrote
    control = socket.socket(fileno=CONTROL_FD)
    inbox = control.makefile("rb")
    control.sendall(json.dumps({"ready": True, "pid": os.getpid()}).encode() + b"\n")
    namespace: dict = {"__name__": "__main__", "__builtins__": __builtins__}
    for number, line in enumerate(inbox, start=1):
        request = json.loads(line)
        result = run_cell(request["code"], namespace, number, limit)
        if reap:
            end_other_processes()
        result["figures"], problem = figures()
        if problem:
            result["error"] = result["error"] or problem
        _end_streams(request["nonce"])
        result["nonce"] = request["nonce"]
        control.sendall(json.dumps(result).encode() + b"\n")


if __name__ == "__main__":
    main()
