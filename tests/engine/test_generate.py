"""The generation loop on real weights against transformers, and the incremental detokenizer."""
import pytest
import torch

from herd import hub
from herd.llm import LLM
from herd.engine.generate import Detokenizer, generate
from herd.engine.request import SamplingParams
from herd.tokenizer.tokenizer import Llama3Tokenizer


@pytest.fixture(scope="module")
def smollm():
    return LLM("smollm2-135m-instruct", device="cpu")


def test_smollm2_greedy_32_tokens_equal_transformers_on_the_same_gguf(smollm):
    from transformers import AutoModelForCausalLM

    path = hub.smollm2_gguf_path()
    ref = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    prompt = smollm.tokenizer.encode("The three primary colours are")
    with torch.no_grad():
        want = ref.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False,
                            eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    got = generate(smollm.model, smollm.tokenizer, prompt,
                   SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)).token_ids
    assert got == want


def test_chat_stops_at_end_of_turn_token(smollm):
    r = smollm.chat([{"role": "user", "content": "What is the capital of France?"}],
                    SamplingParams(temperature=0, max_tokens=64))
    assert r.output.finish_reason == "stop"
    assert r.output.stop_token_id == smollm.tokenizer.special_tokens["<|im_end|>"]
    assert "Paris" in r.message.content


def test_stream_concatenation_equals_output(smollm):
    params = SamplingParams(temperature=0.8, top_p=0.95, seed=11, max_tokens=24)
    streamed = "".join(ev.delta_text for ev in smollm.stream("Once upon a time", params))
    assert streamed == smollm.generate("Once upon a time", params, use_tqdm=False)[0].text


def test_seeded_sampling_reproduces(smollm):
    p = SamplingParams(temperature=1.0, top_p=1.0, seed=5, max_tokens=16, ignore_eos=True)
    a, b = smollm.generate(["Hello", "Hello"], p, use_tqdm=False)
    assert a.token_ids == b.token_ids
    c = smollm.generate("Hello", SamplingParams(temperature=1.0, top_p=1.0, seed=6, max_tokens=16,
                                                 ignore_eos=True), use_tqdm=False)[0]
    assert c.token_ids != a.token_ids


def test_stop_string_is_cut_and_never_leaks(smollm):
    p = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    full = smollm.generate("1, 2, 3, 4, 5,", p, use_tqdm=False)[0].text
    assert " 8" in full
    stopped = smollm.generate("1, 2, 3, 4, 5,", SamplingParams(temperature=0, max_tokens=48, stop=[" 8"]),
                              use_tqdm=False)[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == full[: full.index(" 8")]
    streamed = "".join(e.delta_text for e in smollm.stream("1, 2, 3, 4, 5,", SamplingParams(
        temperature=0, max_tokens=48, stop=[" 8"])))
    assert streamed == stopped.text


def test_max_tokens_finishes_with_length(smollm):
    out = smollm.generate("Tell me a long story.", SamplingParams(temperature=0, max_tokens=5,
                                                                   ignore_eos=True), use_tqdm=False)[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 5


def test_detokenizer_never_splits_multibyte_characters():
    tok = Llama3Tokenizer.default()
    text = "naïve café 東京タワー 🦙🦙 ok"
    ids = tok.encode(text)
    multi = [i for i in ids if len(tok.token_bytes(i).decode("utf-8", errors="ignore")) == 0]
    assert multi, "expected some tokens that are partial UTF-8 sequences"
    d = Detokenizer(tok)
    deltas = [d.add(i) for i in ids] + [d.finish()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in x for x in deltas)


def test_detokenizer_holds_back_a_possible_stop_string():
    tok = Llama3Tokenizer.default()
    d = Detokenizer(tok, stop=["STOP"])
    shown = ""
    for i in tok.encode("abc ST"):
        shown += d.add(i)
    assert "ST" not in shown  # could still become STOP
    for i in tok.encode("OP and more"):
        shown += d.add(i)
    assert d.stopped and shown == "abc " and d.text == "abc "
