"""`herd sdg tools` end to end with the embedded model: every kept call validates against its schema, its
tool result is the stub's real output and its answer states a value of it, the counts add up, the dialogs
load as herd train data; self-instruct makes distinct instructions; `herd sdg rejection` is `herd train
rejection-sample`; the
decontamination filter flags a planted BFCL prompt (real BFCL data); bad input is one line. The >= 200
dialog run is marked slow."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                      "parameters": {"type": "object", "properties": {
                                          "city": {"type": "string"},
                                          "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                                          "required": ["city"]}}},
    {"type": "function", "function": {"name": "convert_currency", "description": "Convert money between currencies",
                                      "parameters": {"type": "object", "properties": {
                                          "amount": {"type": "number"}, "from_currency": {"type": "string"},
                                          "to_currency": {"type": "string"}},
                                          "required": ["amount", "from_currency", "to_currency"]}}},
    {"type": "function", "function": {"name": "book_table", "description": "Book a restaurant table",
                                      "parameters": {"type": "object", "properties": {
                                          "restaurant": {"type": "string"}, "people": {"type": "integer", "minimum": 1},
                                          "time": {"type": "string"}}, "required": ["restaurant", "people", "time"]}}},
]
STUBS = '''
def get_weather(city, unit="celsius"):
    return {"city": city, "temperature": 21 if unit == "celsius" else 70, "unit": unit}

def convert_currency(amount, from_currency, to_currency):
    return {"amount": round(amount * 1.1, 2), "currency": to_currency}

def book_table(restaurant, people, time):
    return {"confirmed": True, "restaurant": restaurant, "people": people, "time": time}
'''


def herd_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "herd.cli.main", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1800)


@pytest.fixture()
def files(tmp_path):
    tools, stubs = tmp_path / "tools.json", tmp_path / "stubs.py"
    tools.write_text(json.dumps(TOOLS))
    stubs.write_text(STUBS)
    return tools, stubs


def check_run(tmp_path, tools, stubs, n: int, *extra: str) -> tuple[dict, list[dict]]:
    out = tmp_path / "dialogs.jsonl"
    r = herd_cli("sdg", "tools", "--tools", str(tools), "--stubs", str(stubs), "-n", str(n), "--requests",
                 "template", "--concurrency", "32", "--out", str(out), "--json", *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    dialogs = [json.loads(x) for x in out.read_text().splitlines()]
    assert summary["dialogs"] == len(dialogs)
    gen = summary["generation"]
    assert gen["attempted"] == n
    dropped = sum(v for k, v in gen.items() if k not in ("attempted", "generated", "kept_call_only",
                                                          "unavailable_tool"))  # made, not dropped
    assert gen["generated"] + dropped == n
    assert gen["generated"] - sum(summary["filtered"].values()) == len(dialogs)
    assert summary["decontaminated_against"] == ["humaneval", "bfcl"]
    spec = importlib.util.spec_from_file_location("stubs_for_test", stubs)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for d in dialogs:
        msgs = d["messages"]
        call_only = "--keep-calls-without-answer" in extra and len(msgs) == 2 and msgs[-1].get("tool_calls")
        assert msgs[0]["role"] == "user" and msgs[-1]["role"] == "assistant" and (msgs[-1]["content"] or call_only)
        for m in msgs:
            for c in m.get("tool_calls") or []:
                args = json.loads(c["function"]["arguments"])
                jsonschema.validate(args, schemas[c["function"]["name"]])  # every call validates
                if call_only:
                    continue
                result = next(x for x in msgs if x["role"] == "tool" and x["tool_call_id"] == c["id"])
                value = json.loads(json.dumps(getattr(module, c["function"]["name"])(**args)))
                assert json.loads(result["content"]) == value  # the stub's real output
                assert any(str(x).lower() in msgs[-1]["content"].lower() for x in value.values()
                           if not isinstance(x, bool))  # the answer states part of it
                for name in schemas[c["function"]["name"]]["required"]:  # grounded in the request
                    v = args[name]
                    assert (v if isinstance(v, str) else json.dumps(v)).lower() in msgs[0]["content"].lower()
    # the dialogs are herd train sft data
    from herd import hub
    from herd.tokenizer.prompter import Prompter
    from herd.train.data import DataStats, chat_examples

    stats = DataStats()
    examples = list(chat_examples(out, Prompter(hub.load_tokenizer_for(hub.resolve(None))), max_seq_len=4096,
                                  stats=stats))
    assert len(examples) == len(dialogs) and stats.trained_tokens > 0
    return summary, dialogs


@pytest.mark.slow
def test_tool_dialogs_validate_and_count(files, tmp_path):
    summary, dialogs = check_run(tmp_path, *files, n=24)
    # the 135M model's answers often ignore the result (dropped, counted): a few dialogs survive
    assert len(dialogs) >= 3 and summary["generation"].get("ungrounded_answer", 0) > 0
    assert sum(1 for d in dialogs if any(m.get("tool_calls") for m in d["messages"])) >= 2


@pytest.mark.slow
def test_two_hundred_dialogs(files, tmp_path):
    # ~25 % of the 135M model's answers state the result; the others keep their (valid, executed) call only
    summary, dialogs = check_run(tmp_path, *files, 400, "--keep-calls-without-answer")
    assert len(dialogs) >= 200, summary
    assert set(summary["tools"]) >= {"get_weather", "convert_currency", "book_table"}
    answered = sum(1 for d in dialogs if len(d["messages"]) == 4)
    print(f"{len(dialogs)} dialogs, {answered} with an answer, {summary['generation']}")


def test_decontamination_flags_a_planted_bfcl_prompt():
    from herd.eval.harness import make_task
    from herd.eval.task import TaskOptions
    from herd.sdg.evalsets import eval_prompts
    from herd.sdg.filters import Decontaminator

    sample = make_task("bfcl", TaskOptions(categories=["simple_python"], limit=5)).load()[3]
    planted = next(m["content"] for m in sample.data["question"][0] if m["role"] == "user")
    rows = [{"messages": [{"role": "user", "content": "Can you get weather with city Paris?"}]},
            {"messages": [{"role": "user", "content": f"Hi! {planted}"}]},
            {"messages": [{"role": "user", "content": "Please book table for me. The people is 2."}]}]
    hits = Decontaminator(eval_prompts(["humaneval", "bfcl"])).check(rows)
    assert list(hits) == [1]


@pytest.mark.parametrize("which, words", [
    ("tools", "cannot read tool definitions"), ("stubs", "no stub implementation for book_table"),
    ("set", "unknown evaluation set 'mmlu'"),
    ("unavailable", "--unavailable-share needs --tools-per-dialog smaller than the number of tools (3)"),
])
def test_bad_input_is_one_line(files, tmp_path, which, words):
    tools, stubs = files
    args = ["sdg", "tools", "--tools", str(tools), "--stubs", str(stubs), "-n", "2", "--out", str(tmp_path / "o.jsonl")]
    if which == "tools":
        tools.write_text("{not json")
    elif which == "stubs":
        stubs.write_text(STUBS.split("def book_table")[0])
    elif which == "set":
        args += ["--decontaminate", "humaneval,mmlu"]
    else:
        args += ["--unavailable-share", "0.2"]
    r = herd_cli(*args)
    assert r.returncode == 2, r.stderr[-2000:]
    assert words in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.slow
def test_self_instruct_makes_new_distinct_instructions(tmp_path):
    from herd.sdg.filters import jaccard, shingles

    seeds = ["Write a haiku about autumn leaves.", "Explain what a prime number is to a child.",
             "List three tips for a job interview.", "Translate 'good morning' into French and Spanish."]
    (tmp_path / "seeds.jsonl").write_text("".join(json.dumps({"instruction": s}) + "\n" for s in seeds))
    out = tmp_path / "instruct.jsonl"
    r = herd_cli("sdg", "instruct", "--seeds", str(tmp_path / "seeds.jsonl"), "-n", "6", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert summary["dialogs"] == len(rows) and rows and summary["filtered"]["attempts"] >= summary["instructions"]
    made = [d["messages"][0]["content"] for d in rows]
    pool = [shingles(s) for s in seeds]
    for text in made:  # each new instruction differs from the seeds and from the others made before it
        sh = shingles(text)
        assert all(jaccard(sh, other) < 0.7 for other in pool), text
        pool.append(sh)
        assert 3 <= len(text.split()) <= 80
    assert all(d["messages"][1]["role"] == "assistant" and d["messages"][1]["content"] for d in rows)


@pytest.mark.slow
def test_sdg_rejection_is_train_rejection_sample(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Say the number {i}."}],
                                           "pattern": str(i)}) + "\n" for i in range(3)))
    outs = []
    for cmd in (("sdg", "rejection"), ("train", "rejection-sample")):
        out = tmp_path / f"{cmd[0]}.jsonl"
        r = herd_cli(*cmd, "--data", str(prompts), "--out", str(out), "-n", "2", "--verifier", "regex",
                     "--min-score", "0", "--max-tokens", "12", "--json")
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append(out.read_text())
    assert outs[0] == outs[1] and outs[0].count("\n") == 3


@pytest.mark.slow
def test_judge_threshold_filter(files, tmp_path):
    tools, stubs = files
    out = tmp_path / "judged.jsonl"
    r = herd_cli("sdg", "tools", "--tools", str(tools), "--stubs", str(stubs), "-n", "16", "--requests", "template",
                 "--judge-min-score", "0.2", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(row["judge_score"] >= 0.2 for row in rows)  # the kept ones scored at least the threshold
    gen = summary["generation"]["generated"]
    others = sum(v for k, v in summary["filtered"].items() if k != "judge")
    assert summary["filtered"]["judge"] + others + len(rows) == gen  # every judged dialog is counted once


REQUESTS = {"get_weather": ["What's the weather in {city}?", "Weather for {city} in {unit}, please."],
            "convert_currency": ["How much is {amount} {from_currency} in {to_currency}?"],
            "book_table": ["Book {restaurant} for {people} at {time}."]}


def test_request_templates_are_checked_and_filled(tmp_path):
    from herd.errors import HerdError
    from herd.sdg.tools import fill_template, read_request_templates

    path = tmp_path / "requests.json"
    path.write_text(json.dumps(REQUESTS))
    assert read_request_templates(path, TOOLS) == REQUESTS
    for bad, words in (({"get_weather": ["Weather?"]}, "all required ones"),
                       ({"get_weather": ["Weather in {town}?"]}, "only the tool's parameters"),
                       ({"fly": ["x"]}, "'fly' is not a tool"), ({"get_weather": []}, "non-empty list"),
                       ({"get_weather": ["{city"]}, "template '{city'")):
        path.write_text(json.dumps(bad))
        with pytest.raises(HerdError, match=words):
            read_request_templates(path, TOOLS)
    # optional values the template leaves out leave the call; values are written as a person would
    assert fill_template("What's the weather in {city}?", {"city": "Oslo", "unit": "celsius"}) == \
        ("What's the weather in Oslo?", {"city": "Oslo"})
    assert fill_template("{a} / {b} / {c} / {d}", {"a": True, "b": 2.50, "c": ["x", "y", "z"], "d": {"k_v": 1}}) == \
        ("yes / 2.5 / x, y and z / k v 1", {"a": True, "b": 2.5, "c": ["x", "y", "z"], "d": {"k_v": 1}})


def test_each_dialog_offers_k_tools_and_its_request_comes_from_the_tools_templates(files, tmp_path):
    tools, stubs = files
    requests, out = tmp_path / "requests.json", tmp_path / "d.jsonl"
    requests.write_text(json.dumps(REQUESTS))
    r = herd_cli("sdg", "tools", "--tools", str(tools), "--stubs", str(stubs), "-n", "10", "--requests", "template",
                 "--request-templates", str(requests), "--tools-per-dialog", "2", "--keep-calls-without-answer",
                 "--no-tool-share", "0.2", "--unavailable-share", "0.4", "--seed", "3", "--out", str(out), "--json",
                 "--prompts-out", str(tmp_path / "prompts.jsonl"))
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    dialogs = [json.loads(x) for x in out.read_text().splitlines()]
    assert dialogs and summary["dialogs"] == len(dialogs)
    from herd.sdg.tools import UNAVAILABLE_REPLIES, fill_template, template_fields

    TOOL_WHAT = {t["function"]["name"]: t["function"]["description"][:1].lower() + t["function"]["description"][1:]
                 for t in TOOLS}

    calls = unavailable = 0
    for d in dialogs:
        offered = [t["function"]["name"] for t in d["tools"]]
        assert len(offered) == 2 == len(set(offered)) and set(offered) <= set(REQUESTS)
        for m in d["messages"]:
            for c in m.get("tool_calls") or []:
                calls += 1
                name, args = c["function"]["name"], json.loads(c["function"]["arguments"])
                assert name in offered
                # the request is one of the tool's templates filled with exactly the call's values
                assert d["messages"][0]["content"] in {fill_template(t, args)[0] for t in REQUESTS[name]
                                                       if template_fields(t) == set(args)}
        if d["messages"][-1].get("tool_calls"):  # a call kept without its answer
            assert len(d["messages"]) == 2
        reply = d["messages"][1].get("content") or ""
        needed = [n for n, ts in REQUESTS.items() for t in ts if template_fields(t) and
                  re.fullmatch(re.escape(t).replace(r"\{", "{").replace(r"\}", "}").format(
                      **{f: ".+" for f in template_fields(t)}), d["messages"][0]["content"])]
        if any(reply == r.format(what=TOOL_WHAT[n]) for n in needed for r in UNAVAILABLE_REPLIES):
            unavailable += 1  # a near miss: asked for a tool that is not offered, and told so
            assert not set(needed) & set(offered) and len(d["messages"]) == 2
    assert 0 < unavailable <= summary["generation"]["unavailable_tool"]  # (the filters may drop some)
    assert calls and summary["generation"]["kept_call_only"] == sum(
        1 for d in dialogs if d["messages"][-1].get("tool_calls"))
    # the same requests as rejection-sampling prompts, scored by the tool_call verifier against their calls
    from herd.tokenizer.messages import Message, ToolCall
    from herd.train.rejection import read_prompts, tool_call_match

    prompts = read_prompts(tmp_path / "prompts.jsonl")
    assert len(prompts) == len(dialogs)
    for p, d in zip(prompts, dialogs):
        assert p["messages"] == d["messages"][:1] and p["tools"] == d["tools"]
        reply = Message("assistant", d["messages"][1].get("content") or "", tool_calls=[
            ToolCall(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in d["messages"][1].get("tool_calls") or []])
        assert tool_call_match(p, reply) == 1.0  # the dialog's own reply is the right one
        assert tool_call_match(p, Message("assistant", "I cannot.")) == float(not reply.tool_calls)


def test_implausible_invented_values_are_named():
    from herd.sdg.tools import implausible_value

    assert implausible_value({"city": "New York", "days": 5, "phone": "+1 555 0100", "n": "1000"}) is None
    assert implausible_value({"city": "Oslo", "date": "2020-12-02T00:00:00:00:00:00"}).startswith("date=")
    assert implausible_value({"city": "  "}) == "city='  '"
    assert implausible_value({"city": "To get a reliable estimate you need to visit three cities in one year " * 2},
                             max_chars=80).startswith("city=")
