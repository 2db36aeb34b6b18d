"""Chat completions: a request becomes a prompt (via the model's Prompter) and SamplingParams; engine
outputs become assistant messages with tool calls, streamed as deltas.

Prompt formatting and reply parsing live in herd.tokenizer (Prompter / chat_format); this module only
decides what to ask for (tool_choice required/named: a JSON-schema grammar over the offered tools) and
when streamed text may still be a tool call (then it is held back until it parses or cannot).

Shields (`input_shields` / `output_shields`, per model in the config plus per request): a violation on
the input answers with the shield's refusal without running the model; output shields check each reply
before any of it is released (streams are buffered) and replace a violating one by the refusal.
Refused choices finish with `content_filter` and carry the `safety_violation` extension.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from herd.engine.request import CompletionOutput, SamplingParams
from herd.errors import HerdError
from herd.serve.errors import APIError, bad_request
from herd.serve.generation import (
    CallContext,
    LogprobEntry,
    Usage,
    check_budget,
    check_text_length,
    first_then_rest,
    generate,
    new_logprobs,
    response_format_of,
    sampling_params,
    until_disconnected,
)
from herd.serve.models import LLMModel
from herd.tokenizer.messages import Message, ToolCall, ToolDefinition, to_tools

if TYPE_CHECKING:
    from herd.safety.shields import ShieldRegistry

# what a reply that is (or may become) a tool call starts with, in the formats herd parses
TOOL_STARTS = ("<|python_tag|>", "<function=", "<tool_call>", "{", "[")
_CALL_BODIES = ("{", "[", "<function=", "<tool_call>")
REFUSED = "content_filter"  # OpenAI's finish_reason for a reply a filter stopped
# the most calls a forced reply may list: a small model can repeat a call until max_tokens
MAX_PARALLEL_CALLS = 8


@dataclass
class ChatPlan:
    """A validated chat request, ready for the engine."""

    model: LLMModel
    prompt_ids: list[int]
    params: SamplingParams
    tools: list[ToolDefinition]
    parse_tools: bool  # look for tool calls in the reply
    request_id: str
    created: int = field(default_factory=lambda: int(time.time()))
    forced: bool = False  # tool_choice required / a named tool: the grammar makes the reply a call
    parallel: bool = True  # several calls in one reply (OpenAI parallel_tool_calls); False keeps the first
    warnings: list[str] = field(default_factory=list)  # what the request got that it did not ask for

    @property
    def tool_names(self) -> set[str]:
        return {t.tool_name for t in self.tools}


def tool_choice_value(choice: Any, tools: Sequence[ToolDefinition]) -> str:
    """'auto' | 'none' | 'required' | a tool name; naming a tool that was not offered is a 400."""
    if choice is None:
        return "auto" if tools else "none"
    if not isinstance(choice, str):  # {"type": "function", "function": {"name"}}
        choice = choice.function.name
    if choice in ("auto", "none"):
        return choice
    if not tools:
        raise bad_request(f"tool_choice {choice!r} needs tools; this request offers none", "tool_choice")
    if choice != "required" and choice not in {t.tool_name for t in tools}:
        raise bad_request(f"tool_choice names {choice!r}, which is not among the offered tools "
                          f"({', '.join(t.tool_name for t in tools)})", "tool_choice")
    return choice


def _closed(node: Any) -> Any:
    """A copy of a JSON schema whose objects with listed properties take no others unless they say so."""
    if isinstance(node, list):
        return [_closed(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: (_closed(v) if k not in ("enum", "const", "default", "examples", "required") else v)
           for k, v in node.items()}
    if isinstance(node.get("properties"), dict) and "additionalProperties" not in node:
        out["additionalProperties"] = False
    return out


def _params_schema(tool: ToolDefinition) -> dict[str, Any]:
    closed = {"additionalProperties": False}  # a forced call ends when its arguments do
    if tool.tool_name == "code_interpreter":
        return {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"], **closed}
    if tool.is_builtin:
        return {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"], **closed}
    # as OpenAI strict mode: no invented arguments, at any level (unless the schema allows them)
    schema = _closed(tool.parameters) if tool.parameters else {"type": "object", "properties": {}}
    schema.setdefault("type", "object")
    schema.setdefault("additionalProperties", False)
    return schema


def forced_call_format(kind: str, tools: Sequence[ToolDefinition], choice: str,
                       parallel: bool = True) -> tuple[dict[str, Any], list[str]]:
    """A json_schema response_format allowing a call of an offered tool (or the named one) — with
    tool_choice "required" and parallel calls allowed, also a JSON list of one or more calls — and a
    note per tool schema that had to be relaxed to compile (`satisfiable_schema`).

    Llama 3.x: the 3.1 JSON custom-tool call {"type": "function", "name", "parameters"};
    Jinja-template models: {"name", "arguments"}, the shape their templates and parsers use.
    """
    from herd.engine.structured import satisfiable_schema

    options, notes = [], []
    for i, t in enumerate(tools):
        if choice != "required" and t.tool_name != choice:
            continue
        where = f"tools[{i}] ({t.tool_name}): parameters"
        params, relaxed = satisfiable_schema(_params_schema(t), where)
        notes += relaxed
        if kind == "llama3":
            props = {"type": {"const": "function"}, "name": {"const": t.tool_name}, "parameters": params}
        else:
            props = {"name": {"const": t.tool_name}, "arguments": params}
        options.append({"type": "object", "properties": props, "required": list(props), "additionalProperties": False})
    one = options[0] if len(options) == 1 else {"anyOf": options}
    schema = {"anyOf": [one, {"type": "array", "items": one, "minItems": 1, "maxItems": MAX_PARALLEL_CALLS}]} \
        if parallel and choice == "required" else one
    return {"type": "json_schema", "json_schema": {"name": "tool_call", "schema": schema}}, notes


def plan_chat(
    model: LLMModel,
    messages: Sequence[Message],
    *,
    tools: Sequence[ToolDefinition | dict[str, Any]] | None,
    tool_choice: Any,
    tool_prompt_format: str | None,
    response_format: dict[str, Any] | None,
    max_tokens: int | None,
    max_tokens_param: str,
    sampling: dict[str, Any],
    request_id: str,
    parallel_tool_calls: bool | None = None,
) -> ChatPlan:
    """Render the prompt, pick the grammar, check the context budget: everything before the engine.

    A forced call's grammar relaxes a tool schema that cannot be compiled (the plan's `warnings` say
    how) instead of refusing the request."""
    check_text_length(model, sum(len(m.content) + len(m.context or "") for m in messages), "messages")
    tool_defs = to_tools(tools)
    choice = tool_choice_value(tool_choice, tool_defs)
    forced = choice not in ("auto", "none")
    parallel = parallel_tool_calls is not False
    fmt = response_format_of(response_format)
    warnings: list[str] = []
    if forced:
        if fmt is not None:
            raise bad_request("response_format cannot be combined with tool_choice 'required' or a named tool",
                              "response_format")
        call_format, warnings = forced_call_format(model.prompter.kind, tool_defs, choice, parallel)
        fmt = response_format_of(call_format, "tools")
    try:
        _, ids = model.prompter.render(messages, tools=tool_defs or None,
                                       tool_prompt_format=tool_prompt_format or model.spec.tool_prompt_format,
                                       tool_choice=choice)
    except HerdError as e:
        raise bad_request(str(e), e.param) from None
    max_tokens = check_budget(model, len(ids), max_tokens, max_tokens_param)
    parse = bool(tool_defs) and choice != "none" and (forced or fmt is None)
    # a reply that may be a tool call keeps its control tokens (<|python_tag|>) for the parser
    params = sampling_params(max_tokens=max_tokens, response_format=fmt, skip_special_tokens=not parse, **sampling)
    return ChatPlan(model, ids, params, tool_defs if choice != "none" else [], parse, request_id, forced=forced,
                    parallel=parallel, warnings=warnings)


@dataclass
class ChoiceDelta:
    """What one step adds to one choice: content, newly recognised tool calls, logprobs, the finish."""

    index: int
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    first_call_index: int = 0  # index of tool_calls[0] among the choice's calls
    logprobs: list[LogprobEntry] = field(default_factory=list)
    finish_reason: str | None = None  # OpenAI: stop / length / tool_calls / content_filter
    stop_reason: str | None = None  # Llama Stack: end_of_turn / end_of_message / out_of_tokens
    violation: dict[str, Any] | None = None  # the `safety_violation` extension of a refused choice
    partial_call: tuple[str, str] | None = None  # (name, arguments text) of a forced call max_tokens cut off

    def add(self, d: ChoiceDelta) -> None:
        """Merge a later delta of the same choice into this one."""
        self.text += d.text
        self.tool_calls += d.tool_calls
        self.logprobs += d.logprobs
        self.finish_reason = d.finish_reason or self.finish_reason
        self.stop_reason = d.stop_reason or self.stop_reason
        self.partial_call = d.partial_call or self.partial_call


class ChoiceState:
    """Turns one completion's step outputs into deltas, holding back text that may be a tool call."""

    def __init__(self, plan: ChatPlan, index: int):
        self.plan, self.index = plan, index
        self.mode = "undecided" if plan.parse_tools else "text"
        self.buffer = ""
        self.calls: list[ToolCall] = []
        self.logprobs: list[LogprobEntry] = []
        self.seen = 0
        self.done = False
        self.message = Message("assistant", "")
        self.finish_reason: str | None = None
        self.violation: dict[str, Any] | None = None  # set by refuse()
        self.partial_call: tuple[str, str] | None = None  # see ChoiceDelta.partial_call

    def refuse(self, violation: Any, stage: str) -> ChoiceState:
        """Replace the reply by a shield's refusal (a herd.safety ShieldViolation; stage input/output)."""
        from herd.serve.safety import violation_extension

        self.done = True
        self.calls, self.logprobs = [], []
        self.message = Message("assistant", violation.user_message, stop_reason="end_of_turn")
        self.finish_reason = REFUSED
        self.violation = {**violation_extension(violation), "stage": stage}
        return self

    def refusal_delta(self) -> ChoiceDelta:
        """The whole refused choice as one delta."""
        return ChoiceDelta(self.index, text=self.message.content, finish_reason=self.finish_reason,
                           stop_reason="end_of_turn", violation=self.violation)

    def step(self, out: CompletionOutput) -> ChoiceDelta | None:
        """The delta for this step's output (None when nothing new)."""
        if self.done or (len(out.token_ids) == self.seen and not out.finished):
            return None
        d = ChoiceDelta(self.index, first_call_index=len(self.calls))
        d.logprobs = new_logprobs(out, self.seen, self.plan.model.tokenizer.stop_ids)
        self.logprobs += d.logprobs
        self.seen = len(out.token_ids)
        text = out.delta_text
        if self.mode == "text":
            d.text = text
        else:
            self.buffer += text
            if self.mode == "undecided":
                self.mode = _classify(self.buffer)
                if self.mode == "text":
                    d.text, self.buffer = self.buffer, ""
            if self.mode == "tool" and any(c in text for c in "}])>"):
                self._recognise(d)
        if out.finished:
            self._finish(out, d)
        return d

    def _parse(self, output: Any) -> Message:
        msg = self.plan.model.prompter.parse(output, tools_offered=True)
        if msg.tool_calls and not all(c.tool_name in self.plan.tool_names for c in msg.tool_calls):
            return Message("assistant", output.text, stop_reason=msg.stop_reason)  # a call of nothing offered
        calls = unique_calls(msg.tool_calls)
        if not self.plan.parallel:  # parallel_tool_calls false: the first call
            calls = calls[:1]
        if len(calls) < len(msg.tool_calls):
            return Message("assistant", msg.content, tool_calls=calls, stop_reason=msg.stop_reason)
        return msg

    def _recognise(self, d: ChoiceDelta) -> None:
        body = self.buffer.lstrip().removeprefix("<|python_tag|>").lstrip()
        if not body.startswith(_CALL_BODIES):
            return  # e.g. code after <|python_tag|>: complete only at the end
        calls = self._parse(SimpleNamespace(text=self.buffer, token_ids=[], stop_token_id=None,
                                            finish_reason=None)).tool_calls
        if len(calls) > len(self.calls):
            d.tool_calls += calls[len(self.calls):]
            self.calls += calls[len(self.calls):]

    def _finish(self, out: CompletionOutput, d: ChoiceDelta) -> None:
        self.done = True
        if self.plan.parse_tools:
            msg = self._parse(out)
        else:  # the text as generated; the parse only tells end_of_turn / end_of_message / out_of_tokens
            stop = self.plan.model.prompter.parse(out, tools_offered=False).stop_reason
            msg = Message("assistant", out.text, stop_reason=stop)
        if msg.tool_calls:
            new = msg.tool_calls[len(self.calls):]
            d.tool_calls += new
            self.calls += new
            if self.mode != "text" and msg.content:
                d.text += msg.content
        elif self.calls:  # recognised early, then the whole reply stopped parsing: keep what was sent
            pass
        elif self.mode != "text":
            d.text += msg.content  # never a tool call after all: the held-back text is the content
        if self.calls:
            msg = Message("assistant", msg.content if msg.tool_calls else "", tool_calls=self.calls,
                          stop_reason=msg.stop_reason)
        if self.plan.forced and not self.calls and out.finish_reason == "length":
            msg = self._cut_off(out.text, d)
        self.message = msg
        self.finish_reason = "length" if out.finish_reason == "length" and (self.partial_call or not self.calls) \
            else "tool_calls" if self.calls else "stop"
        d.finish_reason = self.finish_reason
        d.stop_reason = msg.stop_reason or ("out_of_tokens" if out.finish_reason == "length" else "end_of_turn")

    def _cut_off(self, text: str, d: ChoiceDelta) -> Message:
        """A forced reply max_tokens cut off: a list's complete calls are calls (with parallel calls off, its
        first is the reply), the one cut off is `partial_call`."""
        complete, rest = split_call_list(text)
        if complete:
            calls = self._parse(SimpleNamespace(text=complete, token_ids=[], stop_token_id=None,
                                                finish_reason=None)).tool_calls
            d.tool_calls += calls
            self.calls += calls
        if not self.plan.parallel and self.calls:
            return Message("assistant", "", tool_calls=self.calls, stop_reason="end_of_turn")
        d.partial_call = self.partial_call = partial_call(rest)
        if not self.calls and self.partial_call is None:  # cut off before a tool name: the text as it is
            return Message("assistant", text, stop_reason="out_of_tokens")
        d.text = ""
        return Message("assistant", "", tool_calls=self.calls, stop_reason="out_of_tokens")


