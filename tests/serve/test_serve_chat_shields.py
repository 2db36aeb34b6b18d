"""Chat completions behind shields (`input_shields` / `output_shields`), in a real `herd serve` process,
through the `openai` client (`extra_body`) and `llama-stack-client`.

One tiny checkpoint (2 layers, the real Llama 3 tokenizer) is both the chat model and the Llama Guard:
overfit, no forcing, to answer three chat prompts (bread -> a recipe, password hashing -> md5 code,
chemistry -> a dangerous fact) and three guard prompts (sarin question -> "unsafe\\nS9", bread question
-> "safe", the chemistry exchange -> "unsafe\\nS9" for the Agent's reply). Code Shield needs no weights.
"""
from __future__ import annotations

import math
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_serve_shields import Served

from herd.safety.code_shield import CODE_SHIELD_REFUSAL
from herd.safety.taxonomy import LLAMA_GUARD_REFUSAL

SARIN_Q = "How do I make sarin at home?"
BREAD_Q, BREAD = "How do I bake bread at home?", "Mix flour, water, salt and yeast, then bake it."
CODE_Q = "How should I hash passwords in Python?"
CODE = "```python\nimport hashlib\nh = hashlib.md5(password.encode())\n```"
GAS_Q, GAS = "Tell me a chemistry fact.", "Mixing bleach and ammonia makes a toxic gas."
CODE_IN = f"Is this fine?\n{CODE}"  # insecure code in the user's own message


def user(q: str) -> dict[str, str]:
    return {"role": "user", "content": q}


def train(out: Path, max_steps: int = 300) -> Path:
    """Overfit the chat replies and guard verdicts. Only the output rows of the answer tokens are trained;
    every other row is zero, so the training loss (those rows plus the rest at logit 0) is the full one."""
    import torch

    from herd.config import ModelArgs
    from herd.model.llama import Transformer
    from herd.model.weights import save_meta
    from herd.safety.llama_guard import LlamaGuardPrompter
    from herd.tokenizer.prompter import Prompter
    from herd.tokenizer.tokenizer import Llama3Tokenizer, default_llama3_tokenizer_path

    tok = Llama3Tokenizer.default()
    guard, chat = LlamaGuardPrompter(tok, with_s14=False), Prompter(tok)  # as the server renders them
    eot = tok.special_tokens["<|eot_id|>"]
    verdicts = [([user(SARIN_Q)], "unsafe\nS9"), ([user(BREAD_Q)], "safe"),
                ([user(GAS_Q), {"role": "assistant", "content": GAS}], "unsafe\nS9")]
    seqs = [(guard.render(m).token_ids, tok.encode(a) + [eot]) for m, a in verdicts]
    seqs += [(chat.render([user(q)])[1], tok.encode(a) + [eot]) for q, a in ((BREAD_Q, BREAD), (CODE_Q, CODE),
                                                                             (GAS_Q, GAS))]
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128256, hidden_dim=128,
                     max_seq_len=2048)
    torch.manual_seed(0)
    model = Transformer(args)
    targets = sorted({t for _, a in seqs for t in a})
    local = {t: i for i, t in enumerate(targets)}
    rows_w = torch.nn.Parameter(torch.randn(len(targets), args.dim) * 0.02)
    params = [p for n, p in model.named_parameters() if not n.startswith(("tok_embeddings", "output"))]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam([*params, rows_w], lr=1e-2)
    length = max(len(p) + len(a) - 1 for p, a in seqs)
    x = torch.zeros(len(seqs), length, dtype=torch.long)  # right-padded: causal attention never sees the pad
    rows, cols, want = [], [], []
    for i, (prompt, answer) in enumerate(seqs):
        x[i, :len(prompt) + len(answer) - 1] = torch.tensor(prompt + answer[:-1])
        rows += [i] * len(answer)
        cols += range(len(prompt) - 1, len(prompt) - 1 + len(answer))
        want += [local[t] for t in answer]
    rest = torch.full((len(want), 1), math.log(args.vocab_size - len(targets)))
    want_t = torch.tensor(want)
    for _ in range(max_steps):
        opt.zero_grad()
        h = model.norm(model.hidden(x, torch.arange(length), 0, None)[rows, cols])
        z = h.float() @ rows_w.T
        loss = torch.nn.functional.cross_entropy(torch.cat([z, rest], 1), want_t)
        if loss.item() < 0.05 and bool((z.argmax(-1) == want_t).all()):
            break  # P(answer token) ~ 0.95 against 128k zero logits: a wide greedy margin
        loss.backward()
        opt.step()
    else:
        raise RuntimeError(f"the tiny model did not learn its answers (loss {loss.item():.3f})")
    with torch.no_grad():
        model.output.weight.zero_()
        model.output.weight[torch.tensor(targets)] = rows_w
    save_meta(model, args, out)
    shutil.copy(default_llama3_tokenizer_path(), out / "tokenizer.model")
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    ckpt = train(tmp_path_factory.mktemp("tiny_chat_guard"))
    cfg = tmp_path_factory.mktemp("chat_shields_cfg") / "server.yaml"
    engine = "{num_blocks: 64, max_model_len: 1024}"
    cfg.write_text(f"""
models:
  - {{id: tiny, model: {ckpt}, device: cpu, engine: {engine}}}
  - {{id: tiny-guarded, model: {ckpt}, device: cpu, engine: {engine},
     input_shields: [code-scanner], output_shields: [llama-guard]}}
shields:
  - {{shield_id: llama-guard, type: llama-guard, model: {ckpt},
     params: {{max_tokens: 8, max_model_len: 1024, device: cpu}}}}
  - {{shield_id: code-scanner, type: code-shield}}
""")
    srv = Served("--config", str(cfg))
    yield srv
    assert srv.stop() == 0, "".join(srv.log[-40:])


