"""The offline fallback of `wolfram_alpha`: what sympy and pint compute exactly — arithmetic, algebra
(solve, simplify, factor, expand), calculus (integrate, differentiate, limits) and unit conversion.

Queries are parsed by a small grammar ("integrate x^2 sin(x) dx", "solve x^2-4=0", "convert 5 miles to
km", "limit sin(x)/x as x -> 0", "2^100"). sympy's parser evaluates Python, so the text is checked first:
only digits, operators, brackets and an allowlist of names (functions, constants, one- or two-letter
variables) get through; anything else is refused naming the word. herd/tools/wolfram.py runs this module
in a child process (`python -m herd.tools.offline_math`, the query on stdin, one JSON object on stdout)
with a time and memory limit, so `10^10^10` costs a timeout, not the server.
"""
from __future__ import annotations

import json
import re
import sys
from typing import Any

NOTE = "computed offline by sympy; no Wolfram|Alpha key"
UNITS_NOTE = "converted offline by pint; no Wolfram|Alpha key"
MAX_QUERY = 500


class CannotCompute(Exception):
    """The query is not something the offline fallback can do exactly (the message says why)."""


# ---- checking and parsing expressions ------------------------------------------------------

FUNCTIONS = {
    "sin": "sin", "cos": "cos", "tan": "tan", "cot": "cot", "sec": "sec", "csc": "csc",
    "asin": "asin", "acos": "acos", "atan": "atan", "acot": "acot", "arcsin": "asin", "arccos": "acos",
    "arctan": "atan", "sinh": "sinh", "cosh": "cosh", "tanh": "tanh", "asinh": "asinh", "acosh": "acosh",
    "atanh": "atanh", "exp": "exp", "log": "log", "ln": "log", "sqrt": "sqrt", "cbrt": "cbrt", "abs": "Abs",
    "factorial": "factorial", "gamma": "gamma", "floor": "floor", "ceil": "ceiling", "ceiling": "ceiling",
    "sign": "sign", "erf": "erf", "binomial": "binomial", "gcd": "gcd", "lcm": "lcm", "max": "Max", "min": "Min",
    "re": "re", "im": "im", "mod": "Mod",
}
CONSTANTS = {"pi": "pi", "e": "E", "E": "E", "I": "I", "oo": "oo", "inf": "oo", "infinity": "oo"}
GREEK = ("alpha", "beta", "theta", "phi", "omega", "tau", "mu", "sigma", "rho", "delta")
_REPLACE = {"π": "pi", "×": "*", "÷": "/", "−": "-", "²": "^2", "³": "^3", "√": "sqrt", "∞": "oo", "·": "*"}
_ALLOWED = re.compile(r"^[A-Za-z0-9\s+\-*/^().,!=<>]*$")
_BAD_DOT = re.compile(r"(?<![0-9])\.|\.(?![0-9])")  # a dot only inside a number: no attribute access


def clean(text: str) -> str:
    """The query with typographic symbols replaced; CannotCompute when a character could not be math."""
    for a, b in _REPLACE.items():
        text = text.replace(a, b)
    text = " ".join(text.split())
    if len(text) > MAX_QUERY:
        raise CannotCompute(f"the query is too long ({len(text)} characters; at most {MAX_QUERY})")
    if not _ALLOWED.match(text):
        bad = sorted({c for c in text if not _ALLOWED.match(c)})
        raise CannotCompute(f"cannot compute offline: unexpected character(s) {' '.join(map(repr, bad))}")
    if _BAD_DOT.search(text):
        raise CannotCompute("cannot compute offline: '.' may only appear inside a number")
    return text


def _names() -> dict[str, Any]:
    import sympy

    table: dict[str, Any] = {k: getattr(sympy, v) for k, v in {**FUNCTIONS, **CONSTANTS}.items()}
    table.update({g: sympy.Symbol(g) for g in GREEK})
    return table


