"""BFCL (Berkeley Function Calling Leaderboard): single-turn function calling, asked through Herd's own
tool-calling path (the functions as tools, tool_choice "auto") and scored by Herd's AST checker
(herd/eval/bfcl_checker.py, BFCL's matching rules written for Herd).

Data: the JSON-lines files inside the `bfcl-eval` package (`bfcl_eval/data/BFCL_v4_<category>.json`, the
expected calls in `possible_answer/` under the same name), or a directory of that layout (TaskOptions.data,
`--data DIR`). Categories: simple_python, simple_java, simple_javascript, multiple, parallel,
parallel_multiple, irrelevance, live_simple, live_multiple, live_parallel, live_parallel_multiple,
live_irrelevance, live_relevance (all by default; groups "simple", "non_live", "live"); --limit is per
category.

The request is the item's first turn of messages and its functions as tools, converted the way BFCL's own
OpenAI function-calling handler does: BFCL's types as JSON-schema types (dict -> object, float -> number,
tuple -> array, any -> string), "." in names as "_" (endpoints refuse dots; calls of either name are
accepted back), the language note on each description, and Java / JavaScript params asked for as source
text (type string, the declared type in the description).

--samples records are BFCL's result-file format, one JSON object a line:

    {"id": "simple_python_0", "result": [{"calculate_triangle_area": {"base": 10, "height": 5}}]}

`result` is the list of calls {function name: arguments}, the arguments an object or its JSON text (as
BFCL's function-calling result files hold them), or a string: the model answered in text, no call (a call
whose arguments are not JSON makes the whole result text, as BFCL's decoder fails on it).

Metrics: `accuracy` (all items), `accuracy/<category>`, and BFCL's own summaries when their categories
were all run: `non_live_ast` (unweighted mean of simple = mean(python, java, javascript), multiple,
parallel, parallel_multiple), `live_ast` (the live AST categories weighted by size) and
`irrelevance_detection` (unweighted mean of irrelevance and live_irrelevance).
"""
from __future__ import annotations

import copy
import importlib.util
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from herd.errors import HerdError
from herd.eval.bfcl_checker import JAVA, JAVASCRIPT, check, language_of
from herd.eval.task import DataError, Metric, Output, Sample, Score, TaskOptions, mean_metric, read_jsonl
from herd.generator import ChatRequest
from herd.tokenizer.messages import Message, ToolCall, ToolDefinition, new_call_id, to_messages

CATEGORIES = ("simple_python", "simple_java", "simple_javascript", "multiple", "parallel", "parallel_multiple",
              "irrelevance", "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple",
              "live_irrelevance", "live_relevance")
GROUPS = {"simple": CATEGORIES[:3], "non_live": CATEGORIES[:7], "live": CATEGORIES[7:], "all": CATEGORIES}
_OLD_NAMES = {"simple_python": "simple", "simple_java": "java", "simple_javascript": "javascript"}  # BFCL v3
_NON_LIVE_AST = ("multiple", "parallel", "parallel_multiple")
_LIVE_AST = ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple")
_HINTS = {JAVA: " Note that the provided function is in Java 8 SDK syntax.",
          JAVASCRIPT: " Note that the provided function is in JavaScript syntax."}
_PY_HINT = " Note that the provided function is in Python 3 syntax."
# BFCL's type names (Python, Java, JavaScript) as JSON-schema types; anything else is asked for as a string
_SCHEMA_TYPES = {"string": "string", "String": "string", "char": "string", "any": "string", "Any": "string",
                 "integer": "integer", "byte": "integer", "short": "integer", "long": "integer",
                 "Bigint": "integer", "number": "number", "float": "number", "double": "number",
                 "boolean": "boolean", "bool": "boolean", "Boolean": "boolean", "array": "array", "list": "array",
                 "tuple": "array", "Array": "array", "ArrayList": "array", "Queue": "array", "Stack": "array",
                 "dict": "object", "object": "object", "HashMap": "object", "Hashtable": "object"}


def is_ast_category(category: str) -> bool:
    """Categories scored against a possible answer (the others: whether a call was made at all)."""
    return "relevance" not in category


def api_name(name: str) -> str:
    """A function name as offered to the model: dots as underscores (OpenAI-style names allow no dots)."""
    return name.replace(".", "_")


