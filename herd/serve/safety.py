"""Safety over HTTP: the logic of `POST /v1/safety/run-shield`, `GET /v1/shields[/{id}]` and
`POST /v1/moderations` (routes: herd/serve/routes.py, which runs them in FastAPI's thread pool, since
the guard models block). The registry comes from the config's `shields:` list via
`ShieldRegistry.from_config`; chat completions screen input/output with `await check_shields(...)`.
"""
from __future__ import annotations

import uuid
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from herd.errors import HerdError
from herd.safety.shields import ShieldRegistry, ShieldViolation, UnknownShieldError
from herd.safety.types import ModerationResult
from herd.serve import protocol as p
from herd.serve.errors import APIError
from herd.tokenizer.messages import plain_text


def registry_of(request: Request) -> ShieldRegistry:
    """The app's registry (`app.state.shields`); a Code-Shield-only one when the app set none."""
    state = request.app.state
    reg = getattr(state, "shields", None)
    if reg is None:
        reg = state.shields = ShieldRegistry.from_config(None)
    return reg


def shield_http_error(e: HerdError, param: str | None = None) -> APIError:
    """A shield's HerdError as HTTP: unknown shield 404, a misbehaving guard model 502, bad input 400."""
    from herd.safety.llama_guard import GuardOutputError

    if isinstance(e, UnknownShieldError):
        return APIError(404, str(e), param=param or e.param, code="shield_not_found")
    if isinstance(e, GuardOutputError):  # the guard model misbehaved, not the client
        return APIError(502, str(e), code="shield_error")
    return APIError(400, str(e), param=e.param)


def _resource(reg: ShieldRegistry, shield_id: str) -> p.ShieldResource:
    return p.ShieldResource(**reg.config(shield_id).to_resource())


def run_shield(reg: ShieldRegistry, body: p.RunShieldRequest) -> p.RunShieldResponse:
    """Run one shield; errors as HTTP exceptions (404 unknown shield, 400 bad messages)."""
    try:
        result = reg.run(body.shield_id, body.messages)
    except HerdError as e:
        raise shield_http_error(e) from None
    return p.RunShieldResponse(**result.to_dict())


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


def moderate(reg: ShieldRegistry, body: p.ModerationRequest) -> p.ModerationResponse:
    """OpenAI moderations through a shield: one result per input string."""
    try:
        shield_id = _moderation_shield(reg, body.model)
        results: list[ModerationResult] = reg.get(shield_id).moderate(_inputs(body.input))
    except HerdError as e:
        raise shield_http_error(e, "model") from None
    return p.ModerationResponse(id=f"modr-{uuid.uuid4()}", model=shield_id,
                              results=[p.ModerationResultModel(**r.to_dict()) for r in results])


async def check_shields(reg: ShieldRegistry, shield_ids: list[str], messages: list[Any]) -> ShieldViolation | None:
    """For chat completions: run input or output shields off the event loop; first violation or None."""
    if not shield_ids:
        return None
    return await run_in_threadpool(reg.check, shield_ids, messages)


def violation_extension(v: ShieldViolation) -> dict[str, Any]:
    """The `safety_violation` extension field for a chat response: shield id, level, message, metadata."""
    return v.to_dict()


def list_shields(reg: ShieldRegistry) -> p.ListShieldsResponse:
    """Every configured shield (loaded or not)."""
    return p.ListShieldsResponse(data=[_resource(reg, sid) for sid in reg.ids()])


def get_shield(reg: ShieldRegistry, identifier: str) -> p.ShieldResource:
    """One shield; 404 naming the available ids."""
    try:
        return _resource(reg, identifier)
    except HerdError as e:
        raise shield_http_error(e) from None
