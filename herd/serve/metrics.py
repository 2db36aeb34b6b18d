"""Prometheus metrics in the text exposition format (no client library needed).

Counters and histograms are updated by the routes; gauges (running/waiting requests, KV-cache
usage) are read from the engines when /metrics is scraped.
"""
from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from herd.serve.models import ModelRegistry

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    esc = [(k, v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")) for k, v in labels]
    return "{" + ",".join(f'{k}="{v}"' for k, v in esc) + "}"


def _num(x: float) -> str:
    return repr(float(x)) if x != int(x) else str(int(x))


class Counter:
    """A labelled monotonic counter."""

    def __init__(self, name: str, help: str):
        self.name, self.help = name, help
        self._values: dict[Labels, float] = defaultdict(float)
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add `amount` to the series with these labels."""
        with self._lock:
            self._values[tuple(sorted(labels.items()))] += amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for labels, v in sorted(self._values.items()):
            yield f"{self.name}{_labels(labels)} {_num(v)}"


class Histogram:
    """A labelled histogram with fixed buckets."""

    def __init__(self, name: str, help: str, buckets: Sequence[float]):
        self.name, self.help, self.buckets = name, help, tuple(buckets)
        self._counts: dict[Labels, list[int]] = {}
        self._sums: dict[Labels, float] = defaultdict(float)
        self._lock = threading.Lock()

    def observe(self, value: float, **labels: str) -> None:
        """Count one observation."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            counts = self._counts.setdefault(key, [0] * (len(self.buckets) + 1))
            counts[bisect.bisect_left(self.buckets, value)] += 1
            self._sums[key] += value

    def count(self, **labels: str) -> int:
        return sum(self._counts.get(tuple(sorted(labels.items())), []))

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for labels, counts in sorted(self._counts.items()):
            total = 0
            for bound, c in zip((*self.buckets, float("inf")), counts):
                total += c
                le = "+Inf" if bound == float("inf") else _num(bound)
                yield f"{self.name}_bucket{_labels((*labels, ('le', le)))} {total}"
            yield f"{self.name}_sum{_labels(labels)} {_num(self._sums[labels])}"
            yield f"{self.name}_count{_labels(labels)} {total}"


def _gauge(name: str, help: str, rows: Iterable[tuple[Labels, float]]) -> list[str]:
    return [f"# HELP {name} {help}", f"# TYPE {name} gauge", *(f"{name}{_labels(lb)} {_num(v)}" for lb, v in rows)]


class Metrics:
    """All of the server's metrics."""

    def __init__(self) -> None:
        self.requests = Counter("herd_http_requests_total", "HTTP requests by route, method and status.")
        self.duration = Histogram("herd_http_request_duration_seconds", "HTTP request time (to the last byte).",
                                  DURATION_BUCKETS)
        self.prompt_tokens = Counter("herd_prompt_tokens_total", "Prompt tokens processed.")
        self.cached_tokens = Counter("herd_prompt_cached_tokens_total", "Prompt tokens served from the prefix cache.")
        self.generation_tokens = Counter("herd_generation_tokens_total", "Tokens generated.")
        self.finished = Counter("herd_requests_finished_total", "Generation requests by finish reason.")
        self.ttft = Histogram("herd_time_to_first_token_seconds", "Time from arrival to the first token.",
                              LATENCY_BUCKETS)
        self.itl = Histogram("herd_inter_token_latency_seconds", "Time between consecutive output steps.",
                             LATENCY_BUCKETS)
        self.e2e = Histogram("herd_request_latency_seconds", "Time from arrival to the last token.", DURATION_BUCKETS)
        self.embedding_inputs = Counter("herd_embedding_inputs_total", "Texts embedded.")
        self.in_flight = 0

    def render(self, registry: ModelRegistry) -> str:
        """The exposition text, with live engine gauges for every LLM in `registry`."""
        lines: list[str] = []
        for m in (self.requests, self.duration, self.prompt_tokens, self.cached_tokens, self.generation_tokens,
                  self.finished, self.ttft, self.itl, self.e2e, self.embedding_inputs):
            lines += m.render()
        stats = [((("model", llm.id),), llm.engine.stats()) for llm in registry.llms()]
        lines += _gauge("herd_http_requests_in_flight", "HTTP requests being served.", [((), self.in_flight)])
        lines += _gauge("herd_num_requests_running", "Sequences running in the engine.",
                        [(lb, s.running) for lb, s in stats])
        lines += _gauge("herd_num_requests_waiting", "Sequences waiting for the engine.",
                        [(lb, s.waiting) for lb, s in stats])
        lines += _gauge("herd_kv_cache_usage_ratio", "Fraction of KV-cache blocks held by requests (0..1).",
                        [(lb, s.kv_usage) for lb, s in stats])
        lines += _gauge("herd_kv_cache_free_blocks", "KV-cache blocks free or evictable.",
                        [(lb, s.free_blocks) for lb, s in stats])
        lines += _gauge("herd_kv_cache_usable_blocks", "KV-cache blocks in the pool (excluding the null block).",
                        [(lb, s.usable_blocks) for lb, s in stats])
        return "\n".join(lines) + "\n"


def parse_metrics(text: str) -> dict[str, float]:
    """`name{labels}` -> value from exposition text (for tests and scripts)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out
