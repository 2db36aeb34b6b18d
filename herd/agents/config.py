"""An agent's configuration, read from Llama Stack's `agent_config` (0.2.x), with bad fields named.

    AgentConfig.from_stack({"model": ..., "instructions": ..., "toolgroups": ["builtin::websearch"],
                            "client_tools": [{"name", "description", "parameters": [...]}], ...})
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from herd.errors import HerdError
from herd.tokenizer.messages import ToolDefinition

DEFAULT_MAX_INFER_ITERS = 10
MAX_INFER_ITERS = 100  # a client's setting may not make one turn run the model (and tools) without end
_TYPES = {"str": "string", "string": "string", "int": "integer", "integer": "integer", "float": "number",
          "number": "number", "bool": "boolean", "boolean": "boolean", "list": "array", "array": "array",
          "dict": "object", "object": "object"}
_CHOICES = ("auto", "required", "none")


@dataclass
class Sampling:
    """What a turn's inference steps sample with (None: the model's default; greedy is temperature 0)."""

    temperature: float | None = 0.0
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None

    @classmethod
    def from_stack(cls, raw: Any, where: str = "agent_config.sampling_params") -> Sampling:
        """Llama Stack `sampling_params` {strategy: {type: greedy|top_p|top_k, ...}, max_tokens, stop}."""
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise HerdError(f"{where} must be an object", where)
        strategy = raw.get("strategy") or {"type": "greedy"}
        kind = strategy.get("type", "greedy") if isinstance(strategy, Mapping) else None
        if kind not in ("greedy", "top_p", "top_k"):
            raise HerdError(f"{where}.strategy.type must be greedy, top_p or top_k, got {kind!r}",
                            f"{where}.strategy.type")
        max_tokens = raw.get("max_tokens") or None
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise HerdError(f"{where}.max_tokens must be a positive integer", f"{where}.max_tokens")
        stop = raw.get("stop") or None
        if kind == "greedy":
            return cls(0.0, None, max_tokens, stop)
        temperature = strategy.get("temperature")
        top_p = strategy.get("top_p") if kind == "top_p" else None
        return cls(0.6 if temperature is None and kind == "top_p" else temperature, top_p, max_tokens, stop)


def client_tool(raw: Any, where: str) -> ToolDefinition:
    """A Llama Stack ToolDef ({name, description, parameters: [{name, parameter_type, description, required,
    default}]} or parameters as a JSON schema) as a ToolDefinition."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise HerdError(f"{where} must be an object with a non-empty 'name'", f"{where}.name")
    params = raw.get("parameters") or []
    if isinstance(params, Mapping) and params.get("type") == "object":
        schema = dict(params)
    elif isinstance(params, Sequence) and not isinstance(params, str):
        props: dict[str, Any] = {}
        required = []
        for i, p in enumerate(params):
            if not isinstance(p, Mapping) or not isinstance(p.get("name"), str):
                raise HerdError(f"{where}.parameters[{i}] must be {{name, parameter_type, description, required}}",
                                f"{where}.parameters[{i}]")
            prop: dict[str, Any] = {"description": p.get("description") or ""}
            kind = _TYPES.get(str(p.get("parameter_type", "string")).lower())
            if kind:
                prop["type"] = kind
            if p.get("default") is not None:
                prop["default"] = p["default"]
            props[p["name"]] = prop
            if p.get("required", True):
                required.append(p["name"])
        schema = {"type": "object", "properties": props, "required": required}
    else:
        raise HerdError(f"{where}.parameters must be a list of parameters or a JSON schema", f"{where}.parameters")
    return ToolDefinition(raw["name"], raw.get("description") or "", schema)


