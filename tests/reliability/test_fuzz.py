"""Schemathesis over the running server's own /openapi.json: every documented operation gets positive
(schema-valid) and negative (schema-violating) requests, and every answer must be documented and not a 5xx.

Derandomized (the same requests every run), with a bounded number of examples per operation and mode. The
generation requests stay cheap: a `map_case` hook caps max_tokens and n and points a share of the
requests at the served models (random model names would all be 404s and exercise no engine).
"""
from __future__ import annotations

import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
from reliability_support import (
    API_KEY,
    AUTH,
    EMBED_ID,
    SMOL_ID,
    TINY_ID,
    build_tiny_llama3,
    engine_is_empty,
    main_config,
    report,
    running_server,
    statuses_line,
    wait_until,
)

pytestmark = pytest.mark.reliability

EXAMPLES = 200  # per operation and generation mode (ops without inputs have fewer distinct cases)
MAX_TOKENS = 8
LIMITS = "limits: {max_sequences_per_request: 8, max_completion_prompts: 8, max_embedding_inputs: 16, " \
         "request_timeout: 60}\n"
USER = [{"role": "user", "content": "Hi"}]
EXPLICIT = [  # one valid request per generating route (sent streamed and not)
    ("/v1/chat/completions", {"model": SMOL_ID, "messages": USER, "max_tokens": 4}),
    ("/v1/completions", {"model": TINY_ID, "prompt": "Hi", "max_tokens": 4}),
    ("/v1/inference/chat-completion", {"model_id": SMOL_ID, "messages": USER, "sampling_params": {"max_tokens": 4}}),
    ("/v1/inference/completion", {"model_id": TINY_ID, "content": "Hi", "sampling_params": {"max_tokens": 4}}),
]
# schemathesis.checks: not_a_server_error plus conformance of the status, the content type and the body
CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance"]
# per body shape: the key naming the model and the served ids the hook cycles through (None: left as generated)
MODEL_KEYS = {
    "/v1/chat/completions": ("model", [SMOL_ID, TINY_ID, None]),
    "/v1/completions": ("model", [TINY_ID, SMOL_ID, None]),
    "/v1/embeddings": ("model", [EMBED_ID, None]),
    "/v1/inference/chat-completion": ("model_id", [SMOL_ID, TINY_ID, None]),
    "/v1/inference/completion": ("model_id", [TINY_ID, SMOL_ID, None]),
    "/v1/inference/embeddings": ("model_id", [EMBED_ID, None]),
    "/v1/models": ("model_id", [SMOL_ID, None]),
    "/v1/safety/run-shield": ("shield_id", ["code-shield", None]),
}


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _cheap(path: str, body: Any, turn: int) -> None:
    """Cap what a generation request may cost and, on some turns, name a served model (in place)."""
    if not isinstance(body, dict):
        return
    for key in ("max_tokens", "max_completion_tokens"):
        if key in body and (body[key] is None or _int(body[key]) and body[key] > MAX_TOKENS):
            body[key] = MAX_TOKENS
    if path in ("/v1/chat/completions", "/v1/completions") and body.get("max_tokens") is None \
            and body.get("max_completion_tokens") is None:
        body["max_tokens"] = MAX_TOKENS  # absent: up to the context
    for key in ("n", "best_of"):
        if _int(body.get(key)) and body[key] > 2:
            body[key] = 2
    if path.startswith("/v1/inference/") and path != "/v1/inference/embeddings":
        sp = body.get("sampling_params")
        if sp is None:
            sp = body["sampling_params"] = {}
        if isinstance(sp, dict) and (sp.get("max_tokens") is None or _int(sp["max_tokens"])
                                     and (sp["max_tokens"] == 0 or sp["max_tokens"] > MAX_TOKENS)):
            sp["max_tokens"] = MAX_TOKENS  # 0 or absent: up to the context
    key, ids = MODEL_KEYS.get(path, (None, [None]))
    choice = ids[turn % len(ids)]
    if key and choice and isinstance(body.get(key), str):  # a mistyped model stays mistyped (negative cases)
        body[key] = choice


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("schemathesis", minversion="4.32")  # `make reliability` installs it (extra [reliability])
    tmp = tmp_path_factory.mktemp("fuzz")
    with running_server(main_config(build_tiny_llama3(tmp / "tiny")) + LIMITS, tmp / "server.yaml",
                        env={"HERD_TEST_API_KEY": API_KEY}) as srv:
        yield srv


