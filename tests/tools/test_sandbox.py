"""The code interpreter's sandbox under attack: each test runs real model-style attack code in a real
sandboxed kernel and checks, from the host, that it failed and left the host as it was.

Run as root here, so the kernels get isolation "netns+uid"; the non-root fallback ("userns+netns") is
exercised by running a whole code interpreter as uid 65534 (test_non_root_fallback_*).
"""
from __future__ import annotations

import ast
import asyncio
import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest

import herd
from herd.errors import HerdError
from herd.tools.base import ToolResult
from herd.tools.code_interpreter import CodeInterpreterGroup, CodeInterpreterSettings, isolation_available
from herd.tools.sandbox import FORCE_UNAVAILABLE_ENV, SANDBOX_UID

ISOLATION = isolation_available()
needs_isolation = pytest.mark.skipif(ISOLATION is None, reason="no sandbox isolation on this machine")


def run_cells(*cells: str, settings: CodeInterpreterSettings | None = None, session: str | None = "s",
              after=None) -> list[ToolResult]:
    """Run cells in one session of a fresh group; `after(group)` (async) runs before the group closes."""
    async def go() -> list[ToolResult]:
        group = CodeInterpreterGroup(settings or CodeInterpreterSettings(timeout_s=20))
        try:
            results = [await group.invoke("code_interpreter", {"code": c}, session_id=session) for c in cells]
            if after is not None:
                await after(group)
            return results
        finally:
            await group.close()
    return asyncio.run(go())


def everything(r: ToolResult) -> str:
    return f"{r.content}\n{r.error_message or ''}"


def pid_namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/pid")