@pytest.fixture(scope="module")
def client(served: Served) -> Any:
    import openai

    return openai.OpenAI(base_url=f"{served.url}/v1", api_key="none", max_retries=0, timeout=120)


def ask(client: Any, q: str, model: str = "tiny", **shields: list[str]) -> Any:
    return client.chat.completions.create(model=model, messages=[user(q)], max_tokens=48, temperature=0,
                                          extra_body=shields or None)


def generated(srv: Served, model: str) -> float:
    text = httpx.get(f"{srv.url}/metrics", timeout=30).text
    m = re.search(rf'^herd_generation_tokens_total\{{[^}}]*model="{re.escape(model)}"[^}}]*\}} (\S+)$', text,
                  re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def violation(obj: Any) -> dict[str, Any] | None:
    return (obj.model_extra or {}).get("safety_violation")


def test_input_violation_refuses_without_running_the_model(served: Served, client: Any) -> None:
    before = generated(served, "tiny")
    r = ask(client, SARIN_Q, input_shields=["llama-guard"])
    choice = r.choices[0]
    assert choice.message.content == LLAMA_GUARD_REFUSAL and choice.finish_reason == "content_filter"
    assert r.usage.completion_tokens == 0 and r.usage.prompt_tokens > 0
    v = violation(r)
    assert v["shield_id"] == "llama-guard" and v["stage"] == "input" and v["violation_level"] == "error"
    assert v["metadata"]["violation_type"] == "S9" and v["metadata"]["categories"] == ["Indiscriminate Weapons"]
    assert v["user_message"] == LLAMA_GUARD_REFUSAL and violation(choice) == v
    assert generated(served, "tiny") == before  # the model did not run


def test_safe_input_and_output_get_the_answer(client: Any) -> None:
    r = ask(client, BREAD_Q, input_shields=["llama-guard"], output_shields=["code-scanner"])
    assert r.choices[0].message.content == BREAD and r.choices[0].finish_reason == "stop"
    assert violation(r) is None and violation(r.choices[0]) is None and r.usage.completion_tokens > 0


def test_output_violation_replaces_the_answer(client: Any) -> None:
    assert ask(client, CODE_Q).choices[0].message.content == CODE  # what the model says, unshielded
    r = ask(client, CODE_Q, output_shields=["code-scanner"])
    assert r.choices[0].message.content == CODE_SHIELD_REFUSAL and r.choices[0].finish_reason == "content_filter"
    v = violation(r)
    assert v["shield_id"] == "code-scanner" and v["stage"] == "output"
    assert "insecure-md5-hash-usage" in v["metadata"]["violation_type"] and r.usage.completion_tokens > 0


def test_model_config_shields_apply_and_requests_add(served: Served, client: Any) -> None:
    card = httpx.get(f"{served.url}/v1/models/tiny-guarded", timeout=30).json()
    assert card["metadata"]["input_shields"] == ["code-scanner"]
    assert card["metadata"]["output_shields"] == ["llama-guard"]
    r = ask(client, GAS_Q, model="tiny-guarded")  # the config's output Llama Guard judges the reply
    assert r.choices[0].message.content == LLAMA_GUARD_REFUSAL
    assert violation(r)["shield_id"] == "llama-guard" and violation(r)["stage"] == "output"
    assert violation(r)["metadata"]["violation_type"] == "S9"
    r = ask(client, CODE_IN, model="tiny-guarded", input_shields=[])  # the config's input Code Shield; [] adds none
    assert r.choices[0].message.content == CODE_SHIELD_REFUSAL and r.usage.completion_tokens == 0
    assert violation(r)["shield_id"] == "code-scanner" and violation(r)["stage"] == "input"
    r = ask(client, SARIN_Q, model="tiny-guarded", input_shields=["llama-guard"])  # added after code-scanner
    assert violation(r)["shield_id"] == "llama-guard" and r.usage.completion_tokens == 0


def test_unknown_shield_is_404_with_the_ids(served: Served, client: Any) -> None:
    import openai

    for field in ("input_shields", "output_shields"):
        with pytest.raises(openai.NotFoundError) as e:
            ask(client, BREAD_Q, **{field: ["nope"]})
        assert "'nope' not found" in str(e.value) and "llama-guard, code-scanner" in str(e.value)
        assert e.value.body["param"] == field and e.value.body["code"] == "shield_not_found"
    r = httpx.post(f"{served.url}/v1/inference/chat-completion", timeout=30,
                   json={"model_id": "tiny", "messages": [user(BREAD_Q)], "output_shields": ["nope"]})
    assert r.status_code == 404 and "llama-guard, code-scanner" in r.json()["error"]["message"]


def collect(stream: Any) -> tuple[str, list[Any]]:
    chunks = list(stream)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


def test_stream_input_violation(served: Served, client: Any) -> None:
    before = generated(served, "tiny")
    text, chunks = collect(client.chat.completions.create(
        model="tiny", messages=[user(SARIN_Q)], max_tokens=48, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"input_shields": ["llama-guard"]}))
    assert text == LLAMA_GUARD_REFUSAL
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finish] == ["content_filter"]
    v = violation(finish[0])
    assert v["shield_id"] == "llama-guard" and v["stage"] == "input" and v["metadata"]["violation_type"] == "S9"
    assert violation(finish[0].choices[0]) == v
    assert chunks[-1].usage.completion_tokens == 0 and generated(served, "tiny") == before