def parse(text: str) -> Any:
    """A sympy expression from checked text (implicit multiplication and ^ for powers, as people write)."""
    import sympy
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    text = clean(text)
    if not text.strip():
        raise CannotCompute("cannot compute offline: nothing to compute")
    names = _names()
    for word in re.findall(r"[A-Za-z]+", text):
        if word not in names and len(word) > 2:
            raise CannotCompute(f"cannot compute offline: unknown name {word!r} (the offline fallback does "
                                "arithmetic, algebra, calculus and unit conversion)")
    local = dict(names)
    for word in re.findall(r"[A-Za-z]+", text):
        if word not in local and len(word) == 1:
            local[word] = sympy.Symbol(word)
    # eval sees no builtins: only the names above and sympy's number and symbol constructors
    glob = {"__builtins__": {}, "Integer": sympy.Integer, "Float": sympy.Float, "Rational": sympy.Rational,
            "Symbol": sympy.Symbol, "factorial": sympy.factorial}
    transformations = (*standard_transformations, implicit_multiplication_application, convert_xor)
    try:
        return parse_expr(text, local_dict=local, global_dict=glob, transformations=transformations)
    except Exception as e:  # noqa: BLE001 - a syntax sympy cannot read is the query's problem
        raise CannotCompute(f"cannot compute offline: cannot read {text!r} as math ({type(e).__name__})") from None


def _variable(expr: Any, given: str | None) -> Any:
    import sympy

    if given:
        return sympy.Symbol(given)
    free = sorted(expr.free_symbols, key=str)
    if len(free) == 1:
        return free[0]
    if sympy.Symbol("x") in free:
        return sympy.Symbol("x")
    raise CannotCompute("cannot compute offline: say which variable (e.g. 'dx' or 'with respect to x')")


# ---- the grammar -----------------------------------------------------------------------------

_LEAD = re.compile(r"^(?:what\s+is|what's|compute|calculate|evaluate|find|please)\s+(?:the\s+)?", re.IGNORECASE)
_INTEGRATE = re.compile(r"^(?:integrate|integral\s+of|integral|antiderivative\s+of|antiderivative|∫)\s+(?P<rest>.+)$",
                        re.IGNORECASE)
_BOUNDS = re.compile(r"\s+(?:from|between)\s+(?P<a>.+?)\s+(?:to|and)\s+(?P<b>.+)$", re.IGNORECASE)
_WRT = re.compile(r"\s+(?:with\s+respect\s+to|wrt)\s+(?P<var>[A-Za-z])$", re.IGNORECASE)
_DIFF = re.compile(r"^(?:differentiate|derivative\s+of|derivative|d/d(?P<v>[A-Za-z]))\s+(?P<rest>.+)$", re.IGNORECASE)
_LIMIT = re.compile(r"^limit(?:\s+of)?\s+(?P<expr>.+?)\s+as\s+(?P<var>[A-Za-z])\s*(?:->|→|approaches|tends\s+to|"
                    r"goes\s+to)\s*(?P<point>.+)$", re.IGNORECASE)
_SOLVE = re.compile(r"^(?:solve|roots?\s+of|zeros?\s+of)\s+(?P<eqs>.+?)(?:\s+for\s+(?P<vars>[A-Za-z](?:\s*,\s*"
                    r"[A-Za-z])*))?$", re.IGNORECASE)
_REWRITE = re.compile(r"^(?P<op>simplify|factor|expand)\s+(?P<expr>.+)$", re.IGNORECASE)
_CONVERT = re.compile(r"^(?:convert\s+)?(?P<num>[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?)\s*(?P<unit>[^\d].*?)\s+"
                      r"(?:to|in|into|as)\s+(?P<target>.+)$", re.IGNORECASE)


def _strip_dvar(rest: str) -> tuple[str, str | None]:
    """'x^2 sin(x) dx' -> ('x^2 sin(x)', 'x'); also 'with respect to x'."""
    m = _WRT.search(rest)
    if m:
        return rest[:m.start()], m.group("var")
    m = re.search(r"\s*\bd(?P<var>[A-Za-z])$", rest)
    if m:
        return rest[:m.start()], m.group("var")
    return rest, None


