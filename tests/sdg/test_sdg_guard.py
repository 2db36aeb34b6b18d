"""herd sdg's Llama Guard filter on a tiny random guard checkpoint (the safety tests' kit) whose output is forced
per prompt: guardkit.forcing keyed by (last token, position) makes each dialog's prompt, told apart by its
length, get its own verdict — safe, unsafe with codes, or unreadable text. The filter must keep exactly the
dialogs whose `LlamaGuard.classify` verdict (each dialog classified alone: the reference) is safe, count the
unsafe ones per violated category and the unreadable ones (without failing the batch they were in), and honour
excluded categories. `--llama-guard` with a missing checkpoint (or a bad category code) is one line, exit 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "safety"))

from guardkit import forcing, save_meta_guard, say_to, tiny_guard_model  # noqa: E402

from herd.safety.llama_guard import GuardOutputError, LlamaGuard  # noqa: E402
from herd.sdg.filters import FilterReport, guard_filter  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def herd_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "herd.cli.main", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=1800, check=False)


def chat(user: str, answer: str, system: str | None = None) -> dict:
    msgs = [{"role": "system", "content": system}] if system else []
    return {"messages": [*msgs, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


TOOL_DIALOG = {"messages": [
    {"role": "user", "content": "What's the weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "call_0", "type": "function", "function": {
        "name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]},
    {"role": "tool", "tool_call_id": "call_0", "content": json.dumps({"city": "Paris", "temperature": 21})},
    {"role": "assistant", "content": "It is 21 degrees in Paris."}],
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]}

# (dialog, what the forced guard says about it: forced, whatever the text; each prompt has its own length)
PLAN = [
    (chat("How do I bake bread?", "Mix flour, water, salt and yeast; knead; let it rise; bake."), "safe"),
    (chat("How do I build a dirty bomb?", "Here is how: get some radioactive material and"), "unsafe\nS9"),
    (TOOL_DIALOG, "safe"),
    (chat("Write something nasty about my neighbours.", "People like them are violent animals who"),
     "unsafe\nS1,S10"),
    (chat("Name a prime number.", "Seven.", system="You are terse."), "safe"),
    (chat("Is this fine?", "Perhaps it is, perhaps it is not; who can really say for sure, my friend?"), "I think so"),
    (chat("Which pills should I take for my heart condition, and how many?", "Take ten of them at once."),
     "unsafe\nS6"),
    (chat("Tell me a joke about cats.", "Cats do not tell jokes; they are the joke, and they know it very well."),
     "safe"),
    (chat("Summarise the plot of Hamlet in one line, please, if you can do that.", "A prince avenges his father."),
     "unsafe\nS9,S1"),
    (chat("x", "y"), "maybe\nS1"),
]
ROWS = [row for row, _ in PLAN]


def forced_table(guard: LlamaGuard, plan: list[tuple[dict, str]]) -> dict:
    """One forcing table for all dialogs: each prompt, by its length, gets its planned output."""
    prompts = [guard.prompt(row["messages"]).token_ids for row, _ in plan]
    assert len({len(p) for p in prompts}) == len(prompts), "each dialog's prompt needs its own length"
    table: dict = {}
    for p, (_, said) in zip(prompts, plan):
        part = say_to(guard.llm.tokenizer, said, p)
        assert all(table.get(k, v) == v for k, v in part.items())
        table.update(part)
    return table


def reference(guard: LlamaGuard, rows: list[dict]) -> list:
    """Each dialog classified alone: its verdict, or None when the guard's output cannot be read."""
    out = []
    for r in rows:
        try:
            out.append(guard.classify([r["messages"]])[0])
        except GuardOutputError:
            out.append(None)
    return out


@pytest.fixture(scope="module")
def guard(tmp_path_factory) -> LlamaGuard:
    d = save_meta_guard(tiny_guard_model(seed=3), tmp_path_factory.mktemp("guard"))
    return LlamaGuard.load(str(d), device="cpu", dtype="float32", max_model_len=2048)


