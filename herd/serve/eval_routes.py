"""Llama Stack 0.2 eval: `/v1/eval/benchmarks` (register, list, get, unregister), `POST …/{id}/jobs` (run_eval:
a background job), `GET …/jobs/{job_id}` (status), `GET …/jobs/{job_id}/result`, `DELETE …/jobs/{job_id}`
(cancel) and `POST …/{id}/evaluations` (evaluate_rows, synchronous) — routes: herd/serve/routes.py.

A benchmark is a registered dataset and scoring functions (herd/serve/scoring.py). Evaluating it asks the
candidate model (`benchmark_config.eval_candidate`: type model, a served model, its sampling_params —
max_tokens required, as in Llama Stack — and an optional system_message) for each row, through the served
model's Generator, rows running concurrently up to `limits.max_sequences_in_flight` (the engine batches
them), then scores the rows with their `generated_answer` by the benchmark's functions (params from
`scoring_params`). A row's prompt is its `chat_completion_input` (messages, or their JSON text), its
`messages` (eval/messages-answer), or its `input_query` / `question` (eval/question-answer) as one user
message; its expected answer is `expected_answer` or `answer`. Rows and params are checked when the job is
submitted (400 naming the row or field); unknown benchmarks, datasets, models and functions are 404s.

Jobs are kept in `<herd_home>/eval.sqlite` (benchmarks too) and run in the server's event loop one at a time,
in submission order (a job waits `scheduled`). A job's result is `{generations, scores}` (EvaluateResponse);
asking for it before the job completed is a 409, as is cancelling a job that has ended. A server that stops
(or crashes) while jobs are scheduled or running does not resume them: the next server to open the file reports
them `failed`, with an error that says so (runs are cheap to repeat, and a half-done run is not a result).
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from herd.errors import HerdError
from herd.generator import ChatRequest, complete
from herd.home import StateFile
from herd.serve import scoring
from herd.serve.errors import APIError, bad_request, not_found
from herd.serve.generation import CallContext, sampling_in, until_disconnected
from herd.serve.generator import ServedGenerator
from herd.tokenizer.messages import Message, to_messages

log = logging.getLogger("herd.serve")
FILENAME = "eval.sqlite"
PROVIDER = "meta-reference"  # Llama Stack's inline eval provider
FINISHED = ("completed", "failed", "cancelled")
STOPPED = "the server stopped before this job finished (herd does not resume eval jobs); run it again"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS benchmarks (
    id TEXT PRIMARY KEY,
    resource TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS eval_jobs (
    job_id TEXT PRIMARY KEY,
    benchmark_id TEXT NOT NULL,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    owner_pid INTEGER NOT NULL,
    num_rows INTEGER NOT NULL,
    scheduled_at REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    error TEXT,
    result TEXT
);
"""
_JOB = "job_id, benchmark_id, status, num_rows, scheduled_at, started_at, completed_at, error"


