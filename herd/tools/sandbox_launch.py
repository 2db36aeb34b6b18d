"""The sandbox launcher: a small program (stdlib only, run as `python -I -S sandbox_launch.py CONFIG`)
that confines itself and then execs the confined program. `herd.tools.sandbox` builds CONFIG (JSON).

It runs as its own process rather than as a `preexec_fn` because namespaces, mounts and credential
changes must happen in a single-threaded process, and the server is not one.

Modes (CONFIG["mode"]):
- "netns+uid" (running as root): new network, mount, PID, IPC and UTS namespaces; private mounts;
  fresh tmpfs over the world-writable directories; everything read-only but the work dir; the program
  runs as an unprivileged uid/gid (no supplementary groups, no new privileges) under rlimits.
- "userns+netns" (not root): the same inside a new user namespace that maps only the caller's uid.
- "none": rlimits, cwd and env only (the explicit opt-out).

Process tree (namespaced modes): launcher (host PID namespace, waits) -> init (PID 1 of the new PID
namespace, root of the sandbox, reaps orphans) -> program. When init exits, the kernel kills every
process of the namespace, so killing the launcher's process group kills the whole sandbox.
Exit status: the program's (128 + signal when it was killed); 125 when setting up failed, 126/127 when
the program could not be executed.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import resource
import signal
import socket
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 0x1, 0x2, 0x4, 0x8, 0x20
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE = 0x400, 0x800, 0x1000, 0x4000, 0x40000
MS_RELATIME, MS_STRICTATIME = 0x200000, 0x1000000
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
_OPTION_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
                 "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}
SETUP_FAILED, CANNOT_EXECUTE, NOT_FOUND = 125, 126, 127

_libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    """A step of confining the process failed; the message names the step."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.errno = code


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)}", err)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: s.encode() if s is not None else None)
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {source or ''} on {target}")


def _prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0), f"prctl({option})")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


# ---- filesystem -----------------------------------------------------------------------------------


def _unescape(field: str) -> str:
    """Mount points in mountinfo escape space, tab, newline and backslash as octal (\\040)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mounts() -> list[tuple[str, set[str]]]:
    """(mount point, per-mount options) of every mount of this mount namespace."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            found.append((_unescape(fields[4]), set(fields[5].split(","))))
    return found


def _make_read_only(keep_writable: set[str]) -> None:
    """Remount every mount point read-only and nosuid, keeping its other per-mount flags (a user
    namespace may not clear them), except the sandbox's own writable mounts."""
    for point, options in _mounts():
        if point in keep_writable:
            continue
        flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID
        for name, bit in _OPTION_FLAGS.items():
            flags |= bit if name in options else 0
        try:
            _mount(None, point, None, flags)
        except SetupError as e:
            if e.errno != errno.ENOENT:  # ENOENT: a mount hidden under one of our tmpfs, unreachable
                raise


def _setup_filesystem(cfg: dict) -> None:
    """Private mounts, fresh tmpfs over shared or hidden directories, bind mounts, read-only rest."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    sources = []
    for source, _target, _writable in cfg["binds"]:  # opened before the tmpfs hide them
        try:
            sources.append(os.open(source, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        except OSError as e:
            raise SetupError(f"open {source}: {e.strerror}") from None
    writable = set()
    for path, options, is_writable in sorted(cfg["tmpfs"], key=lambda t: t[0].count("/")):
        if not os.path.isdir(path) or os.path.islink(path):
            continue
        _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, options)
        if is_writable:
            writable.add(path)
    for fd, (_source, target, is_writable) in zip(sources, cfg["binds"]):
        os.makedirs(target, mode=0o755, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND)
        os.close(fd)
        if is_writable:
            _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV)
            writable.add(target)
    # a /proc of the new PID namespace: only the sandbox's processes are visible
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _make_read_only(writable)


# ---- processes ------------------------------------------------------------------------------------


def _map_user() -> None:
    """In a new user namespace: map only the caller's own uid/gid (no root inside)."""
    uid, gid = os.getuid(), os.getgid()
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1\n")
    _write("/proc/self/gid_map", f"{gid} {gid} 1\n")


def _set_rlimits(limits: dict[str, list[int]]) -> None:
    for name, (soft, hard) in limits.items():
        resource.setrlimit(getattr(resource, f"RLIMIT_{name}"), (soft, hard))


def _place_fds(fds: list[int]) -> None:
    """Move the passed descriptors to 3, 4, ... and close every other one above 2."""
    top = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, top - 1 - len(fds)) for fd in fds]
    for i, fd in enumerate(high):
        os.dup2(fd, 3 + i)  # the copy at 3 + i is inherited by the program (dup2 clears close-on-exec)
    os.closerange(3 + len(fds), top)


def _exec_program(cfg: dict) -> None:
    """In the process that becomes the program: descriptors, limits, credentials, then exec."""
    _place_fds(cfg["fds"])
    if cfg["mode"] != "none":
        os.setsid()
    _set_rlimits(cfg["rlimits"])
    if cfg["mode"] == "netns+uid":
        os.setgroups([])
        os.setresgid(cfg["gid"], cfg["gid"], cfg["gid"])
        os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    try:
        os.chdir(cfg["cwd"])
    except OSError as e:
        raise SetupError(f"chdir {cfg['cwd']}: {e.strerror}") from None
    argv = cfg["argv"]
    try:
        os.execve(argv[0], argv, cfg["env"])
    except OSError as e:
        sys.stderr.write(f"herd-sandbox: cannot run {argv[0]}: {e.strerror}\n")
        os._exit(NOT_FOUND if isinstance(e, FileNotFoundError) else CANNOT_EXECUTE)


def _status(status: int) -> int:
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _init(cfg: dict) -> None:
    """PID 1 of the sandbox: finish confining, start the program, reap orphans, exit with its status."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _setup_filesystem(cfg)
    socket.sethostname("sandbox")
    program = os.fork()
    if program == 0:
        _run_guarded(_exec_program, cfg)
    os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])  # EOF on the control channel when the program ends
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(SETUP_FAILED)
        if pid == program:
            os._exit(_status(status))


def _run_guarded(step, cfg: dict) -> None:
    """Run a setup step in a forked child; any failure ends that child with a message, never returns."""
    try:
        step(cfg)
    except BaseException as e:  # noqa: BLE001 - a forked child must never return into its parent's code
        sys.stderr.write(f"herd-sandbox: {e if isinstance(e, (SetupError, OSError)) else repr(e)}\n")
        sys.stderr.flush()
    os._exit(SETUP_FAILED)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    mode = cfg["mode"]
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the server going away takes the sandbox with it
        if os.getppid() != cfg["parent"]:
            os._exit(SETUP_FAILED)
        if mode == "none":
            _exec_program(cfg)
        flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
        if mode == "userns+netns":
            flags |= CLONE_NEWUSER
        elif mode != "netns+uid":
            raise SetupError(f"unknown isolation mode {mode!r}")
        _check(_libc.unshare(ctypes.c_int(flags)), "unshare")
        if mode == "userns+netns":
            _map_user()
    except (SetupError, OSError) as e:
        sys.stderr.write(f"herd-sandbox: {e}\n")
        sys.exit(SETUP_FAILED)
    init = os.fork()
    if init == 0:
        _run_guarded(_init, cfg)
    os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    _, status = os.waitpid(init, 0)
    os._exit(_status(status))


if __name__ == "__main__":
    main()
