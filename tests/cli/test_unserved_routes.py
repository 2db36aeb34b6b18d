"""Known Llama Stack / OpenAI routes herd does not serve yet answer 501 "... is not implemented by herd
yet" (not a bare 404), and never shadow a route that is served."""
from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from herd.serve import unserved
from herd.serve.errors import APIError, api_error_response


def _app() -> FastAPI:
    """The real server app without models, with the unserved routes included last (as create_app does)."""
    from herd.serve.app import create_app
    from herd.serve.models import ModelRegistry

    app = create_app(ModelRegistry([]))
    if not any(getattr(r, "name", "").startswith("unserved:") for r in app.routes):
        app.include_router(unserved.router)
    return app


@pytest.mark.parametrize("method,path,api", [
    ("POST", "/v1/telemetry/events", "telemetry"),
    ("GET", "/v1/telemetry/traces/t", "telemetry"),
    ("POST", "/v1/inference/batch-chat-completion", "inference (batch)"),
    ("POST", "/v1/inference/rerank", "inference (rerank)"),
    ("POST", "/v1/batches", "OpenAI batches"),
    ("GET", "/v1/openai/v1/fine_tuning/jobs", "OpenAI fine_tuning"),
    ("POST", "/v1alpha/eval/benchmarks/b/jobs", "Llama Stack v1alpha"),
])
def test_known_unserved_routes_answer_501(method: str, path: str, api: str) -> None:
    c = TestClient(_app())
    r = c.request(method, path, json={})
    assert r.status_code == 501, r.text
    detail = r.json()["error"]["detail"]
    assert detail == f"{method} {path}: the {api} API is not implemented by herd yet"
    assert r.json()["error"]["message"] == detail


def test_unknown_routes_stay_404() -> None:
    app = FastAPI()
    app.add_exception_handler(APIError, api_error_response)
    app.include_router(unserved.router)
    c = TestClient(app)
    assert c.get("/v1/telemetryx").status_code == 404
    assert c.get("/v2/telemetry").status_code == 404
    assert c.post("/v1/telemetry").status_code == 501


def test_no_served_route_is_listed_as_unserved() -> None:
    """When an API starts being served, its UNSERVED entry must go (or its 501s would contradict it)."""
    served = [r.path for r in _app().routes
              if hasattr(r, "methods") and not getattr(r, "name", "").startswith("unserved:")]
    clashes = [(path, prefix) for path in served for prefix, _ in unserved.UNSERVED
               if path == prefix or path.startswith(prefix + "/")]
    assert clashes == []
