"""Llama Stack 0.2 scoring: `/v1/scoring-functions` (list, get, register, unregister) and `/v1/scoring/score`
/ `score-batch` (routes: herd/serve/routes.py), with Llama Stack's scoring functions and aggregations.

Rows are read as Llama Stack's scorers read them: `generated_answer`, `expected_answer` and (judges)
`input_query`; a dataset row's `answer` stands in for a missing `expected_answer`, and its `question` (or
its last user message) for a missing `input_query`. A row that lacks what a function reads is a 400 naming it.

    basic::equality                            1.0 when expected_answer == generated_answer, else 0.0
    basic::subset_of                           1.0 when expected_answer is a substring of generated_answer
    basic::regex_parser_multiple_choice_answer the first of `parsing_regexes` that matches generated_answer
                                               gives the letter (group 1: "Answer: C", "The best answer is C",
                                               "Réponse : C", ...); 1.0 when it equals expected_answer
    llm-as-judge::base                         the judge model (`judge_model`, default the first served
                                               model) reads `prompt_template` filled with {input_query},
                                               {expected_answer}, {generated_answer}; the first of
                                               `judge_score_regexes` that matches its reply gives the score
                                               (group 1, a number when it reads as one); with no regexes
                                               herd.eval.scorers.parse_score reads "Score: 7", "7/10", ...
                                               A reply with no score is scored None and counted
                                               (`num_unparseable` in the aggregated results), never an error.

Aggregations (the request's `aggregation_functions` when non-empty, else the function's own): accuracy
{accuracy, num_correct, num_total} (a None score counts as 0), average and median (of the scores that are
numbers; None when there are none), weighted_average (weights from the rows' `weight`, default 1),
categorical_count (how often each score occurs, as text).

Registering (`POST /v1/scoring-functions`) names one of these four with preset params under a new id: the
base is `provider_scoring_fn_id` (a built-in id or its provider_resource_id), else the params' type
(llm_as_judge: llm-as-judge::base, regex_parser: the multiple-choice parser). Registered functions are kept
in `<herd_home>/scoring.sqlite`; registering the same definition again is a no-op, another one a 409.
"""
from __future__ import annotations

import asyncio
import json
import math
import re
import statistics
import string
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from herd.eval.scorers import parse_score
from herd.generator import ChatRequest, complete
from herd.home import StateFile
from herd.serve import protocol as p
from herd.serve.errors import APIError, bad_request, not_found
from herd.serve.generation import until_disconnected
from herd.tokenizer.messages import Message

FILENAME = "scoring.sqlite"
JUDGE_MAX_TOKENS = 512

# "Answer: X" in several languages (Llama Stack's multilingual multiple-choice prefixes), then the letter
MC_PREFIXES = (r"The best answer is ", r"Answer\s*[:：]", r"Antwort\s*:", r"Respuesta\s*:", r"Risposta\s*:",
               r"Réponse\s*:", r"Resposta\s*:", r"Jawaban\s*:", r"Jibu\s*:", r"Idahun\s*:", r"Ìdáhùn\s*:",
               r"答案\s*[:：]", r"答\s*[:：]", r"答え\s*[:：]", r"回答\s*[:：]", r"解答\s*[:：]", r"답변\s*:", r"정답\s*:",
               r"답\s*:", r"उत्तर\s*:", r"উত্তর\s*:", r"উত্তরঃ", r"الإجابة:", r"الجواب:", r"إجابة:")
MC_LETTER = r"\s*([A-J]|[أ-د]|[অ]|[ব]|[ড]|[ঢ]|[Ａ-Ｊ])"
MC_REGEXES = [f"(?i){prefix}{MC_LETTER}" for prefix in MC_PREFIXES]

JUDGE_TEMPLATE = """You are grading an answer to a question.

Question:
{input_query}

Reference answer (may be empty):
{expected_answer}

Answer to grade:
{generated_answer}

Is the answer correct and complete? Explain briefly, then end with a line "Score: N" where N is from 1 (worst) \
to 10 (best)."""

