"""The FastAPI app: its state (models, metrics, queues, drain, stored completions, providers), error
mapping (every error is `{"error": {...}}` with the right status), the routes (herd/serve/routes.py),
the OpenAPI document (openapi.py) and the operations middleware (ops.py; CORS when configured)."""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from herd import __version__
from herd.errors import HerdError
from herd.serve import eval_routes, post_training, stored, vector_stores
from herd.serve import tools as tool_runtime
from herd.serve.config import ServerConfig
from herd.serve.errors import APIError, api_error_response, error_body
from herd.serve.limits import Admission, Drain
from herd.serve.metrics import Metrics
from herd.serve.models import ModelRegistry
from herd.serve.openapi import openapi_document
from herd.serve.routes import include_routes, mount_safety
from herd.tools.builtin import default_registry
from herd.tools.rag import RagToolGroup

log = logging.getLogger("herd.serve")


# ---- errors --------------------------------------------------------------------------------


def _param(loc: tuple[Any, ...]) -> str:
    out = ""
    for seg in loc:
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif isinstance(seg, str) and seg.isidentifier() and not seg[0].isupper() and seg not in (
                "str", "int", "float", "bool", "list", "dict", "none"):
            out += f".{seg}" if out else seg
    return out


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """A readable message and the first field path from pydantic/FastAPI validation errors."""
    parts, first = [], None
    for e in errors:
        loc = tuple(e.get("loc", ()))
        loc = loc[1:] if loc[:1] == ("body",) else loc
        if e.get("type") == "json_invalid":
            return f"request body is not valid JSON: {e.get('ctx', {}).get('error', e.get('msg'))}", None
        param = _param(loc)
        if not param and e.get("type") == "missing":
            return "request body is required: a JSON object", None
        if not param and e.get("type") in ("model_attributes_type", "dict_type", "model_type"):
            return "request body must be a JSON object", None
        first = first or param or None
        got = e.get("input")
        shown = "" if e.get("type") == "missing" or isinstance(got, (dict, list)) else f" (got {json.dumps(got)[:80]})"
        text = f"{param or 'body'}: {e.get('msg', 'invalid')}{shown}"
        if text not in parts:
            parts.append(text)
    more = f" (+{len(parts) - 3} more)" if len(parts) > 3 else ""
    return "; ".join(parts[:3]) + more, first


def _json_error(status: int, message: str, **kw: Any) -> JSONResponse:
    return JSONResponse(error_body(status, message, **kw), status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    """Every error is `{"error": {...}}` with the right status; bad input is never a 500."""

    app.add_exception_handler(APIError, api_error_response)  # type: ignore[arg-type]

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(e.errors()))
        return _json_error(400, message, param=param, code="invalid_value" if param else "invalid_json")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = str(e.detail)
        if e.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}; see GET /v1/inspect/routes"
        elif e.status_code == 405:
            allowed = (e.headers or {}).get("Allow", "")
            message = f"method {request.method} is not allowed on {request.url.path}" + \
                (f"; allowed: {allowed}" if allowed else "")
        return JSONResponse(error_body(e.status_code, message), status_code=e.status_code, headers=e.headers)

    @app.exception_handler(HerdError)
    async def _herd(_: Request, e: HerdError) -> JSONResponse:
        return _json_error(400, str(e), param=e.param)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        log.exception("internal error")
        return _json_error(500, f"internal server error: {type(e).__name__}")


def provider_entry(api: str, provider_id: str, provider_type: str) -> dict[str, Any]:
    """A Llama Stack provider listing entry."""
    return {"api": api, "provider_id": provider_id, "provider_type": provider_type, "config": {},
            "health": {"status": "OK"}}


# ---- the app -------------------------------------------------------------------------------


