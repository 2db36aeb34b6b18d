"""The evaluation harness and its generic tasks: log-likelihoods equal transformers' on a tiny random
checkpoint (multiple choice and sliding-window perplexity), the scorers against their definitions, `herd eval`
end to end (records, summary, compare with a paired test), an endpoint that fails mid-run (retries, then a
partial summary that says so), a judge that answers garbage (counted as unparseable), and bad input."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinymodels import build_tiny_llama3  # noqa: E402

from herd.eval import scorers  # noqa: E402
from herd.eval.harness import compare  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def herd_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "herd.cli.main", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama3(tmp_path_factory.mktemp("tiny") / "model", max_seq_len=64)


@pytest.fixture(scope="module")
def lm(tiny):
    from herd import hub
    from herd.eval.loglik import LogLikelihood

    model, tokenizer = hub.load(str(tiny), dtype=torch.float32, device="cpu")
    return LogLikelihood(model, tokenizer)


@pytest.fixture(scope="module")
def hf(tiny):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(tiny), dtype=torch.float32).eval()


def hf_logprobs(hf, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


def test_choice_loglikelihoods_equal_transformers(lm, hf):
    context, choices = "Question: Which planet is red?\nAnswer:", [" Mars", " Venus", " the planet Jupiter"]
    ctx = [lm.tokenizer.bos_id] + lm.encode(context)
    for choice in choices:
        got, greedy, n = lm.continuation(context, choice)
        cont = lm.encode(choice)
        want = hf_logprobs(hf, ctx + cont)[-len(cont):]
        assert n == len(cont)
        assert got == pytest.approx(float(want.sum()), abs=1e-4)


def test_sliding_window_nll_equals_transformers(lm, hf):
    ids = lm.encode("The quick brown fox jumps over the lazy dog. " * 12)
    assert len(ids) > 100  # several windows at max_len 32
    seq = [lm.tokenizer.bos_id] + ids
    # one window covering everything (the model's 64 positions): the plain sum over every token
    short = seq[:60]
    nll, n = lm.rolling(short[1:], max_len=64)
    assert n == len(short) - 1
    assert nll == pytest.approx(-float(hf_logprobs(hf, short).sum()), abs=1e-3)
    # windows of 32 tokens moved by 16: each token predicted once, from its window's context
    nll, n = lm.rolling(ids, max_len=32, stride=16)
    assert n == len(seq) - 1
    want, done, end = 0.0, 1, 33
    begin = 0
    while done < len(seq):
        lp = hf_logprobs(hf, seq[begin:end])
        want -= float(lp[done - begin - 1:].sum())
        done, end = end, min(end + 16, len(seq))
        begin = max(end - 33, 0)
    assert nll == pytest.approx(want, abs=1e-3)
    # a different stride scores the same tokens with other contexts: close but not equal
    nll2, n2 = lm.rolling(ids, max_len=32, stride=32)
    assert n2 == n and nll2 != nll


def test_scorers_follow_their_definitions():
    rec = {"answer": ["Paris", "paris, France"]}
    assert scorers.exact_match(rec, "  paris. ") == 1.0 and scorers.exact_match(rec, "Lyon") == 0.0
    assert scorers.contains(rec, "It is PARIS of course") == 1.0
    # SQuAD F1: articles and punctuation dropped; overlap 2 of 3 predicted, 2 of 2 reference tokens
    assert scorers.f1({"answer": "the Eiffel Tower"}, "Eiffel Tower, Paris!") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert scorers.regex({"pattern": r"\b4\b"}, "it is 4.") == 1.0
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    assert scorers.json_schema_valid({"schema": schema}, '```json\n{"n": 3}\n```') == 1.0
    assert scorers.json_schema_valid({"schema": schema}, '{"n": "3"}') == 0.0
    assert scorers.json_schema_valid({"schema": schema}, "not json") == 0.0


@pytest.mark.parametrize("verdict, score", [
    ("Good answer.\nScore: 8", 8.0), ("**Score**: 7.5", 7.5), ("I'd give it 9/10.", 9.0), ("Fine.\n6\n", 6.0),
    ("Score: 3\nOn reflection, Score: 4", 4.0), ("Score: 11", None), ("no idea", None), ("", None),
])
def test_judge_verdicts_are_parsed_robustly(verdict, score):
    assert scorers.parse_score(verdict) == score


def test_generate_runs_scores_and_compares(tiny, tmp_path):
    data = tmp_path / "qa.jsonl"
    rows = [{"id": f"q{i}", "prompt": f"Say the word number {i}.", "answer": ["word", f"{i}"]} for i in range(6)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = []
    for t in ("0", "1.0"):
        out = tmp_path / f"run-t{t}"
        r = herd_cli("eval", "generate", "--model", str(tiny), "--data", str(data), "--scorer", "contains",
                     "--temperature", t, "--max-tokens", "8", "--out", str(out), "--json")
        assert r.returncode == 0, r.stderr[-3000:]
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
        assert summary["task"] == "generate" and summary["n"] == 6 and not summary["partial"], summary
        assert [x["id"] for x in records] == [f"q{i}" for i in range(6)]
        # the metric is the mean of the records' scores, each the scorer applied to the recorded output
        for x, row in zip(records, rows):
            assert x["scores"]["contains"] == scorers.contains(row, x["output"]["content"])
        mean = sum(x["scores"]["contains"] for x in records) / 6
        assert summary["metrics"]["contains"]["value"] == pytest.approx(mean)
        full = json.loads((out / "summary.json").read_text())
        assert full["config"]["temperature"] == float(t) and full["config"]["herd_version"]
        assert "| contains |" in (out / "summary.md").read_text()
        runs.append((out, records))
    result = compare(runs[0][0], runs[1][0])
    (row,) = result["scores"]
    d = [b["scores"]["contains"] - a["scores"]["contains"] for a, b in zip(runs[0][1], runs[1][1])]
    assert row["n"] == 6 and row["diff"] == pytest.approx(sum(d) / 6)
    assert row["b_better"] == sum(x > 0 for x in d) and row["a_better"] == sum(x < 0 for x in d)
    r = herd_cli("eval", "compare", str(runs[0][0]), str(runs[1][0]))
    assert r.returncode == 0 and "| contains |" in r.stdout, r.stderr


def send_reply(handler: BaseHTTPRequestHandler, body: dict, message: dict) -> None:
    """Answer a chat request with a chat.completion holding `message`."""
    data = json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                       "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                       "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class FlakyEndpoint(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that answers its first `ok` chat requests and then fails with 500s."""

    ok = 3
    served = 0
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            type(self).served += 1
            n = type(self).served
        if n > self.ok:
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "the endpoint went away"}}')
            return
        send_reply(self, body, {"role": "assistant", "content": "Paris"})

    def log_message(self, *args):
        pass