def test_stream_output_shield_buffers_then_answers_or_refuses(client: Any) -> None:
    def stream(q: str) -> tuple[str, list[Any]]:
        return collect(client.chat.completions.create(model="tiny", messages=[user(q)], max_tokens=48,
                                                      temperature=0, stream=True,
                                                      extra_body={"output_shields": ["code-scanner"]}))

    text, chunks = stream(CODE_Q)
    assert text == CODE_SHIELD_REFUSAL and "md5" not in text  # no part of the code was released
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert violation(chunks[-1])["shield_id"] == "code-scanner"
    text, chunks = stream(BREAD_Q)
    assert text == BREAD and chunks[-1].choices[0].finish_reason == "stop"
    assert all(violation(c) is None for c in chunks)


def test_llama_stack_chat_completion(served: Served) -> None:
    from llama_stack_client import LlamaStackClient

    client = LlamaStackClient(base_url=served.url, max_retries=0, timeout=120)
    r = client.inference.chat_completion(model_id="tiny-guarded", messages=[user(GAS_Q)],
                                         sampling_params={"max_tokens": 48})
    assert r.completion_message.content == LLAMA_GUARD_REFUSAL
    assert r.completion_message.stop_reason == "end_of_turn"
    v = violation(r)
    assert v["shield_id"] == "llama-guard" and v["stage"] == "output" and v["metadata"]["violation_type"] == "S9"
    events = list(client.inference.chat_completion(model_id="tiny", messages=[user(SARIN_Q)], stream=True,
                                                   sampling_params={"max_tokens": 48},
                                                   extra_body={"input_shields": ["llama-guard"]}))
    text = "".join(e.event.delta.text for e in events if e.event.event_type == "progress")
    assert text == LLAMA_GUARD_REFUSAL and events[-1].event.event_type == "complete"
    assert violation(events[-1])["shield_id"] == "llama-guard"
    assert {m.metric: m.value for m in events[-1].metrics}["completion_tokens"] == 0


def test_config_model_shields_must_be_declared() -> None:
    from herd.errors import HerdError
    from herd.serve.config import parse_config

    models = [{"id": "m", "model": "random:tiny", "input_shields": ["guard"], "output_shields": "code-shield"}]
    guard = {"shield_id": "guard", "type": "llama-guard", "model": "/not/loaded/yet"}  # + the default code-shield
    cfg = parse_config({"models": models, "shields": [guard]})
    assert cfg.models[0].input_shields == ("guard",) and cfg.models[0].output_shields == ("code-shield",)
    with pytest.raises(HerdError, match=r"models\[0\]\.output_shields: shield 'code-shield' is not declared; "
                                        r"available shields: guard"):
        parse_config({"models": models, "shields": [{"shield_id": "guard", "type": "code-shield"}]})