def integrate(rest: str) -> dict[str, Any]:
    import sympy

    bounds = _BOUNDS.search(rest)
    if bounds:
        rest = rest[:bounds.start()]
    text, var = _strip_dvar(rest.strip())
    expr = parse(text)
    x = _variable(expr, var)
    if bounds:
        a, b = parse(bounds.group("a")), parse(bounds.group("b"))
        result = sympy.integrate(expr, (x, a, b))
        shown = f"integral of {expr} d{x} from {a} to {b}"
    else:
        result = sympy.integrate(expr, x)
        shown = f"integral of {expr} d{x}"
    if result.has(sympy.Integral):
        raise CannotCompute(f"cannot compute offline: sympy found no closed form for the {shown}")
    text = f"{shown} = {result}" + ("" if bounds else " + C")
    return _answer(shown, result, text)


def differentiate(rest: str, var: str | None) -> dict[str, Any]:
    import sympy

    text, given = _strip_dvar(rest.strip())
    expr = parse(text)
    x = _variable(expr, var or given)
    result = sympy.diff(expr, x)
    shown = f"d/d{x} {expr}"
    return _answer(shown, result, f"{shown} = {result}")


def limit(m: re.Match[str]) -> dict[str, Any]:
    import sympy

    expr, x = parse(m.group("expr")), sympy.Symbol(m.group("var"))
    point_text = m.group("point").strip()
    direction = "+-"
    if point_text.endswith(("+", "-")) and len(point_text) > 1:
        direction, point_text = point_text[-1], point_text[:-1]
    point = parse(point_text)
    result = sympy.limit(expr, x, point, dir=direction)
    shown = f"limit of {expr} as {x} -> {point}{'' if direction == '+-' else direction}"
    return _answer(shown, result, f"{shown} = {result}")


def _equation(text: str) -> Any:
    import sympy

    if text.count("=") > 1:
        raise CannotCompute(f"cannot compute offline: {text!r} has more than one '='")
    if "=" in text:
        lhs, rhs = text.split("=")
        return sympy.Eq(parse(lhs), parse(rhs))
    return sympy.Eq(parse(text), 0)


def solve(m: re.Match[str]) -> dict[str, Any]:
    import sympy

    parts = [p for p in re.split(r"\s*(?:,|\band\b)\s*", m.group("eqs")) if p.strip()]
    eqs = [_equation(p) for p in parts]
    if m.group("vars"):
        xs = [sympy.Symbol(v.strip()) for v in m.group("vars").split(",")]
    else:
        xs = sorted(set().union(*(e.free_symbols for e in eqs)), key=str)
    if not xs:
        raise CannotCompute("cannot compute offline: there is no unknown to solve for")
    solutions = sympy.solve(eqs, xs, dict=True)
    shown = "solve " + ", ".join(f"{e.lhs} = {e.rhs}" for e in eqs) + " for " + ", ".join(map(str, xs))
    if not solutions:
        return {"input": shown, "result": "no solution", "text": f"{shown}: no solution", "solutions": []}
    rows = [", ".join(f"{k} = {v}" for k, v in s.items()) for s in solutions]
    return {"input": shown, "result": "; ".join(rows), "text": f"{shown}:\n" + "\n".join(rows),
            "solutions": [{str(k): str(v) for k, v in s.items()} for s in solutions]}


def rewrite(op: str, text: str) -> dict[str, Any]:
    import sympy

    expr = parse(text)
    result = getattr(sympy, op.lower())(expr)
    shown = f"{op.lower()} {expr}"
    return _answer(shown, result, f"{shown} = {result}")


def arithmetic(text: str) -> dict[str, Any]:
    import sympy

    expr = parse(text)
    result = sympy.simplify(expr) if expr.free_symbols else expr
    return _answer(str(text), result, f"{text} = {result}")