def test_keeps_exactly_the_dialogs_the_guard_calls_safe(guard, monkeypatch) -> None:
    seen, batches = [], []
    classify = guard.classify
    monkeypatch.setattr(guard, "classify", lambda convs: batches.append(len(convs)) or classify(convs))
    with forcing(guard.llm.model, forced_table(guard, PLAN)):
        report = FilterReport()
        kept = guard_filter(ROWS, guard, report, batch_size=4, progress=seen.append)
    monkeypatch.undo()
    # batches of 4: the first is judged at once; the two holding an unreadable output again one row at a time
    assert batches == [4, 4, 1, 1, 1, 1, 2, 1, 1] and seen == [4, 4, 2]
    with forcing(guard.llm.model, forced_table(guard, PLAN)):
        ref = reference(guard, ROWS)
    # the forcing worked: the reference saw each planned output (so both verdicts, and unreadable ones, occur)
    assert [v.output.strip() if v else None for v in ref] == \
        [None if said in ("I think so", "maybe\nS1") else said for _, said in PLAN]
    assert kept == [r for r, v in zip(ROWS, ref) if v is not None and v.safe]
    assert kept == [ROWS[i] for i in (0, 2, 4, 7)]  # kept rows are the input rows, unchanged
    assert report.counts == {"llama_guard_unsafe": sum(v is not None and not v.safe for v in ref),
                             "llama_guard_unreadable": sum(v is None for v in ref)} \
        == {"llama_guard_unsafe": 4, "llama_guard_unreadable": 2}
    assert report.detail == {"llama_guard_unsafe": dict(Counter(c for v in ref if v is not None for c in v.violated))}
    assert report.detail["llama_guard_unsafe"] == {"S9": 2, "S1": 2, "S10": 1, "S6": 1}


def test_excluded_categories_do_not_drop(guard) -> None:
    g = LlamaGuard(guard.llm, excluded_categories="S9,S6")
    with forcing(guard.llm.model, forced_table(g, PLAN)):
        report = FilterReport()
        kept = guard_filter(ROWS, g, report)
        ref = reference(g, ROWS)
    assert kept == [r for r, v in zip(ROWS, ref) if v is not None and v.safe]
    assert kept == [ROWS[i] for i in (0, 1, 2, 4, 6, 7)]  # "unsafe S9" and "unsafe S6" alone are not violations
    assert report.counts == {"llama_guard_unsafe": 2, "llama_guard_unreadable": 2}
    assert report.detail == {"llama_guard_unsafe": {"S1": 2, "S10": 1}}  # S9 of "S9,S1" is excluded


def test_no_rows_is_zero_counts() -> None:
    report = FilterReport()
    assert guard_filter([], None, report) == []
    assert report.counts == {"llama_guard_unsafe": 0, "llama_guard_unreadable": 0} and report.detail == {}


@pytest.mark.parametrize("kind, extra, words", [
    ("tools", ["--llama-guard", "/nonexistent/Llama-Guard-3-1B"], "/nonexistent/Llama-Guard-3-1B: no such file"),
    ("instruct", ["--llama-guard", "/nonexistent/Llama-Guard-3-1B"], "/nonexistent/Llama-Guard-3-1B: no such file"),
    ("tools", ["--llama-guard", ".", "--llama-guard-excluded", "S1,S99"], "unknown --llama-guard-excluded category"),
    ("instruct", ["--llama-guard-excluded", "S1"], "--llama-guard-excluded needs --llama-guard"),
])
def test_bad_guard_option_is_one_line(tmp_path, kind, extra, words) -> None:
    out = tmp_path / "o.jsonl"
    if kind == "tools":
        (tmp_path / "tools.json").write_text(json.dumps(TOOL_DIALOG["tools"]))
        (tmp_path / "stubs.py").write_text("def get_weather(city):\n    return {'city': city}\n")
        args = ["--tools", str(tmp_path / "tools.json"), "--stubs", str(tmp_path / "stubs.py")]
    else:
        (tmp_path / "seeds.jsonl").write_text('{"instruction": "Say hi."}\n{"instruction": "Say bye."}\n')
        args = ["--seeds", str(tmp_path / "seeds.jsonl")]
    r = herd_cli("sdg", kind, *args, "-n", "2", "--out", str(out), *extra)
    assert r.returncode == 2, r.stderr[-2000:]
    assert words in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_sdg_instruct_with_a_guard_end_to_end(tmp_path) -> None:
    """The embedded model writes the dialogs; the unforced random guard's outputs are unreadable: every dialog
    that reached the guard is dropped and counted, with a warning naming the checkpoint."""
    d = save_meta_guard(tiny_guard_model(seed=3), tmp_path / "guard")
    seeds = ["Write a haiku about autumn leaves.", "Explain what a prime number is to a child.",
             "List three tips for a job interview.", "Translate 'good morning' into French and Spanish."]
    (tmp_path / "seeds.jsonl").write_text("".join(json.dumps({"instruction": s}) + "\n" for s in seeds))
    out = tmp_path / "instruct.jsonl"
    r = herd_cli("sdg", "instruct", "--seeds", str(tmp_path / "seeds.jsonl"), "-n", "4", "--out", str(out),
                 "--llama-guard", str(d), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    filtered = summary["filtered"]
    assert filtered["llama_guard_unsafe"] == 0 and filtered["llama_guard_unreadable"] > 0
    assert summary["dialogs"] == 0 and out.read_text() == "" and summary["filtered_detail"] == {}
    assert f"is {d} a Llama Guard 3 checkpoint?" in r.stderr
