"""`herd shield`: taxonomy, one-line errors with exit 2, Code Shield verdicts, Llama Guard prompt and run."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from herd.cli.main import main
from herd.config import ModelArgs, RopeScaling
from herd.hub import random_model
from herd.model.weights import save_meta
from herd.tokenizer.tokenizer import Llama3Tokenizer, default_llama3_tokenizer_path

MD5 = "import hashlib\n\ndef store(password):\n    return hashlib.md5(password.encode()).hexdigest()\n"


def herd(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "herd.cli.main", *args], capture_output=True, text=True, check=False,
                          timeout=timeout, env=env)


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("loading ")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def guard_dir(tmp_path_factory) -> Path:
    """A tiny random Llama-Guard-shaped Meta checkpoint with the Llama 3 tokenizer."""
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128256, multiple_of=32,
                     rope_scaling=RopeScaling(factor=32.0), tie_embeddings=True, max_seq_len=4096)
    d = tmp_path_factory.mktemp("cli_guard")
    save_meta(random_model(args, dtype=torch.float32, device=torch.device("cpu")), args, d)
    shutil.copy(default_llama3_tokenizer_path(), d / "tokenizer.model")
    return d


def test_help_and_taxonomy() -> None:
    r = herd("shield", "--help")
    assert r.returncode == 0 and "examples:" in r.stdout and "--list-categories" in r.stdout
    r = herd("shield", "--list-categories")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].startswith("S1   Violent Crimes") and lines[13].startswith("S14  Code Interpreter Abuse")
    r = herd("shield", "--list-categories", "--json")
    assert [c["code"] for c in json.loads(r.stdout)] == [f"S{i}" for i in range(1, 15)]


def test_bad_input_is_a_one_line_error(tmp_path) -> None:
    assert_one_line_error(herd("shield", "--text", "hi"), "--shield")
    assert_one_line_error(herd("shield", "--shield", "llama-guard", "--text", "hi"), "needs --model")
    assert_one_line_error(herd("shield", "--shield", "code-shield"), "--text TEXT or --messages FILE")
    assert_one_line_error(herd("shield", "--shield", "code-shield", "--text", "x", "--exclude", "S1"),
                          "--exclude applies to --shield llama-guard only")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"role": "wizard", "content": "x"}]')
    assert_one_line_error(herd("shield", "--shield", "code-shield", "--messages", str(bad)), "role must be")
    assert_one_line_error(herd("shield", "--shield", "code-shield", "--messages", str(tmp_path / "none.json")),
                          "file not found")
    assert_one_line_error(herd("shield", "--shield", "prompt-guard", "--model", str(tmp_path), "--text", "x"),
                          "no config.json")
    r = herd("shield", "--shield", "nemo", "--text", "x")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_code_shield_verdicts(tmp_path) -> None:
    r = herd("shield", "--shield", "code-shield", "--text", MD5)
    assert r.returncode == 1 and r.stdout.startswith("unsafe: ") and "CWE-" in r.stdout and "line 4" in r.stdout
    msgs = tmp_path / "reply.json"
    msgs.write_text(json.dumps([{"role": "user", "content": "add"},
                                {"role": "assistant", "content": "```python\ndef add(a, b):\n    return a + b\n```"}]))
    r = herd("shield", "--shield", "code-shield", "--messages", str(msgs), "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == {"violation": None}


def test_llama_guard_show_prompt(guard_dir, capsys) -> None:
    assert main(["shield", "--shield", "llama-guard", "--model", str(guard_dir), "--text", "hi", "--show-prompt",
                 "--exclude", "S1,S2"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|> Task:")
    assert "S1:" not in text and "S3: Sex Crimes. " in text and "S14" not in text
    assert main(["shield", "--shield", "llama-guard", "--model", str(guard_dir), "--text", "hi", "--show-prompt",
                 "--json", "--param", "with_s14=true", "--param", "prompt_format=chat"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "chat" and out["categories"][-1] == "S14" and out["token_ids"][0] == 128000


def test_llama_guard_run_with_a_forced_answer(guard_dir, capsys, monkeypatch) -> None:
    from herd.model.llama import Transformer

    tok = Llama3Tokenizer.default()
    said = tok.encode("unsafe\nS9") + [tok.special_tokens["<|eot_id|>"]]
    nxt = dict(zip([128007, *said[:-1]], said))  # test-only logits processor: after token a, say b
    original = Transformer.forward_flat

    def forced(self, tokens, positions, cache, logits_idx):
        logits = original(self, tokens, positions, cache, logits_idx)
        for row, prev in enumerate(tokens[logits_idx].tolist()):
            if prev in nxt:
                logits[row] = -1e9
                logits[row, nxt[prev]] = math.log(1.0)
        return logits

    monkeypatch.setattr(Transformer, "forward_flat", forced)
    argv = ["shield", "--shield", "llama-guard", "--model", str(guard_dir), "--device", "cpu", "--text", "sarin?"]
    assert main(argv) == 1
    assert capsys.readouterr().out.strip() == "unsafe: S9 Indiscriminate Weapons"
    assert main([*argv, "--json"]) == 1
    v = json.loads(capsys.readouterr().out)["violation"]
    assert v["violation_level"] == "error" and v["metadata"]["violation_type"] == "S9"
    assert main([*argv, "--exclude", "S9"]) == 0
    assert capsys.readouterr().out.strip() == "safe"