# ---- BFCL function docs as tools ------------------------------------------------------------------


def _schema(node: Any) -> Any:
    """A BFCL type doc as JSON schema, recursively (properties, items, additionalProperties)."""
    if not isinstance(node, Mapping):
        return {"type": "string"}
    out = dict(node)
    kind = out.get("type")
    out["type"] = _SCHEMA_TYPES.get(kind, "string") if isinstance(kind, str) else "string"
    if kind == "float":
        out["format"] = "float"
        out["description"] = str(out.get("description") or "") + " This is a float type value."
    if isinstance(out.get("properties"), Mapping):
        out["properties"] = {k: _schema(v) for k, v in out["properties"].items()}
    if "items" in out:
        out["items"] = _schema(out["items"])
    if isinstance(out.get("additionalProperties"), Mapping):
        out["additionalProperties"] = _schema(out["additionalProperties"])
    if "required" in out and not (isinstance(out["required"], list) and all(isinstance(r, str) for r in
                                                                              out["required"])):
        del out["required"]  # a flag some docs carry on a property; JSON schema wants a list of names there
    return out


def _as_source_text(prop: dict[str, Any], language: str) -> None:
    """Java / JavaScript params are asked for as source text: type string, the declared type described."""
    word = "Java" if language == JAVA else "JavaScript"
    kind, note = prop.get("type"), str(prop.get("description") or "")
    if kind == "any":
        note += f" This parameter can be of any type of {word} object in string representation."
    else:
        note += f" This is {word} {kind} type parameter in string representation."
    if kind in (("Array", "ArrayList") if language == JAVA else ("array",)) and isinstance(prop.get("items"), Mapping):
        note += f" The list elements are of type {prop['items'].get('type')}; they are not in string representation."
        del prop["items"]
    if language == JAVASCRIPT and kind == "dict" and "properties" in prop:
        note += (" The dictionary entries have the following schema; they are not in string representation. "
                 + json.dumps(prop["properties"]))
        del prop["properties"]
    prop["description"], prop["type"] = note, "string"


def to_tool(function: Mapping[str, Any], category: str) -> ToolDefinition:
    """One BFCL function doc as the tool offered to the model (see the module docstring)."""
    language = language_of(category)
    params = copy.deepcopy(dict(function.get("parameters") or {}))
    props = params.get("properties") if isinstance(params.get("properties"), Mapping) else {}
    props = {k: dict(v) if isinstance(v, Mapping) else {"type": "string"} for k, v in props.items()}
    if language in (JAVA, JAVASCRIPT):
        for prop in props.values():
            _as_source_text(prop, language)
    params = _schema({**params, "type": "dict", "properties": props})
    for key in ("optional", "default"):  # stray keys at the top of some BFCL docs
        params.pop(key, None)
    description = str(function.get("description") or "") + _HINTS.get(language, _PY_HINT)
    return ToolDefinition(api_name(str(function["name"])), description, params)


# ---- loading ----------------------------------------------------------------------------------------


