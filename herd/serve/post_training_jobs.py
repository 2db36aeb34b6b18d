"""The post-training jobs of one Herd home (herd/serve/post_training.py is the HTTP side): each a detached
process running `herd train`, recorded in SQLite, watched, cancelled, adopted or resumed after a restart.

    <herd_home>/post_training.sqlite          the jobs: kind, model, request, status, pid, times, error, result
    <herd_home>/post_training/<job_uuid>/     data.jsonl, command.json (the `herd train` argv), stdout.log,
                                              stderr.log, runner.log, result.json, out/ (checkpoints/step-N,
                                              metrics.jsonl, adapter/, merged/)

A job runs as `python -m herd.serve.post_training_jobs <job_dir> [--resume]`: this module's runner, which
runs the command at low CPU priority and then writes result.json (exit status, the command's JSON summary,
the error line; written to a temporary name and renamed). It starts in a session of its own, so that it
outlives the server (and a Ctrl-C to it); cancelling sends SIGTERM to its process group, SIGKILL after
CANCEL_GRACE. MAX_RUNNING jobs run at once (one: training shares the machine with serving, a laptop's cores
included); the others wait `scheduled` and start when one ends. When a job's processes are gone, its
result.json settles it (completed / failed); without one (killed, with the server or not) it starts again
with `--resume`, which continues exactly from its last checkpoint, up to MAX_ATTEMPTS launches. A server
starting on the same home does the same, and adopts the jobs still running. Process groups are POSIX.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from herd.serve.errors import APIError, not_found

log = logging.getLogger("herd.serve")

FILENAME = "post_training.sqlite"
MAX_RUNNING = 1  # training jobs at once
POLL_SECONDS = 1.0  # how often ended jobs are noticed (a status request checks at once)
CANCEL_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
MAX_ATTEMPTS = 3  # launches of one job: the first, and relaunches after its process vanished
FINISHED = ("completed", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_uuid TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    request TEXT NOT NULL,
    status TEXT NOT NULL,
    pid INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    scheduled_at REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    error TEXT,
    result TEXT
);
"""
_COLUMNS = "job_uuid, kind, model, checkpoint, status, pid, attempts, scheduled_at, started_at, completed_at, " \
           "error, result"


@dataclass
class Job:
    job_uuid: str
    kind: str  # sft | dpo
    model: str  # as the client named it
    checkpoint: str  # the reference trained: a path or a built-in name
    status: str
    pid: int | None
    attempts: int
    scheduled_at: float
    started_at: float | None
    completed_at: float | None
    error: str | None
    result: dict[str, Any] | None


def _job(row: tuple[Any, ...]) -> Job:
    *head, result = row
    return Job(*head, json.loads(result) if result else None)


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat()


def group_alive(pgid: int | None) -> bool:
    """Whether a process of the group still runs (zombies left by a parent that died do not count)."""
    if pgid is None:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


