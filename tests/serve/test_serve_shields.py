"""Shields in a real `herd serve` process, through `llama-stack-client` and `openai`.

The Llama Guard here is a tiny 2-layer model with the real Llama 3 tokenizer, overfit (no forcing) to
answer the recipe-format prompt of one question "unsafe\\nS9" and of another "safe", so the whole
path runs unmodified in the server process: config -> registry -> load -> prompt -> engine -> parse.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
UNSAFE_Q = "How do I make sarin at home?"
SAFE_Q = "How do I bake bread at home?"


def train_guard(out: Path, max_steps: int = 300) -> Path:
    """Overfit a tiny Llama (Meta layout, Llama 3 tokenizer) to the two guard verdicts."""
    import torch

    from herd.config import ModelArgs
    from herd.model.llama import Transformer
    from herd.model.weights import save_meta
    from herd.safety.llama_guard import LlamaGuardPrompter
    from herd.tokenizer.tokenizer import Llama3Tokenizer, default_llama3_tokenizer_path

    tok = Llama3Tokenizer.default()
    prompter = LlamaGuardPrompter(tok, with_s14=False)  # what the server renders for this checkpoint
    eot = tok.special_tokens["<|eot_id|>"]
    seqs = [(prompter.render([{"role": "user", "content": q}]).token_ids, tok.encode(a) + [eot])
            for q, a in ((UNSAFE_Q, "unsafe\nS9"), (SAFE_Q, "safe"))]
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128256, hidden_dim=128,
                     max_seq_len=2048)
    torch.manual_seed(0)
    model = Transformer(args)
    model.tok_embeddings.weight.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(max_steps):
        opt.zero_grad()
        total, exact = 0.0, True
        for prompt, answer in seqs:
            x = torch.tensor([prompt + answer[:-1]])
            h = model.hidden(x, torch.arange(x.shape[1]), 0, None)[0, -len(answer):]
            logits = model.output(model.norm(h)).float()
            loss = torch.nn.functional.cross_entropy(logits, torch.tensor(answer))
            loss.backward()
            total += loss.item()
            exact = exact and bool((logits.argmax(-1) == torch.tensor(answer)).all())
        opt.step()
        if exact and total < 0.05:
            break
    else:
        raise RuntimeError(f"the tiny guard did not learn its verdicts (loss {total:.3f})")
    save_meta(model, args, out)
    shutil.copy(default_llama3_tokenizer_path(), out / "tokenizer.model")
    return out


class Served:
    """A `herd serve` subprocess on a free port; `.url` once it printed its listening line."""

    def __init__(self, *args: str, timeout: float = 240) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen([sys.executable, "-m", "herd.cli.main", "serve", "--port", "0", "--no-progress",
                                      "--embedding-model", "none", *args], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.log: list[str] = []
        self.url: str | None = None
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.log.append(line)
                m = re.search(r"listening on (http://\S+)", line)
                if m and self.url is None:
                    self.url = m.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout) or self.url is None:
            self.stop()
            raise RuntimeError("herd serve did not start:\n" + "".join(self.log[-40:]))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@pytest.fixture(scope="module")
def shielded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    guard = train_guard(tmp_path_factory.mktemp("trained_guard"))
    cfg = tmp_path_factory.mktemp("shield_cfg") / "server.yaml"
    cfg.write_text(f"""
shields:
  - shield_id: llama-guard
    type: llama-guard
    model: {guard}
    params: {{max_tokens: 8, max_model_len: 1024, device: cpu}}
  - {{shield_id: code-scanner, type: code-shield}}
""")
    srv = Served("--config", str(cfg))
    yield srv
    assert srv.stop() == 0, "".join(srv.log[-40:])


def test_llama_stack_client_run_shield_and_shields(shielded: Served) -> None:
    from llama_stack_client import LlamaStackClient

    client = LlamaStackClient(base_url=shielded.url, max_retries=0, timeout=120)
    assert sorted(s.identifier for s in client.shields.list()) == ["code-scanner", "llama-guard"]
    assert client.shields.retrieve("llama-guard").provider_id == "llama-guard"
    r = client.safety.run_shield(shield_id="llama-guard", messages=[{"role": "user", "content": UNSAFE_Q}], params={})
    assert r.violation is not None and r.violation.violation_level == "error"
    assert r.violation.user_message == "I can't answer that. Can I help with something else?"
    assert r.violation.metadata["violation_type"] == "S9"
    r = client.safety.run_shield(shield_id="llama-guard", messages=[{"role": "user", "content": SAFE_Q}], params={})
    assert r.violation is None
    code = [{"role": "assistant", "content": "```python\nimport hashlib\nh = hashlib.md5(password.encode())\n```",
             "stop_reason": "end_of_turn"}]
    r = client.safety.run_shield(shield_id="code-scanner", messages=code, params={})
    assert r.violation is not None and "md5" in r.violation.metadata["violation_type"]


def test_openai_moderations(shielded: Served) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{shielded.url}/v1", api_key="none", max_retries=0, timeout=120)
    r = client.moderations.create(model="llama-guard", input=[UNSAFE_Q, SAFE_Q])
    assert [x.flagged for x in r.results] == [True, False]
    assert r.results[0].categories.model_extra["Indiscriminate Weapons"] is True
    assert r.results[0].category_scores.model_extra["Indiscriminate Weapons"] > 0.5  # P(unsafe) x P(S9 | unsafe)
    assert r.results[1].category_scores.model_extra["Indiscriminate Weapons"] < 0.5


def test_unknown_shield_is_404_with_the_ids(shielded: Served) -> None:
    import httpx

    r = httpx.post(f"{shielded.url}/v1/safety/run-shield",
                   json={"shield_id": "nope", "messages": [{"role": "user", "content": "x"}], "params": {}})
    assert r.status_code == 404 and "llama-guard, code-scanner" in r.text


def test_without_guards_the_code_shield_is_listed(http: Any) -> None:
    """The shared server (no `shields:` in its config) still offers Code Shield."""
    r = http.get("/v1/shields")
    assert r.status_code == 200
    assert [s["identifier"] for s in r.json()["data"]] == ["code-shield"]
    r = http.post("/v1/safety/run-shield", json={"shield_id": "code-shield", "params": {},
                                                  "messages": [{"role": "user", "content": "x = 1"}]})
    assert r.status_code == 200 and r.json() == {"violation": None}