def default_data_dir() -> Path:
    """The `data/` directory of the installed bfcl-eval package (found without importing it)."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise HerdError("the bfcl task needs the BFCL data: pip install --no-deps bfcl-eval (its data only), or "
                        "give a directory of BFCL_v*_<category>.json files with --data", "data")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _category_file(root: Path, category: str) -> Path:
    """The newest BFCL_v<N>_<category>.json in `root` (v3 names for the simple categories too)."""
    found: list[tuple[int, Path]] = []
    for name in (category, _OLD_NAMES.get(category)):
        for path in root.glob(f"BFCL_v*_{name}.json") if name else ():
            m = re.fullmatch(rf"BFCL_v(\d+)_{re.escape(name)}\.json", path.name)
            if m:
                found.append((int(m.group(1)), path))
    if not found:
        raise HerdError(f"{root}: no BFCL_v*_{category}.json (is this the BFCL data directory?)", "data")
    return max(found)[1]


def _rows(path: Path, limit: int | None) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for where, row in read_jsonl(path):
        if limit is not None and len(rows) >= limit:
            break
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            raise DataError(f"{where}: a BFCL entry is a JSON object with a string 'id'")
        rows.append((where, row))
    return rows


def _check_entry(where: str, row: dict[str, Any], category: str) -> None:
    turns, functions = row.get("question"), row.get("function")
    if not isinstance(turns, list) or not turns or not isinstance(turns[0], list) or not turns[0]:
        raise DataError(f"{where}: 'question' must be a non-empty list of turns (lists of messages)")
    if not isinstance(functions, list) or not all(isinstance(f, dict) and isinstance(f.get("name"), str)
                                                  for f in functions):
        raise DataError(f"{where}: 'function' must be a list of function docs with a 'name'")
    try:
        to_messages(turns[0], param="question[0]")
        for f in functions:
            to_tool(f, category)
    except HerdError as e:
        raise DataError(f"{where}: {e}") from None


def _check_answer(where: str, row: Any, entry_id: str) -> list[dict[str, Any]]:
    answer = row.get("ground_truth") if isinstance(row, dict) else None
    if not isinstance(answer, list) or not answer or not all(isinstance(a, dict) and len(a) == 1 and
                                               isinstance(next(iter(a.values())), dict) for a in answer):
        raise DataError(f"{where}: 'ground_truth' must be a non-empty list of {{function: {{param: [values]}}}}")
    if row.get("id") not in (None, entry_id) and row["id"].split("_")[-1] != entry_id.split("_")[-1]:
        raise DataError(f"{where}: answer {row['id']!r} is not for entry {entry_id!r} (files out of step)")
    return answer


def resolve_categories(names: Sequence[str] | None) -> list[str]:
    """Category names (and groups) as the categories to run, in BFCL's order; unknown ones are errors."""
    if not names:
        return list(CATEGORIES)
    chosen: set[str] = set()
    for name in names:
        if name in GROUPS:
            chosen.update(GROUPS[name])
        elif name in CATEGORIES:
            chosen.add(name)
        else:
            raise HerdError(f"unknown bfcl category {name!r}; choose from {', '.join(CATEGORIES)} or the groups "
                            f"{', '.join(GROUPS)}", "categories")
    return [c for c in CATEGORIES if c in chosen]


# ---- reading outputs ------------------------------------------------------------------------------


def read_result(result: Any, where: str) -> Message:
    """A BFCL result (a list of {name: arguments} or text) as the assistant message; see the module doc."""
    if isinstance(result, str):
        return Message("assistant", result)
    if not isinstance(result, list):
        raise DataError(f"{where}: 'result' must be a list of calls {{name: arguments}} or a string (text)")
    calls = []
    for i, call in enumerate(result):
        if not isinstance(call, dict) or len(call) != 1:
            raise DataError(f"{where}: result[{i}] must be one {{function name: arguments}} pair")
        (name, args), = call.items()
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                args = None
            if not isinstance(args, dict):  # not a call BFCL could decode: the reply reads as text
                return Message("assistant", json.dumps(result, ensure_ascii=False))
        if not isinstance(args, dict):
            raise DataError(f"{where}: result[{i}][{name!r}] must be the arguments: an object or its JSON text")
        calls.append(ToolCall(new_call_id(), name, args))
    return Message("assistant", "", calls)