def _answer(shown: str, result: Any, text: str) -> dict[str, Any]:
    """The exact result, and a decimal approximation when the result is a number that is not an integer."""
    out: dict[str, Any] = {"input": shown, "result": str(result), "text": text}
    if getattr(result, "is_number", False) and not getattr(result, "is_Integer", False):
        try:
            approx = result.evalf(15)
            if approx.is_real or approx.is_complex:
                out["decimal"] = str(approx)
                out["text"] += f" (about {approx})"
        except Exception:  # noqa: BLE001, S110 - the exact result stands without an approximation
            pass
    return out


def convert(m: re.Match[str]) -> dict[str, Any]:
    import pint

    ureg = pint.UnitRegistry()
    value = float(m.group("num").replace(",", ""))
    unit, target = m.group("unit").strip(), m.group("target").strip()
    try:
        q = ureg.Quantity(value, _unit(unit)).to(_unit(target))
    except pint.errors.DimensionalityError as e:
        raise CannotCompute(f"cannot convert {unit} to {target}: {e}") from None
    except (pint.errors.UndefinedUnitError, AttributeError, ValueError, TypeError) as e:
        raise CannotCompute(f"cannot convert offline: unknown unit in {unit!r} or {target!r} ({e})") from None
    shown = f"convert {m.group('num')} {unit} to {target}"
    text = f"{m.group('num')} {unit} = {q.magnitude:.10g} {q.units}"
    return {"input": shown, "result": f"{q.magnitude:.10g} {q.units}", "text": text, "magnitude": q.magnitude,
            "unit": str(q.units), "note": UNITS_NOTE}


_TEMPERATURES = {"fahrenheit": "degF", "celsius": "degC", "kelvin": "kelvin", "f": "degF", "c": "degC",
                 "degrees fahrenheit": "degF", "degrees celsius": "degC", "°f": "degF", "°c": "degC"}


def _unit(text: str) -> str:
    t = text.lower().strip()
    return _TEMPERATURES.get(t, text.strip())


def compute(query: str) -> dict[str, Any]:
    """The answer to one query: {input, result, text, note, ...}; CannotCompute when it is not math."""
    q = _LEAD.sub("", " ".join(query.split())).rstrip("?").strip()
    if not q:
        raise CannotCompute("the query is empty")
    if len(q) > MAX_QUERY:
        raise CannotCompute(f"the query is too long ({len(q)} characters; at most {MAX_QUERY})")
    for pattern, run in ((_LIMIT, limit), (_SOLVE, solve)):
        m = pattern.match(q)
        if m:
            return {**run(m), "note": NOTE}
    m = _INTEGRATE.match(q)
    if m:
        return {**integrate(m.group("rest")), "note": NOTE}
    m = _DIFF.match(q)
    if m:
        return {**differentiate(m.group("rest"), m.group("v")), "note": NOTE}
    m = _REWRITE.match(q)
    if m:
        return {**rewrite(m.group("op"), m.group("expr")), "note": NOTE}
    m = _CONVERT.match(q)
    if m:
        return convert(m)
    return {**arithmetic(q), "note": NOTE}


def _limit_memory(argv: list[str]) -> None:
    """`--memory BYTES`: cap this process's address space (and no core files) before sympy loads."""
    if "--memory" in argv and sys.platform != "win32":
        import resource

        limit = int(argv[argv.index("--memory") + 1])
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def main(argv: list[str] | None = None) -> int:
    """Child-process entry: the query on stdin, `{"ok": true, ...}` or `{"ok": false, "error"}` on stdout."""
    _limit_memory(sys.argv[1:] if argv is None else argv)
    query = sys.stdin.read(MAX_QUERY * 8)
    try:
        out = {"ok": True, **compute(query)}
    except CannotCompute as e:
        out = {"ok": False, "error": str(e)}
    except Exception as e:  # noqa: BLE001 - sympy's own failures are answers too
        out = {"ok": False, "error": f"cannot compute offline: {type(e).__name__}: {e}"[:500]}
    sys.stdout.write(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