def processes_in(namespace: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(f"/proc/{entry.name}/ns/pid") == namespace:
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.fixture
def secret(tmp_path: Path) -> tuple[Path, str]:
    """A test-owned 0600 file in a 0700 directory, with a random token in it."""
    folder = tmp_path / "private"
    folder.mkdir(mode=0o700)
    token = secrets.token_hex(16)
    path = folder / "secret.txt"
    path.write_text(token)
    path.chmod(0o600)
    return path, token


# ---- 1. network -----------------------------------------------------------------------------------


@needs_isolation
def test_no_tcp_connection_to_a_loopback_listener() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        port = server.getsockname()[1]
        code = textwrap.dedent(f"""
            import socket
            outcome = {{}}
            for host in ("127.0.0.1", "localhost", "::1"):
                try:
                    socket.create_connection((host, {port}), timeout=3).close()
                    outcome[host] = "connected"
                except OSError as e:
                    outcome[host] = type(e).__name__
            try:
                socket.getaddrinfo("example.com", 80)
                outcome["dns"] = "resolved"
            except OSError as e:
                outcome["dns"] = type(e).__name__
            outcome["interfaces"] = [name for _, name in socket.if_nameindex()]
            outcome
            """)
        (r,) = run_cells(code)
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody ever connected
    assert r.ok, r.error_message
    outcome = ast.literal_eval(r.content)  # the repr of a dict (never eval'd: it comes from the sandbox)
    assert all(outcome[h] != "connected" for h in ("127.0.0.1", "localhost", "::1")), outcome
    assert outcome["dns"] != "resolved"
    assert outcome["interfaces"] == ["lo"]  # a network namespace of its own, loopback only (and down)


# ---- 2. files -------------------------------------------------------------------------------------


@needs_isolation
def test_cannot_read_host_files_it_may_not_read(secret: tuple[Path, str]) -> None:
    path, token = secret
    hidden_in_workdir = secrets.token_hex(8)

    code_visible = textwrap.dedent(f"""
        import os
        outcome = {{}}
        for name in ("root-only.txt", "/etc/shadow", {str(path)!r}):
            try:
                outcome[name] = open(name).read()
            except OSError as e:
                outcome[name] = type(e).__name__
        outcome["listing"] = sorted(os.listdir("."))
        outcome
        """)

    async def plant_then_read(group: CodeInterpreterGroup) -> None:
        # a root-owned 0600 file *inside* the kernel's own work dir: visible to it, still unreadable
        workdir = group.kernel("s").workdir
        planted = workdir / "root-only.txt"
        planted.write_text(hidden_in_workdir)
        planted.chmod(0o600)
        r = await group.invoke("code_interpreter", {"code": code_visible}, session_id="s")
        results.append(r)

    results: list[ToolResult] = []
    run_cells("1", after=plant_then_read)
    (r,) = results
    assert r.ok, r.error_message
    outcome = ast.literal_eval(r.content)
    assert "root-only.txt" in outcome["listing"]
    assert outcome["root-only.txt"] == "PermissionError"      # file permissions: the sandbox is not root
    assert outcome["/etc/shadow"] == "PermissionError"
    assert outcome[str(path)] in ("FileNotFoundError", "PermissionError")  # the host's /tmp is not even there
    assert token not in everything(r) and hidden_in_workdir not in everything(r)


@needs_isolation
def test_cannot_write_outside_its_work_dir(tmp_path: Path) -> None:
    name = f"herd-sandbox-escape-{secrets.token_hex(6)}"
    targets = [str(tmp_path / name), f"/tmp/{name}", f"/var/tmp/{name}", f"/etc/{name}", f"/{name}",
               str(Path(herd.__file__).parent / name), f"/dev/shm/{name}"]
    code = textwrap.dedent(f"""
        import os
        outcome = {{}}
        for target in {targets!r} + ["here.txt"]:
            try:
                with open(target, "w") as f:
                    f.write("pwned")
                outcome[target] = "written"
            except OSError as e:
                outcome[target] = type(e).__name__
        outcome
        """)
    workdirs: list[Path] = []

    async def look(group: CodeInterpreterGroup) -> None:
        workdirs.append(group.kernel("s").workdir)
        assert (workdirs[0] / "here.txt").read_text() == "pwned"  # its own dir is writable
        assert (workdirs[0] / "here.txt").stat().st_uid == SANDBOX_UID

    (r,) = run_cells(code, after=look)
    outcome = ast.literal_eval(r.content)
    assert outcome["here.txt"] == "written"
    for target in targets[:-1]:
        assert outcome[target] != "written", (target, outcome)
    # /dev/shm is writable but private to the sandbox (a tmpfs of its own)
    assert outcome[f"/dev/shm/{name}"] == "written"
    for target in targets:
        assert not os.path.exists(target), f"{target} appeared on the host"
    assert not workdirs[0].exists()  # closing the group removed the work dir


# ---- 3. processes -----------------------------------------------------------------------------------


@needs_isolation
def test_fork_bomb_is_contained() -> None:
    settings = CodeInterpreterSettings(timeout_s=15, max_processes=64)
    bomb = "import os\nwhile True:\n    os.fork()\n"
    seen: dict[str, object] = {}

    async def inspect(group: CodeInterpreterGroup) -> None:
        kernel = group.kernel("s")
        if kernel is not None:
            namespace = pid_namespace(kernel.sandbox_pids()[0])
            for _ in range(50):  # the bomb's children exit once their fork fails
                if len(processes_in(namespace)) <= 2:
                    break
                await asyncio.sleep(0.1)
            seen["left"] = len(processes_in(namespace))
            await group.end_session("s")
            seen["after_end"] = len(processes_in(namespace))

    start = time.monotonic()
    (r,) = run_cells(bomb, settings=settings, after=inspect)
    assert time.monotonic() - start < settings.timeout_s + 10
    assert not r.ok
    # either the limit made fork fail in every process (the cell's error) or the timeout killed them all
    assert ("BlockingIOError" in r.error_message and r.error_code == 1) or r.error_code == 124, r.error_message
    if "left" in seen:
        assert seen["left"] <= 2  # init + the kernel: no bomb process survived
        assert seen["after_end"] == 0


@needs_isolation
def test_fork_bomb_that_ignores_errors_ends_with_the_timeout() -> None:
    settings = CodeInterpreterSettings(timeout_s=2, max_processes=32)
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    seen: dict[str, object] = {}

    async def go() -> ToolResult:
        group = CodeInterpreterGroup(settings)
        try:
            await group.invoke("code_interpreter", {"code": "1"}, session_id="s")
            namespace = pid_namespace(group.kernel("s").sandbox_pids()[0])
            start = time.monotonic()
            r = await group.invoke("code_interpreter", {"code": bomb}, session_id="s")
            seen["elapsed"] = time.monotonic() - start
            seen["left"] = processes_in(namespace)
            return r
        finally:
            await group.close()

    r = asyncio.run(go())
    assert r.error_code == 124
    assert seen["elapsed"] < settings.timeout_s + 5
    assert seen["left"] == []  # the whole PID namespace died with the kernel


@needs_isolation
def test_allocating_8_gb_fails_inside_the_sandbox() -> None:
    r1, r2 = run_cells("x = bytearray(8 * 1024**3)", "print('still here')",
                       settings=CodeInterpreterSettings(timeout_s=20, memory_mb=1024))
    assert r1.error_code == 1 and "MemoryError" in r1.error_message
    assert r2.ok and r2.content == "still here"


@needs_isolation
def test_infinite_loop_times_out() -> None:
    settings = CodeInterpreterSettings(timeout_s=2)
    start = time.monotonic()
    (r,) = run_cells("while True:\n    pass", settings=settings)
    assert r.error_code == 124 and "timed out after 2 s" in r.error_message
    assert time.monotonic() - start < settings.timeout_s + 3


@needs_isolation
def test_100_mb_of_output_is_truncated_with_bounded_memory() -> None:
    settings = CodeInterpreterSettings(timeout_s=60, max_output_chars=20000)
    flood = ("import sys, subprocess\nblock = 'x' * (1 << 20)\nfor _ in range(100):\n    sys.stdout.write(block)\n"
             "sys.stdout.flush()\nsubprocess.run(['head', '-c', '20000000', '/dev/zero'])\n"
             "sys.stderr.write('e' * 30_000_000)\nprint('done')")
    tracemalloc.start()
    try:
        (r,) = run_cells(flood, settings=settings)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.ok, r.error_message
    assert peak < 16 * 1024 * 1024, f"the server held {peak / 2**20:.1f} MiB"
    stdout_cut, stderr_cut = r.metadata["stdout_cut_bytes"], r.metadata["stderr_cut_bytes"]
    assert stdout_cut == 100 * 2**20 + 20_000_000 + len("done\n") - 20000
    assert stderr_cut == 30_000_000 - 20000
    assert f"[stdout truncated: {stdout_cut:,} more bytes not shown]" in r.content
    assert len(r.content) < 2 * 20000 + 500


@needs_isolation
def test_cannot_kill_the_parent_or_the_server() -> None:
    code = textwrap.dedent(f"""
        import os, signal
        outcome = {{"ppid": os.getppid()}}
        for name, pid in (("parent", os.getppid()), ("server", {os.getpid()}), ("init", 1)):
            try:
                os.kill(pid, signal.SIGKILL)
                outcome[name] = "sent"
            except OSError as e:
                outcome[name] = type(e).__name__
        try:
            os.kill(-1, signal.SIGKILL)  # everything it may signal: nothing outside the sandbox, here nothing
            outcome["all"] = "sent"
        except OSError as e:
            outcome["all"] = type(e).__name__
        outcome
        """)
    alive: list[bool] = []

    async def check(group: CodeInterpreterGroup) -> None:
        alive.append(group.kernel("s") is not None)

    r, after = run_cells(code, "print('kernel alive')", after=check)
    outcome = ast.literal_eval(r.content)
    assert outcome["parent"] == "PermissionError" and outcome["init"] == "PermissionError"
    assert outcome["server"] == "ProcessLookupError"  # not even visible in its PID namespace
    assert outcome["all"] == "ProcessLookupError" and outcome["ppid"] == 1
    assert after.content == "kernel alive" and alive == [True]
    os.kill(os.getpid(), 0)  # and this process is, evidently, alive


# ---- 4. escapes through paths ---------------------------------------------------------------------------


@needs_isolation
def test_no_escape_through_symlinks_or_proc_root(secret: tuple[Path, str]) -> None:
    path, token = secret
    code = textwrap.dedent(f"""
        import os
        target = {str(path)!r}
        outcome = {{}}
        os.symlink(target, "link")
        os.symlink(os.path.dirname(target), "dirlink")
        for name in ("link", "dirlink/secret.txt", "/proc/1/root" + target, "/proc/self/root" + target,
                     "/proc/{os.getpid()}/root" + target):
            try:
                outcome[name] = open(name).read()
            except OSError as e:
                outcome[name] = type(e).__name__
        try:
            os.link(target, "hardlink")
            outcome["hardlink"] = "linked"
        except OSError as e:
            outcome["hardlink"] = type(e).__name__
        outcome["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        outcome
        """)
    (r,) = run_cells(code)
    assert r.ok, r.error_message
    outcome = ast.literal_eval(r.content)
    assert token not in everything(r)
    assert all(v in ("FileNotFoundError", "PermissionError") for k, v in outcome.items() if k != "pids"), outcome
    assert outcome["pids"][0] == 1 and len(outcome["pids"]) < 10  # only the sandbox's own processes
    assert path.read_text() == token and stat.S_IMODE(path.stat().st_mode) == 0o600  # left as it was


# ---- environment, availability, lifetime ---------------------------------------------------------------


@needs_isolation
def test_no_secrets_from_the_server_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    token = secrets.token_hex(16)
    monkeypatch.setenv("HERD_TEST_SECRET", token)
    monkeypatch.setenv("OPENAI_API_KEY", token)
    code = textwrap.dedent("""
        import os
        env = dict(os.environ)
        try:
            env["init"] = open("/proc/1/environ").read()
        except OSError as e:
            env["init"] = type(e).__name__
        env
        """)
    (r,) = run_cells(code)
    env = ast.literal_eval(r.content)
    assert "HERD_TEST_SECRET" not in env and "OPENAI_API_KEY" not in env
    assert token not in everything(r)
    assert set(env) - {"init"} <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "MPLBACKEND", "PYTHONIOENCODING",
                                  "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"}
    assert env["HOME"] == env["TMPDIR"] == "/tmp/work" and env["MPLBACKEND"] == "Agg"