def unique_calls(calls: Sequence[ToolCall]) -> list[ToolCall]:
    """The calls with repeats (same tool, same arguments) left out: a model stuck in a loop lists one call
    again and again, and running it twice in one turn never helps."""
    seen: set[str] = set()
    out = []
    for c in calls:
        key = json.dumps([c.tool_name, c.arguments], sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def split_call_list(text: str) -> tuple[str | None, str]:
    """A JSON list of calls cut off: (a JSON list of its complete elements or None, the text after them)."""
    if not text.lstrip().startswith("["):
        return None, text
    decoder, pos, done = json.JSONDecoder(), text.index("[") + 1, []
    while True:
        while pos < len(text) and text[pos] in " ,\n":
            pos += 1
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            break
        done.append(obj)
        pos = end
    return (json.dumps(done, ensure_ascii=False) if done else None), text[pos:]


_NAME = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)*)"')
_ARGS = re.compile(r'"(?:arguments|parameters)"\s*:\s*')


def partial_call(text: str) -> tuple[str, str] | None:
    """(tool name, arguments text) of a forced call cut off by max_tokens: the arguments JSON as far as it
    got, as OpenAI returns a call that ran out of tokens (finish_reason "length"); None before the name."""
    names = list(_NAME.finditer(text))  # in a list of calls, the last one is the one cut off
    if not names:
        return None
    args = _ARGS.search(text, names[-1].end())
    return json.loads(f'"{names[-1].group(1)}"'), text[args.end():] if args else ""


