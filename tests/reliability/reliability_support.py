"""Shared pieces of the reliability suite (`make reliability`): the server helpers of tests/serve/servekit.py,
the tiny model of tests/tinymodels.py, /metrics reading and the figures each test prints for RELIABILITY.md."""
from __future__ import annotations

import importlib
import json
import re
import statistics
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from herd.serve.metrics import parse_metrics

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS), str(TESTS / "serve")]
from servekit import (  # noqa: F401
    API_KEY,
    EMBED_ID,
    SMOL_ID,
    TINY_ID,
    ServerProcess,
    main_config,
    wait_until,
)
from tinymodels import build_tiny_llama3  # noqa: F401 (these are re-exported for the tests)

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def serve_test_module(name: str) -> ModuleType:
    """A tests/serve test module (for its case tables)."""
    return importlib.import_module(name)


@contextmanager
def running_server(config: str, path: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """A `herd serve --config` process for the block (killed on the way out if still running)."""
    path.write_text(config)
    srv = ServerProcess("--config", str(path), *args, env=env)
    try:
        yield srv
    finally:
        srv.stop(kill=True)


def engine_state(url: str, model: str, headers: dict[str, str] | None = None) -> dict[str, float]:
    """The model's KV blocks and queue gauges from /metrics."""
    m = parse_metrics(httpx.get(f"{url}/metrics", headers=headers or {}, timeout=30).text)
    label = f'{{model="{model}"}}'
    return {"free": m[f"herd_kv_cache_free_blocks{label}"], "usable": m[f"herd_kv_cache_usable_blocks{label}"],
            "running": m[f"herd_num_requests_running{label}"], "waiting": m[f"herd_num_requests_waiting{label}"]}


def engine_is_empty(url: str, model: str, headers: dict[str, str] | None = None) -> bool:
    """Every KV block free and no request running or waiting."""
    s = engine_state(url, model, headers)
    return s["free"] == s["usable"] and s["running"] == 0 and s["waiting"] == 0


def metric(url: str, key: str, headers: dict[str, str] | None = None) -> float:
    """One series of /metrics (0 when absent)."""
    return parse_metrics(httpx.get(f"{url}/metrics", headers=headers or {}, timeout=30).text).get(key, 0.0)


def server_statuses(url: str, headers: dict[str, str] | None = None) -> Counter[int]:
    """Responses by status as the server counted them (herd_http_requests_total)."""
    out: Counter[int] = Counter()
    m = parse_metrics(httpx.get(f"{url}/metrics", headers=headers or {}, timeout=30).text)
    for key, value in m.items():
        if key.startswith("herd_http_requests_total{"):
            out[int(re.search(r'status="(\d+)"', key).group(1))] += int(value)
    return out


def access_log(srv: ServerProcess) -> list[dict[str, Any]]:
    """The server's JSON access-log lines so far (status, duration_ms, path, ...)."""
    out = []
    for line in srv.output().splitlines():
        start = line.find('{"ts"')
        if start >= 0:
            try:
                out.append(json.loads(line[start:]))
            except ValueError:
                pass
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between order statistics; NaN for no values."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q) - 1))] if q < 100 \
        else float(max(values))


def statuses_line(counts: Counter[int]) -> str:
    """`200×17 400×58 ...` in status order."""
    return " ".join(f"{s}×{n}" for s, n in sorted(counts.items()))


def report(test: str, **figures: Any) -> None:
    """One `RELIABILITY <test>: key=value ...` line (run with -s to see it)."""
    parts = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()]
    print(f"\nRELIABILITY {test}: " + " ".join(parts), flush=True)