class PostTrainingService:
    """The jobs of one Herd home: submitted, launched (MAX_RUNNING at once), watched, cancelled. Blocking,
    thread-safe; async callers use `asyncio.to_thread`."""

    def __init__(self, home: str | Path | None = None, max_running: int = MAX_RUNNING) -> None:
        from herd.home import StateFile, herd_home

        home = Path(home) if home is not None else herd_home()
        self.root = home / "post_training"
        self.max_running = max_running
        self._state = StateFile(FILENAME, _SCHEMA, home / FILENAME)
        self._lock = threading.RLock()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}  # the runners this process started
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- records ----------------------------------------------------------------------------------
    def get(self, job_uuid: str) -> Job | None:
        with self._state.read() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE job_uuid = ?", (job_uuid,)).fetchone() if db else None
        return None if row is None else _job(row)

    def require(self, job_uuid: str) -> Job:
        job = self.get(job_uuid)
        if job is None:
            raise not_found(f"post-training job {job_uuid!r} not found", "job_uuid")
        return job

    def all(self, status: str | None = None) -> list[Job]:
        with self._state.read() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE ?1 IS NULL OR status = ?1 ORDER BY scheduled_at, "
                              "rowid", (status,)).fetchall() if db else []
        return [_job(r) for r in rows]

    def _update(self, job_uuid: str, where_status: tuple[str, ...], **values: Any) -> bool:
        sets = ", ".join(f"{k} = ?" for k in values)
        marks = ", ".join("?" * len(where_status))
        with self._state.write() as db:
            return db.execute(f"UPDATE jobs SET {sets} WHERE job_uuid = ? AND status IN ({marks})",
                              (*values.values(), job_uuid, *where_status)).rowcount > 0

    def job_dir(self, job_uuid: str) -> Path:
        return self.root / job_uuid

    # ---- submitting -------------------------------------------------------------------------------
    def submit(self, job_uuid: str, kind: str, model: str, checkpoint: str, request: dict[str, Any],
               options: list[str], rows: list[dict[str, Any]]) -> Job:
        """A new job (409 when the uuid exists): its data and command written, then scheduled."""
        d = self.job_dir(job_uuid)
        with self._lock:
            if self.get(job_uuid) is not None or d.exists():
                raise APIError(409, f"post-training job {job_uuid!r} exists already; choose another job_uuid",
                               param="job_uuid", code="conflict")
            d.mkdir(parents=True)
            try:
                data = d / "data.jsonl"
                with open(data, "w", encoding="utf-8") as fh:
                    fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
                argv = [sys.executable, "-m", "herd.cli.main", "train", kind, "--model", checkpoint, "--data",
                        str(data), "--out", str(d / "out"), "--json", *options]
                _write_json(d / "command.json", {"argv": argv})
                with self._state.write() as db:
                    db.execute("INSERT INTO jobs (job_uuid, kind, model, checkpoint, request, status, scheduled_at) "
                               "VALUES (?, ?, ?, ?, ?, 'scheduled', ?)",
                               (job_uuid, kind, model, checkpoint, json.dumps(request), time.time()))
            except BaseException:
                shutil.rmtree(d, ignore_errors=True)
                raise
            self._fill()
        return self.require(job_uuid)

    # ---- running ----------------------------------------------------------------------------------
    def _launch(self, job: Job, resume: bool) -> None:
        d = self.job_dir(job.job_uuid)
        (d / "result.json").unlink(missing_ok=True)
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])  # herd importable wherever the runner starts
        env["PYTHONPATH"] = os.pathsep.join(x for x in (package_root, env.get("PYTHONPATH")) if x)
        cmd = [sys.executable, "-m", "herd.serve.post_training_jobs", str(d), *(["--resume"] if resume else [])]
        try:
            with open(d / "runner.log", "ab") as runner_log:
                proc = subprocess.Popen(cmd, cwd=d, env=env, stdin=subprocess.DEVNULL, stdout=runner_log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            self._update(job.job_uuid, ("scheduled", "in_progress"), status="failed", completed_at=time.time(),
                         error=f"could not start the training process: {e}")
            return
        self._procs[job.job_uuid] = proc
        now = time.time()
        self._update(job.job_uuid, ("scheduled", "in_progress"), status="in_progress", pid=proc.pid,
                     attempts=job.attempts + 1, started_at=job.started_at or now)
        log.info("post-training job %s: %s (pid %d)", job.job_uuid, "resumed" if resume else "started", proc.pid)

    def _alive(self, job: Job) -> bool:
        proc = self._procs.get(job.job_uuid)
        if proc is not None:
            proc.poll()  # reap our own runner, so that it does not linger as a zombie
        return group_alive(job.pid)

    def _fill(self) -> None:
        """Start scheduled jobs while fewer than max_running run."""
        running = len(self.all("in_progress"))
        for job in self.all("scheduled")[:max(0, self.max_running - running)]:
            self._launch(job, resume=False)

    def refresh(self) -> None:
        """Settle the jobs whose process ended (result.json: completed / failed; none: relaunched with
        --resume, up to MAX_ATTEMPTS launches), then start scheduled ones."""
        with self._lock:
            for job in self.all("in_progress"):
                result = _read_json(self.job_dir(job.job_uuid) / "result.json")
                if result is None and self._alive(job):
                    continue
                proc = self._procs.pop(job.job_uuid, None)
                if proc is not None:
                    proc.poll()
                if result is not None:
                    self._finish(job, result)
                elif job.attempts < MAX_ATTEMPTS:
                    log.warning("post-training job %s: its process ended without a result; resuming it", job.job_uuid)
                    self._launch(job, resume=True)
                else:
                    self._update(job.job_uuid, ("in_progress",), status="failed", completed_at=time.time(),
                                 error=f"the training process ended without a result {job.attempts} times; see "
                                       f"{self.job_dir(job.job_uuid) / 'stderr.log'}")
            self._fill()

    def _finish(self, job: Job, result: dict[str, Any]) -> None:
        ok = result.get("returncode") == 0 and isinstance(result.get("summary"), dict)
        error = None if ok else result.get("error") or f"herd train exited with status {result.get('returncode')}"
        self._update(job.job_uuid, ("in_progress",), status="completed" if ok else "failed",
                     completed_at=result.get("finished_at") or time.time(), error=error, result=json.dumps(result))
        log.info("post-training job %s: %s", job.job_uuid, "completed" if ok else f"failed: {error}")

    def cancel(self, job_uuid: str) -> None:
        """Stop a job: a scheduled one never starts, a running one gets SIGTERM (SIGKILL after CANCEL_GRACE)."""
        with self._lock:
            job = self.require(job_uuid)
            if job.status in FINISHED:
                raise APIError(409, f"post-training job {job_uuid!r} is {job.status} already; only scheduled and "
                               "in_progress jobs can be cancelled", param="job_uuid", code="conflict")
            self._update(job_uuid, ("scheduled", "in_progress"), status="cancelled", completed_at=time.time())
            if job.status == "in_progress" and job.pid is not None:
                proc = self._procs.pop(job_uuid, None)
                try:
                    os.killpg(job.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
                threading.Thread(target=_reap, args=(job.pid, proc), daemon=True, name="herd-train-cancel").start()
            self._fill()

    # ---- lifetime ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Settle what happened while no server watched, and watch from now on (a daemon thread)."""
        self.refresh()
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, daemon=True, name="herd-post-training")
            self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self.refresh()
            except Exception:
                log.exception("post-training: checking the jobs failed")

    def close(self) -> None:
        """Stop watching (running jobs go on; the next server start adopts them)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._state.close()

    # ---- what a job has made ---------------------------------------------------------------------
    def checkpoints(self, job: Job) -> list[dict[str, Any]]:
        """Resumable states (out/checkpoints/step-N) by step, then the final adapter/ and merged/ model."""
        out = self.job_dir(job.job_uuid) / "out"
        rows = _metrics(out / "metrics.jsonl")
        found = []
        for d in (out / "checkpoints").glob("step-*"):
            step = d.name.removeprefix("step-")
            if step.isdigit():
                found.append((int(step), f"step-{step}", d, "state.pt", rows.get(int(step))))
        last = rows[max(rows)] if rows else None
        found.sort()
        found += [(0, "adapter", out / "adapter", "adapter_config.json", last),
                  (0, "merged", out / "merged", "config.json", last)]
        items = []
        for _, name, path, marker, row in found:
            try:  # a running job deletes its older checkpoints (two are kept) while this looks
                made = (path / marker).stat().st_mtime
            except OSError:
                continue
            items.append(_checkpoint(job, name, path, made, row))
        return items

    def status(self, job_uuid: str) -> dict[str, Any]:
        self.refresh()
        job = self.require(job_uuid)
        out: dict[str, Any] = {
            "job_uuid": job.job_uuid, "status": job.status, "scheduled_at": _iso(job.scheduled_at),
            "started_at": _iso(job.started_at), "completed_at": _iso(job.completed_at),
            "resources_allocated": None if job.pid is None else {"device": "cpu", "pid": job.pid,
                                                                 "attempts": job.attempts},
            "checkpoints": self.checkpoints(job)}
        if job.error:
            out["error"] = job.error  # herd's extension: why a job failed
        return out


def _reap(pgid: int, proc: subprocess.Popen[bytes] | None) -> None:
    """After SIGTERM: wait for the group to end, SIGKILL it after CANCEL_GRACE; reap our own runner."""
    end = time.monotonic() + CANCEL_GRACE
    while time.monotonic() < end:
        if proc is not None:
            proc.poll()
        if not group_alive(pgid):
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc is not None:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            log.warning("post-training: process group %d outlived SIGKILL", pgid)


def _metrics(path: Path) -> dict[int, dict[str, Any]]:
    """metrics.jsonl rows by step."""
    rows = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    for line in lines:
        try:
            row = json.loads(line)
            rows[int(row["step"])] = row
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill
    return rows


def _checkpoint(job: Job, name: str, path: Path, made: float, row: dict[str, Any] | None) -> dict[str, Any]:
    metrics = None
    if row is not None:
        loss = float(row["loss"])
        metrics = {"epoch": int(row.get("epoch", 0)), "train_loss": loss, "validation_loss": None,
                   "perplexity": math.exp(min(loss, 50.0)) if job.kind == "sft" else None, "step": row["step"]}
    return {"identifier": f"{job.job_uuid}/{name}", "created_at": _iso(made),
            "epoch": int(row.get("epoch", 0)) if row else 0, "post_training_job_id": job.job_uuid,
            "path": str(path.resolve()), "training_metrics": metrics}


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ---- the runner: one job's process ------------------------------------------------------------------------


def _tail_line(path: Path, start: int) -> str | None:
    """The last non-empty line written to a log since byte `start` (progress bars' \\r pieces split)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    lines = [x.strip() for x in text.replace("\r", "\n").splitlines() if x.strip()]
    return lines[-1][-2000:] if lines else None


def run_job(job_dir: Path, resume: bool) -> int:
    """Run a job's command (stdout.log, stderr.log), then write result.json: exit status, the command's JSON
    summary, the error line. A signal that ends this process ends the job without a result."""
    argv = json.loads((job_dir / "command.json").read_text(encoding="utf-8"))["argv"] + (["--resume"] if resume else [])
    try:
        os.nice(10)  # serving keeps the priority
    except OSError:
        pass
    out_path, err_path = job_dir / "stdout.log", job_dir / "stderr.log"
    out_start = out_path.stat().st_size if out_path.exists() else 0
    err_start = err_path.stat().st_size if err_path.exists() else 0
    with open(out_path, "ab") as out, open(err_path, "ab") as err:
        try:
            code = subprocess.call(argv, cwd=job_dir, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        except OSError as e:
            err.write(f"herd: error: cannot run {argv[0]}: {e}\n".encode())
            code = 127
    summary = None
    last = _tail_line(out_path, out_start)
    if code == 0 and last:
        try:
            summary = json.loads(last)
        except ValueError:
            summary = None
    error = None if code == 0 else _tail_line(err_path, err_start) or f"herd train exited with status {code}"
    _write_json(job_dir / "result.json", {"returncode": code, "summary": summary, "error": error,
                                          "resumed": resume, "finished_at": time.time()})
    return code


if __name__ == "__main__":
    sys.exit(run_job(Path(sys.argv[1]), "--resume" in sys.argv[2:]))
