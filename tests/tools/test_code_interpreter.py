"""The code interpreter as a tool: sessions keep state like a notebook, results carry stdout, stderr, the
final expression and figures, failures are results (never exceptions), the code shield can veto a call,
and the registry validates arguments. Real sandboxed kernels throughout (the attack suite is
test_sandbox.py)."""
from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import pytest

from herd.errors import HerdError
from herd.tools.base import ToolRegistry, ToolResult
from herd.tools.code_interpreter import CodeInterpreterGroup, CodeInterpreterSettings, isolation_available

pytestmark = pytest.mark.skipif(isolation_available() is None, reason="no sandbox isolation on this machine")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def session(*cells: str, settings: CodeInterpreterSettings | None = None, session_id: str | None = "s",
            **group_kw) -> list[ToolResult]:
    """Run cells one after the other in one session of a fresh group (closed afterwards)."""
    async def go() -> list[ToolResult]:
        group = CodeInterpreterGroup(settings or CodeInterpreterSettings(timeout_s=20), **group_kw)
        try:
            return [await group.invoke("code_interpreter", {"code": c}, session_id=session_id) for c in cells]
        finally:
            await group.close()
    return asyncio.run(go())


def test_the_tool_it_offers() -> None:
    group = CodeInterpreterGroup()
    (tool,) = group.list_tools()
    assert group.id == "builtin::code_interpreter" and group.provider_id == "code-interpreter"
    assert tool.name == "code_interpreter" and tool.toolgroup_id == group.id
    assert tool.parameters["required"] == ["code"]
    assert tool.parameters["properties"]["code"]["type"] == "string"
    assert tool.definition().tool_name == "code_interpreter" and tool.definition().is_builtin
    asyncio.run(group.close())


def test_state_persists_within_a_session_only() -> None:
    async def go() -> list[ToolResult]:
        group = CodeInterpreterGroup(CodeInterpreterSettings(timeout_s=20))
        try:
            a1 = await group.invoke("code_interpreter", {"code": "x = 41"}, session_id="a")
            a2 = await group.invoke("code_interpreter", {"code": "print(x + 1)"}, session_id="a")
            b = await group.invoke("code_interpreter", {"code": "print(x)"}, session_id="b")
            once = await group.invoke("code_interpreter", {"code": "y = 1"})
            once2 = await group.invoke("code_interpreter", {"code": "y"})
            return [a1, a2, b, once, once2]
        finally:
            await group.close()

    a1, a2, b, once, once2 = asyncio.run(go())
    assert a1.ok and a1.content == ""
    assert a2.ok and a2.content == "42" and a2.metadata["kernel_restarted"] is False
    assert b.error_code == 1 and "NameError" in b.error_message  # another session, another kernel
    assert once.ok and once2.error_code == 1 and "NameError" in once2.error_message  # no session: throwaway


def test_last_expression_is_shown_like_a_notebook() -> None:
    r = session("1 + 1", "print('hi')\n'a' * 3", "z = 5", "None", "import math\nmath.pi\n# a comment",
                "_ * 2", "for i in range(2):\n    i")
    assert [x.content for x in r] == ["2", "hi\n'aaa'", "", "", repr(3.141592653589793), "6.283185307179586", ""]
    assert all(x.ok for x in r)


def test_stderr_is_labelled_and_long_output_truncated() -> None:
    settings = CodeInterpreterSettings(timeout_s=20, max_output_chars=100)
    out, err, value = session("import sys\nprint('out')\nprint('err', file=sys.stderr)",
                              "print('x' * 1000)", "'v' * 1000", settings=settings)
    assert out.content == "out\n[stderr]\nerr"
    assert err.content == "x" * 100 + "\n[stdout truncated: 901 more bytes not shown]"
    assert err.metadata["stdout_cut_bytes"] == 901
    assert value.content.startswith("'vvv") and "more characters cut" in value.content and len(value.content) < 200


