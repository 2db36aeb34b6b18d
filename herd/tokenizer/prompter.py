"""Pick the prompt format a tokenizer calls for: Llama 3.x chat format, or the checkpoint's Jinja template."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from herd.errors import HerdError
from herd.tokenizer.chat_format import (
    ChatFormat,
    Message,
    StopReason,
    ToolDefinition,
    messages_from_openai,
    tools_from_openai,
)
from herd.tokenizer.templates import ChatTemplate, parse_json_tool_calls
from herd.tokenizer.tokenizer import Tokenizer

MessageLike = Message | Mapping[str, Any]
ToolLike = ToolDefinition | Mapping[str, Any]


def as_messages(messages: Sequence[MessageLike]) -> list[Message]:
    """OpenAI-style dicts or herd Messages (mixed) to Messages."""
    if not messages:
        raise HerdError("messages must be a non-empty list")
    out: list[Message] = []
    for i, m in enumerate(messages):
        if isinstance(m, Message):
            out.append(m)
        elif isinstance(m, Mapping):
            try:
                out.extend(messages_from_openai([dict(m)]))
            except HerdError as e:  # re-point the index at the caller's list
                raise HerdError(str(e).replace("messages[0]", f"messages[{i}]", 1)) from None
        else:
            raise HerdError(f"messages[{i}] must be an object, got {type(m).__name__}")
    return out


def as_tools(tools: Sequence[ToolLike] | None) -> list[ToolDefinition] | None:
    if not tools:
        return None
    if all(isinstance(t, ToolDefinition) for t in tools):
        return list(tools)  # type: ignore[arg-type]
    return tools_from_openai([t if isinstance(t, Mapping) else _tool_dict(t) for t in tools])


def _tool_dict(t: ToolDefinition) -> dict[str, Any]:
    if t.is_builtin:
        return {"type": t.tool_name}
    fn = {"name": t.tool_name, "description": t.description, "parameters": t.parameters}
    return {"type": "function", "function": fn}


class Prompter:
    """Renders conversations for one tokenizer and parses the model's replies back into Messages."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.chat_format = ChatFormat(tokenizer) if tokenizer.is_llama3() else None
        self.template = (
            ChatTemplate.from_tokenizer(tokenizer)
            if self.chat_format is None and tokenizer.chat_template
            else None
        )

    @property
    def kind(self) -> str:
        return "llama3" if self.chat_format else "jinja" if self.template else "none"

    def render(
        self,
        messages: Sequence[MessageLike],
        *,
        tools: Sequence[ToolLike] | None = None,
        tool_prompt_format: str = "json",
        tool_choice: str = "auto",
        add_generation_prompt: bool = True,
        today: date | None = None,
    ) -> tuple[str, list[int]]:
        """The exact prompt text and its token ids."""
        msgs, tool_defs = as_messages(messages), as_tools(tools)
        if self.chat_format is not None:
            kw = dict(today=today, tool_choice=tool_choice, add_generation_prompt=add_generation_prompt)
            ids = self.chat_format.encode_dialog_prompt(msgs, tool_defs, tool_prompt_format, **kw)
            return self.chat_format.render_dialog(msgs, tool_defs, tool_prompt_format, **kw), ids
        if self.template is None:
            raise HerdError("this model has neither the Llama 3 vocabulary nor a chat template; "
                            "use a raw prompt (herd generate --raw)")
        # a template that ignores `tools` gets them as a system-prompt block (see herd.tokenizer.templates);
        # the text messages and tools carry is marked literal: its special-token text stays plain text
        tok = self.tokenizer
        text = self.template.render(messages, tool_defs if tool_choice != "none" else None,
                                    add_generation_prompt=add_generation_prompt, tool_choice=tool_choice,
                                    literal=tok.mark_literal)
        return tok.unmark(text), tok.encode_marked(text)

    def encode(self, messages: Sequence[MessageLike], **kw: Any) -> list[int]:
        """Prompt ids for a conversation (see render)."""
        return self.render(messages, **kw)[1]

    def parse(self, output: Any, *, tools_offered: bool = True) -> Message:
        """An assistant Message (content, tool_calls, stop_reason) from a CompletionOutput."""
        default: StopReason = "out_of_tokens" if output.finish_reason == "length" else "end_of_turn"
        if self.chat_format is not None:
            # with a stop token the ids carry <|eot_id|>/<|eom_id|>; after a stop string only the text counts
            raw = output.token_ids if output.stop_token_id is not None else output.text
            return self.chat_format.decode_assistant_message(raw, default)
        calls = parse_json_tool_calls(output.text) if tools_offered else None
        if calls:
            return Message("assistant", "", tool_calls=calls, stop_reason=default)
        return Message("assistant", output.text, stop_reason=default)