def _classify(buffer: str) -> str:
    s = buffer.lstrip()
    if not s:
        return "undecided"
    if s.startswith(TOOL_STARTS):
        return "tool"
    if any(m.startswith(s) for m in TOOL_STARTS):
        return "undecided"
    return "text"


async def run_chat(plan: ChatPlan, ctx: CallContext, usage: Usage) -> AsyncIterator[list[ChoiceDelta]]:
    """Per engine step, the deltas of the choices that advanced; the last batch carries every finish."""
    states = [ChoiceState(plan, i) for i in range(plan.params.n)]
    async for out in generate(plan.model, plan.prompt_ids, plan.params, ctx, usage, request_id=plan.request_id):
        deltas = [d for o in out.outputs if (d := states[o.index].step(o)) is not None]
        if deltas:
            yield deltas


async def complete_chat(plan: ChatPlan, ctx: CallContext, usage: Usage) -> list[ChoiceState]:
    """Run to the end; the finished choice states (message, finish_reason, logprobs)."""
    states = [ChoiceState(plan, i) for i in range(plan.params.n)]
    async for out in generate(plan.model, plan.prompt_ids, plan.params, ctx, usage, request_id=plan.request_id):
        for o in out.outputs:
            states[o.index].step(o)
    return states


# ---- shields around a chat turn ---------------------------------------------------------------