@dataclass
class Tally:
    """What the fuzzer sent and what came back."""

    statuses: Counter[int] = field(default_factory=Counter)
    per_op: Counter[tuple[str, str]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)  # "operation: check title" of each failure
    unsatisfiable: list[str] = field(default_factory=list)


def _exercise(case: Any, mode: str, tally: Tally, session: Any) -> None:
    """Send one case and run the checks on its answer; failures are collected, not raised."""
    import schemathesis.checks

    label = case.operation.label
    r = case.call(headers=AUTH, session=session, timeout=120)
    tally.statuses[r.status_code] += 1
    tally.per_op[label, mode] += 1
    try:
        case.validate_response(r, checks=[getattr(schemathesis.checks, c) for c in CHECKS], headers=AUTH)
    except schemathesis.errors.FailureGroup as e:
        tally.kinds.update(f"{label}: {f.title}" for f in e.exceptions)
        tally.failures.append(f"{label} ({mode}): {e}")


def _fuzz(op: Any, mode: Any, tally: Tally, session: Any) -> None:
    """EXAMPLES derandomized cases of one operation in one generation mode."""
    import hypothesis
    from hypothesis import HealthCheck, Phase, given, settings

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        _exercise(case, mode.value, tally, session)

    try:
        run()
    except hypothesis.errors.Unsatisfiable:  # e.g. a free-form string path parameter: nothing is invalid
        tally.unsatisfiable.append(f"{op.label} ({mode.value})")


def test_fuzz_the_openapi_document(server):
    import requests
    import schemathesis

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=AUTH, timeout=30)
    turns = itertools.count()

    @schema.hook("map_case")
    def cheap(context: Any, case: Any) -> Any:
        _cheap(case.operation.path, case.body, next(turns))
        return case

    tally, session = Tally(), requests.Session()
    t0 = time.monotonic()
    for path, body in EXPLICIT:  # known-good requests, streamed and not: every 200 shape is checked at least once
        for stream in (False, True):
            case = schema[path]["POST"].Case(body={**body, "stream": stream}, media_type="application/json")
            _exercise(case, "explicit", tally, session)
    for result in schema.get_all_operations():
        op = result.ok()
        has_input = bool(op.body) or any(True for _ in op.iter_parameters())
        modes = [schemathesis.GenerationMode.POSITIVE] + ([schemathesis.GenerationMode.NEGATIVE] if has_input else [])
        for mode in modes:
            _fuzz(op, mode, tally, session)
    elapsed = time.monotonic() - t0
    server_errors = sum(n for s, n in tally.statuses.items() if s >= 500)
    report("fuzz", operations=len({label for label, _ in tally.per_op}), requests=sum(tally.statuses.values()),
           statuses=statuses_line(tally.statuses), server_errors_5xx=server_errors,
           conformance_failures=len(tally.failures), seconds=round(elapsed),
           examples_per_op_and_mode=EXAMPLES, max_tokens=MAX_TOKENS)
    for (label, mode), n in sorted(tally.per_op.items()):
        print(f"  {label:50s} {mode:9s} {n:4d}")
    print("  no negative case exists for: " + ", ".join(tally.unsatisfiable))
    for kind, n in sorted(tally.kinds.items()):
        print(f"  FAILED {n} x {kind}")
    assert not tally.failures, "\n\n".join(tally.failures[:20])
    assert server_errors == 0
    for model in (SMOL_ID, TINY_ID):  # nothing left behind in either engine
        assert wait_until(partial(engine_is_empty, server.url, model, AUTH), timeout=30), model
    r = requests.post(f"{server.url}/v1/chat/completions", headers=AUTH, timeout=60, json={
        "model": SMOL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    assert r.status_code == 200, r.text
    assert "Traceback" not in server.output(), server.output()[-5000:]


def test_streamed_events_match_the_document(server):
    """Every streaming route's events conform to the document's text/event-stream schema."""
    import requests
    import schemathesis

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=AUTH, timeout=30)
    tally, session = Tally(), requests.Session()
    for path, body in EXPLICIT:
        case = schema[path]["POST"].Case(body={**body, "stream": True}, media_type="application/json")
        _exercise(case, "explicit", tally, session)
    assert tally.statuses == Counter({200: len(EXPLICIT)}), tally.statuses
    assert not tally.failures, sorted(tally.kinds)