BASIC, JUDGE = "basic", "llm-as-judge"
# id -> (provider, provider_resource_id, kind, description, default params without the judge model)
BUILTINS: dict[str, tuple[str, str, str, str, dict[str, Any]]] = {
    "basic::equality": (BASIC, "equality", "equality", "1.0 if generated_answer equals expected_answer, else 0.0",
                        {"type": "basic", "aggregation_functions": ["accuracy"]}),
    "basic::subset_of": (BASIC, "subset-of", "subset_of",
                         "1.0 if expected_answer is contained in generated_answer, else 0.0",
                         {"type": "basic", "aggregation_functions": ["accuracy"]}),
    "basic::regex_parser_multiple_choice_answer": (
        BASIC, "regex-parser-multiple-choice-answer", "regex_parser",
        "Extract the answer letter from generated_answer (\"Answer: X\") and compare it with expected_answer",
        {"type": "regex_parser", "parsing_regexes": MC_REGEXES, "aggregation_functions": ["accuracy"]}),
    "llm-as-judge::base": (JUDGE, "llm-as-judge-base", "llm_as_judge",
                           "A judge model grades generated_answer against input_query and expected_answer",
                           {"type": "llm_as_judge", "prompt_template": JUDGE_TEMPLATE, "judge_score_regexes": [],
                            "aggregation_functions": ["average"]}),
}
KIND_TYPE = {"equality": "basic", "subset_of": "basic", "regex_parser": "regex_parser", "llm_as_judge": "llm_as_judge"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scoring_functions (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    resource TEXT NOT NULL,
    created REAL NOT NULL
);
"""


class ScoringFunctionStore:
    """Registered scoring functions (id, kind, resource) in one SQLite file. Blocking, thread-safe."""

    def __init__(self, path: str | Path | None = None) -> None:
        self._state = StateFile(FILENAME, _SCHEMA, path)

    def all(self) -> list[tuple[str, dict[str, Any]]]:
        with self._state.read() as db:
            rows = db.execute("SELECT kind, resource FROM scoring_functions ORDER BY created, id").fetchall() \
                if db else []
        return [(kind, json.loads(res)) for kind, res in rows]

    def get(self, fn_id: str) -> tuple[str, dict[str, Any]] | None:
        with self._state.read() as db:
            row = db.execute("SELECT kind, resource FROM scoring_functions WHERE id = ?", (fn_id,)).fetchone() \
                if db else None
        return None if row is None else (row[0], json.loads(row[1]))

    def add(self, fn_id: str, kind: str, resource: dict[str, Any]) -> bool:
        """False when the id is taken by another definition (the same one again: a no-op)."""
        with self._state.write() as db:
            row = db.execute("SELECT resource FROM scoring_functions WHERE id = ?", (fn_id,)).fetchone()
            if row is not None:
                return json.loads(row[0]) == resource
            db.execute("INSERT INTO scoring_functions VALUES (?, ?, ?, ?)",
                       (fn_id, kind, json.dumps(resource), time.time()))
            return True

    def delete(self, fn_id: str) -> bool:
        with self._state.read() as db:
            if db is None:
                return False
            with db:
                return db.execute("DELETE FROM scoring_functions WHERE id = ?", (fn_id,)).rowcount > 0

    def close(self) -> None:
        self._state.close()


def store_of(app: Any) -> ScoringFunctionStore:
    """The app's registered functions (<herd_home>/scoring.sqlite), made on first use."""
    if getattr(app.state, "scoring_functions", None) is None:
        app.state.scoring_functions = ScoringFunctionStore()
    return app.state.scoring_functions


def _default_judge(app: Any) -> str | None:
    llms = app.state.registry.llms()
    return llms[0].id if llms else None


def builtin_resource(app: Any, fn_id: str) -> dict[str, Any]:
    provider, resource_id, _, description, params = BUILTINS[fn_id]
    params = dict(params)
    if params["type"] == "llm_as_judge":
        params["judge_model"] = _default_judge(app) or ""
    return {"identifier": fn_id, "provider_id": provider, "provider_resource_id": resource_id,
            "type": "scoring_function", "description": description, "metadata": {},
            "return_type": {"type": "number"}, "params": params}


async def lookup(app: Any, fn_id: str, param: str) -> tuple[str, dict[str, Any]]:
    """(kind, resource) of a built-in or registered function; 404 naming the known ones."""
    if fn_id in BUILTINS:
        return BUILTINS[fn_id][2], builtin_resource(app, fn_id)
    found = await asyncio.to_thread(store_of(app).get, fn_id)
    if found is None:
        known = [*BUILTINS, *(r["identifier"] for _, r in await asyncio.to_thread(store_of(app).all))]
        raise not_found(f"scoring function {fn_id!r} not found; known: {', '.join(known)}", param)
    return found


# ---- a function with its params, checked -------------------------------------------------------------


@dataclass
class Scorer:
    fn_id: str
    kind: str  # equality / subset_of / regex_parser / llm_as_judge
    aggregations: list[str]
    regexes: list[re.Pattern[str]]  # regex_parser: parsing_regexes; judge: judge_score_regexes
    judge_model: str | None = None
    template: str | None = None


def _compile(patterns: Sequence[str], param: str) -> list[re.Pattern[str]]:
    out = []
    for i, text in enumerate(patterns):
        try:
            rx = re.compile(text)
        except re.error as e:
            raise bad_request(f"{param}[{i}] {text!r} is not a valid regular expression: {e}", f"{param}[{i}]") from None
        if rx.groups < 1:
            raise bad_request(f"{param}[{i}] {text!r} needs a group: group 1 is what it reads", f"{param}[{i}]")
        out.append(rx)
    return out


TEMPLATE_FIELDS = ("input_query", "expected_answer", "generated_answer")


def check_template(template: str, param: str) -> None:
    """The template's fields are plain {input_query}, {expected_answer}, {generated_answer} (no attribute,
    index, conversion or format spec: a client's template must not reach into objects or pad to gigabytes)."""
    try:
        fields = [(name, conv, spec) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        fields, bad = [], f"it is not a format string ({e})"
    else:
        bad = next((f"{{{name}{'!' + conv if conv else ''}{':' + spec if spec else ''}}} cannot be filled"
                    for name, conv, spec in fields if name not in TEMPLATE_FIELDS or conv or spec), "")
    if bad:
        raise bad_request(f"{param}: {bad}; the template's fields are {{input_query}}, {{expected_answer}} and "
                          "{generated_answer}, plain (write other braces twice)", param)


FIELDS = {"basic": ("aggregation_functions",), "regex_parser": ("aggregation_functions", "parsing_regexes"),
          "llm_as_judge": ("aggregation_functions", "judge_model", "prompt_template", "judge_score_regexes")}


def parse_params(raw: Any, param: str) -> dict[str, Any] | None:
    """A request's params object checked against ScoringFnParams (400 naming the field)."""
    if raw is None:
        return None
    try:
        return p.ScoringFnParams.model_validate(raw).model_dump()
    except ValidationError as e:
        err = e.errors()[0]
        where = param + "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in err.get("loc", ()))
        got = err.get("input")
        shown = "" if err.get("type") == "missing" or isinstance(got, (dict, list)) else f" (got {json.dumps(got)[:80]})"
        raise bad_request(f"{where}: {err.get('msg', 'invalid')}{shown}", where) from None


def merge_params(kind: str, base: dict[str, Any], raw: Any, param: str) -> dict[str, Any]:
    """The function's params with the request's on top: params of the function's own type, or `basic` ones
    that set only the aggregations (a 400 otherwise); empty fields keep the function's own."""
    params = dict(base)
    given = parse_params(raw, param)
    if given is None:
        return params
    if given["type"] not in (KIND_TYPE[kind], "basic"):
        also = "" if KIND_TYPE[kind] == "basic" else " (or 'basic', for aggregation_functions only)"
        raise bad_request(f"{param}: this function takes params of type {KIND_TYPE[kind]!r}{also}, got "
                          f"{given['type']!r}", f"{param}.type")
    for key in FIELDS[given["type"]]:
        if given[key] not in (None, [], ""):
            params[key] = given[key]
    return params


def make_scorer(app: Any, fn_id: str, kind: str, params: dict[str, Any], param: str) -> Scorer:
    """A Scorer of checked params (bad regexes and templates 400, an unknown judge model 404)."""
    regexes: list[re.Pattern[str]] = []
    scorer = Scorer(fn_id, kind, list(dict.fromkeys(params.get("aggregation_functions") or [])), regexes)
    if kind == "regex_parser":
        scorer.regexes = _compile(params.get("parsing_regexes") or MC_REGEXES, f"{param}.parsing_regexes")
    elif kind == "llm_as_judge":
        scorer.regexes = _compile(params.get("judge_score_regexes") or [], f"{param}.judge_score_regexes")
        scorer.template = params.get("prompt_template") or JUDGE_TEMPLATE
        check_template(scorer.template, f"{param}.prompt_template")
        name = params.get("judge_model") or _default_judge(app)
        scorer.judge_model = app.state.registry.llm(name, f"{param}.judge_model").id  # 404 naming the served ones
    return scorer


async def scorers_for(app: Any, fns: Mapping[str, Any], param: str) -> list[Scorer]:
    """Checked Scorers of {fn_id: params or None}."""
    out = []
    for fn_id, given in fns.items():
        kind, resource = await lookup(app, fn_id, f"{param}.{fn_id}")
        params = merge_params(kind, resource.get("params") or {}, given, f"{param}.{fn_id}")
        out.append(make_scorer(app, fn_id, kind, params, f"{param}.{fn_id}"))
    return out


# ---- rows -----------------------------------------------------------------------------------------------


def _last_user(row: Mapping[str, Any]) -> str | None:
    msgs = row.get("messages") or row.get("chat_completion_input")
    if isinstance(msgs, str):
        try:
            msgs = json.loads(msgs)
        except ValueError:
            return None
    if isinstance(msgs, list):
        for m in reversed(msgs):
            if isinstance(m, Mapping) and m.get("role") == "user" and isinstance(m.get("content"), str):
                return m["content"]
    return None


def scoring_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row with Llama Stack's scoring columns filled from a dataset's (answer, question, messages)."""
    out = dict(row)
    if "expected_answer" not in out and "answer" in out:
        out["expected_answer"] = out["answer"]
    if "input_query" not in out:
        query = out.get("question") if isinstance(out.get("question"), str) else _last_user(out)
        if query is not None:
            out["input_query"] = query
    return out


def check_rows(scorers: Sequence[Scorer], rows: Sequence[Mapping[str, Any]], where: Callable[[int], str]) -> None:
    """400 naming the first row that lacks (or has the wrong type for) what a function reads."""
    for s in scorers:
        need = ["generated_answer", "expected_answer"] + (["input_query"] if s.kind == "llm_as_judge" else [])
        text = {"subset_of": ["generated_answer", "expected_answer"], "regex_parser": ["generated_answer"]}.get(s.kind, [])
        for i, row in enumerate(rows):
            missing = [c for c in need if c not in row]
            if missing:
                raise bad_request(f"{where(i)} lacks {', '.join(missing)} ({s.fn_id} reads {', '.join(need)})",
                                  where(i))
            wrong = [c for c in text if not isinstance(row[c], str)]
            if wrong:
                raise bad_request(f"{where(i)}.{wrong[0]} must be a string for {s.fn_id}", f"{where(i)}.{wrong[0]}")


# ---- scoring ---------------------------------------------------------------------------------------------


def _number(text: str) -> float | str:
    """A finite number when the text reads as one (JSON has no inf / nan), else the text."""
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def judge_score(verdict: str, regexes: Sequence[re.Pattern[str]]) -> float | str | None:
    """The score in a judge's reply: group 1 of the first regex that matches (a number when it reads as
    one), or with no regexes herd's reader (1 to 10); None when nothing can be read."""
    if not regexes:
        return parse_score(verdict)
    for rx in regexes:
        m = rx.search(verdict)
        if m and m.group(1) is not None:
            return _number(m.group(1).strip())
    return None


def score_basic(s: Scorer, row: Mapping[str, Any]) -> dict[str, Any]:
    want, got = row["expected_answer"], row["generated_answer"]
    if s.kind == "equality":
        return {"score": 1.0 if want == got else 0.0}
    if s.kind == "subset_of":
        return {"score": 1.0 if want in got else 0.0}
    parsed = None
    for rx in s.regexes:
        m = rx.search(got)
        if m and m.group(1) is not None:
            parsed = m.group(1).strip()
            break
    return {"score": 1.0 if parsed and parsed == str(want).strip() else 0.0, "parsed_answer": parsed}


async def bounded(jobs: Sequence[Callable[[], Awaitable[Any]]], bound: int) -> list[Any]:
    """Run the jobs concurrently, at most `bound` at a time; results in order."""
    gate = asyncio.Semaphore(max(1, bound))

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await job()

    return list(await asyncio.gather(*(one(j) for j in jobs)))


async def score_judge(s: Scorer, rows: Sequence[Mapping[str, Any]], app: Any, ctx: Any) -> list[dict[str, Any]]:
    from herd.serve.generator import ServedGenerator

    gen = ServedGenerator(app.state.registry.llm(s.judge_model), ctx)
    assert s.template is not None

    async def one(row: Mapping[str, Any]) -> dict[str, Any]:
        prompt = s.template.format(input_query=row["input_query"], expected_answer=row["expected_answer"],
                                   generated_answer=row["generated_answer"])
        reply = await complete(gen, ChatRequest([Message("user", prompt)], temperature=0.0,
                                                max_tokens=JUDGE_MAX_TOKENS))
        verdict = reply.message.content or ""
        return {"score": judge_score(verdict, s.regexes), "judge_feedback": verdict}

    return await bounded([lambda r=r: one(r) for r in rows], ctx.limits.max_sequences_in_flight)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _numbers(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    return [float(r["score"]) for r in rows if _finite(r.get("score"))]


def aggregate(names: Sequence[str], score_rows: Sequence[Mapping[str, Any]],
              input_rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Llama Stack's aggregations of score rows (see the module docstring)."""
    out: dict[str, Any] = {}
    numbers = _numbers(score_rows)
    for name in names:
        if name == "accuracy":
            correct = sum(numbers)
            out[name] = {"accuracy": correct / len(score_rows) if score_rows else 0.0, "num_correct": correct,
                         "num_total": len(score_rows)}
        elif name == "average":
            out[name] = {"average": sum(numbers) / len(numbers) if numbers else None}
        elif name == "median":
            out[name] = {"median": statistics.median(numbers) if numbers else None}
        elif name == "weighted_average":
            pairs = []
            for sr, row in zip(score_rows, input_rows):
                w = row.get("weight", 1.0)
                if _numbers([sr]) and _finite(w):
                    pairs.append((float(sr["score"]), float(w)))
            total = sum(w for _, w in pairs)
            out[name] = {"weighted_average": sum(v * w for v, w in pairs) / total if total else None}
        elif name == "categorical_count":
            labels = [str(r.get("score")) for r in score_rows]
            out[name] = {"categorical_count": {x: labels.count(x) for x in sorted(set(labels))}}
    for metric in out.values():  # sums of huge numbers overflow; JSON has no inf / nan
        for key, value in metric.items():
            if isinstance(value, float) and not math.isfinite(value):
                metric[key] = None
    return out


async def run_scorers(app: Any, scorers: Sequence[Scorer], rows: Sequence[Mapping[str, Any]],
                      ctx: Any) -> dict[str, dict[str, Any]]:
    """{fn_id: {score_rows, aggregated_results}} of checked rows (scoring_row, check_rows)."""
    results = {}
    for s in scorers:
        if s.kind == "llm_as_judge":
            score_rows = await score_judge(s, rows, app, ctx)
        else:
            score_rows = [score_basic(s, r) for r in rows]
        agg = aggregate(s.aggregations, score_rows, rows)
        if s.kind == "llm_as_judge":  # herd: replies with no readable score, counted
            agg["num_unparseable"] = sum(1 for r in score_rows if r["score"] is None)
        results[s.fn_id] = {"score_rows": score_rows, "aggregated_results": agg}
    return results


# ---- the routes' logic ---------------------------------------------------------------------------------


async def list_functions(app: Any) -> dict[str, Any]:
    custom = [r for _, r in await asyncio.to_thread(store_of(app).all)]
    return {"data": [builtin_resource(app, fn_id) for fn_id in BUILTINS] + custom}


async def get_function(app: Any, fn_id: str) -> dict[str, Any]:
    return (await lookup(app, fn_id, "scoring_fn_id"))[1]


_BY_RESOURCE_ID = {v[1]: k for k, v in BUILTINS.items()}


def _base_of(body: Any) -> str:
    """The built-in a registered function presets (see the module docstring)."""
    if body.provider_scoring_fn_id:
        base = body.provider_scoring_fn_id
        base = base if base in BUILTINS else _BY_RESOURCE_ID.get(base, "")
        if not base:
            raise bad_request(f"provider_scoring_fn_id {body.provider_scoring_fn_id!r} is not a built-in function; "
                              f"use one of {', '.join(BUILTINS)}", "provider_scoring_fn_id")
        return base
    given = parse_params(body.params, "params")
    kind = given["type"] if given is not None else None
    if kind == "llm_as_judge" or kind is None and body.provider_id == JUDGE:
        return "llm-as-judge::base"
    if kind == "regex_parser":
        return "basic::regex_parser_multiple_choice_answer"
    raise bad_request("say which function this presets: provider_scoring_fn_id (basic::equality, basic::subset_of, "
                      "...), or params of type llm_as_judge or regex_parser", "provider_scoring_fn_id")


async def register_function(app: Any, body: Any) -> None:
    fn_id = body.scoring_fn_id
    if fn_id in BUILTINS:
        raise APIError(409, f"{fn_id!r} is a built-in scoring function; register yours under another id",
                       param="scoring_fn_id", code="conflict")
    base = _base_of(body)
    provider, _, kind, _, _ = BUILTINS[base]
    if body.provider_id not in (None, provider):
        raise bad_request(f"provider_id {body.provider_id!r}: {base} is provided by {provider!r}", "provider_id")
    params = merge_params(kind, builtin_resource(app, base)["params"], body.params, "params")
    make_scorer(app, fn_id, kind, params, "params")  # checked now, and again when used
    resource = {"identifier": fn_id, "provider_id": provider, "provider_resource_id": base,
                "type": "scoring_function", "description": body.description, "metadata": {},
                "return_type": body.return_type.model_dump(), "params": params}
    if not await asyncio.to_thread(store_of(app).add, fn_id, kind, resource):
        raise APIError(409, f"scoring function {fn_id!r} is registered already with another definition; "
                       "unregister it first", param="scoring_fn_id", code="conflict")


async def unregister_function(app: Any, fn_id: str) -> None:
    if fn_id in BUILTINS:
        raise bad_request(f"{fn_id!r} is a built-in scoring function; it cannot be unregistered", "scoring_fn_id")
    if not await asyncio.to_thread(store_of(app).delete, fn_id):
        raise not_found(f"scoring function {fn_id!r} not found", "scoring_fn_id")


async def score(app: Any, body: Any, ctx: Any) -> dict[str, Any]:
    """POST /v1/scoring/score."""
    scorers = await scorers_for(app, body.scoring_functions, "scoring_functions")
    rows = [scoring_row(r) for r in body.input_rows]
    check_rows(scorers, rows, lambda i: f"input_rows[{i}]")
    return {"results": await until_disconnected(ctx.is_disconnected, run_scorers(app, scorers, rows, ctx))}


async def score_batch(app: Any, datasets: Any, body: Any, ctx: Any) -> dict[str, Any]:
    """POST /v1/scoring/score-batch: the dataset's rows scored; save_results_dataset registers a new dataset
    `<dataset_id>-scored-<hex>` (same purpose) of the rows, each with `scores` {fn_id: its score row}."""
    found = await asyncio.to_thread(datasets.get, body.dataset_id)
    if found is None:
        raise not_found(f"dataset {body.dataset_id!r} not found (register it with POST /v1/datasets)", "dataset_id")
    scorers = await scorers_for(app, body.scoring_functions, "scoring_functions")
    raw, _ = await asyncio.to_thread(datasets.rows, body.dataset_id, 0, None)
    if not raw:
        raise bad_request(f"dataset {body.dataset_id!r} has no rows", "dataset_id")
    rows = [scoring_row(r) for r in raw]
    check_rows(scorers, rows, lambda i: f"dataset {body.dataset_id!r} row {i}")
    results = await until_disconnected(ctx.is_disconnected, run_scorers(app, scorers, rows, ctx))
    out: dict[str, Any] = {"results": results}
    if body.save_results_dataset:
        new_id = f"{body.dataset_id}-scored-{uuid.uuid4().hex[:8]}"
        scored = [{**r, "scores": {k: v["score_rows"][i] for k, v in results.items()}} for i, r in enumerate(raw)]
        meta = {"scored_from": body.dataset_id, "scoring_functions": list(results)}
        await asyncio.to_thread(datasets.add, new_id, found["purpose"], {"type": "rows", "rows": []}, meta, scored)
        out["dataset_id"] = new_id
    return out
