"""Helpers for the server tests (and the reliability suite): real `herd serve` processes on free ports,
the tiny tool-calling model, the main server's config, and the names the tests share."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
API_KEY = "test-key-123"
TINY_ID = "herd/tiny-tools"  # an id with a '/', as Llama Stack ids often have
SMOL_ID = "smollm2-135m-instruct"
EMBED_ID = "all-MiniLM-L6-v2"

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}},
                   "required": ["city"]}}}
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOL_CALL_TEXT = '{"type": "function", "name": "get_weather", "parameters": {"city": "Paris"}}'


class ServerProcess:
    """A `herd serve` subprocess; `.url` is its base URL once it printed the listening line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, timeout: float = 240):
        self.log: list[str] = []
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
                    "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "herd.cli.main", "serve", "--port", "0", "--no-progress", *args],
            cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self._ready = threading.Event()
        self.url: str | None = None
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout) or self.url is None:
            self.stop(kill=True)
            raise RuntimeError("herd serve did not start:\n" + "".join(self.log[-40:]))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)
            m = re.search(r"listening on (http://\S+)", line)
            if m and self.url is None:
                self.url = m.group(1)
                self._ready.set()
        self._ready.set()  # exited

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def output(self) -> str:
        return "".join(self.log)

    def stop(self, kill: bool = False, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


# ---- the tiny tool-calling model -------------------------------------------------------------


def home_server(model: Path, home: Path) -> ServerProcess:
    """`herd serve --model MODEL` (no embedding model) with its own HERD_HOME (state that survives restarts)."""
    return ServerProcess("--model", str(model), "--embedding-model", "none", env={"HERD_HOME": str(home)})


def stack_client(srv: ServerProcess, timeout: float = 120) -> Any:
    """The real llama-stack-client on a server, no retries."""
    from llama_stack_client import LlamaStackClient

    return LlamaStackClient(base_url=srv.url, max_retries=0, timeout=timeout)


def train_tool_model(out_dir: Path, max_steps: int = 300) -> Path:
    """Overfit a 2-layer, dim-64 Llama with the real Llama 3 tokenizer on one conversation, so that it
    answers WEATHER_QUESTION (with WEATHER_TOOL offered) with a Llama 3.1 JSON tool call, greedily."""
    import torch

    from herd.config import ModelArgs
    from herd.model.llama import Transformer
    from herd.model.weights import save_hf
    from herd.tokenizer.prompter import Prompter
    from herd.tokenizer.tokenizer import Llama3Tokenizer

    tok = Llama3Tokenizer.default()
    prompter = Prompter(tok)
    _, prompt = prompter.render(WEATHER_QUESTION, tools=[WEATHER_TOOL], tool_prompt_format="json")
    completion = [tok.special_tokens["<|python_tag|>"], *tok.encode(TOOL_CALL_TEXT), tok.special_tokens["<|eom_id|>"]]
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128256, hidden_dim=128,
                     rope_theta=500000.0, max_seq_len=2048)
    torch.manual_seed(0)
    model = Transformer(args)
    model.tok_embeddings.weight.requires_grad_(False)  # random input embeddings are fine; fewer Adam states
    seq = torch.tensor([prompt + completion])
    x, target, n = seq[:, :-1], torch.tensor(completion), len(completion)
    positions = torch.arange(x.shape[1])
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=1e-2)
    for step in range(max_steps):
        h = model.hidden(x, positions, 0, None)[0, -n:]  # only the completion's logits are trained
        logits = model.output(model.norm(h)).float()
        loss = torch.nn.functional.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (logits.argmax(-1) == target).all() and loss.item() < 0.02:
            break
    else:
        raise RuntimeError(f"the tiny model did not learn its tool call (loss {loss.item():.3f})")
    save_hf(model, args, out_dir)
    return out_dir


def main_config(tool_dir: Path) -> str:
    return f"""
version: 1
server:
  api_keys: ["${{env.HERD_TEST_API_KEY}}"]
  drain_timeout: ${{env.HERD_TEST_DRAIN:=10}}
models:
  - id: {SMOL_ID}
    engine: {{num_blocks: 640, max_num_seqs: 40}}
  - id: {TINY_ID}
    model: {tool_dir}
    engine: {{num_blocks: 256, max_model_len: 2048}}
  - {{id: {EMBED_ID}, type: embedding}}
"""


def wait_until(predicate: Any, timeout: float = 30, interval: float = 0.2) -> bool:
    """Poll until predicate() is truthy."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