def decoded_calls(message: Message, functions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The message's tool calls as BFCL's [{name: arguments}], names offered as api_name() read back."""
    names = {str(f.get("name")) for f in functions}
    back = {api_name(n): n for n in names if api_name(n) not in names}
    return [{back.get(c.tool_name, c.tool_name): c.arguments} for c in message.tool_calls]


# ---- the task -------------------------------------------------------------------------------------


class BFCLTask:
    """The BFCL single-turn categories (see the module docstring)."""

    name = "bfcl"
    kind = "generate"

    def __init__(self, options: TaskOptions | None = None):
        self.options = options or TaskOptions()
        self.categories = resolve_categories(self.options.categories)
        if self.options.limit is not None and self.options.limit < 1:
            raise HerdError("--limit must be at least 1", "limit")

    def load(self) -> list[Sample]:
        root = Path(self.options.data) if self.options.data else default_data_dir()
        if not root.is_dir():
            raise HerdError(f"{root}: the bfcl task reads a directory of BFCL data files (--data DIR)", "data")
        samples: list[Sample] = []
        for category in self.categories:
            path = _category_file(root, category)
            entries = _rows(path, self.options.limit)
            answers: list[tuple[str, Any]] = []
            if is_ast_category(category):
                answer_path = path.parent / "possible_answer" / path.name
                if not answer_path.is_file():
                    raise HerdError(f"{answer_path}: the possible answers for {category} are missing", "data")
                answers = list(read_jsonl(answer_path))[:len(entries)]
                if len(answers) < len(entries):
                    raise DataError(f"{answer_path}: {len(answers)} answers for {len(entries)} entries")
            for i, (where, row) in enumerate(entries):
                _check_entry(where, row, category)
                data = {"question": row["question"], "function": row["function"]}
                if answers:
                    data["ground_truth"] = _check_answer(answers[i][0], answers[i][1], row["id"])
                samples.append(Sample(row["id"], data, category))
        return samples

    def chat_request(self, sample: Sample) -> ChatRequest:
        """The item's first turn and its functions as tools, tool_choice auto."""
        category = sample.category or ""
        tools = [to_tool(f, category) for f in sample.data["function"]]
        return ChatRequest(to_messages(sample.data["question"][0], param="question[0]"), tools, "auto")

    def read_sample(self, record: dict[str, Any], where: str) -> tuple[str, Output]:
        if not isinstance(record.get("id"), str) or "result" not in record:
            raise DataError(f'{where}: a bfcl sample is {{"id": str, "result": [{{name: arguments}}, ...] | str}}')
        return record["id"], Output(read_result(record["result"], where))

    def score_one(self, sample: Sample, output: Output) -> Score:
        """One output's verdict: {"accuracy": 1.0 | 0.0} with the checker's reason in the details."""
        category = sample.category or ""
        if output.error:
            return Score({"accuracy": 0.0}, {"error_type": "request_failed", "error": output.error})
        calls = decoded_calls(output.message, sample.data["function"])
        result = check(sample.data["function"], calls, sample.data.get("ground_truth"), category)
        details: dict[str, Any] = {"calls": calls}
        if not result.valid:
            details.update(error_type=result.error_type, error=result.message)
        return Score({"accuracy": 1.0 if result.valid else 0.0}, details)

    async def score(self, pairs: Sequence[tuple[Sample, Output]]) -> list[Score]:
        return [self.score_one(s, o) for s, o in pairs]

    def aggregate(self, samples: Sequence[Sample], scores: Sequence[Sequence[Score]]) -> dict[str, Metric]:
        per_category: dict[str, list[float]] = {}
        for sample, item in zip(samples, scores):
            if item:
                value = sum(s.values["accuracy"] for s in item) / len(item)
                per_category.setdefault(sample.category or "", []).append(value)
        metrics = {"accuracy": mean_metric([v for vs in per_category.values() for v in vs])}
        by_name = {c: mean_metric(per_category[c]) for c in [*CATEGORIES, *sorted(per_category)]
                   if c in per_category}
        metrics.update({f"accuracy/{c}": m for c, m in by_name.items()})
        metrics.update(bfcl_summaries(by_name))
        return metrics


def bfcl_summaries(by_category: Mapping[str, Metric]) -> dict[str, Metric]:
    """BFCL's summary scores from per-category accuracies, each only when all of its categories ran."""
    out: dict[str, Metric] = {}

    def have(names: Sequence[str]) -> bool:
        return all(n in by_category for n in names)

    if have(CATEGORIES[:3] + _NON_LIVE_AST):
        simple = sum(by_category[c].value for c in CATEGORIES[:3]) / 3
        parts = [simple] + [by_category[c].value for c in _NON_LIVE_AST]
        out["non_live_ast"] = Metric(sum(parts) / 4, None, sum(by_category[c].n for c in CATEGORIES[:6]))
    if have(_LIVE_AST):
        n = sum(by_category[c].n for c in _LIVE_AST)
        out["live_ast"] = Metric(sum(by_category[c].value * by_category[c].n for c in _LIVE_AST) / n, None, n)
    if have(("irrelevance", "live_irrelevance")):
        pair = [by_category["irrelevance"], by_category["live_irrelevance"]]
        out["irrelevance_detection"] = Metric((pair[0].value + pair[1].value) / 2, None, pair[0].n + pair[1].n)
    return out
