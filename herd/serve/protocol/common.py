"""What every HTTP shape shares: strict request and lenient response bases, request integers, ids,
and dumping responses (herd's extension fields left out when unset)."""
from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, StringConstraints

__all__ = ["MAX_TOP_K", "Int", "Metadata", "RequestModel", "ResponseModel", "StopReason", "ToolPromptFormat",
           "dump", "dump_chunk", "new_id"]

ToolPromptFormat = Literal["json", "function_tag", "python_list"]
StopReason = Literal["end_of_turn", "end_of_message", "out_of_tokens"]
MAX_TOP_K = 1 << 20  # more than any vocabulary; bounds what reaches the sampler
# OpenAI's `metadata`: up to 16 pairs, keys up to 64 characters, values up to 512
Metadata = dict[Annotated[str, StringConstraints(max_length=64)], Annotated[str, StringConstraints(max_length=512)]]


def _whole_number(value: Any) -> Any:
    """16.0 is an integer in JSON (schema); strict mode would refuse it (bools stay refused)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_whole_number)]  # request integers


class RequestModel(BaseModel):
    """A request body: strict types (a string where a number belongs is a 400), unknown fields ignored."""

    # NaN/Infinity (which Python's json accepts) would poison a whole engine batch: rejected here
    model_config = ConfigDict(strict=True, extra="ignore", protected_namespaces=(), allow_inf_nan=False)


class ResponseModel(BaseModel):
    """A response body (extra fields kept)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())


def new_id(prefix: str) -> str:
    """An OpenAI-style object id, e.g. chatcmpl-<hex>."""
    return f"{prefix}-{uuid.uuid4().hex}"


_EXTENSIONS = ("safety_violation",)  # herd extension fields: present only when set


def _drop_unset_extensions(out: dict[str, Any]) -> dict[str, Any]:
    for obj in (out, *out.get("choices", ())):
        if isinstance(obj, dict):
            for key in _EXTENSIONS:
                if key in obj and obj[key] is None:
                    del obj[key]
    return out


def dump(model: BaseModel, *, exclude_none: bool = False) -> dict[str, Any]:
    """A response model as a JSON-ready dict (unset herd extension fields left out)."""
    return _drop_unset_extensions(model.model_dump(mode="json", exclude_none=exclude_none))


def dump_chunk(chunk: BaseModel) -> dict[str, Any]:
    """A stream chunk with OpenAI's layout: absent delta fields left out, top-level nulls kept."""
    out = _drop_unset_extensions(chunk.model_dump(mode="json"))
    for choice in out.get("choices", []):
        delta = choice.get("delta")
        if isinstance(delta, dict):
            delta = {k: v for k, v in delta.items() if v is not None}
            for call in delta.get("tool_calls", []):
                for key in [k for k, v in call.items() if v is None]:
                    del call[key]
                call["function"] = {k: v for k, v in call["function"].items() if v is not None}
            choice["delta"] = delta
    return out