def test_exception_is_an_error_result_and_the_kernel_survives() -> None:
    boom, syntax, after = session("print('before')\nx = 1\ndef f():\n    return 1 / 0\nf()", "def (:", "print(x)")
    assert boom.error_code == 1 and boom.content == "before"
    assert boom.error_message.startswith("Traceback")
    assert "ZeroDivisionError: division by zero" in boom.error_message
    assert 'File "<cell 1>", line 4, in f' in boom.error_message and "return 1 / 0" in boom.error_message
    assert "kernel_main" not in boom.error_message  # the kernel's own frames are not shown
    assert syntax.error_code == 1 and "SyntaxError" in syntax.error_message
    assert after.ok and after.content == "1"


def test_system_exit_and_a_dead_kernel() -> None:
    exit_cell, dead, fresh = session("import sys\nsys.exit(3)", "x = 1\nimport os\nos._exit(7)", "print('new')")
    assert exit_cell.error_code == 1 and "SystemExit: 3" in exit_cell.error_message  # the cell ends, not the kernel
    assert dead.error_code == 7 and "exited with status 7" in dead.error_message
    assert "state" in dead.error_message and "lost" in dead.error_message
    assert fresh.ok and fresh.metadata["kernel_restarted"] is True
    assert fresh.content.startswith("[note: a new Python kernel was started") and fresh.content.endswith("new")


def test_matplotlib_figures_come_back_as_png() -> None:
    code = ("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('t')\n"
            "plt.figure()\nplt.bar(['a', 'b'], [1, 2])\nplt.show()\nprint('plotted')")
    r, again = session(code, "import matplotlib.pyplot as plt\nlen(plt.get_fignums())")
    assert r.ok, r.error_message
    assert r.content == "plotted"
    assert [a.name for a in r.attachments] == ["figure-1.png", "figure-2.png"]
    import matplotlib.image as mpimg
    for a in r.attachments:
        assert a.mime_type == "image/png" and a.data.startswith(PNG_MAGIC)
        pixels = mpimg.imread(io.BytesIO(a.data), format="png")
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels.std() > 0  # something was drawn
    assert again.content == "0" and again.attachments == []  # figures are closed once returned


def test_code_shield_refusal_means_the_code_never_runs() -> None:
    write_marker = "open('marker.txt', 'w').write('ran')"
    screened: list[str] = []

    async def shield(code: str) -> str | None:
        screened.append(code)
        return "insecure code: it writes files" if "marker" in code else None

    async def go() -> tuple[list[ToolResult], list[bool]]:
        group = CodeInterpreterGroup(CodeInterpreterSettings(timeout_s=20), code_shield=shield)
        try:
            first = await group.invoke("code_interpreter", {"code": "import os\nos.getcwd()"}, session_id="s")
            workdir = group.kernel("s").workdir
            refused = await group.invoke("code_interpreter", {"code": write_marker}, session_id="s")
            present = [(workdir / "marker.txt").exists()]
            check = await group.invoke("code_interpreter", {"code": "import os\nos.listdir('.')"}, session_id="s")
            return [first, refused, check], present
        finally:
            await group.close()

    (first, refused, check), present = asyncio.run(go())
    assert first.ok and first.content == "'/tmp/work'"
    assert refused.error_code == 1 and "insecure code: it writes files" in refused.error_message
    assert refused.metadata["refused_by"] == "code_shield" and refused.content == ""
    assert present == [False] and check.content == "[]"
    assert write_marker in screened  # every call went through the shield
    # the control: without the shield the same code does write the marker
    (ran,) = session(write_marker + "\nimport os\nos.path.exists('marker.txt')")
    assert ran.content == "True"


def test_a_failing_code_shield_fails_closed() -> None:
    async def broken(code: str) -> str | None:
        raise RuntimeError("shield model not loaded")

    (r,) = session("print('ran')", code_shield=broken)
    assert r.error_code == 2 and "not run" in r.error_message and "shield model not loaded" in r.error_message


def test_through_the_tool_registry() -> None:
    async def go() -> list[ToolResult]:
        registry = ToolRegistry([CodeInterpreterGroup(CodeInterpreterSettings(timeout_s=20))])
        try:
            assert [t.name for t in registry.tools_for(["builtin::code_interpreter"])] == ["code_interpreter"]
            return [await registry.invoke("code_interpreter", {}),
                    await registry.invoke("code_interpreter", {"code": 5}),
                    await registry.invoke("code_interpreter", {"code": "6 * 7"}, session_id="r"),
                    await registry.invoke("code_interpreter", {"code": "_ + 0"}, session_id="r")]
        finally:
            await registry.close()

    missing, wrong_type, ok, again = asyncio.run(go())
    assert missing.error_code == 1 and "code" in missing.error_message and "required" in missing.error_message
    assert wrong_type.error_code == 1 and "code" in wrong_type.error_message
    assert ok.ok and ok.content == "42" and again.content == "42"