def shield_registry(ctx: Any) -> Any:
    """The server's herd.safety ShieldRegistry (`app.state.shields`) for a CallContext."""
    registry = getattr(ctx, "shields", None)
    if registry is not None:
        return registry
    from herd.safety.shields import ShieldRegistry

    return ShieldRegistry.from_config(None)


def _shield_error(e: HerdError, param: str) -> APIError:
    from herd.safety.llama_guard import GuardOutputError
    from herd.safety.shields import UnknownShieldError

    if isinstance(e, UnknownShieldError):
        return APIError(404, str(e), param=param, code="shield_not_found")
    if isinstance(e, GuardOutputError):  # the guard model misbehaved, not the client
        return APIError(502, f"{param}: {e}", code="shield_error")
    return bad_request(f"{param}: {e}", "messages")


@dataclass
class ChatShields:
    """The shields screening one chat request: the model's configured ones, then those the request adds."""

    registry: ShieldRegistry
    input: list[str]
    output: list[str]

    async def _check(self, ids: list[str], messages: Sequence[Any], param: str) -> Any:
        from herd.serve.safety import check_shields

        try:
            return await check_shields(self.registry, ids, list(messages))
        except HerdError as e:
            raise _shield_error(e, param) from None

    async def check_input(self, messages: Sequence[Any]) -> Any:
        """The first input violation (a ShieldViolation) or None."""
        return await self._check(self.input, messages, "input_shields") if self.input else None

    async def screen_output(self, messages: Sequence[Any], states: Sequence[ChoiceState]) -> None:
        """Check each finished reply; a violating one is replaced by the refusal. Llama Guard reads the reply
        after the conversation (it judges only the last message); the others (Code Shield, Prompt Guard)
        judge all they are given, so they get the reply alone."""
        for s in states:
            for sid in self.output:
                in_context = self.registry.config(sid).type == "llama-guard"
                v = await self._check([sid], [*messages, s.message] if in_context else [s.message],
                                      "output_shields")
                if v is not None:
                    s.refuse(v, "output")
                    break


