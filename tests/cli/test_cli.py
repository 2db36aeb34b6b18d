"""The `herd` command, run as a real subprocess."""
import json
import os
import subprocess
import sys

import pytest

from herd.tokenizer.tokenizer import Llama3Tokenizer


def herd(*args: str, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "herd.cli.main", *args],
        input=stdin, capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("loading ")]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_help_lists_commands_with_examples():
    r = herd("--help")
    assert r.returncode == 0
    for cmd in ("generate", "chat", "prompt", "models"):
        assert cmd in r.stdout
    r = herd("generate", "--help")
    assert r.returncode == 0 and "examples:" in r.stdout and "--temperature" in r.stdout


def test_models_lists_builtin_and_presets():
    r = herd("models")
    assert r.returncode == 0
    assert "smollm2-135m-instruct (default)" in r.stdout
    for p in ("llama3.1-8b", "llama3.1-70b", "llama3.1-405b", "llama3.2-1b", "llama3.2-3b"):
        assert f"random:{p} " in r.stdout
    row = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("random:llama3.1-8b "))
    assert row.split()[1:6] == ["8.03B", "29.9", "GiB", "15", "GiB"]  # params, float32, bfloat16, ...
    assert "int4" in r.stdout and "KV/1K" in r.stdout


@pytest.mark.parametrize(
    "args,needles",
    [
        (["generate", "--model", "/no/such/dir", "--prompt", "x"], ["/no/such/dir", "no such file"]),
        (["generate", "--model", "random:llama9", "--prompt", "x"], ["unknown preset 'llama9'"]),
        (["generate", "--prompt", "x", "--temperature", "-1"], ["temperature"]),
        (["generate", "--prompt", "x", "--top-p", "0"], ["top_p"]),
        (["prompt", "--messages", "/no/such.json"], ["/no/such.json", "not found"]),
        (["generate"], ["--prompt", "required"]),
        (["generate", "-p", "x", "--kv-cache-memory", "2XB"], ["not a size"]),
        (["generate", "-p", "x", "--block-size", "3"], ["block_size must be a power of two"]),
        (["frobnicate"], ["invalid choice"]),
        (["generate", "-p", "x", "--quantize", "int3"], ["--quantize", "invalid choice: 'int3'"]),
    ],
)
def test_bad_input_is_one_line_exit_2(args, needles):
    assert_one_line_error(herd(*args), *needles)


def test_bad_messages_file_is_one_line_exit_2(tmp_path):
    f = tmp_path / "m.json"
    f.write_text("{not json")
    assert_one_line_error(herd("prompt", "--messages", str(f)), str(f), "not valid JSON")
    f.write_text(json.dumps([{"role": "wizard", "content": "hi"}]))
    assert_one_line_error(herd("prompt", "--model", "random:llama3.1-8b", "--messages", str(f)), "wizard")


def test_truncated_gguf_is_one_line_exit_2(tmp_path):
    from herd.hub import smollm2_gguf_path

    bad = tmp_path / "cut.gguf"
    with open(smollm2_gguf_path(), "rb") as src:
        bad.write_bytes(src.read(3_000_000))
    assert_one_line_error(herd("generate", "--model", str(bad), "--prompt", "x"), str(bad))


def test_prompt_renders_llama3_dialog_with_tools_json(tmp_path):
    msgs = tmp_path / "m.json"
    msgs.write_text(json.dumps([
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the 100th decimal of pi?"},
    ]))
    tools = tmp_path / "t.json"
    tools.write_text(json.dumps([{"type": "brave_search"}, {"type": "wolfram_alpha"}]))
    r = herd("prompt", "--model", "random:llama3.1-8b", "--messages", str(msgs), "--tools", str(tools), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["prompt"].startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Environment: ipython\nTools: brave_search, wolfram_alpha\nCutting Knowledge Date: December 2023\n"
    )
    assert out["prompt"].endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    tok = Llama3Tokenizer.default()
    assert out["token_ids"] == tok.encode(out["prompt"], allowed_special="all")
    assert out["token_ids"][:4] == [128000, 128006, 9125, 128007]


def test_generate_greedy_is_deterministic_raw():
    a = herd("generate", "--raw", "--prompt", "The capital of France is", "--temperature", "0", "--max-tokens", "8")
    b = herd("generate", "--raw", "--prompt", "The capital of France is", "--temperature", "0", "--max-tokens", "8")
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.strip()


def test_generate_with_int4_weights_answers_like_the_full_model():
    # int4 re-packs the embedded GGUF's own Q4_1 blocks (lossless), so a short greedy answer to an
    # easy question holds; the head is 8-bit, so only its rounding differs from fp32
    r = herd("generate", "--prompt", "What is the capital of France?", "--temperature", "0", "--max-tokens", "12",
             "--quantize", "int4")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def test_chat_answers_paris_over_stdin_and_stops_at_end_of_turn():
    r = herd("chat", "--temperature", "0", "--max-tokens", "64",
             stdin="What is the capital of France?\n/exit\n")
    assert r.returncode == 0, r.stderr
    reply = r.stdout.strip()
    assert "Paris" in reply
    assert "<|im_end|>" not in reply and "<|im_start|>" not in reply  # stopped at the end-of-turn token


def test_chat_reset_clears_history():
    # greedy: the answer after /reset must equal the answer of a fresh conversation
    q = "Name one colour of the rainbow."
    fresh = herd("chat", "--temperature", "0", "--max-tokens", "24", stdin=f"{q}\n")
    r = herd("chat", "--temperature", "0", "--max-tokens", "24",
             stdin=f"My name is Zorblax and I only like green.\n/reset\n{q}\n/exit\n")
    assert r.returncode == 0 and fresh.returncode == 0, r.stderr
    assert "conversation cleared" in r.stderr
    replies = r.stdout.strip().split("\n")
    assert replies[-1] == fresh.stdout.strip().split("\n")[-1]
