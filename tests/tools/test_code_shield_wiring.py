"""`tools.code_shield` in the server config: the code the model writes passes the configured shield (the
real Code Shield) before the sandboxed interpreter runs it, over the real `/v1/tool-runtime/invoke`."""
from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from herd.errors import HerdError
from herd.serve.app import create_app
from herd.serve.config import parse_config
from herd.serve.models import ModelRegistry

INSECURE = """import hashlib
def digest(password):
    return hashlib.md5(password.encode()).hexdigest()
print("RAN", digest("x"))
"""
CLEAN = 'print("RAN", sum(range(10)))'


def _app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tools: dict) -> TestClient:
    monkeypatch.setenv("HERD_HOME", str(tmp_path))
    return TestClient(create_app(ModelRegistry([]), parse_config({"version": 1, "tools": tools})))


def test_insecure_code_is_refused_before_it_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _app(tmp_path, monkeypatch, {"code_shield": "code-shield"}) as c:
        r = c.post("/v1/tool-runtime/invoke", json={"tool_name": "code_interpreter", "kwargs": {"code": INSECURE}})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["error_message"].startswith("the code was not run") and "RAN" not in str(body["content"])
        clean = c.post("/v1/tool-runtime/invoke", json={"tool_name": "code_interpreter",
                                                          "kwargs": {"code": CLEAN}}).json()
        assert clean["error_message"] is None and "RAN 45" in str(clean["content"])


def test_without_the_setting_the_same_code_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _app(tmp_path, monkeypatch, {}) as c:
        body = c.post("/v1/tool-runtime/invoke", json={"tool_name": "code_interpreter",
                                                         "kwargs": {"code": INSECURE}}).json()
        assert body["error_message"] is None and "RAN" in str(body["content"])


def test_an_unknown_code_shield_fails_at_start_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERD_HOME", str(tmp_path))
    with pytest.raises(HerdError, match="no-such-shield"):
        create_app(ModelRegistry([]), parse_config({"version": 1, "tools": {"code_shield": "no-such-shield"}}))
