"""The FastAPI app: thin routes over oai/stack/completions, error mapping, and the operations middleware
(Bearer auth, request size limit, request ids, metrics, structured access log)."""
from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import (
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from herd import __version__
from herd.errors import HerdError
from herd.serve import completions as cmpl
from herd.serve import oai, stack, stored
from herd.serve import protocol as p
from herd.serve.config import ServerConfig
from herd.serve.errors import APIError, api_error_response, error_body
from herd.serve.generation import CallContext
from herd.serve.limits import Admission, Drain
from herd.serve.metrics import Metrics
from herd.serve.models import ModelRegistry
from herd.serve.openapi import openapi_document

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


# ---- responses -----------------------------------------------------------------------------


async def sse(events: AsyncIterator[dict[str, Any]], send_done: bool) -> AsyncIterator[bytes]:
    """Server-sent events: `data: <json>` per event; an error mid-stream as `data: {"error": ...}`."""
    try:
        async for event in events:
            yield b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\n"
    except APIError as e:
        yield b"data: " + json.dumps(e.body()).encode() + b"\n\n"
    except Exception as e:
        log.exception("error while streaming")
        yield b"data: " + json.dumps(error_body(500, f"internal server error: {type(e).__name__}")).encode() + b"\n\n"
    if send_done:
        yield b"data: [DONE]\n\n"


async def respond(work: Awaitable[Any], ctx: CallContext) -> Response:
    """A dict becomes JSON; an async iterator becomes an SSE stream."""
    result = await work
    if isinstance(result, dict):
        return JSONResponse(result)
    return StreamingResponse(sse(result, ctx.send_done), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _client_wants_no_done(request: Request) -> bool:
    """llama-stack-client < 0.3 json-parses every SSE event, so `[DONE]` would break it."""
    version = request.headers.get("x-llamastack-client-version")
    if not version:
        return False
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) < (0, 3)


def context(request: Request, prefix: str, native: bool = False) -> CallContext:
    """The CallContext of one request (engine request id, metrics, disconnect check, [DONE] or not,
    limits, the model queues and the drain)."""
    state = request.app.state
    ctx = CallContext(p.new_id(prefix), state.metrics, request.is_disconnected,
                      send_done=not native and not _client_wants_no_done(request),
                      shields=getattr(state, "shields", None), limits=state.config.limits,
                      admission=state.admission, drain=state.drain)
    request.state.herd_ctx = ctx  # the access log reads model and token counts from it
    return ctx


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


# ---- routes --------------------------------------------------------------------------------

openai_routes = APIRouter()


@openai_routes.post("/chat/completions")
async def chat_completions(body: p.ChatCompletionRequest, request: Request) -> Response:
    """OpenAI chat completions (stream or not), with tools and structured output."""
    ctx = context(request, "chatcmpl")
    return await respond(oai.chat_completions(body, _registry(request), ctx, request.app.state.chat_store), ctx)


@openai_routes.post("/completions")
async def completions(body: p.CompletionRequest, request: Request) -> Response:
    """OpenAI (legacy) text completions."""
    ctx = context(request, "cmpl")
    return await respond(cmpl.completions(body, _registry(request), ctx), ctx)


@openai_routes.post("/embeddings")
async def embeddings(body: p.EmbeddingRequest, request: Request) -> Response:
    """OpenAI embeddings (float or base64)."""
    ctx = context(request, "emb")
    return await respond(oai.embeddings(body, _registry(request), ctx), ctx)


@openai_routes.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    """Served models, in the OpenAI and Llama Stack shapes at once."""
    return oai.models_list(_registry(request))


@openai_routes.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    """One model; ids may contain '/'."""
    return oai.model_get(_registry(request), model_id)


stack_routes = APIRouter(prefix="/v1")


@stack_routes.post("/inference/chat-completion")
async def stack_chat(body: p.StackChatRequest, request: Request) -> Response:
    """Llama Stack 0.2 native chat completion."""
    ctx = context(request, "chatcmpl", native=True)
    return await respond(stack.chat_completion(body, _registry(request), ctx), ctx)


@stack_routes.post("/inference/completion")
async def stack_completion(body: p.StackCompletionRequest, request: Request) -> Response:
    """Llama Stack 0.2 native completion."""
    ctx = context(request, "cmpl", native=True)
    sampling, max_tokens = stack.sampling_in(body.sampling_params)
    return await respond(cmpl.stack_completion(body, _registry(request), ctx, sampling, max_tokens), ctx)


@stack_routes.post("/inference/embeddings")
async def stack_embeddings(body: p.StackEmbeddingsRequest, request: Request) -> Response:
    """Llama Stack 0.2 native embeddings."""
    ctx = context(request, "emb", native=True)
    return await respond(stack.embeddings(body, _registry(request), ctx), ctx)


@stack_routes.post("/models")
async def register_model(body: p.RegisterModelRequest, request: Request) -> dict[str, Any]:
    """Registering a model that is served is a no-op; others are declared at startup (400)."""
    reg = _registry(request)
    try:
        return p.dump(reg.get(body.model_id, "model_id").card())
    except APIError:
        raise APIError(400, f"herd serves the models named at startup (--model or the config's models:) and "
                            f"cannot register others; {body.model_id!r} is not one of {', '.join(reg.ids)}",
                       param="model_id", code="model_not_served") from None


@stack_routes.get("/health")
async def health() -> dict[str, str]:
    """Llama Stack health (open without an API key, and while draining)."""
    return {"status": "OK"}


stack_routes.add_api_route("/health", health, methods=["HEAD"], operation_id="head_health")  # load balancers


@stack_routes.get("/version")
async def version() -> dict[str, str]:
    """The herd version."""
    return {"version": __version__}


@stack_routes.get("/providers")
async def providers(request: Request) -> dict[str, Any]:
    """Every provider that serves something, with the API it serves (inference: herd; safety: each shield
    type; the subsystems that mount routes add theirs to `app.state.providers`)."""
    return {"data": request.app.state.providers}


@stack_routes.get("/providers/{provider_id}")
async def provider(provider_id: str, request: Request) -> dict[str, Any]:
    """One provider by id."""
    found = [x for x in request.app.state.providers if x["provider_id"] == provider_id]
    if not found:
        ids = ", ".join(dict.fromkeys(x["provider_id"] for x in request.app.state.providers))
        raise APIError(404, f"provider {provider_id!r} not found; available providers: {ids}")
    return found[0]


def provider_entry(api: str, provider_id: str, provider_type: str) -> dict[str, Any]:
    """A Llama Stack provider listing entry."""
    return {"api": api, "provider_id": provider_id, "provider_type": provider_type, "config": {},
            "health": {"status": "OK"}}


@stack_routes.get("/inspect/routes")
async def inspect_routes(request: Request) -> dict[str, Any]:
    """Every documented route this server answers (the /v1/openai/v1 aliases are left out)."""
    rows = [{"route": path, "method": method.upper(), "provider_types": ["inline::herd"]}
            for path, ops in request.app.openapi().get("paths", {}).items() for method in ops]
    return {"data": rows}


# ---- the app -------------------------------------------------------------------------------


def create_app(registry: ModelRegistry, config: ServerConfig | None = None) -> FastAPI:
    """The server app for loaded models; `config` supplies auth, limits and shields."""
    from herd.serve.ops import OpsMiddleware

    config = config or ServerConfig()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
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
    app.include_router(openai_routes, prefix="/v1")
    app.include_router(openai_routes, prefix="/v1/openai/v1", include_in_schema=False)  # Llama Stack 0.2 clients
    app.include_router(stored.router, prefix="/v1")
    app.include_router(stored.router, prefix="/v1/openai/v1", include_in_schema=False)
    app.include_router(stack_routes)
    _mount_safety(app, config)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> PlainTextResponse:
        return PlainTextResponse(app.state.metrics.render(registry), media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    async def root() -> dict[str, Any]:
        return {"name": "herd", "version": __version__, "models": registry.ids,
                "openai_base_url": "/v1", "routes": "/v1/inspect/routes"}

    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    app.add_middleware(OpsMiddleware, settings=config.server, metrics=app.state.metrics, drain=app.state.drain,
                       limits=config.limits)
    if config.server.cors_origins:  # outermost: answers browsers' preflight before auth
        app.add_middleware(CORSMiddleware, allow_origins=list(config.server.cors_origins), allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["x-request-id", "retry-after"])
    return app


def _mount_safety(app: FastAPI, config: ServerConfig) -> None:
    try:
        from herd.safety.shields import ShieldRegistry
        from herd.serve.safety import mount
    except ImportError:  # the safety layer is optional
        return
    registry = ShieldRegistry.from_config(list(config.shields))
    mount(app, registry)
    for kind in dict.fromkeys(c.type for c in registry.configs()):
        app.state.providers.append(provider_entry("safety", kind, f"inline::{kind}"))

