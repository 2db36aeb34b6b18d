"""Prompts longer than one prefill chunk (2048 tokens by default) through `herd serve` and `herd generate`, for
every precision; and long prompts next to short chats (a crash in one step used to fail all of them)."""
from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from servekit import REPO, ServerProcess

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinymodels import build_tiny_llama3, prompt_of

PRECISIONS = ("none", "bf16", "int8", "int4")
LENGTHS = (2047, 2048, 2049, 5000, 8000)
MAX_TOKENS = 4


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama3(tmp_path_factory.mktemp("tiny_long_serve"))


@pytest.fixture(scope="module")
def expected(tiny_dir: Path) -> dict[tuple[str, int], str]:
    """Each precision's greedy text for each length, computed in process with a one-step prefill."""
    from herd import hub
    from herd.config import EngineConfig
    from herd.engine.engine import LLMEngine
    from herd.engine.request import SamplingParams

    out = {}
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    for q in PRECISIONS:
        model, tok = hub.load(tiny_dir, device="cpu", quantize=q)
        engine = LLMEngine(model, tok, EngineConfig(num_blocks=600, max_num_batched_tokens=8192))
        for n in LENGTHS:
            out[q, n] = engine.run_one(prompt_of(n), params)[0].text
    return out


@pytest.fixture(scope="module")
def server(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    models = "\n".join(f"  - {{id: tiny-{q}, model: {tiny_dir}, quantize: {q}, engine: {{num_blocks: 1200}}}}"
                       for q in PRECISIONS)
    cfg = tmp_path_factory.mktemp("long_cfg") / "server.yaml"
    cfg.write_text(f"models:\n{models}\n  - {{id: smollm2-135m-instruct, engine: {{num_blocks: 256}}}}\n")
    srv = ServerProcess("--config", str(cfg), "--embedding-model", "none")
    yield srv
    assert srv.stop() == 0, srv.output()[-3000:]


@pytest.mark.parametrize("quantize", PRECISIONS)
def test_long_prompts_through_the_server(server, expected, quantize):
    with httpx.Client(base_url=server.url, timeout=300) as c:
        for n in LENGTHS:
            r = c.post("/v1/completions", json={"model": f"tiny-{quantize}", "prompt": prompt_of(n),
                                                "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True})
            assert r.status_code == 200, f"{n} tokens: {r.text}"
            body = r.json()
            assert body["usage"]["prompt_tokens"] == n and body["usage"]["completion_tokens"] == MAX_TOKENS
            assert body["choices"][0]["text"] == expected[quantize, n], n


def test_long_prompts_beside_short_chats_all_succeed(server, expected):
    """Two long prompts and three short chats at once (the reported case: all five used to fail)."""
    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as c:
            long = [c.post("/v1/completions", json={"model": "tiny-int4", "prompt": prompt_of(n), "temperature": 0,
                                                    "max_tokens": MAX_TOKENS, "ignore_eos": True}) for n in (5000, 8000)]
            short = [c.post("/v1/chat/completions", json={
                "model": "smollm2-135m-instruct", "max_tokens": 8, "temperature": 0,
                "messages": [{"role": "user", "content": f"Say {w}."}]}) for w in ("one", "two", "three")]
            return await asyncio.gather(*long, *short)

    rs = asyncio.run(main())
    assert [r.status_code for r in rs] == [200] * 5, [r.text for r in rs if r.status_code != 200]
    assert [r.json()["choices"][0]["text"] for r in rs[:2]] == [expected["int4", 5000], expected["int4", 8000]]


def _text_prompt(n: int) -> str:
    """A text that the Llama 3 tokenizer encodes to exactly n tokens with BOS."""
    from herd.tokenizer.tokenizer import Llama3Tokenizer

    text = "a" + " a" * (n - 2)
    assert len(Llama3Tokenizer.default().encode(text, bos=True)) == n
    return text


@pytest.mark.parametrize("n", [n if n == 5000 else pytest.param(n, marks=pytest.mark.slow) for n in LENGTHS])
@pytest.mark.parametrize("quantize", PRECISIONS)
def test_long_prompts_through_the_cli(tiny_dir: Path, quantize: str, n: int) -> None:
    """5000 tokens for every precision by default; every length with make test-slow."""
    from herd import LLM
    from herd.engine.request import SamplingParams

    text = _text_prompt(n)
    want = LLM(str(tiny_dir), quantize=quantize).generate(
        text, SamplingParams(temperature=0, max_tokens=MAX_TOKENS), use_tqdm=False)[0].text
    r = subprocess.run([sys.executable, "-m", "herd.cli.main", "generate", "--model", str(tiny_dir), "--raw",
                        "--quantize", quantize, "--prompt", text, "--max-tokens", str(MAX_TOKENS), "--temperature", "0"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert want.strip() and "Traceback" not in r.stderr and r.stdout.strip() == want.strip()