class EvalStore:
    """Benchmarks and eval jobs in one SQLite file. Blocking, thread-safe."""

    def __init__(self, path: str | Path | None = None) -> None:
        self._state = StateFile(FILENAME, _SCHEMA, path)

    def add_benchmark(self, resource: dict[str, Any]) -> bool:
        """False when the id is taken by another definition (the same one again: a no-op)."""
        with self._state.write() as db:
            row = db.execute("SELECT resource FROM benchmarks WHERE id = ?", (resource["identifier"],)).fetchone()
            if row is not None:
                return json.loads(row[0]) == resource
            db.execute("INSERT INTO benchmarks VALUES (?, ?, ?)",
                       (resource["identifier"], json.dumps(resource), time.time()))
            return True

    def benchmark(self, benchmark_id: str) -> dict[str, Any] | None:
        with self._state.read() as db:
            row = db.execute("SELECT resource FROM benchmarks WHERE id = ?", (benchmark_id,)).fetchone() \
                if db else None
        return None if row is None else json.loads(row[0])

    def benchmarks(self) -> list[dict[str, Any]]:
        with self._state.read() as db:
            rows = db.execute("SELECT resource FROM benchmarks ORDER BY created, id").fetchall() if db else []
        return [json.loads(r[0]) for r in rows]

    def delete_benchmark(self, benchmark_id: str) -> bool:
        with self._state.read() as db:
            if db is None:
                return False
            with db:
                return db.execute("DELETE FROM benchmarks WHERE id = ?", (benchmark_id,)).rowcount > 0

    def add_job(self, job_id: str, benchmark_id: str, request: dict[str, Any], num_rows: int) -> None:
        with self._state.write() as db:
            db.execute("INSERT INTO eval_jobs (job_id, benchmark_id, status, request, owner_pid, num_rows, "
                       "scheduled_at) VALUES (?, ?, 'scheduled', ?, ?, ?, ?)",
                       (job_id, benchmark_id, json.dumps(request), os.getpid(), num_rows, time.time()))

    def job(self, job_id: str) -> dict[str, Any] | None:
        with self._state.read() as db:
            row = db.execute(f"SELECT {_JOB} FROM eval_jobs WHERE job_id = ?", (job_id,)).fetchone() if db else None
        return None if row is None else dict(zip(_JOB.split(", "), row))

    def result(self, job_id: str) -> dict[str, Any] | None:
        with self._state.read() as db:
            row = db.execute("SELECT result FROM eval_jobs WHERE job_id = ?", (job_id,)).fetchone() if db else None
        return None if row is None or row[0] is None else json.loads(row[0])

    def update(self, job_id: str, where: Sequence[str], **values: Any) -> bool:
        """Set columns of a job whose status is one of `where`; False when it is not."""
        sets = ", ".join(f"{k} = ?" for k in values)
        marks = ", ".join("?" * len(where))
        with self._state.write() as db:
            return db.execute(f"UPDATE eval_jobs SET {sets} WHERE job_id = ? AND status IN ({marks})",
                              (*values.values(), job_id, *where)).rowcount > 0

    def settle_orphans(self) -> int:
        """Jobs left scheduled or running by a server that is gone (or by an earlier process with this pid)
        become failed; how many."""
        with self._state.read() as db:
            rows = db.execute("SELECT job_id, owner_pid FROM eval_jobs WHERE status IN ('scheduled', "
                              "'in_progress')").fetchall() if db else []
        gone = [job_id for job_id, pid in rows if pid == os.getpid() or not _alive(pid)]
        for job_id in gone:
            self.update(job_id, ("scheduled", "in_progress"), status="failed", completed_at=time.time(), error=STOPPED)
        return len(gone)

    def close(self) -> None:
        self._state.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---- rows -> prompts, generation ---------------------------------------------------------------------


def row_prompt(row: Mapping[str, Any], where: str) -> list[Message]:
    """The messages to ask for one row (see the module docstring); 400 naming the row."""
    try:
        if "chat_completion_input" in row:
            raw = row["chat_completion_input"]
            if isinstance(raw, str):
                try:
                    raw = json.loads(raw)
                except ValueError:
                    raise bad_request(f"{where}.chat_completion_input is not a JSON list of messages",
                                      f"{where}.chat_completion_input") from None
            msgs = to_messages(raw, param=f"{where}.chat_completion_input")
        elif "messages" in row:
            msgs = to_messages(row["messages"], param=f"{where}.messages")
        elif isinstance(row.get("input_query", row.get("question")), str):
            msgs = [Message("user", row.get("input_query", row.get("question")))]
        elif "completion_input" in row:
            raise bad_request(f"{where}: completion_input rows (raw completions) are not supported; give the "
                              "prompt as chat_completion_input, messages or input_query", f"{where}.completion_input")
        else:
            raise bad_request(f"{where} has no prompt: chat_completion_input, messages, input_query or question",
                              where)
    except HerdError as e:
        raise bad_request(str(e), e.param) from None
    if msgs[-1].role == "assistant":
        raise bad_request(f"{where}: the last message is the assistant's; a prompt ends where the answer starts",
                          where)
    return msgs


class SampledGenerator(ServedGenerator):
    """A ServedGenerator that also samples with top_k and repetition_penalty (Llama Stack sampling_params)."""

    def __init__(self, model: Any, ctx: CallContext, extra: dict[str, Any]) -> None:
        super().__init__(model, ctx)
        self.extra = extra

    def _sampling(self, req: ChatRequest) -> dict[str, Any]:
        return {**super()._sampling(req), **self.extra}


@dataclasses.dataclass
class EvalPlan:
    """An evaluation, checked: the model, each row's prompt, sampling, and the scorers."""

    model_id: str
    rows: list[dict[str, Any]]
    prompts: list[list[Message]]
    request: ChatRequest  # sampling and max_tokens (messages set per row)
    extra: dict[str, Any]
    scorers: list[scoring.Scorer]


