"""Supervised fine-tuning end to end, through the `herd train sft` command: a tiny Llama 3 model learns a
20-dialog tool-calling set (training loss below 0.05) and then makes the trained calls through the engine
(greedy); a LoRA run writes a PEFT adapter and a merged checkpoint that give the same logits; bad data is
a one-line error with nothing written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from tinymodels import build_tiny_llama3  # noqa: E402

from herd.train.data import TRAIN_DATE  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
# twenty ways to ask one question: the dialogs differ, the call they train is the same (a 2-layer random
# model cannot learn to copy an argument in a test's budget; the tool-calling default model does that)
QUESTIONS = ["What is the weather in Paris?", "How is the weather in Paris today?", "Is it raining in Paris?",
             "Weather for Paris, please.", "Tell me the Paris weather.", "Do I need an umbrella in Paris?",
             "Is it sunny in Paris right now?", "What's it like outside in Paris?", "Paris weather?",
             "Should I wear a coat in Paris today?", "How warm is it in Paris?", "Any storms in Paris?",
             "Check the weather in Paris for me.", "Is Paris cold today?", "What are conditions in Paris?",
             "Give me the forecast for Paris.", "Will it snow in Paris?", "How windy is Paris?",
             "Look up the weather in Paris.", "Is it nice out in Paris?"]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}


def dialog(question: str) -> dict:
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": None, "tool_calls": [call]}], "tools": [WEATHER]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama3(tmp_path_factory.mktemp("tiny") / "model", max_seq_len=2048)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tools.jsonl"
    path.write_text("".join(json.dumps(dialog(q)) + "\n" for q in QUESTIONS))
    return path


def herd_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "herd.cli.main", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def full_run(tiny, data, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "full"
    r = herd_cli("train", "sft", "--model", str(tiny), "--data", str(data), "--out", str(out), "--max-steps", "100",
                 "--lr", "3e-3", "--warmup-steps", "5", "--max-seq-len", "1024", "--save-every", "50", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    return out, json.loads(r.stdout.strip().splitlines()[-1])


def test_sft_learns_the_calls_and_the_engine_makes_them(full_run, tiny):
    out, summary = full_run
    assert summary["steps"] == 100 and summary["final_loss"] < 0.05, summary
    assert summary["data"]["examples"] == 20 and summary["data"]["skipped"] == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 100 and rows[0]["loss"] > 1.0 and rows[-1]["loss"] < 0.05
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-100", "step-50"]
    assert (out / "merged" / "model.safetensors").is_file() and not (out / "adapter").exists()

    from herd import LLM
    from herd.engine.request import SamplingParams

    llm = LLM(str(out / "merged"), dtype="float32")
    right = 0
    for question in QUESTIONS[::3]:
        d = dialog(question)
        ids = llm.prompter.encode(d["messages"][:1], tools=d["tools"], today=TRAIN_DATE)
        out_ = llm.generate([ids], SamplingParams(temperature=0.0, max_tokens=40, skip_special_tokens=False))[0]
        msg = llm.prompter.parse(out_.outputs[0], tools_offered=True)
        right += [(c.tool_name, c.arguments) for c in msg.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert right == len(QUESTIONS[::3])
    # before training, the same model makes no such call
    base = LLM(str(tiny), dtype="float32")
    d = dialog(QUESTIONS[0])
    ids = base.prompter.encode(d["messages"][:1], tools=d["tools"], today=TRAIN_DATE)
    before = base.generate([ids], SamplingParams(temperature=0.0, max_tokens=40, skip_special_tokens=False))[0]
    assert not base.prompter.parse(before.outputs[0], tools_offered=True).tool_calls


def test_lora_run_writes_a_peft_adapter_and_a_merged_model(tiny, data, tmp_path):
    out = tmp_path / "lora"
    r = herd_cli("train", "sft", "--model", str(tiny), "--data", str(data), "--out", str(out), "--max-steps", "6",
                 "--lr", "1e-2", "--lora-rank", "4", "--max-seq-len", "1024", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["peft_type"] == "LORA" and summary["adapter"]

    from herd.model.lora import load_peft_adapter
    from herd.model.weights import load_model

    base = load_model(tiny, dtype=torch.float32)
    load_peft_adapter(base, out / "adapter")
    merged = load_model(out / "merged", dtype=torch.float32)
    tokens = torch.randint(1000, 100000, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(tokens), base(tokens), atol=1e-4, rtol=1e-4)
        plain = load_model(tiny, dtype=torch.float32)(tokens)
    assert (merged(tokens) - plain).abs().max() > 1e-3  # the adapter changed something

    # herd serve --lora: the base and the adapter, one process, each answering as its own checkpoint does
    import openai
    from servekit import ServerProcess

    from herd import LLM
    from herd.engine.request import SamplingParams

    srv = ServerProcess("--model", f"base={tiny}", "--lora", f"tuned={out / 'adapter'}", "--embedding-model", "none",
                        "--num-blocks", "64")
    try:
        client = openai.OpenAI(base_url=srv.v1, api_key="x", max_retries=0, timeout=120)
        assert {m.id for m in client.models.list()} == {"base", "tuned"}
        ask = [{"role": "user", "content": "Say something."}]
        # the served adapter is the in-process LLM(lora=...) token for token; that model equals the merged
        # checkpoint up to float rounding (the logits check above) — greedy text of a random model can flip
        # on a near-tie between the two, so the text is compared along one loading path
        for name, lora in (("base", None), ("tuned", out / "adapter")):
            got = client.chat.completions.create(model=name, messages=ask, temperature=0, max_tokens=12)
            want = LLM(str(tiny), dtype="float32", lora=lora).chat(ask, SamplingParams(temperature=0.0, max_tokens=12))
            assert got.choices[0].message.content == want.message.content, name
    finally:
        assert srv.stop() == 0, srv.output()[-2000:]


@pytest.mark.parametrize("line, words", [
    ("{not json", "tools.jsonl:2: not valid JSON"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "tools.jsonl:2: the dialog has no assistant message"),
])
def test_bad_data_is_one_line_and_writes_nothing(tiny, tmp_path, line, words):
    data = tmp_path / "tools.jsonl"
    data.write_text(json.dumps(dialog(QUESTIONS[0])) + "\n" + line + "\n")
    out = tmp_path / "out"
    r = herd_cli("train", "sft", "--model", str(tiny), "--data", str(data), "--out", str(out), "--max-steps", "2")
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1  # the error alone: the data is read before the model
    assert not out.exists()


def test_unknown_lora_target_is_a_one_line_error(tiny, data, tmp_path):
    r = herd_cli("train", "sft", "--model", str(tiny), "--data", str(data), "--out", str(tmp_path / "o"),
                 "--lora-rank", "4", "--lora-targets", "q,attention_magic")
    assert r.returncode == 2 and "attention_magic" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_rejection_sample_command_in_process(tmp_path):
    """`herd train rejection-sample` on the embedded model: the kept answers verify, and feed `train sft`'s reader."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "user", "content": "What is the capital of France?"}],
                                   "pattern": "Paris"}) + "\n")
    out = tmp_path / "sft.jsonl"
    r = herd_cli("train", "rejection-sample", "--data", str(prompts), "--out", str(out), "-n", "2", "--verifier",
                 "regex", "--max-tokens", "16", "--temperature", "0.5", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert summary["samples"] == 2 and summary["kept"] == len(rows)
    for row in rows:
        assert "Paris" in row["messages"][-1]["content"] and row["messages"][-1]["role"] == "assistant"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}\n')
    r = herd_cli("train", "rejection-sample", "--data", str(bad), "--out", str(out), "--verifier", "regex")
    assert r.returncode == 2 and "bad.jsonl:1" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_dpo_and_pretrain_commands(tiny, tmp_path):
    """`herd train dpo` raises the chosen-vs-rejected margin; `herd train pretrain` lowers the text loss; both
    write their outputs."""
    prefs = tmp_path / "prefs.jsonl"
    pairs = [("Capital of France?", "Paris.", "Lyon."), ("Capital of Italy?", "Rome.", "Milan."),
             ("Capital of Spain?", "Madrid.", "Seville."), ("Capital of Japan?", "Tokyo.", "Osaka.")]
    prefs.write_text("".join(json.dumps({"prompt": q, "chosen": c, "rejected": r}) + "\n" for q, c, r in pairs))
    out = tmp_path / "dpo"
    r = herd_cli("train", "dpo", "--model", str(tiny), "--data", str(prefs), "--out", str(out), "--max-steps", "12",
                 "--lr", "5e-3", "--lora-rank", "4", "--batch-size", "2", "--max-seq-len", "256", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "dpo_metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and rows[-1]["reward_margin"] > rows[0]["reward_margin"]
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "merged" / "model.safetensors").is_file()

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": "The quick brown fox jumps over the lazy dog. " * 8}) + "\n"
                              for _ in range(12)))
    out = tmp_path / "cpt"
    r = herd_cli("train", "pretrain", "--model", str(tiny), "--data", str(corpus), "--out", str(out), "--max-steps",
                 "15", "--lr", "3e-3", "--max-seq-len", "128", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["method"] == "pretrain" and rows[-1]["loss"] < rows[0]["loss"] / 2
    assert (out / "merged" / "model.safetensors").is_file()


@pytest.mark.slow
def test_distill_command(tiny, data, tmp_path):
    """`herd train distill`: a student learns from a teacher with the same vocabulary (here the tiny model
    fine-tuned above stands in as the teacher of a differently seeded tiny model)."""
    student = build_tiny_llama3(tmp_path / "student", seed=5, max_seq_len=2048)
    out = tmp_path / "kd"
    r = herd_cli("train", "distill", "--model", str(student), "--teacher", str(tiny), "--data", str(data), "--out",
                 str(out), "--max-steps", "6", "--lr", "3e-3", "--max-seq-len", "1024", "--top-k", "16", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and rows[-1]["loss"] < rows[0]["loss"]
    assert (out / "merged" / "model.safetensors").is_file() and json.loads((out / "distill.json").read_text())


@pytest.mark.slow
def test_qlora_command(tiny, data, tmp_path):
    """`--qlora int4`: the adapter trains over int4 blocks; merged/ is the dequantized base plus the adapter."""
    out = tmp_path / "qlora"
    r = herd_cli("train", "sft", "--model", str(tiny), "--data", str(data), "--out", str(out), "--max-steps", "8",
                 "--lr", "1e-2", "--lora-rank", "4", "--qlora", "int4", "--max-seq-len", "1024", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]

    from herd.model.lora import load_peft_adapter, merged_state_dict
    from herd.model.quantize import quantize_model
    from herd.model.weights import load_model

    base = load_model(tiny, dtype=torch.float32)
    for block in base.layers:
        quantize_model(block, "int4")
    load_peft_adapter(base, out / "adapter")
    merged = load_model(out / "merged", dtype=torch.float32)
    want = merged_state_dict(base)
    got = merged.state_dict()
    assert all(torch.allclose(got[k], want[k], atol=1e-5) for k in want), "merged = dequantized base + adapter"
    r = herd_cli("train", "sft", "--model", str(tiny), "--data", str(data), "--out", str(tmp_path / "x"), "--qlora",
                 "int8")
    assert r.returncode == 2 and "--lora-rank" in r.stderr