def chat_shields(model: LLMModel, ctx: Any, input_shields: Sequence[str] | None,
                 output_shields: Sequence[str] | None) -> ChatShields | None:
    """The model's configured shields plus the request's (added, not replacing: a client cannot drop the
    operator's); None when there are none. An unknown id is a 404 listing the available ones."""
    ids_in = list(dict.fromkeys([*model.spec.input_shields, *(input_shields or ())]))
    ids_out = list(dict.fromkeys([*model.spec.output_shields, *(output_shields or ())]))
    if not ids_in and not ids_out:
        return None
    registry = shield_registry(ctx)
    for param, ids in (("input_shields", ids_in), ("output_shields", ids_out)):
        for sid in ids:
            try:
                registry.config(sid)
            except HerdError as e:
                raise _shield_error(e, param) from None
    return ChatShields(registry, ids_in, ids_out)


async def run_chat_screened(
    plan: ChatPlan, ctx: CallContext, usage: Usage, screen: Callable[[list[ChoiceState]], Awaitable[None]],
) -> AsyncIterator[list[ChoiceDelta]]:
    """run_chat with output shields: nothing is released before the reply is checked. Yields [] once the
    engine has started (so errors before it are still a 4xx status), then one whole delta per choice: what
    run_chat would have streamed, merged, or the refusal."""
    states = [ChoiceState(plan, i) for i in range(plan.params.n)]
    whole = [ChoiceDelta(i) for i in range(plan.params.n)]
    started = False
    async for out in generate(plan.model, plan.prompt_ids, plan.params, ctx, usage, request_id=plan.request_id):
        for o in out.outputs:
            if (d := states[o.index].step(o)) is not None:
                whole[o.index].add(d)
        if not started:
            started = True
            yield []
    await screen(states)
    yield [s.refusal_delta() if s.violation is not None else w for s, w in zip(states, whole)]


