"""Pick the prompt format a tokenizer calls for: Llama 3.x chat format, or the checkpoint's Jinja template."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from herd.errors import HerdError
from herd.tokenizer.chat_format import ChatFormat
from herd.tokenizer.messages import (
    Message,
    StopReason,
    ToolDefinition,
    to_messages,
    to_tools,
)
from herd.tokenizer.templates import ChatTemplate, parse_json_tool_calls
from herd.tokenizer.tokenizer import Tokenizer

MessageLike = Message | Mapping[str, Any]
ToolLike = ToolDefinition | Mapping[str, Any]


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
        msgs, tool_defs = to_messages(messages), to_tools(tools) or None
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
        text = self.template.render(msgs, tool_defs if tool_choice != "none" else None,
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