async def make_plan(app: Any, config: Any, rows: Sequence[dict[str, Any]], fn_ids: Sequence[str],
                    where: Callable[[int], str]) -> EvalPlan:
    """Check a benchmark_config against rows and scoring functions (400 / 404 naming what is wrong)."""
    cand = config.eval_candidate
    if cand.type != "model":
        raise bad_request("eval_candidate type 'agent' is not supported by herd; evaluate a model (type 'model')",
                          "benchmark_config.eval_candidate.type")
    model = app.state.registry.llm(cand.model, "benchmark_config.eval_candidate.model")
    kw, max_tokens = sampling_in(cand.sampling_params)
    if not max_tokens:
        raise bad_request("benchmark_config.eval_candidate.sampling_params.max_tokens is required (as in Llama "
                          "Stack): how long may each answer be", "benchmark_config.eval_candidate.sampling_params")
    system: list[Message] = []
    if cand.system_message is not None:
        if cand.system_message.role != "system":
            raise bad_request("system_message must have role 'system'",
                              "benchmark_config.eval_candidate.system_message.role")
        system = row_prompt({"messages": [cand.system_message]}, "benchmark_config.eval_candidate.system_message")
    extra_params = [k for k in config.scoring_params if k not in fn_ids]
    if extra_params:
        raise bad_request(f"scoring_params names {', '.join(extra_params)}, not among the scoring functions "
                          f"({', '.join(fn_ids)})", "benchmark_config.scoring_params")
    fns = {fn_id: config.scoring_params.get(fn_id) for fn_id in fn_ids}
    scorers = await scoring.scorers_for(app, fns, "benchmark_config.scoring_params")
    prompts = [system + row_prompt(r, where(i)) for i, r in enumerate(rows)]
    scoring.check_rows(scorers, [scoring.scoring_row({**r, "generated_answer": ""}) for r in rows], where)
    request = ChatRequest([], temperature=kw.get("temperature"), top_p=kw.get("top_p"), stop=kw.get("stop"),
                          max_tokens=max_tokens)
    extra = {k: kw[k] for k in ("top_k", "repetition_penalty") if kw.get(k) is not None}
    return EvalPlan(model.id, list(rows), prompts, request, extra, scorers)


async def evaluate(app: Any, plan: EvalPlan, ctx: CallContext, where: Callable[[int], str],
                   progress: Callable[[], None] | None = None) -> dict[str, Any]:
    """Generate every row's answer (concurrently, bounded), then score: the EvaluateResponse."""
    gen = SampledGenerator(app.state.registry.llm(plan.model_id), ctx, plan.extra)

    async def one(i: int) -> dict[str, Any]:
        try:
            reply = await complete(gen, dataclasses.replace(plan.request, messages=plan.prompts[i]))
        except APIError as e:
            raise APIError(e.status, f"{where(i)}: {e.message}", param=where(i), code=e.code) from None
        if progress is not None:
            progress()
        return {"generated_answer": reply.message.content}

    generations = await scoring.bounded([lambda i=i: one(i) for i in range(len(plan.rows))],
                                        ctx.limits.max_sequences_in_flight)
    rows = [scoring.scoring_row({**r, **g}) for r, g in zip(plan.rows, generations)]
    return {"generations": generations, "scores": await scoring.run_scorers(app, plan.scorers, rows, ctx)}


# ---- the jobs ----------------------------------------------------------------------------------------------


async def _never() -> bool:
    return False


