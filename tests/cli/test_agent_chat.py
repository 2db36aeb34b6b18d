"""`herd chat --tools`: the agent loop in the terminal, run as a real subprocess on the embedded model."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import sympy

REPO = Path(__file__).resolve().parents[2]


def run_chat(args: list[str], stdin: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HERD_HOME": str(home), "PYTHONPATH": str(REPO)}
    for key in ("BRAVE_API_KEY", "TAVILY_API_KEY", "WOLFRAM_ALPHA_API_KEY"):
        env.pop(key, None)  # the offline backends
    return subprocess.run([sys.executable, "-m", "herd.cli.main", "chat", *args], input=stdin, env=env,
                          capture_output=True, text=True, timeout=600, cwd=REPO)


def test_chat_shows_each_tool_call_and_its_result(tmp_path: Path) -> None:
    r = run_chat(["--tools", "wolfram_alpha", "--tool-choice", "required", "--temperature", "0",
                  "--max-tokens", "64"], "What is the integral of x^2?\n", tmp_path)
    assert r.returncode == 0, r.stderr
    call = next(line for line in r.stderr.splitlines() if line.startswith("→ wolfram_alpha("))
    result = next(line for line in r.stderr.splitlines() if line.startswith("← "))
    assert "query=" in call
    # the forced call reached the real offline fallback, whose answer is right (checked by sympy, not by text)
    x = sympy.Symbol("x")
    antiderivative = sympy.sympify(result.split("=", 1)[1].replace("+ C", "").strip())
    assert sympy.simplify(sympy.diff(antiderivative, x) - x**2) == 0
    assert r.stdout.strip()  # the model's answer after the tool result


def test_chat_with_an_unknown_tool_is_one_line_exit_2(tmp_path: Path) -> None:
    r = run_chat(["--tools", "teleporter"], "hi\n", tmp_path)
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("herd: error:")]
    assert len(errors) == 1 and "teleporter" in errors[0] and "Traceback" not in r.stderr


def test_a_failing_message_does_not_end_the_chat(tmp_path: Path) -> None:
    too_long = "tell me about " + "llamas " * 1500  # beyond --max-model-len
    r = run_chat(["--tools", "wolfram_alpha", "--tool-choice", "required", "--temperature", "0",
                  "--max-tokens", "32", "--max-model-len", "1024"],
                 f"{too_long}\nWhat is the integral of x^2?\n", tmp_path)
    assert r.returncode == 0, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "context of 1024 tokens" in errors[0] and "Traceback" not in r.stderr
    assert any(line.startswith("→ wolfram_alpha(") for line in r.stderr.splitlines())  # the next message ran
