"""Confined processes for tools that run untrusted code (the code interpreter): which isolation this
machine offers, the plan of what the sandbox sees, and launching a program inside it.

The confinement itself happens in the child, in `sandbox_launch.py` (a separate program: namespaces,
mounts and credential changes need a single-threaded process). This module decides what it gets:

- isolation "netns+uid" (the server runs as root): network, mount, PID, IPC and UTS namespaces, the
  program runs as uid/gid 65534 (nobody) with no supplementary groups and no new privileges;
- isolation "userns+netns" (not root): the same namespaces inside a user namespace that maps only the
  server's own uid, so the program keeps that uid's file permissions (SECURITY.md says what that leaves);
- isolation "none": no confinement but rlimits, cwd and a minimal environment (an explicit opt-out).

What the program sees in a namespaced mode: no network (a fresh network namespace with only a loopback
that is down), its work dir at WORKDIR (read-write, HOME and TMPDIR), a private /dev/shm (read-write,
size-limited), fresh empty tmpfs over /tmp, /var/tmp, /run (and the server's home when not root), and
the rest of the host's file system read-only, through the file permissions of its uid. Directories the
interpreter needs but its uid cannot reach (a Python under /root) are exposed read-only, alone, over an
empty tmpfs that hides the rest of their blocked parent.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

log = logging.getLogger("herd.tools")

ISOLATIONS = ("netns+uid", "userns+netns")  # strongest first
SANDBOX_UID = SANDBOX_GID = 65534  # nobody / nogroup
WORKDIR = "/tmp/work"  # the work dir's path inside the sandbox
FORCE_UNAVAILABLE_ENV = "HERD_SANDBOX_FORCE_UNAVAILABLE"  # for tests: pretend no isolation works here
LAUNCHER = Path(__file__).with_name("sandbox_launch.py")
_SHARED_DIRS = ("/tmp", "/var/tmp", "/run")  # world-writable or full of host sockets: replaced, read-only
_EMPTY_TMPFS = "mode=755,size=1m"


@dataclass(frozen=True)
class Limits:
    """Resource limits of every process in the sandbox (rlimits are per process)."""

    cpu_s: int = 30
    memory_mb: int = 1024
    file_size_mb: int = 64
    max_processes: int = 64  # RLIMIT_NPROC counts the uid's processes: effective for a non-root uid
    max_open_files: int = 256
    shm_mb: int = 64  # the private /dev/shm

    def rlimits(self) -> dict[str, list[int]]:
        mib = 1024 * 1024
        return {"CPU": [self.cpu_s, self.cpu_s + 1], "AS": [self.memory_mb * mib] * 2,
                "FSIZE": [self.file_size_mb * mib] * 2, "NPROC": [self.max_processes] * 2,
                "NOFILE": [self.max_open_files] * 2, "CORE": [0, 0]}


# ---- what this machine offers ---------------------------------------------------------------------


def isolation_available() -> str | None:
    """The isolation a sandbox would get here ("netns+uid", "userns+netns"), or None when none works.
    Probed once per process by starting a real sandbox; `HERD_SANDBOX_FORCE_UNAVAILABLE=1` (for tests)
    makes it None."""
    if os.environ.get(FORCE_UNAVAILABLE_ENV, "") not in ("", "0"):
        return None
    return _probe(os.geteuid())[0]


def unavailable_reason() -> str:
    """Why no isolation is available (the probes' errors), for refusal messages."""
    if os.environ.get(FORCE_UNAVAILABLE_ENV, "") not in ("", "0"):
        return f"{FORCE_UNAVAILABLE_ENV} is set"
    return _probe(os.geteuid())[1]


@cache
def _probe(euid: int) -> tuple[str | None, str]:
    """Start `python -c pass` in each candidate isolation; the first that runs wins."""
    modes = ISOLATIONS if euid == 0 else ISOLATIONS[1:]
    problems = []
    for mode in modes:
        problem = _try_mode(mode)
        if problem is None:
            return mode, ""
        problems.append(f"{mode}: {problem}")
    return None, "; ".join(problems)


def _try_mode(mode: str) -> str | None:
    base = Path(tempfile.mkdtemp(prefix="herd-sandbox-probe-"))
    try:
        workdir = make_workdir(base, mode)
        cfg = launch_config([sys.executable, "-I", "-S", "-c", "pass"], workdir=workdir, mode=mode,
                            limits=Limits(), env=minimal_env(), fds=[], parent=os.getpid())
        done = subprocess.run([sys.executable, "-I", "-S", str(LAUNCHER), json.dumps(cfg)],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                              env=minimal_env(), check=False)
    except (OSError, subprocess.SubprocessError) as e:
        return str(e)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if done.returncode == 0:
        return None
    return done.stderr.decode(errors="replace").strip()[-500:] or f"exit status {done.returncode}"


# ---- the plan ------------------------------------------------------------------------------------


def minimal_env(home: str = WORKDIR) -> dict[str, str]:
    """The whole environment of a sandboxed program: nothing of the server's (no API keys)."""
    bindir = os.path.dirname(sys.executable)
    return {"PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home,
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "MPLBACKEND": "Agg", "PYTHONIOENCODING": "utf-8",
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def make_workdir(base: Path, mode: str) -> Path:
    """A fresh work dir under `base`, owned by the sandbox's uid (mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="work-", dir=base))
    if mode == "netns+uid":
        os.chown(path, SANDBOX_UID, SANDBOX_GID)
    return path


def _blocked_ancestor(path: str, uid: int, gid: int) -> str | None:
    """The topmost ancestor directory of `path` that uid/gid may not search (None: all searchable)."""
    parts = Path(path).parts
    for i in range(2, len(parts) + 1):
        d = os.path.join(*parts[:i])
        st = os.stat(d)
        bit = 0o100 if st.st_uid == uid else 0o010 if st.st_gid == gid else 0o001
        if not st.st_mode & bit:
            return d
    return None


def _interpreter_paths() -> list[str]:
    """The directories a Python of this environment reads: its prefixes and its executable's."""
    paths = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                            sys.base_exec_prefix, os.path.dirname(sys.executable),
                                            os.path.dirname(os.path.realpath(sys.executable)))}
    ordered = sorted(paths, key=len)
    return [p for i, p in enumerate(ordered) if not any(p.startswith(q.rstrip("/") + "/") for q in ordered[:i])]


