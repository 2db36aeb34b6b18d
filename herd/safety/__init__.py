"""Safety shields: Llama Guard 3, Prompt Guard and Code Shield, behind one `Shield` protocol.

    from herd.safety import ShieldRegistry, check_messages
    registry = ShieldRegistry.from_config([{"shield_id": "guard", "type": "llama-guard", "model": "./Llama-Guard-3-1B"}])
    registry.run("guard", [{"role": "user", "content": "..."}]).to_dict()   # {"violation": ...}
"""
from herd.safety.shields import (
    ShieldConfig,
    ShieldRegistry,
    ShieldViolation,
    UnknownShieldError,
    check_messages,
)
from herd.safety.types import ModerationResult, SafetyViolation, Shield, ShieldResult

__all__ = [
    "ModerationResult", "SafetyViolation", "Shield", "ShieldConfig", "ShieldRegistry", "ShieldResult",
    "ShieldViolation", "UnknownShieldError", "check_messages",
]
