"""Safety over HTTP: `POST /v1/safety/run-shield`, `GET /v1/shields[/{id}]`, `POST /v1/moderations`.

Mount with `mount(app, registry)` (or set `app.state.shields` and `app.include_router(router)`);
the registry comes from the config's `shields:` list via `ShieldRegistry.from_config`. Chat
completions screen input/output with `await check_shields(registry, ids, messages)`. Routes are
sync functions, so FastAPI runs the (blocking) guard models in its thread pool.
"""
from __future__ import annotations

import uuid
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from herd.errors import HerdError
from herd.safety.shields import ShieldRegistry, ShieldViolation, UnknownShieldError
from herd.safety.types import ModerationResult
from herd.serve.errors import APIError, api_error_response
from herd.tokenizer.messages import plain_text

router = APIRouter(tags=["safety"])


# ---- wire shapes (Llama Stack 0.2.x / OpenAI) ----------------------------------------------


class RunShieldRequest(BaseModel):
    """Llama Stack's run-shield body; messages may be Llama Stack (native) or OpenAI messages."""

    shield_id: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] | None = None  # accepted for compatibility; shields are configured in the server config


class SafetyViolationModel(BaseModel):
    violation_level: Literal["info", "warn", "error"]
    user_message: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class RunShieldResponse(BaseModel):
    violation: SafetyViolationModel | None = None


class ShieldResource(BaseModel):
    """Llama Stack's Shield resource."""

    identifier: str
    provider_resource_id: str | None = None
    provider_id: str
    type: Literal["shield"] = "shield"
    params: dict[str, Any] | None = None


class ListShieldsResponse(BaseModel):
    data: list[ShieldResource]


class ModerationRequest(BaseModel):
    """OpenAI's moderation body; `model` names a shield (default: the first Llama Guard, else the first shield)."""

    input: str | list[str] | list[dict[str, Any]]
    model: str | None = None


class ModerationResultModel(BaseModel):
    flagged: bool
    categories: dict[str, bool] | None = None
    category_applied_input_types: dict[str, list[str]] | None = None
    category_scores: dict[str, float] | None = None
    user_message: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResultModel]


# ---- logic -------------------------------------------------------------------------------


def registry_of(request: Request) -> ShieldRegistry:
    """The app's registry (`app.state.shields`); a Code-Shield-only one when the app set none."""
    state = request.app.state
    reg = getattr(state, "shields", None)
    if reg is None:
        reg = state.shields = ShieldRegistry.from_config(None)
    return reg


def _http_error(e: HerdError, param: str | None = None) -> APIError:
    from herd.safety.llama_guard import GuardOutputError

    if isinstance(e, UnknownShieldError):
        return APIError(404, str(e), param=param or e.param, code="shield_not_found")
    if isinstance(e, GuardOutputError):  # the guard model misbehaved, not the client
        return APIError(502, str(e), code="shield_error")
    return APIError(400, str(e), param=e.param)


def _resource(reg: ShieldRegistry, shield_id: str) -> ShieldResource:
    return ShieldResource(**reg.config(shield_id).to_resource())


def run_shield(reg: ShieldRegistry, body: RunShieldRequest) -> RunShieldResponse:
    """Run one shield; errors as HTTP exceptions (404 unknown shield, 400 bad messages)."""
    try:
        result = reg.run(body.shield_id, body.messages)
    except HerdError as e:
        raise _http_error(e) from None
    return RunShieldResponse(**result.to_dict())


def _moderation_shield(reg: ShieldRegistry, model: str | None) -> str:
    if model is not None:
        reg.config(model)  # 404 with the available ids
        return model
    configs = reg.configs()
    if not configs:
        raise UnknownShieldError("(default)", [])
    return next((c.shield_id for c in configs if c.type == "llama-guard"), configs[0].shield_id)


def _inputs(raw: str | list[Any]) -> list[str]:
    if isinstance(raw, str):
        return [raw]
    if not raw:
        raise HerdError("input must not be empty", "input")
    if all(isinstance(x, dict) for x in raw):  # multimodal items: one input, text parts joined
        return [plain_text(raw, "input", lenient=True)]
    return [x if isinstance(x, str) else plain_text(x, f"input[{i}]", lenient=True) for i, x in enumerate(raw)]


def moderate(reg: ShieldRegistry, body: ModerationRequest) -> ModerationResponse:
    """OpenAI moderations through a shield: one result per input string."""
    try:
        shield_id = _moderation_shield(reg, body.model)
        results: list[ModerationResult] = reg.get(shield_id).moderate(_inputs(body.input))
    except HerdError as e:
        raise _http_error(e, "model") from None
    return ModerationResponse(id=f"modr-{uuid.uuid4()}", model=shield_id,
                              results=[ModerationResultModel(**r.to_dict()) for r in results])


async def check_shields(reg: ShieldRegistry, shield_ids: list[str], messages: list[Any]) -> ShieldViolation | None:
    """For chat completions: run input or output shields off the event loop; first violation or None."""
    if not shield_ids:
        return None
    return await run_in_threadpool(reg.check, shield_ids, messages)


def violation_extension(v: ShieldViolation) -> dict[str, Any]:
    """The `safety_violation` extension field for a chat response: shield id, level, message, metadata."""
    return v.to_dict()


# ---- routes ------------------------------------------------------------------------------


@router.post("/v1/safety/run-shield", response_model=RunShieldResponse)
def post_run_shield(body: RunShieldRequest, request: Request) -> RunShieldResponse:
    """Llama Stack `safety.run_shield`."""
    return run_shield(registry_of(request), body)


@router.get("/v1/shields", response_model=ListShieldsResponse)
def get_shields(request: Request) -> ListShieldsResponse:
    """Llama Stack `shields.list`: every configured shield (loaded or not)."""
    reg = registry_of(request)
    return ListShieldsResponse(data=[_resource(reg, sid) for sid in reg.ids()])


@router.get("/v1/shields/{identifier:path}", response_model=ShieldResource)
def get_shield(identifier: str, request: Request) -> ShieldResource:
    """Llama Stack `shields.retrieve`; 404 naming the available ids."""
    try:
        return _resource(registry_of(request), identifier)
    except HerdError as e:
        raise _http_error(e) from None


@router.post("/v1/moderations", response_model=ModerationResponse)
@router.post("/v1/openai/v1/moderations", response_model=ModerationResponse, include_in_schema=False)
def post_moderations(body: ModerationRequest, request: Request) -> ModerationResponse:
    """OpenAI `moderations.create` (also under Llama Stack 0.2's /v1/openai/v1 prefix)."""
    return moderate(registry_of(request), body)


def mount(app: FastAPI, registry: ShieldRegistry) -> None:
    """Attach the registry and the safety routes to an app."""
    app.state.shields = registry
    if APIError not in app.exception_handlers:  # an app of its own (herd's app installs it already)
        app.add_exception_handler(APIError, api_error_response)  # type: ignore[arg-type]
    app.include_router(router)