def test_direct_invoke_with_bad_arguments() -> None:
    group = CodeInterpreterGroup()
    r1 = asyncio.run(group.invoke("code_interpreter", {"source": "1"}))
    r2 = asyncio.run(group.invoke("python", {"code": "1"}))
    assert r1.error_code == 1 and "'code'" in r1.error_message
    assert r2.error_code == 1 and "code_interpreter" in r2.error_message


def test_timeout_kills_the_kernel_and_the_next_call_says_state_was_lost() -> None:
    settings = CodeInterpreterSettings(timeout_s=1.5)
    start = time.monotonic()
    _, slow, after = session("x = 1", "import time\nprint('started')\ntime.sleep(60)", "print('x' in dir())",
                             settings=settings)
    assert time.monotonic() - start < 1.5 + 6
    assert slow.error_code == 124 and "timed out after 1.5 s" in slow.error_message
    assert "state" in slow.error_message and "lost" in slow.error_message
    assert slow.content == "started"  # output before the timeout is kept
    assert after.metadata["kernel_restarted"] is True
    assert "killed when a call timed out" in after.content and after.content.endswith("False")


def test_a_cancelled_call_kills_its_kernel() -> None:
    async def go() -> tuple[list[int], list[int], ToolResult]:
        group = CodeInterpreterGroup(CodeInterpreterSettings(timeout_s=60))
        try:
            await group.invoke("code_interpreter", {"code": "x = 1"}, session_id="s")
            pids = group.kernel("s").sandbox_pids()
            with pytest.raises(asyncio.TimeoutError):  # the caller (an agent turn, a client) gives up
                await asyncio.wait_for(group.invoke("code_interpreter", {"code": "import time\ntime.sleep(60)"},
                                                    session_id="s"), 1.0)
            for _ in range(50):
                if not any(Path(f"/proc/{pid}").exists() for pid in pids):
                    break
                await asyncio.sleep(0.1)
            left = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
            return pids, left, await group.invoke("code_interpreter", {"code": "'x' in dir()"}, session_id="s")
        finally:
            await group.close()

    pids, left, after = asyncio.run(go())
    assert len(pids) == 2 and left == []  # init and the kernel are gone
    assert after.metadata["kernel_restarted"] is True and after.content.endswith("False")


def test_cpu_limit_ends_a_kernel() -> None:
    (r,) = session("while True:\n    pass", settings=CodeInterpreterSettings(timeout_s=20, cpu_s=1))
    assert r.error_code == 128 + 24 and "CPU time limit" in r.error_message


def test_settings_are_checked() -> None:
    with pytest.raises(HerdError) as err:
        CodeInterpreterGroup(CodeInterpreterSettings(isolation="docker"))
    assert err.value.param == "isolation" and "'auto' or 'none'" in str(err.value)
    with pytest.raises(HerdError) as err:
        CodeInterpreterGroup(CodeInterpreterSettings(timeout_s=0))
    assert err.value.param == "timeout_s"


def test_close_removes_every_kernel_and_work_dir() -> None:
    async def go() -> tuple[list[Path], list[list[int]], CodeInterpreterGroup]:
        group = CodeInterpreterGroup(CodeInterpreterSettings(timeout_s=20))
        for sid in ("a", "b"):
            await group.invoke("code_interpreter", {"code": "open('f', 'w').write('x')"}, session_id=sid)
        kernels = [group.kernel("a"), group.kernel("b")]
        dirs = [k.workdir for k in kernels]
        launchers = [k.proc.pid for k in kernels]
        await group.close()
        return dirs, launchers, group

    dirs, launchers, group = asyncio.run(go())
    assert not any(d.exists() for d in dirs) and not dirs[0].parent.exists()
    assert not any(Path(f"/proc/{pid}").exists() for pid in launchers)
    assert group.kernel("a") is None
