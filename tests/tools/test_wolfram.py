"""builtin::wolfram_alpha: the offline fallback (sympy / pint in a child process; answers checked with sympy,
not by their strings) and the v2 query API against a fake Wolfram|Alpha on loopback."""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sympy
from toolfakes import WOLFRAM_KEY, FakeAPI, wolfram

from herd.tools.builtin import ToolSettings, default_registry
from herd.tools.offline_math import CannotCompute, clean
from herd.tools.wolfram import WolframAlphaGroup

OFFLINE = "computed offline by sympy; no Wolfram|Alpha key"


def ask(query: str, group: WolframAlphaGroup | None = None):
    return asyncio.run((group or WolframAlphaGroup()).invoke("wolfram_alpha", {"query": query}))


def test_integral_is_an_antiderivative() -> None:
    r = ask("integrate x^2 sin(x) dx")
    assert r.ok, r.error_message
    assert OFFLINE in r.content and r.metadata["backend"] == "sympy"
    x = sympy.Symbol("x")
    antiderivative = sympy.sympify(r.metadata["result"])
    assert sympy.simplify(sympy.diff(antiderivative, x) - x**2 * sympy.sin(x)) == 0
    definite = ask("integral of x^2 from 0 to 3")
    assert sympy.sympify(definite.metadata["result"]) == 9


def test_solve_gives_both_roots() -> None:
    r = ask("solve x^2-4=0")
    assert r.ok and OFFLINE in r.content
    assert sorted(int(s["x"]) for s in r.metadata["solutions"]) == [-2, 2]
    system = ask("solve x + y = 3 and x - y = 1")
    assert system.metadata["solutions"] == [{"x": "2", "y": "1"}]


def test_unit_conversion_by_pint() -> None:
    r = ask("convert 5 miles to km")
    assert r.ok and "converted offline by pint; no Wolfram|Alpha key" in r.content
    assert r.metadata["unit"] == "kilometer" and r.metadata["magnitude"] == pytest.approx(8.04672)
    hot = ask("100 fahrenheit to celsius")
    assert hot.metadata["magnitude"] == pytest.approx(37.7777777, rel=1e-6)
    mismatch = ask("convert 5 kg to meters")
    assert not mismatch.ok and "cannot convert kg to meters" in mismatch.error_message


def test_exact_arithmetic_calculus_and_limits() -> None:
    assert int(ask("2^100").metadata["result"]) == 2**100
    assert ask("what is 3/4 + 1/4?").metadata["result"] == "1"
    x = sympy.Symbol("x")
    derivative = ask("derivative of x^3 sin(x)")
    assert sympy.simplify(sympy.sympify(derivative.metadata["result"]) - sympy.diff(x**3 * sympy.sin(x), x)) == 0
    assert ask("limit sin(x)/x as x -> 0").metadata["result"] == "1"
    assert ask("limit 1/x as x -> 0+").metadata["result"] == "oo"
    root2 = ask("sqrt(2)*3")
    assert float(root2.metadata["decimal"]) == pytest.approx(3 * 2**0.5)


def test_what_it_cannot_do_is_a_clear_error() -> None:
    r = ask("population of France")
    assert not r.ok and r.error_code == 2
    assert r.error_message.startswith("wolfram_alpha (offline, no Wolfram|Alpha key): cannot compute offline")
    assert "'population'" in r.error_message
    closed = ask("integrate sin(x)/log(x) dx")
    assert not closed.ok and "no closed form" in closed.error_message


def test_python_in_the_query_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    for query in (f"__import__('os').system('touch {marker}')", f"open({str(marker)!r}, 'w')",
                  "x.__class__", "exec(1)", "lambda x: x", "eval(1)"):
        r = ask(query)
        assert not r.ok, query
    assert not marker.exists()
    for text in ("a.b", "1 . 2", "x[0]", "x; y", "{x}"):
        with pytest.raises(CannotCompute):
            clean(text)


def test_a_runaway_computation_is_stopped() -> None:
    start = time.monotonic()
    r = ask("10^10^10", WolframAlphaGroup(offline_timeout=3))
    assert not r.ok and "longer than 3 s" in r.error_message
    assert time.monotonic() - start < 15


def test_the_api_gets_appid_and_json_output_and_its_pods_are_read() -> None:
    fake = FakeAPI(wolfram)
    try:
        group = WolframAlphaGroup(WOLFRAM_KEY, fake.url)
        assert group.provider_id == "wolfram-alpha"
        r = ask("meaning of life", group)
        (seen,) = fake.seen
        assert seen.path == "/v2/query"
        assert seen.query["appid"] == [WOLFRAM_KEY] and seen.query["output"] == ["json"]
        assert seen.query["input"] == ["meaning of life"]
        assert r.ok and r.content == "Input interpretation: meaning of life\nResult: 42"
        assert r.metadata["backend"] == "wolfram_alpha" and r.metadata["pods"][1] == {"title": "Result", "text": "42"}
        wrong = ask("x", WolframAlphaGroup("bad-appid", fake.url))
        assert not wrong.ok and wrong.error_message == "wolfram_alpha: error 1: Invalid appid"
        lost = ask("gibberish words", group)
        assert not lost.ok and "did not understand" in lost.error_message and "gibbon" in lost.error_message
    finally:
        fake.close()


def test_api_failures_are_error_results() -> None:
    broken = FakeAPI(lambda seen: (503, {"error": "maintenance"}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    try:
        r = ask("2+2", WolframAlphaGroup(WOLFRAM_KEY, broken.url))
        assert not r.ok and r.error_message.startswith("wolfram_alpha: HTTP 503") and r.metadata["status"] == 503
        down = ask("2+2", WolframAlphaGroup(WOLFRAM_KEY, dead, timeout=5))
        assert not down.ok and down.error_message.startswith(f"wolfram_alpha: cannot reach {dead}/v2/query")
    finally:
        broken.close()


def test_key_from_the_environment_selects_the_api() -> None:
    fake = FakeAPI(wolfram)
    try:
        registry = default_registry(ToolSettings(wolfram_base_url=fake.url),
                                    environ={"WOLFRAM_ALPHA_API_KEY": WOLFRAM_KEY})
        r = asyncio.run(registry.invoke("wolfram_alpha", {"query": "life"}))
        assert r.content.endswith("Result: 42") and len(fake.seen) == 1
        offline = default_registry(ToolSettings(), environ={})
        assert offline.group("builtin::wolfram_alpha").provider_id == "offline-math"
    finally:
        fake.close()


def test_the_offline_child_runs_under_its_memory_limit() -> None:
    r = subprocess.run([sys.executable, "-m", "herd.tools.offline_math", "--memory", str(50 * 2**20)],
                       input="2^10", capture_output=True, text=True, timeout=60, check=True)
    assert '"ok": false' in r.stdout and "MemoryError" in r.stdout  # sympy cannot even load in 50 MiB
    too_long = ask("1+" * 1500 + "1")
    assert not too_long.ok and too_long.error_code == 1 and "too long" in too_long.error_message
