"""BFCL's AST matching rules (Berkeley Function Calling Leaderboard), written for Herd: is a model's list
of calls an acceptable answer to one item?

    result = check(functions, calls, answers, "parallel")   # CheckResult(valid, error_type, message)

`calls` is what the model did, in BFCL's decoded form `[{name: {param: value}}]`; `answers` is the item's
possible answer `[{name: {param: [acceptable values]}}]`, one entry per expected call, where "" among the
acceptable values means the param may be left out; `functions` are the item's function docs.

The rules, as BFCL documents and applies them:
- simple: exactly one call; multiple: as many calls as expected (one), of the expected function;
  parallel / parallel_multiple: as many calls as expected, matched to the expected ones in any order;
  irrelevance: no call is right; relevance: any call is right.
- a call: the expected name; every required param present; no param that the function doc or the
  answer does not name; every answer param left out has "" among its values.
- a value: of the declared type (Python: an int is accepted for a float) or of the type of the
  answer's values (the answer names a variable, compared as is); strings compare normalised (lowercase,
  without spaces and `,./-_*^`, `'` read as `"`); lists element by element (element types checked,
  string elements normalised); dicts key by key against the answer's {key: [values]}; others by ==.
- Java and JavaScript: every value is source text (a JSON string), read by the declared type before the
  same checks: `5`, `5L`, `1.5f`, `true`, `new int[]{1, 2}`, `new ArrayList<>(Arrays.asList(...))`,
  `new HashMap<>() {{ put("k", v); }}`; `'text'`, `[1, 2]`, `new Array(...)`, `{k: v}`, `5n`. Text
  that does not read as the type stays text (a variable name).

Where we differ from bfcl-eval's checker (its regex readers and a greedy match), on purpose:
- Java/JavaScript collections are split at top-level commas (quotes and brackets respected): BFCL cuts a
  JavaScript object at its first `}` and splits object entries at commas inside arrays, so
  `{a: ["x", "y"], b: 1}` reads wrongly there.
- Java string elements: BFCL keeps the quotes of `new String[]{"a"}` (reads `"a"` with its quotes, so
  only the unquoted `new String[]{a}` passes) and drops the first and last character of unquoted
  ArrayList<String> elements; we read a quoted literal as its text and anything else as written. BFCL
  reads `any` elements (`ArrayList<Object>`) as text (`42`, `"x"` with quotes), so no answer with a
  number or string there can pass; we read them as Java literals.
- Java `char` is read without its quotes (BFCL's char pattern never matches: text as written).
- A JavaScript object value in quotes stays a string (BFCL strips the quotes, then reads a number:
  `{n: "5"}` gives 5).
- An answer value that is not a list (simple_java_64's {"format": "epoch_millis"}) is one acceptable
  value; BFCL reads the string's characters (only an empty HashMap passes there).
- Parallel calls are matched as a bipartite matching; BFCL matches greedily (the first call that fits
  each expected call), so it can fail a set that has a valid assignment.
- A declared type BFCL cannot read (Set, Queue, Stack, Hashtable, a type missing from its tables) is
  read as text; bfcl-eval raises there. Values are read without surrounding whitespace, and numbers
  whole (BFCL's patterns also take a trailing newline, and fail on surrounding spaces).
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PYTHON, JAVA, JAVASCRIPT = "python", "java", "javascript"

_PY_TYPES: dict[str, type] = {"string": str, "integer": int, "float": float, "boolean": bool, "array": list,
                              "tuple": list, "dict": dict, "any": str}
_JAVA_TYPES: dict[str, type] = {"byte": int, "short": int, "integer": int, "long": int, "float": float,
                                "double": float, "boolean": bool, "char": str, "String": str, "any": str,
                                "Array": list, "ArrayList": list, "Queue": list, "Stack": list, "Set": set,
                                "HashMap": dict, "Hashtable": dict}
_JS_TYPES: dict[str, type] = {"String": str, "any": str, "integer": int, "Bigint": int, "float": float,
                              "Boolean": bool, "dict": dict, "array": list}
_LIST_TYPES = {PYTHON: ("array", "tuple"), JAVA: ("Array", "ArrayList"), JAVASCRIPT: ("array",)}
_DROPPED = re.compile(r"[ ,./\-_*^]")  # what BFCL's string normalisation removes


@dataclass(frozen=True)
class CheckResult:
    """The verdict on one item: valid, or why not (a short error type and a message)."""

    valid: bool
    error_type: str = ""
    message: str = ""


_OK = CheckResult(True)


def _fail(error_type: str, message: str) -> CheckResult:
    return CheckResult(False, error_type, message)


def language_of(category: str) -> str:
    """The language whose type rules apply to a BFCL category (simple_java, simple_javascript, else Python)."""
    if "javascript" in category:
        return JAVASCRIPT
    return JAVA if "java" in category else PYTHON


def normalize(text: str) -> str:
    """BFCL's string comparison form: lowercase, without spaces and ,./-_*^, single quotes as double."""
    return _DROPPED.sub("", text).lower().replace("'", '"')