def test_auto_refuses_clearly_without_isolation(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setenv(FORCE_UNAVAILABLE_ENV, "1")
    assert isolation_available() is None
    with pytest.raises(HerdError) as err:
        CodeInterpreterGroup(CodeInterpreterSettings(isolation="auto"))
    assert err.value.param == "isolation"
    assert "network namespace" in str(err.value) and "isolation: none" in str(err.value)
    # the explicit opt-out runs code unisolated, with a warning
    (r,) = run_cells("import os\nos.getcwd()", settings=CodeInterpreterSettings(isolation="none"), session=None)
    assert r.ok and r.metadata["isolation"] == "none"
    assert any("unisolated" in rec.getMessage() for rec in caplog.records)


@needs_isolation
def test_end_session_kills_the_kernel() -> None:
    seen: dict[str, object] = {}

    async def go() -> None:
        group = CodeInterpreterGroup(CodeInterpreterSettings(timeout_s=10))
        try:
            # a cell that leaves a background process: it ends with the cell
            await group.invoke("code_interpreter", {"code": "import subprocess\np = subprocess.Popen(['sleep', '300'])"},
                               session_id="s")
            kernel = group.kernel("s")
            pids = kernel.sandbox_pids()
            seen["before"] = len(pids)
            r = await group.invoke("code_interpreter", {"code": "p.poll()"}, session_id="s")
            seen["sleep_status"] = r.content
            namespace = pid_namespace(pids[0])
            launcher = kernel.proc.pid
            await group.end_session("s")
            seen["after"] = processes_in(namespace)
            seen["launcher_gone"] = not Path(f"/proc/{launcher}").exists()
            seen["workdir_gone"] = not kernel.workdir.exists()
            seen["kernel"] = group.kernel("s")
        finally:
            await group.close()

    asyncio.run(go())
    assert seen["before"] == 2  # init and the kernel: `sleep` was killed when its cell ended
    assert seen["sleep_status"] in ("-9", "0")  # killed (or reaped by the kernel before Popen could)
    assert seen["after"] == [] and seen["launcher_gone"] and seen["workdir_gone"]
    assert seen["kernel"] is None


NON_ROOT_SCRIPT = """
import asyncio, json, sys
from herd.tools.code_interpreter import CodeInterpreterGroup, CodeInterpreterSettings, isolation_available
port, name = int(sys.argv[1]), sys.argv[2]
code = '''
import os, socket
outcome = {"uid": os.getuid()}
try:
    socket.create_connection(("127.0.0.1", %d), timeout=3).close()
    outcome["connect"] = "connected"
except OSError as e:
    outcome["connect"] = type(e).__name__
try:
    open("/tmp/%s", "w").write("x")
    outcome["write"] = "written"
except OSError as e:
    outcome["write"] = type(e).__name__
outcome
''' % (port, name)
async def main():
    mode = isolation_available()
    if mode is None:
        print(json.dumps({"isolation": None}))
        return
    group = CodeInterpreterGroup(CodeInterpreterSettings(timeout_s=20))
    try:
        r = await group.invoke("code_interpreter", {"code": code})
    finally:
        await group.close()
    print(json.dumps({"isolation": mode, "content": r.content, "error": r.error_message}))
asyncio.run(main())
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user (non-root runs test this mode directly)")
def test_non_root_fallback_isolates_the_network() -> None:
    """A server running as a plain user gets isolation "userns+netns": still no network, no host /tmp.
    It runs under the system Python as uid 65534 (the test's venv lives where that uid cannot go)."""
    python = shutil.which("python3", path="/usr/bin:/usr/local/bin")
    if python is None:
        pytest.skip("no system python3 for the non-root run")
    name = f"herd-sandbox-userns-{secrets.token_hex(6)}"
    # a copy of herd's sources that uid 65534 can read, wherever this checkout lives (e.g. a 0700 dir)
    root = tempfile.mkdtemp(prefix="herd-src-")
    os.chmod(root, 0o755)
    shutil.copytree(Path(herd.__file__).parent, Path(root) / "herd",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    for d, _, files in os.walk(root):
        os.chmod(d, 0o755)
        for f in files:
            os.chmod(os.path.join(d, f), 0o644)
    try:
        done = _run_as_nobody(python, root, name)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if done.returncode != 0 and "No module named" in done.stderr:
        pytest.skip(f"the system python cannot import herd's tool runtime: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if report["isolation"] is None:
        pytest.skip("unprivileged user namespaces are disabled on this machine")
    assert report["isolation"] == "userns+netns" and report["error"] is None, report
    outcome = ast.literal_eval(report["content"])
    assert outcome["uid"] == SANDBOX_UID
    assert outcome["connect"] != "connected"
    assert outcome["write"] != "written" and not os.path.exists(f"/tmp/{name}")


def _run_as_nobody(python: str, root: str, name: str) -> subprocess.CompletedProcess:
    """NON_ROOT_SCRIPT as uid 65534 with `root` on its path; no connection reaches the test's listener."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        done = subprocess.run([python, "-c", NON_ROOT_SCRIPT, str(server.getsockname()[1]), name],
                              user=SANDBOX_UID, group=SANDBOX_UID, extra_groups=[], cwd="/",
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": root, "HOME": "/nonexistent"},
                              capture_output=True, text=True, timeout=120, check=False)
        with pytest.raises(BlockingIOError):
            server.accept()
    return done