class EvalJobs:
    """The app's benchmarks and eval jobs: the store, and the tasks running in this server."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.store = EvalStore()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.done: dict[str, int] = {}  # rows generated so far, per running job
        self._turn = asyncio.Lock()  # one job runs at a time

    def context(self, job_id: str) -> CallContext:
        """A job's CallContext: the server's metrics and limits, no deadline for the whole run, no queue."""
        state = self.app.state
        limits = dataclasses.replace(state.config.limits, request_timeout=0.0)
        return CallContext(job_id, state.metrics, _never, limits=limits)

    async def _set(self, job_id: str, where: Sequence[str], **values: Any) -> bool:
        return await asyncio.to_thread(self.store.update, job_id, where, **values)

    def submit(self, job_id: str, plan: EvalPlan) -> None:
        self.done[job_id] = 0
        self.tasks[job_id] = asyncio.get_running_loop().create_task(self._run(job_id, plan), name=f"herd-{job_id}")

    async def _run(self, job_id: str, plan: EvalPlan) -> None:
        try:
            async with self._turn:
                if not await self._set(job_id, ("scheduled",), status="in_progress", started_at=time.time()):
                    return  # cancelled while it waited
                log.info("eval job %s: started (%d rows)", job_id, len(plan.rows))

                def progress() -> None:
                    self.done[job_id] += 1

                result = await evaluate(self.app, plan, self.context(job_id), lambda i: f"row {i}", progress)
                await self._set(job_id, ("in_progress",), status="completed", completed_at=time.time(),
                                result=json.dumps(result))
                log.info("eval job %s: completed", job_id)
        except asyncio.CancelledError:
            raise  # cancel() or close() has recorded why
        except Exception as e:  # noqa: BLE001 - recorded as the job's error
            error = e.message if isinstance(e, APIError) else f"{type(e).__name__}: {e}"
            if not isinstance(e, APIError):
                log.exception("eval job %s failed", job_id)
            await self._set(job_id, ("scheduled", "in_progress"), status="failed", completed_at=time.time(),
                            error=error)
        finally:
            self.tasks.pop(job_id, None)
            self.done.pop(job_id, None)

    async def job(self, benchmark_id: str, job_id: str) -> dict[str, Any]:
        job = await asyncio.to_thread(self.store.job, job_id)
        if job is None or job["benchmark_id"] != benchmark_id:
            raise not_found(f"eval job {job_id!r} of benchmark {benchmark_id!r} not found", "job_id")
        return job

    async def cancel(self, benchmark_id: str, job_id: str) -> None:
        job = await self.job(benchmark_id, job_id)
        if job["status"] in FINISHED or not await self._set(job_id, ("scheduled", "in_progress"),
                                                             status="cancelled", completed_at=time.time()):
            raise APIError(409, f"eval job {job_id!r} has ended ({job['status']}); only scheduled and in_progress "
                           "jobs can be cancelled", param="job_id", code="conflict")
        task = self.tasks.get(job_id)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        """Server shutdown: running and waiting jobs are stopped and reported failed."""
        tasks = list(self.tasks.items())
        for job_id, task in tasks:
            await self._set(job_id, ("scheduled", "in_progress"), status="failed", completed_at=time.time(),
                            error=STOPPED)
            task.cancel()
        await asyncio.gather(*(t for _, t in tasks), return_exceptions=True)
        self.store.close()


def _make_jobs(app: Any) -> EvalJobs:
    with _make_lock:
        if getattr(app.state, "eval_jobs", None) is None:
            jobs = EvalJobs(app)
            n = jobs.store.settle_orphans()
            if n:
                log.warning("eval: %d job(s) left unfinished by an earlier server are now failed", n)
            app.state.eval_jobs = jobs
    return app.state.eval_jobs


_make_lock = threading.Lock()


async def jobs_of(app: Any) -> EvalJobs:
    """The app's EvalJobs (made on first use; jobs orphaned by an earlier server are settled then)."""
    jobs = getattr(app.state, "eval_jobs", None)
    return jobs if jobs is not None else await asyncio.to_thread(_make_jobs, app)


async def start(app: Any) -> None:
    """At start-up, where an eval.sqlite exists: settle the jobs an earlier server left unfinished."""
    from herd.home import herd_home

    if (herd_home(create=False) / FILENAME).exists():
        await jobs_of(app)


async def close(app: Any) -> None:
    jobs = getattr(app.state, "eval_jobs", None)
    if jobs is not None:
        await jobs.close()


# ---- the routes' logic ---------------------------------------------------------------------------------


async def register_benchmark(app: Any, datasets: Any, body: Any) -> None:
    if body.provider_id not in (None, PROVIDER):
        raise bad_request(f"provider_id {body.provider_id!r}: herd's eval provider is {PROVIDER!r}", "provider_id")
    if await asyncio.to_thread(datasets.get, body.dataset_id) is None:
        raise not_found(f"dataset {body.dataset_id!r} not found (register it with POST /v1/datasets)", "dataset_id")
    for i, fn_id in enumerate(body.scoring_functions):
        await scoring.lookup(app, fn_id, f"scoring_functions[{i}]")
    resource = {"identifier": body.benchmark_id, "provider_id": PROVIDER,
                "provider_resource_id": body.provider_benchmark_id or body.benchmark_id, "type": "benchmark",
                "dataset_id": body.dataset_id, "scoring_functions": list(body.scoring_functions),
                "metadata": dict(body.metadata or {})}
    if not await asyncio.to_thread((await jobs_of(app)).store.add_benchmark, resource):
        raise APIError(409, f"benchmark {body.benchmark_id!r} is registered already with another definition; "
                       "unregister it first", param="benchmark_id", code="conflict")