# ---- reading Java / JavaScript source text --------------------------------------------------------


def _split(text: str, sep: str = ",", limit: int = -1) -> list[str]:
    """`text` split at `sep` outside quotes and brackets, parts stripped (at most `limit` splits)."""
    parts, depth, quote, start, i = [], 0, "", 0, 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'`":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0 and limit != 0:
            parts.append(text[start:i].strip())
            start, limit = i + 1, limit - 1
        i += 1
    parts.append(text[start:].strip())
    return parts


def _items(body: str) -> list[str]:
    """The comma-separated items of a collection body ("" gives none; a trailing comma is allowed)."""
    parts = _split(body)
    return parts[:-1] if parts and parts[-1] == "" else parts


def _unquote(text: str, quotes: str) -> str | None:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in quotes:
        return text[1:-1]
    return None


def _number(text: str) -> Any:
    """An int or a float as Python reads the text, else None."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None


_INT = r"-?\d+"
_DECIMAL = r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?"
_JAVA_ARRAY = re.compile(r"new\s+[\w.]+\s*\[\s*\]\s*\{(?P<body>.*)\}", re.DOTALL)
_JAVA_AS_LIST = re.compile(r"new\s+ArrayList\s*<[^>]*>\s*\(\s*Arrays\.asList\((?P<body>.*)\)\s*\)", re.DOTALL)
_JAVA_ADDS = re.compile(r"new\s+ArrayList\s*<[^>]*>\s*\(\s*\)\s*\{\s*\{(?P<body>.*)\}\s*\}", re.DOTALL)
_JAVA_EMPTY_LIST = re.compile(r"new\s+ArrayList\s*<[^>]*>\s*\(\s*\)")
_JAVA_MAP = re.compile(r"new\s+HashMap\s*<.*?>\s*\(\s*\)\s*(?:\{\s*\{?(?P<body>.*?)\}?\s*\})?", re.DOTALL)
_CALL = re.compile(r"(?P<name>\w+)\s*\((?P<args>.*)\)", re.DOTALL)


def _java_literal(text: str) -> Any:
    """A Java literal of unknown type: boolean, string or char, long, float, number; else the text."""
    if text in ("true", "false"):
        return text == "true"
    quoted = _unquote(text, "\"'")
    if quoted is not None:
        return quoted
    if re.fullmatch(_INT + "[lL]", text):
        return int(text[:-1])
    if re.fullmatch(_DECIMAL + "[fF]", text):
        return float(text[:-1])
    number = _number(text)
    return text if number is None else number


def _java_element(text: str, kind: str | None) -> Any:
    if kind in ("String", "char"):
        quoted = _unquote(text, "\"'")
        return text if quoted is None else quoted
    return _java_literal(text) if kind in (None, "any") else java_value(text, kind)


def _java_calls(body: str, name: str) -> list[list[str]] | None:
    """The argument lists of `name(...)` statements in a `{{ ...; ...; }}` body, None if another appears."""
    out = []
    for statement in _split(body, ";"):
        if not statement:
            continue
        m = _CALL.fullmatch(statement)
        if m is None or m["name"] != name:
            return None
        out.append(_items(m["args"]))
    return out


def java_value(text: str, kind: str, element: str | None = None) -> Any:
    """Java source text read as the declared BFCL type (`element`: a collection's item type); text that
    is not of the type is returned as is."""
    text = text.strip()
    if kind in ("byte", "short", "integer"):
        return int(text) if re.fullmatch(_INT, text) else text
    if kind == "long":
        return int(text[:-1]) if re.fullmatch(_INT + "[lL]", text) else text
    if kind == "float":
        return float(text[:-1]) if re.fullmatch(_DECIMAL + "[fF]", text) else text
    if kind == "double":
        return float(text) if re.fullmatch(_DECIMAL, text) else text
    if kind == "boolean":
        return text == "true" if text in ("true", "false") else text
    if kind == "char":
        quoted = _unquote(text, "'")
        return text if quoted is None or len(quoted) != 1 else quoted
    if kind == "Array" and (m := _JAVA_ARRAY.fullmatch(text)):
        return [_java_element(e, element) for e in _items(m["body"])]
    if kind == "ArrayList":
        if m := _JAVA_AS_LIST.fullmatch(text):
            return [_java_element(e, element) for e in _items(m["body"])]
        if (m := _JAVA_ADDS.fullmatch(text)) and (adds := _java_calls(m["body"], "add")) is not None \
                and all(len(a) == 1 for a in adds):
            return [_java_element(a[0], element) for a in adds]
        if _JAVA_EMPTY_LIST.fullmatch(text):
            return []
    if kind == "HashMap" and (m := _JAVA_MAP.fullmatch(text)):
        puts = _java_calls(m["body"] or "", "put")
        if puts is not None and all(len(p) == 2 for p in puts):
            return {str(_java_literal(k)): _java_literal(v) for k, v in puts}
    return text  # String, any, and what is not of its type (a variable, say)


def _js_literal(text: str) -> Any:
    """A JavaScript literal of unknown type: boolean, string, array, object, number; else the text."""
    if text in ("true", "false"):
        return text == "true"
    quoted = _unquote(text, "\"'`")
    if quoted is not None:
        return quoted
    if text.startswith(("[", "new Array(")):
        return js_value(text, "array")
    if text.startswith("{"):
        return js_value(text, "dict")
    number = _number(text)
    return text if number is None else number


def _js_element(text: str, kind: str | None) -> Any:
    if kind in (None, "any") or kind not in _JS_TYPES or text.startswith(("[", "{")):
        return _js_literal(text)
    return js_value(text, kind)


def js_value(text: str, kind: str, element: str | None = None) -> Any:
    """JavaScript source text read as the declared BFCL type; text that is not of the type is returned
    as is."""
    text = text.strip()
    if kind == "String":
        quoted = _unquote(text, "\"'`")
        return text if quoted is None else quoted
    if kind == "integer":
        return int(text) if re.fullmatch(_INT, text) else text
    if kind == "float":
        return float(text) if re.fullmatch(r"-?\d+(?:\.\d+)?", text) else text
    if kind == "Bigint":
        return int(text[:-1]) if re.fullmatch(_INT + "n", text) else text
    if kind == "Boolean":
        return text == "true" if text in ("true", "false") else text
    if kind == "array":
        m = re.fullmatch(r"\[(?P<body>.*)\]|new\s+Array\((?P<args>.*)\)", text, re.DOTALL)
        if m:
            return [_js_element(e, element) for e in _items(m["body"] if m["body"] is not None else m["args"])]
    if kind == "dict" and (m := re.fullmatch(r"\{(?P<body>.*)\}", text, re.DOTALL)):
        out = {}
        for entry in _items(m["body"]):
            key_value = _split(entry, ":", limit=1)
            if len(key_value) != 2:
                return text
            key = _unquote(key_value[0], "\"'`")
            out[key_value[0] if key is None else key] = _js_literal(key_value[1])
        return out
    return text


# ---- matching values ------------------------------------------------------------------------------


def _as_list(allowed: Any) -> list[Any]:
    return allowed if isinstance(allowed, list) else [allowed]


def _norm(value: Any) -> Any:
    return normalize(value) if type(value) is str else value


def _first_type(allowed: Sequence[Any]) -> type | None:
    """The type of the answer's values (the first that is not the "may be omitted" marker)."""
    return next((type(a) for a in allowed if a != ""), None)


def _element_types_ok(value: list, allowed: Sequence[Any], element: type) -> bool:
    """Some answer fits every element's type: the element type, or the type of that answer's elements."""
    for answer in allowed:
        if type(answer) is not list:
            return True  # a variable or the omit marker: no element types to hold the value to
        answer_type = _first_type(answer)
        if all(type(v) is element or type(v) is answer_type for v in value):
            return True
    return False


def _dict_matches(value: Mapping[str, Any], answer: Any) -> bool:
    if not isinstance(answer, Mapping):
        return False
    for key, v in value.items():
        if key not in answer or _norm(v) not in [_norm(a) for a in _as_list(answer[key])]:
            return False
    return all(key in value or "" in _as_list(allowed) for key, allowed in answer.items())


def _list_matches(value: list, allowed: Sequence[Any]) -> bool:
    mine = [_norm(v) for v in value]
    for answer in allowed:
        if answer == "":
            answer = []  # the omit marker also stands for an empty list
        if isinstance(answer, list) and mine == [_norm(a) for a in answer]:
            return True
    return False


def _dict_list_matches(value: list, allowed: Sequence[Any]) -> bool:
    for answer in allowed:
        if answer == "":
            answer = []
        if isinstance(answer, list) and len(answer) == len(value) and \
                all(isinstance(v, Mapping) and _dict_matches(v, a) for v, a in zip(value, answer)):
            return True
    return False


def _check_value(param: str, value: Any, allowed: Sequence[Any], kind: type, element: type | None) -> CheckResult:
    answer_type = _first_type(allowed)
    variable = answer_type is not None and answer_type is not kind
    if type(value) is kind:
        if element is not None and not _element_types_ok(value, allowed, element):
            return _fail("type_error:nested", f"{param}: the elements of {value!r} are not {element.__name__}")
    elif answer_type is not None and type(value) is answer_type:
        variable = True
    else:
        return _fail("type_error:simple", f"{param}: expected {kind.__name__}, got {type(value).__name__} "
                                          f"({value!r})")
    if variable:
        matched = value in allowed
    elif kind is dict:
        matched = any(_dict_matches(value, a) for a in allowed if a != "")
    elif kind is list and element is dict:
        matched = _dict_list_matches(value, allowed)
    elif kind is str:
        matched = normalize(value) in [normalize(a) for a in allowed if type(a) is str]
    elif kind is list:
        matched = _list_matches(value, allowed)
    else:
        matched = value in allowed
    return _OK if matched else _fail("value_error", f"{param}: {value!r} is not one of {list(allowed)!r}")


def _declared(schema: Mapping[str, Any], language: str) -> tuple[str, type, str | None, type | None]:
    """(type name, Python type, element type name, element Python type) of a param's doc."""
    table = {PYTHON: _PY_TYPES, JAVA: _JAVA_TYPES, JAVASCRIPT: _JS_TYPES}[language]
    name = schema.get("type")
    kind = table.get(name, str)  # a type the language table lacks: read as text
    items = schema.get("items")
    element = items.get("type") if name in _LIST_TYPES[language] and isinstance(items, Mapping) else None
    if element == "any" and language != PYTHON:
        return name, kind, element, None  # read as literals of any type: no element type to hold them to
    return name, kind, element, None if element is None else table.get(element, str)


def check_call(function: Mapping[str, Any], call: Mapping[str, Any], answer: Mapping[str, Any],
               language: str = PYTHON) -> CheckResult:
    """One call {name: {param: value}} against one expected call {name: {param: [values]}}."""
    (name, expected), = answer.items()
    if name not in call or len(call) != 1:
        return _fail("wrong_func_name", f"expected a call of {name!r}, got {list(call)!r}")
    params = call[name]
    if not isinstance(params, Mapping):
        return _fail("bad_format", f"{name}: the arguments are not an object")
    doc = function.get("parameters") or {}
    props = doc.get("properties") or {}
    for param in doc.get("required") or []:
        if param not in params:
            return _fail("missing_required", f"{name}: missing required parameter {param!r}")
    for param, value in params.items():
        if param not in props or param not in expected:
            return _fail("unexpected_param", f"{name}: unexpected parameter {param!r}")
        type_name, kind, element_name, element = _declared(props[param], language)
        if language != PYTHON:
            if type(value) is not str:
                return _fail(f"type_error:{language}", f"{name}: {param!r} must be {language} source text, "
                                                       f"got {type(value).__name__}")
            read = java_value if language == JAVA else js_value
            value = read(value, type_name if isinstance(type_name, str) else "any", element_name)
        elif type_name == "float" and type(value) is int:
            value = float(value)  # Python would take an int for a float
        result = _check_value(param, value, _as_list(expected[param]), kind, element)
        if not result.valid:
            return CheckResult(False, result.error_type, f"{name}: {result.message}")
    for param, allowed in expected.items():
        if param not in params and "" not in _as_list(allowed):
            return _fail("missing_optional", f"{name}: missing parameter {param!r} (the answer needs it)")
    return _OK


def _function(functions: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any]:
    return next((f for f in functions if f.get("name") == name), {"name": name, "parameters": {}})


def _assignable(ok: list[list[bool]]) -> bool:
    """Whether each expected call i can have its own call j with ok[i][j] (a bipartite matching, by
    augmenting paths: the sets are small)."""
    owner: dict[int, int] = {}  # call -> the expected call it is given to

    def place(i: int, seen: set[int]) -> bool:
        for j, fits in enumerate(ok[i]):
            if fits and j not in seen:
                seen.add(j)
                if j not in owner or place(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return all(place(i, set()) for i in range(len(ok)))


def check(functions: Sequence[Mapping[str, Any]], calls: Sequence[Mapping[str, Any]],
          answers: Sequence[Mapping[str, Any]] | None, category: str) -> CheckResult:
    """A model's calls for one item of a BFCL category against the item's possible answer (None for the
    relevance / irrelevance categories)."""
    if "irrelevance" in category:
        return _fail("irrelevance", f"{len(calls)} call(s) made; none was wanted") if calls else _OK
    if "relevance" in category:
        return _OK if calls else _fail("relevance", "no call made; one was wanted")
    if not all(isinstance(c, Mapping) and len(c) == 1 for c in calls):
        return _fail("bad_format", "every call must be {name: {arguments}}")
    if not answers:
        return _fail("no_answer", f"the item has no possible answer to check {category} calls against")
    language = language_of(category)
    expected = 1 if "parallel" not in category and "multiple" not in category else len(answers)
    if len(calls) != expected:
        return _fail("wrong_count", f"expected {expected} call(s), got {len(calls)}")
    if "parallel" not in category:
        answer = answers[0]
        return check_call(_function(functions, next(iter(answer))), calls[0], answer, language)
    results = [[check_call(_function(functions, next(iter(a))), c, a, language) for c in calls] for a in answers]
    if _assignable([[r.valid for r in row] for row in results]):
        return _OK
    for i, row in enumerate(results):
        if not any(r.valid for r in row):
            reasons = "; ".join(r.message for r in row)
            return _fail("parallel:no_match", f"no call matches expected call {i} ({next(iter(answers[i]))}): "
                                              f"{reasons}")
    return _fail("parallel:no_match", "the calls fit the expected calls only by using one call twice")
