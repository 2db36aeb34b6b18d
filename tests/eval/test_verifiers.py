"""The unit_tests verifier: the reply's code and the record's tests run in herd's sandbox; 1.0 only when the
tests really return (a wrong answer, a loop past the timeout or an early exit(0) score 0); wired into
rejection sampling (`--verifier unit_tests`), whose kept scores it reproduces."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from herd.errors import HerdError
from herd.eval.verifiers import reply_code, unit_tests
from herd.tokenizer.messages import Message

REPO = Path(__file__).resolve().parents[2]
RECORD = {"tests": "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"}


@pytest.mark.parametrize("reply, score", [
    ("Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nEnjoy.", 1.0),
    ("def add(a, b):\n    return a + b", 1.0),
    ("```python\ndef add(a, b):\n    return a - b\n```", 0.0),
    ("```python\ndef add(a, b):\n    while True:\n        pass\n```\n```python\nprint(1)\n```", 0.0),
    ("```python\nimport sys\ndef add(a, b):\n    return 0\nsys.exit(0)\n```", 0.0),
    ("I cannot write code.", 0.0),
])
def test_unit_tests_verifier(reply, score):
    if "while True" in reply:
        RECORD_LOOP = {"tests": "assert add(1, 1) == 2\n"}
        verify = unit_tests(timeout=1.5)
        assert asyncio.run(verify(RECORD_LOOP, Message("assistant", reply))) == score
        return
    assert asyncio.run(unit_tests(timeout=5)(RECORD, Message("assistant", reply))) == score


def test_reply_code_and_bad_records():
    assert reply_code("x\n```py\nprint(1)\n```") == "print(1)\n"
    assert reply_code("```python\nprint(2)") == "print(2)"  # unterminated
    with pytest.raises(HerdError, match="needs `tests`"):
        asyncio.run(unit_tests()({}, Message("assistant", "def f(): pass")))


@pytest.mark.slow
def test_rejection_sampling_with_unit_tests(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}], "tests": t}) + "\n" for q, t in [
        ("Write a Python function add(a, b) that returns a + b.", "assert add(2, 3) == 5\n"),
        ("Write a Python function is_even(n) that returns True for even n.", "assert is_even(4) and not is_even(3)\n"),
    ]))
    out = tmp_path / "best.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "herd.cli.main", "train", "rejection-sample", "--data", str(prompts),
                        "--out", str(out), "-n", "2", "--verifier", "unit_tests", "--min-score", "0",
                        "--max-tokens", "128", "--json"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    kept = [json.loads(x) for x in out.read_text().splitlines()]
    records = [json.loads(x) for x in prompts.read_text().splitlines()]
    assert len(kept) == 2
    verify = unit_tests(timeout=10)
    for rec, row in zip(records, kept):  # each kept score is the verifier's verdict on the kept answer
        answer = Message("assistant", row["messages"][-1]["content"] or "")
        assert row["score"] in (0.0, 1.0)
        assert asyncio.run(verify(rec, answer)) == row["score"]