@dataclass
class ToolGroupRef:
    """A tool group (or `group/tool`) the agent may use, with arguments merged into each call."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Any, where: str) -> ToolGroupRef:
        if isinstance(raw, str) and raw:
            return cls(raw)
        if isinstance(raw, Mapping) and isinstance(raw.get("name"), str) and raw["name"]:
            args = raw.get("args") or {}
            if not isinstance(args, Mapping):
                raise HerdError(f"{where}.args must be an object", f"{where}.args")
            return cls(raw["name"], dict(args))
        raise HerdError(f"{where} must be a tool group id (e.g. 'builtin::websearch') or {{name, args}}", where)


@dataclass
class AgentConfig:
    """Everything a turn runs with."""

    model: str
    instructions: str = ""
    name: str | None = None
    toolgroups: list[ToolGroupRef] = field(default_factory=list)
    client_tools: list[ToolDefinition] = field(default_factory=list)
    tool_choice: str = "auto"  # auto | required | none | a tool name (applies to a turn's first inference)
    tool_prompt_format: str | None = None
    system_message_behavior: str = "append"
    sampling: Sampling = field(default_factory=Sampling)
    max_infer_iters: int = DEFAULT_MAX_INFER_ITERS
    input_shields: list[str] = field(default_factory=list)
    output_shields: list[str] = field(default_factory=list)
    tool_output_shields: list[str] = field(default_factory=list)  # herd: Prompt Guard on what tools return
    response_format: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict)  # as the client sent it (GET /v1/agents/{id})

    @classmethod
    def from_stack(cls, raw: Any, where: str = "agent_config") -> AgentConfig:
        if not isinstance(raw, Mapping):
            raise HerdError(f"{where} must be an object", where)
        model = raw.get("model")
        if not isinstance(model, str) or not model:
            raise HerdError(f"{where}.model is required (a served model id)", f"{where}.model")
        instructions = raw.get("instructions") or ""
        if not isinstance(instructions, str):
            raise HerdError(f"{where}.instructions must be a string", f"{where}.instructions")
        tool_config = raw.get("tool_config") or {}
        if not isinstance(tool_config, Mapping):
            raise HerdError(f"{where}.tool_config must be an object", f"{where}.tool_config")
        choice = tool_config.get("tool_choice") or raw.get("tool_choice") or "auto"
        if not isinstance(choice, str):
            raise HerdError(f"{where}.tool_config.tool_choice must be auto, required, none or a tool name",
                            f"{where}.tool_config.tool_choice")
        iters = raw.get("max_infer_iters", DEFAULT_MAX_INFER_ITERS)
        if iters is None:
            iters = DEFAULT_MAX_INFER_ITERS
        if not isinstance(iters, int) or isinstance(iters, bool) or not 1 <= iters <= MAX_INFER_ITERS:
            raise HerdError(f"{where}.max_infer_iters must be an integer from 1 to {MAX_INFER_ITERS}, got {iters!r}",
                            f"{where}.max_infer_iters")
        shields = {}
        for kind in ("input_shields", "output_shields", "tool_output_shields"):
            ids = raw.get(kind) or []
            if not isinstance(ids, Sequence) or isinstance(ids, str) or not all(isinstance(s, str) for s in ids):
                raise HerdError(f"{where}.{kind} must be a list of shield ids", f"{where}.{kind}")
            shields[kind] = list(ids)
        groups = raw.get("toolgroups") or []
        tools = raw.get("client_tools") or []
        for key, value in (("toolgroups", groups), ("client_tools", tools)):
            if not isinstance(value, Sequence) or isinstance(value, str):
                raise HerdError(f"{where}.{key} must be a list", f"{where}.{key}")
        fmt = raw.get("response_format")
        return cls(
            model=model, instructions=instructions, name=raw.get("name"),
            toolgroups=[ToolGroupRef.parse(g, f"{where}.toolgroups[{i}]") for i, g in enumerate(groups)],
            client_tools=[client_tool(t, f"{where}.client_tools[{i}]") for i, t in enumerate(tools)],
            tool_choice=choice,
            tool_prompt_format=tool_config.get("tool_prompt_format") or raw.get("tool_prompt_format"),
            system_message_behavior=tool_config.get("system_message_behavior") or "append",
            sampling=Sampling.from_stack(raw.get("sampling_params"), f"{where}.sampling_params"),
            max_infer_iters=iters, response_format=stack_response_format(fmt, f"{where}.response_format"),
            raw=dict(raw), **shields)


def stack_response_format(fmt: Any, where: str) -> dict[str, Any] | None:
    """Llama Stack's response_format ({type: json_schema, json_schema: {...}} | {type: grammar}) in the
    OpenAI chat shape the Generator takes."""
    if fmt is None:
        return None
    if not isinstance(fmt, Mapping) or fmt.get("type") not in ("json_schema", "grammar"):
        raise HerdError(f"{where} must be {{type: json_schema, json_schema: {{...}}}}", f"{where}.type")
    if fmt["type"] == "grammar":
        raise HerdError(f"{where}: type 'grammar' is not supported; use json_schema", f"{where}.type")
    schema = fmt.get("json_schema")
    if not isinstance(schema, Mapping):
        raise HerdError(f"{where}.json_schema must be a JSON schema object", f"{where}.json_schema")
    return {"type": "json_schema", "json_schema": {"name": "response", "schema": dict(schema)}}