def create_app(registry: ModelRegistry, config: ServerConfig | None = None) -> FastAPI:
    """The server app for loaded models; `config` supplies auth, limits and shields."""
    from herd.serve.ops import OpsMiddleware

    config = config or ServerConfig()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await tool_runtime.start(app.state.tools, app.state.tool_runtime)  # MCP servers: connect, restore
        await asyncio.to_thread(vector_stores.start, app)  # files left in progress: ingested again
        await asyncio.to_thread(post_training.start, app)  # training jobs: adopted, settled or resumed
        await eval_routes.start(app)  # eval jobs an earlier server left unfinished: reported failed
        yield
        await eval_routes.close(app)  # running eval jobs: stopped, reported failed
        await asyncio.to_thread(post_training.close, app)  # the jobs themselves go on
        await app.state.tools.close()  # sandbox processes, MCP connections
        await asyncio.to_thread(vector_stores.close, app)
        if getattr(app.state, "datasets", None) is not None:
            app.state.datasets.close()
        if getattr(app.state, "scoring_functions", None) is not None:
            app.state.scoring_functions.close()
        app.state.tool_runtime.store.close()
        registry.shutdown()

    app = FastAPI(title="Herd", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible and Llama Stack API for Llama models, served by herd.")
    app.state.registry = registry
    app.state.metrics = Metrics()
    app.state.config = config
    app.state.chat_store = stored.ChatCompletionStore.from_settings(config.server)  # None: storing is off
    app.state.admission = Admission(config.limits)
    app.state.drain = Drain()
    app.state.providers = [provider_entry("inference", "herd", "inline::herd")]
    install_error_handlers(app)
    _mount_safety(app, config)
    # the tool runtime: the tool groups the agents, responses and /v1/tool-runtime call
    app.state.tools = default_registry(config.tools, code_shield=_code_screen(app, config.tools.code_shield))
    app.state.tool_runtime = tool_runtime.ToolRuntime(
        configured={e["toolgroup_id"] for e in config.tools.mcp_servers}, registration=config.tools.mcp_registration)
    if config.rag.enabled and registry.has_embedding_model():  # builtin::rag, over the vector stores
        app.state.tools.register(RagToolGroup(lambda: vector_stores.service(app)))
        app.state.providers += [provider_entry("vector_io", "sqlite-vec", "inline::sqlite-vec"),
                                provider_entry("files", "localfs", "inline::localfs")]
    app.state.providers += [provider_entry("tool_runtime", pid, kind)
                            for pid, kind in tool_runtime.provider_entries(app.state.tools)]
    include_routes(app)

    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    app.add_middleware(OpsMiddleware, settings=config.server, metrics=app.state.metrics, drain=app.state.drain,
                       limits=config.limits, upload_bytes=config.rag.max_file_bytes if config.rag.enabled else None)
    if config.server.cors_origins:  # outermost: answers browsers' preflight before auth
        app.add_middleware(CORSMiddleware, allow_origins=list(config.server.cors_origins), allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["x-request-id", "retry-after"])
    return app


def _code_screen(app: FastAPI, shield_id: str | None) -> Any:
    """The code interpreter's screen: the configured shield (e.g. Code Shield) run on the code the model
    wrote; its refusal text when the code must not run. None when `tools.code_shield` is unset."""
    if shield_id is None:
        return None
    shields = getattr(app.state, "shields", None)
    if shields is None:
        raise HerdError(f"tools.code_shield {shield_id!r}: the safety layer is not installed")
    shields.config(shield_id)  # an unknown id fails at start-up, naming the configured ones

    async def screen(code: str) -> str | None:
        violation = await asyncio.to_thread(shields.check, [shield_id], [{"role": "assistant", "content": code}])
        return None if violation is None else violation.user_message

    return screen


def _mount_safety(app: FastAPI, config: ServerConfig) -> None:
    try:
        from herd.safety.shields import ShieldRegistry
    except ImportError:  # the safety layer is optional
        return
    registry = ShieldRegistry.from_config(list(config.shields))
    mount_safety(app, registry)
    for kind in dict.fromkeys(c.type for c in registry.configs()):
        app.state.providers.append(provider_entry("safety", kind, f"inline::{kind}"))