async def _once(batch: list[ChoiceDelta]) -> AsyncIterator[list[ChoiceDelta]]:
    yield batch


async def stream_chat(plan: ChatPlan, shields: ChatShields | None, messages: Sequence[Any], ctx: CallContext,
                      usage: Usage) -> AsyncIterator[list[ChoiceDelta]]:
    """The delta batches of a streamed chat turn, screened; the first engine output is awaited here."""
    if shields is not None:
        v = await shields.check_input(messages)
        if v is not None:  # the model does not run
            return _once([ChoiceState(plan, i).refuse(v, "input").refusal_delta() for i in range(plan.params.n)])
    if shields is not None and shields.output:
        gen = run_chat_screened(plan, ctx, usage, lambda states: shields.screen_output(messages, states))
    else:
        gen = run_chat(plan, ctx, usage)
    # a client that leaves while the request still waits for the engine aborts it there too
    _, rest = await until_disconnected(ctx.is_disconnected, first_then_rest(gen))
    return rest


async def finish_chat(plan: ChatPlan, shields: ChatShields | None, messages: Sequence[Any], ctx: CallContext,
                      usage: Usage) -> list[ChoiceState]:
    """The finished choice states of a non-streamed chat turn, screened."""
    if shields is not None:
        v = await shields.check_input(messages)
        if v is not None:  # the model does not run
            return [ChoiceState(plan, i).refuse(v, "input") for i in range(plan.params.n)]
    states = await until_disconnected(ctx.is_disconnected, complete_chat(plan, ctx, usage))
    if shields is not None:
        await shields.screen_output(messages, states)
    return states


def call_arguments(call: ToolCall) -> str:
    """A call's arguments as the JSON string OpenAI clients expect."""
    return json.dumps(call.arguments, ensure_ascii=False)