def _under(path: str, dirs: Sequence[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def mount_plan(workdir: Path, mode: str, shm_mb: int = Limits.shm_mb) -> tuple[list[list], list[list]]:
    """(tmpfs mounts [path, options, writable], bind mounts [source, target, writable]) of a sandbox."""
    hidden = [os.path.realpath(d) for d in _SHARED_DIRS if os.path.isdir(d)]
    if mode == "userns+netns" and os.path.isdir(home := os.path.expanduser("~")):
        hidden.append(os.path.realpath(home))  # the server's uid could read its own files
    binds: list[list] = []
    for path in _interpreter_paths():
        blocked = _blocked_ancestor(path, SANDBOX_UID, SANDBOX_GID) if mode == "netns+uid" else None
        if blocked and not _under(blocked, hidden):
            hidden.append(blocked)
        if blocked or _under(path, hidden):
            binds.append([path, path, False])
    tmpfs = [[d, "mode=1777,size=1m" if d in ("/tmp", "/var/tmp") else _EMPTY_TMPFS, False] for d in hidden]
    tmpfs.append(["/dev/shm", f"mode=1777,size={shm_mb}m", True])
    binds.append([str(workdir), WORKDIR, True])
    return tmpfs, binds


def launch_config(argv: Sequence[str], *, workdir: Path, mode: str, limits: Limits, env: Mapping[str, str],
                  fds: Sequence[int], parent: int) -> dict:
    """The launcher's instructions (see sandbox_launch.py)."""
    cfg = {"mode": mode, "argv": list(argv), "env": dict(env), "fds": list(fds), "parent": parent,
           "rlimits": limits.rlimits(), "uid": SANDBOX_UID, "gid": SANDBOX_GID,
           "cwd": WORKDIR if mode != "none" else str(workdir), "tmpfs": [], "binds": []}
    if mode != "none":
        cfg["tmpfs"], cfg["binds"] = mount_plan(workdir, mode, limits.shm_mb)
    return cfg


# ---- launching ------------------------------------------------------------------------------------


async def launch(argv: Sequence[str], *, workdir: Path, mode: str, limits: Limits,
                 env: Mapping[str, str] | None = None, pass_fds: Sequence[int] = ()) -> asyncio.subprocess.Process:
    """Start `argv` in a sandbox; its stdout/stderr are pipes, stdin is /dev/null, `pass_fds` become
    its descriptors 3, 4, ... The returned process is the launcher, leader of its own process group:
    `kill()` it to end the whole sandbox."""
    if mode not in (*ISOLATIONS, "none"):
        raise ValueError(f"unknown isolation {mode!r} (one of {', '.join(ISOLATIONS)}, none)")
    home = str(workdir) if mode == "none" else WORKDIR
    cfg = launch_config(argv, workdir=workdir, mode=mode, limits=limits, env=env or minimal_env(home),
                        fds=pass_fds, parent=os.getpid())
    return await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-S", str(LAUNCHER), json.dumps(cfg),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        pass_fds=tuple(pass_fds), start_new_session=True, env=minimal_env(home))


async def kill(proc: asyncio.subprocess.Process, wait_s: float = 5.0) -> int | None:
    """End a sandbox and reap it; returns the launcher's exit status (None if it would not exit).

    The sandbox's init is killed first: its PID namespace dies with it (the kernel kills and reaps
    every process in it), and the launcher, still alive, reaps init and exits, so no zombie is left
    to the host's PID 1. Then, whatever remains of the launcher's process group is killed too."""
    if proc.returncode is None:
        inits = _inits(proc.pid)
        for pid in inits:
            with _quiet():
                os.kill(pid, 9)
        if inits:
            with contextlib.suppress(asyncio.TimeoutError):
                return await asyncio.wait_for(asyncio.shield(proc.wait()), 1.0)
        with _quiet():
            os.killpg(proc.pid, 9)
    try:
        return await asyncio.wait_for(proc.wait(), wait_s)
    except asyncio.TimeoutError:
        log.warning("sandbox launcher %d did not exit after SIGKILL", proc.pid)
        return None


def kill_now(proc: asyncio.subprocess.Process) -> None:
    """`kill` without waiting (for a caller being cancelled): SIGKILL the sandbox's init, or the
    launcher's process group when there is none; the event loop reaps the launcher."""
    if proc.returncode is not None:
        return
    inits = _inits(proc.pid)
    for pid in inits:
        with _quiet():
            os.kill(pid, 9)
    if not inits:
        with _quiet():
            os.killpg(proc.pid, 9)


def _quiet() -> contextlib.AbstractContextManager:
    """Ignore the errors of signalling a process that is already gone."""
    return contextlib.suppress(ProcessLookupError, PermissionError)


def _pid_namespace(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _inits(launcher_pid: int) -> list[int]:
    """The launcher's children in another PID namespace: the sandbox's init (none for isolation "none")."""
    mine = _pid_namespace("self")
    return [pid for pid in _children(launcher_pid) if _pid_namespace(pid) not in (None, mine)]


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(p) for p in task.read_text().split()]
        except OSError:
            continue
    return found


def sandbox_pids(launcher_pid: int) -> list[int]:
    """Host pids of the processes inside a launcher's PID namespace (init, the program and whatever it
    started); [] when the sandbox is gone. For checks and tests."""
    namespaces = {_pid_namespace(pid) for pid in _children(launcher_pid)}
    namespaces -= {None, _pid_namespace("self")}  # isolation "none": no namespace of its own
    if not namespaces:
        return []
    return sorted(int(e.name) for e in Path("/proc").iterdir()
                  if e.name.isdigit() and _pid_namespace(e.name) in namespaces)