def test_an_endpoint_failing_mid_run_gives_a_partial_summary(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        data = tmp_path / "qa.jsonl"
        data.write_text("".join(json.dumps({"prompt": f"Capital of France? ({i})", "answer": "Paris"}) + "\n"
                                for i in range(6)))
        out = tmp_path / "run"
        r = herd_cli("eval", "generate", "--base-url", f"http://127.0.0.1:{server.server_port}/v1",
                     "--api-model", "m", "--data", str(data), "--concurrency", "1", "--retries", "1",
                     "--out", str(out), "--json")
    finally:
        server.shutdown()
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["partial"] and summary["errors"] == 3
    assert summary["metrics"]["exact_match"]["value"] == pytest.approx(0.5)
    assert "partial run: 3 request(s) failed after 1 retries" in r.stderr
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert sum("error" in x for x in records) == 3
    assert FlakyEndpoint.served == 3 + 3 * 2  # each failed request tried twice (one retry)
    assert "Partial run" in (out / "summary.md").read_text()


class ToolCallingEndpoint(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that calls the first offered tool when the request mentions the weather,
    and answers in text otherwise (its own tools and text both name a call, to tell them apart)."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        asks = body["messages"][-1]["content"]
        message = {"role": "assistant", "content": '{"name": "get_weather", "arguments": {}}'}
        if "weather" in asks and body.get("tools"):
            fn = body["tools"][0]["function"]["name"]
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": fn, "arguments": "{}"}}]}
        send_reply(self, body, message)

    def log_message(self, *args):
        pass


def test_no_tool_call_scores_the_reply_not_its_text(tmp_path):
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    rows = [{"prompt": "What is the weather in Oslo?", "tools": [tool]}, {"prompt": "Write a haiku.", "tools": [tool]},
            {"prompt": "Is the weather nice?"}, {"prompt": "Name a colour.", "tools": [tool]}]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    server = ThreadingHTTPServer(("127.0.0.1", 0), ToolCallingEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r = herd_cli("eval", "generate", "--base-url", f"http://127.0.0.1:{server.server_port}/v1", "--api-model",
                     "m", "--data", str(data), "--scorer", "no_tool_call", "--out", str(tmp_path / "run"), "--json")
    finally:
        server.shutdown()
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(x) for x in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    assert [x["scores"]["no_tool_call"] for x in records] == [0.0, 1.0, 1.0, 1.0]
    assert json.loads(r.stdout.strip().splitlines()[-1])["metrics"]["no_tool_call"]["value"] == 0.75


def test_a_judge_that_answers_garbage_is_counted_unparseable(tmp_path):
    tiny = build_tiny_llama3(tmp_path / "model", max_seq_len=2048)  # room for the judge's prompt
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Name a fruit ({i}).", "answer": "apple"}) + "\n"
                            for i in range(4)))
    out = tmp_path / "judged"
    r = herd_cli("eval", "generate", "--model", str(tiny), "--judge-model", str(tiny), "--data", str(data),
                 "--scorer", "llm_judge", "--max-tokens", "6", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    bad = [x for x in records if x.get("details", {}).get("judge_unparseable")]
    scored = [x for x in records if "llm_judge" in x["scores"]]
    assert len(bad) + len(scored) == 4 and bad  # a random model's verdicts: garbage
    for x in records:  # every verdict was logged and parsed as the scorer parses it
        raw = scorers.parse_score(x["details"]["judge_verdict"])
        assert (raw is None) == (x in bad)
        assert "Rubric: correct, complete and concise" in x["details"]["judge_prompt"]
    assert summary["metrics"]["judge_unparseable"]["value"] == len(bad)


@pytest.mark.parametrize("args, words", [
    (["nosuch"], "unknown task 'nosuch'"),
    (["mc"], "the mc task needs --data FILE"),
    (["generate", "--data", "{bad}"], ":2: the regex scorer needs a `pattern`"),
    (["mc", "--data", "{mc}"], ":1: `answer` must be a choice's index, letter or text, got 7"),
    (["humaneval", "--num-samples", "2", "--k", "1,5"], "--k: each k must be between 1 and --num-samples (2)"),
    (["compare", "a"], "needs two run directories"),
    (["generate", "--data", "{bad}", "--base-url", "http://x/v1"], "--base-url needs --api-model"),
])
def test_bad_input_is_one_line(tmp_path, args, words):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "pattern": "x"}\n{"prompt": "b"}\n')
    mc = tmp_path / "mc.jsonl"
    mc.write_text('{"question": "q", "choices": ["a", "b"], "answer": 7}\n')
    args = [a.replace("{bad}", str(bad)).replace("{mc}", str(mc)) for a in args]
    if args[0] == "generate" and "--base-url" not in args:
        args += ["--scorer", "regex"]
    r = herd_cli("eval", *args, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr[-2000:])
    assert words in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_multiple_choice_end_to_end(tiny, lm, tmp_path):
    data = tmp_path / "mc.jsonl"
    rows = [{"question": "2+2?", "choices": ["4", "5", "twenty-two"], "answer": 0},
            {"question": "Sky?", "choices": ["blue", "green"], "answer": "B"},
            {"context": "The cat sat on the", "choices": ["mat", "moon"], "answer": "mat"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = herd_cli("eval", "mc", "--model", str(tiny), "--data", str(data), "--out", str(tmp_path / "o"), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    want_acc, want_norm = [], []
    for row, gold in zip(rows, (0, 1, 0)):
        prompt = row.get("context", f"Question: {row.get('question')}\nAnswer:")
        lps = [lm.continuation(prompt, " " + c)[0] for c in row["choices"]]
        norm = [lp / len(c.encode()) for lp, c in zip(lps, row["choices"])]
        want_acc.append(float(max(range(len(lps)), key=lps.__getitem__) == gold))
        want_norm.append(float(max(range(len(norm)), key=norm.__getitem__) == gold))
    assert summary["metrics"]["acc"]["value"] == pytest.approx(sum(want_acc) / 3)
    assert summary["metrics"]["acc_norm"]["value"] == pytest.approx(sum(want_norm) / 3)
    assert math.isfinite(summary["metrics"]["acc"]["stderr"])


def test_bad_rows_are_fatal_or_skipped_and_counted(tiny, tmp_path):
    data = tmp_path / "mixed.jsonl"
    data.write_text(json.dumps({"prompt": "Say hi.", "answer": "hi"}) + "\n" + "{broken\n"
                    + json.dumps({"prompt": "Say yes."}) + "\n" + json.dumps({"prompt": "Say no.", "answer": "no"}) + "\n")
    r = herd_cli("eval", "generate", "--model", str(tiny), "--data", str(data), timeout=120)
    assert r.returncode == 2 and "mixed.jsonl:2: not valid JSON" in r.stderr
    r = herd_cli("eval", "generate", "--model", str(tiny), "--data", str(data), "--skip-bad-rows", "--max-tokens", "4",
                 "--out", str(tmp_path / "o"), "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["n"] == 2 and summary["skipped_rows"] == 2
    assert "warning: 2 malformed row(s) skipped, e.g. " in r.stderr and "mixed.jsonl:2: not valid JSON" in r.stderr
    full = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert full["skipped_examples"][1].endswith("mixed.jsonl:3: expected `answer` (a string or a list of strings)")