async def get_benchmark(app: Any, benchmark_id: str) -> dict[str, Any]:
    store = (await jobs_of(app)).store
    found = await asyncio.to_thread(store.benchmark, benchmark_id)
    if found is None:
        ids = ", ".join(b["identifier"] for b in await asyncio.to_thread(store.benchmarks)) or "none"
        raise not_found(f"benchmark {benchmark_id!r} not found (registered: {ids})", "benchmark_id")
    return found


async def list_benchmarks(app: Any) -> dict[str, Any]:
    return {"data": await asyncio.to_thread((await jobs_of(app)).store.benchmarks)}


async def unregister_benchmark(app: Any, benchmark_id: str) -> None:
    if not await asyncio.to_thread((await jobs_of(app)).store.delete_benchmark, benchmark_id):
        raise not_found(f"benchmark {benchmark_id!r} not found", "benchmark_id")


async def run_eval(app: Any, datasets: Any, benchmark_id: str, body: Any) -> dict[str, Any]:
    """POST …/jobs: checked now (400 / 404), run in the background; {job_id, status: scheduled}."""
    bench = await get_benchmark(app, benchmark_id)
    dataset_id = bench["dataset_id"]
    if await asyncio.to_thread(datasets.get, dataset_id) is None:
        raise not_found(f"dataset {dataset_id!r} of benchmark {benchmark_id!r} not found (it was unregistered)",
                        "benchmark_id")
    config = body.benchmark_config
    rows, _ = await asyncio.to_thread(datasets.rows, dataset_id, 0, config.num_examples)
    if not rows:
        raise bad_request(f"dataset {dataset_id!r} has no rows", "benchmark_id")
    plan = await make_plan(app, config, rows, bench["scoring_functions"], lambda i: f"dataset {dataset_id!r} row {i}")
    jobs = await jobs_of(app)
    job_id = f"evaljob-{uuid.uuid4().hex[:16]}"
    await asyncio.to_thread(jobs.store.add_job, job_id, benchmark_id, body.model_dump(mode="json"), len(rows))
    jobs.submit(job_id, plan)
    return {"job_id": job_id, "status": "scheduled"}


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


async def job_status(app: Any, benchmark_id: str, job_id: str) -> dict[str, Any]:
    """{job_id, status}, and herd's: benchmark_id, times, progress {generated, total}, error (failed)."""
    jobs = await jobs_of(app)
    job = await jobs.job(benchmark_id, job_id)
    done = job["num_rows"] if job["status"] == "completed" else jobs.done.get(job_id, 0)
    out = {"job_id": job_id, "status": job["status"], "benchmark_id": benchmark_id,
           "scheduled_at": _iso(job["scheduled_at"]), "started_at": _iso(job["started_at"]),
           "completed_at": _iso(job["completed_at"]), "progress": {"generated": done, "total": job["num_rows"]}}
    if job["error"]:
        out["error"] = job["error"]
    return out


async def job_result(app: Any, benchmark_id: str, job_id: str) -> dict[str, Any]:
    jobs = await jobs_of(app)
    job = await jobs.job(benchmark_id, job_id)
    if job["status"] != "completed":
        why = f": {job['error']}" if job["error"] else ""
        raise APIError(409, f"eval job {job_id!r} is {job['status']}{why}; its result exists once it has completed",
                       param="job_id", code="conflict")
    return await asyncio.to_thread(jobs.store.result, job_id)


async def cancel_job(app: Any, benchmark_id: str, job_id: str) -> None:
    await (await jobs_of(app)).cancel(benchmark_id, job_id)


async def evaluate_rows(app: Any, benchmark_id: str, body: Any, ctx: CallContext) -> dict[str, Any]:
    """POST …/evaluations: the rows generated and scored now (the benchmark's dataset is not read)."""
    await get_benchmark(app, benchmark_id)
    rows = list(body.input_rows)
    plan = await make_plan(app, body.benchmark_config, rows, body.scoring_functions, lambda i: f"input_rows[{i}]")
    return await until_disconnected(ctx.is_disconnected, evaluate(app, plan, ctx, lambda i: f"input_rows[{i}]"))
