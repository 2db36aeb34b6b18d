"""Shields: the `Shield` protocol, results in Llama Stack's shapes, and the registry.

A shield looks at a conversation and returns `ShieldResult(violation=None | SafetyViolation)`,
the `run-shield` response of Llama Stack; `moderate(texts)` gives one OpenAI moderation result
per text. The registry builds shields from config entries
`{shield_id, type: llama-guard|prompt-guard|code-shield, model, params}`, loads them on first
use, and `check_messages` runs several in turn for chat input/output screening.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from herd.errors import HerdError
from herd.safety.types import (
    MessageLike,
    SafetyViolation,
    Shield,
    ShieldResult,
)
from herd.tokenizer.messages import to_messages

ShieldType = Literal["llama-guard", "prompt-guard", "code-shield"]
SHIELD_TYPES: tuple[str, ...] = ("llama-guard", "prompt-guard", "code-shield")
DEFAULT_CODE_SHIELD_ID = "code-shield"


# ---- configuration and registry ------------------------------------------------------------


@dataclass(frozen=True)
class ShieldConfig:
    """One `shields:` entry of the server config."""

    shield_id: str
    type: str
    model: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "shield") -> ShieldConfig:
        """Parse and check one entry; unknown keys and bad types are HerdErrors naming `where`."""
        if not isinstance(raw, Mapping):
            raise HerdError(f"{where} must be a mapping with shield_id and type")
        unknown = set(raw) - {"shield_id", "type", "model", "params"}
        if unknown:
            raise HerdError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                            "(allowed: shield_id, type, model, params)")
        sid, kind, model, params = raw.get("shield_id"), raw.get("type"), raw.get("model"), raw.get("params") or {}
        if not isinstance(sid, str) or not sid.strip():
            raise HerdError(f"{where}.shield_id must be a non-empty string")
        if kind not in SHIELD_TYPES:
            raise HerdError(f"{where}.type must be one of {', '.join(SHIELD_TYPES)}, got {kind!r}")
        if model is not None and not isinstance(model, (str, Path)):
            raise HerdError(f"{where}.model must be a path or model name")
        if kind in ("llama-guard", "prompt-guard") and model is None:
            raise HerdError(f"{where}: a {kind} shield needs `model` (the guard checkpoint's path)")
        if not isinstance(params, Mapping):
            raise HerdError(f"{where}.params must be a mapping")
        return cls(sid.strip(), kind, None if model is None else str(model), dict(params))

    def to_resource(self) -> dict[str, Any]:
        """The Llama Stack `Shield` resource: identifier, provider ids, type, params."""
        return {"identifier": self.shield_id, "provider_resource_id": self.model or self.type,
                "provider_id": self.type, "type": "shield", "params": dict(self.params)}


def build_shield(config: ShieldConfig) -> Shield:
    """Construct (and load the weights of) the shield a config entry describes."""
    if config.type == "llama-guard":
        from herd.safety.llama_guard import LlamaGuard

        return LlamaGuard.load(config.model, **dict(config.params))
    if config.type == "prompt-guard":
        from herd.safety.prompt_guard import PromptGuard

        return PromptGuard.load(config.model, **dict(config.params))
    from herd.safety.code_shield import CodeShield

    unknown = set(config.params) - {"languages", "min_severity"}
    if unknown:
        raise HerdError(f"code-shield: unknown param(s) {', '.join(sorted(unknown))} (allowed: languages, min_severity)")
    return CodeShield(**dict(config.params))


class UnknownShieldError(HerdError):
    """A shield id that the registry does not hold (HTTP 404); `available` lists the ids it does."""

    def __init__(self, shield_id: str, available: Sequence[str]):
        self.shield_id, self.available = shield_id, list(available)
        super().__init__(f"shield {shield_id!r} not found; available shields: {', '.join(available) or '(none)'}",
                         "shield_id")


class ShieldRegistry:
    """Shields by id, built from config and loaded on first use (thread-safe)."""

    def __init__(self, configs: Iterable[ShieldConfig] = (),
                 builder: Callable[[ShieldConfig], Shield] = build_shield) -> None:
        self._configs: dict[str, ShieldConfig] = {}
        for c in configs:
            if c.shield_id in self._configs:
                raise HerdError(f"shield id {c.shield_id!r} is declared twice")
            self._configs[c.shield_id] = c
        self._shields: dict[str, Shield] = {}
        self._builder = builder
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, entries: Sequence[Mapping[str, Any]] | None, *, default_code_shield: bool = True,
                    builder: Callable[[ShieldConfig], Shield] = build_shield) -> ShieldRegistry:
        """From the config's `shields:` list; adds a `code-shield` (no weights needed) unless one is declared."""
        if entries is not None and not isinstance(entries, (list, tuple)):
            raise HerdError("shields must be a list of {shield_id, type, model, params}")
        configs = [ShieldConfig.from_dict(e, f"shields[{i}]") for i, e in enumerate(entries or [])]
        if default_code_shield and not any(c.type == "code-shield" for c in configs) \
                and all(c.shield_id != DEFAULT_CODE_SHIELD_ID for c in configs):
            configs.append(ShieldConfig(DEFAULT_CODE_SHIELD_ID, "code-shield"))
        return cls(configs, builder)

    def ids(self) -> list[str]:
        """The shield ids, in config order."""
        return list(self._configs)

    def configs(self) -> list[ShieldConfig]:
        """The config entries, in order."""
        return list(self._configs.values())

    def config(self, shield_id: str) -> ShieldConfig:
        """The config of one shield; UnknownShieldError when there is none."""
        try:
            return self._configs[shield_id]
        except KeyError:
            raise UnknownShieldError(shield_id, self.ids()) from None

    def add(self, config: ShieldConfig, shield: Shield | None = None) -> None:
        """Declare a shield (optionally already built); an existing id is an error."""
        with self._lock:
            if config.shield_id in self._configs:
                raise HerdError(f"shield id {config.shield_id!r} already exists")
            self._configs[config.shield_id] = config
            if shield is not None:
                self._shields[config.shield_id] = shield

    def get(self, shield_id: str) -> Shield:
        """The shield, built on first use."""
        config = self.config(shield_id)
        with self._lock:
            if shield_id not in self._shields:
                self._shields[shield_id] = self._builder(config)
            return self._shields[shield_id]

    def load_all(self) -> None:
        """Build every shield now (servers do this at startup so the first request is not slow)."""
        for sid in self.ids():
            self.get(sid)

    def run(self, shield_id: str, messages: Sequence[MessageLike]) -> ShieldResult:
        """Run one shield on a conversation."""
        return self.get(shield_id).run(messages)

    def check(self, shield_ids: Sequence[str], messages: Sequence[MessageLike]) -> ShieldViolation | None:
        """Run the named shields in order; the first violation (unknown ids are errors before anything runs)."""
        for sid in shield_ids:
            self.config(sid)
        return check_messages({sid: self.get(sid) for sid in shield_ids}, messages)


@dataclass
class ShieldViolation:
    """A violation together with the shield that raised it (for chat input/output screening)."""

    shield_id: str
    violation: SafetyViolation

    @property
    def user_message(self) -> str:
        """The text to answer with instead of the model's reply."""
        return self.violation.user_message or "I can't answer that."

    def to_dict(self) -> dict[str, Any]:
        """`{"shield_id": ..., **violation}` for a response's safety extension field."""
        return {"shield_id": self.shield_id, **self.violation.to_dict()}


def check_messages(shields: Mapping[str, Shield] | Sequence[tuple[str, Shield]],
                   messages: Sequence[MessageLike]) -> ShieldViolation | None:
    """Run shields in order on a conversation; the first blocking (level "error") violation, or None."""
    items = list(shields.items()) if isinstance(shields, Mapping) else list(shields)
    msgs = to_messages(messages, lenient=True)
    for sid, shield in items:
        result = shield.run(msgs)
        if result.violation is not None and result.violation.violation_level == "error":
            return ShieldViolation(sid, result.violation)
    return None
