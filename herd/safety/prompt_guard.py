"""Prompt Guard as a shield: the mDeBERTa-v3 classifier (BENIGN / INJECTION / JAILBREAK) over token windows.

Recipe (PurpleLlama's model card): softmax(logits / temperature); jailbreak score = p[JAILBREAK];
indirect-injection score = p[INJECTION] + p[JAILBREAK]. The model sees 512 tokens at a time, so a
long text is cut into 512-token windows (special tokens included), all windows of all texts are
scored in batches, and a text's score is the maximum over its windows. Llama Stack scores only the
first 512 tokens of the last message, so an injection placed late in a long document passes there.

guard_type "jailbreak" screens the last message (user input) for jailbreaks; "injection" (Llama
Stack's default) screens the last message and every tool result (third-party content) for
injected instructions. Prompt Guard 2 checkpoints (two labels: benign / malicious) also load; their
malicious probability is both scores.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herd.errors import HerdError
from herd.safety.types import (
    MessageLike,
    ModerationResult,
    SafetyViolation,
    ShieldResult,
    message_text,
)
from herd.tokenizer.messages import to_messages

GUARD_TYPES = ("injection", "jailbreak")
PROMPT_GUARD_REFUSAL = "Sorry, I cannot do this."  # Llama Stack's message


@dataclass(frozen=True)
class PromptScores:
    """Scores of one text: each the maximum over its windows, with the window that gave it."""

    jailbreak: float
    injection: float
    windows: int  # how many 512-token windows the text took
    jailbreak_window: int  # index of the window with the highest jailbreak score
    injection_window: int


def _label_indices(id2label: dict[int, str], num_labels: int) -> tuple[int | None, int]:
    """(injection index or None, jailbreak/malicious index) from the classifier's labels."""
    names = {i: str(n).upper() for i, n in id2label.items()}
    jb = [i for i, n in names.items() if "JAILBREAK" in n]
    inj = [i for i, n in names.items() if "INJECTION" in n]
    if len(jb) == 1 and len(inj) == 1:
        return inj[0], jb[0]
    if num_labels == 3:  # unnamed labels: Prompt Guard's order 0 BENIGN, 1 INJECTION, 2 JAILBREAK
        return 1, 2
    if num_labels == 2:  # Prompt Guard 2: 0 benign, 1 malicious
        return None, 1
    raise HerdError(f"not a Prompt Guard classifier: {num_labels} labels {sorted(names.values())}")


class PromptGuard:
    """A Prompt Guard checkpoint (HF directory) loaded with transformers, scoring windows in batches."""

    kind = "prompt-guard"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        guard_type: str = "injection",
        threshold: float = 0.9,
        temperature: float = 1.0,
        max_length: int = 512,
        window_overlap: int = 0,
        batch_size: int = 16,
    ) -> None:
        """Wrap a transformers sequence classifier and its (fast) tokenizer."""
        if guard_type not in GUARD_TYPES:
            raise HerdError(f"guard_type must be one of {', '.join(GUARD_TYPES)}, got {guard_type!r}")
        if not 0 < float(threshold) <= 1:
            raise HerdError(f"threshold must be in (0, 1], got {threshold!r}")
        if float(temperature) <= 0:
            raise HerdError(f"temperature must be > 0, got {temperature!r}")
        limit = int(getattr(model.config, "max_position_embeddings", max_length) or max_length)
        self.max_length = min(int(max_length), limit) if limit > 0 else int(max_length)
        body = self.max_length - tokenizer.num_special_tokens_to_add(pair=False)
        if body < 2 or not 0 <= int(window_overlap) < body // 2:
            raise HerdError(f"window_overlap must be in [0, {max(body // 2 - 1, 0)}], got {window_overlap!r}")
        if int(batch_size) < 1:
            raise HerdError(f"batch_size must be >= 1, got {batch_size!r}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.guard_type, self.threshold, self.temperature = guard_type, float(threshold), float(temperature)
        self.window_overlap, self.batch_size = int(window_overlap), int(batch_size)
        self._inj, self._jb = _label_indices(dict(model.config.id2label), int(model.config.num_labels))
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model: str | Path, *, device: str | None = None, **params: Any) -> PromptGuard:
        """Load an HF-layout Prompt Guard directory (config.json, weights, tokenizer files), offline."""
        path = Path(model).expanduser()
        if not (path / "config.json").is_file():
            raise HerdError(f"{path}: not a Hugging Face model directory (no config.json); Prompt Guard "
                            "loads from a local directory such as Prompt-Guard-86M")
        allowed = {"guard_type", "threshold", "temperature", "max_length", "window_overlap", "batch_size"}
        unknown = set(params) - allowed
        if unknown:
            raise HerdError(f"prompt-guard: unknown param(s) {', '.join(sorted(unknown))} "
                            f"(allowed: {', '.join(sorted(allowed | {'device'}))})")
        try:
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
        except ImportError:
            raise HerdError("Prompt Guard needs transformers: pip install 'llama-herd[safety]'") from None
        try:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            net = AutoModelForSequenceClassification.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise HerdError(f"{path}: cannot load the Prompt Guard classifier ({e})") from None
        if not getattr(tok, "is_fast", False):
            raise HerdError(f"{path}: Prompt Guard needs a fast tokenizer (tokenizer.json)")
        net = net.to(torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        return cls(net, tok, **params)

    def _windows(self, texts: Sequence[str]) -> tuple[list[list[int]], list[int]]:
        """All windows of all texts (with special tokens) and, per window, the text it came from."""
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length,
                             return_overflowing_tokens=True, stride=self.window_overlap)
        return list(enc["input_ids"]), list(enc["overflow_to_sample_mapping"])

    def _probs(self, windows: list[list[int]]) -> Any:
        import torch

        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(windows), self.batch_size):
            batch = self.tokenizer.pad({"input_ids": windows[i: i + self.batch_size]}, return_tensors="pt")
            with torch.inference_mode():
                logits = self.model(input_ids=batch["input_ids"].to(device),
                                    attention_mask=batch["attention_mask"].to(device)).logits
            out.append(torch.softmax(logits.float() / self.temperature, dim=-1).cpu())
        return torch.cat(out)

    def score(self, texts: Sequence[str]) -> list[PromptScores]:
        """Jailbreak and injection scores of each text (max over its 512-token windows)."""
        if not texts:
            return []
        with self._lock:
            windows, owner = self._windows(texts)
            probs = self._probs(windows)
        jb = probs[:, self._jb]
        inj = jb if self._inj is None else probs[:, self._inj] + jb
        results = []
        for t in range(len(texts)):
            rows = [i for i, o in enumerate(owner) if o == t]
            j_best = max(rows, key=lambda r: float(jb[r]))
            i_best = max(rows, key=lambda r: float(inj[r]))
            results.append(PromptScores(float(jb[j_best]), min(float(inj[i_best]), 1.0), len(rows),
                                        rows.index(j_best), rows.index(i_best)))
        return results

    def _targets(self, messages: Sequence[MessageLike]) -> list[str]:
        msgs = to_messages(messages, lenient=True)
        texts = [message_text(msgs[-1])]
        if self.guard_type == "injection":
            texts += [m.content for m in msgs[:-1] if m.role in ("tool", "ipython")]
        return texts

    def run(self, messages: Sequence[MessageLike]) -> ShieldResult:
        """Llama Stack's prompt-guard shield, with windowing: a violation when the score passes the threshold."""
        scores = self.score(self._targets(messages))
        jb = max(s.jailbreak for s in scores)
        inj = max(s.injection for s in scores)
        meta = {"jailbreak_score": jb, "injection_score": inj}
        if self.guard_type == "injection" and inj > self.threshold:
            meta["violation_type"] = f"prompt_injection:embedded={inj - jb},malicious={jb}"
        elif self.guard_type == "jailbreak" and jb > self.threshold:
            meta["violation_type"] = f"prompt_injection:malicious={jb}"
        else:
            return ShieldResult(None)
        return ShieldResult(SafetyViolation("error", PROMPT_GUARD_REFUSAL, meta))

    def moderate(self, texts: Sequence[str]) -> list[ModerationResult]:
        """Per text: categories jailbreak / prompt_injection flagged above the threshold, with the scores."""
        results = []
        for s in self.score(texts):
            flags = {"jailbreak": s.jailbreak > self.threshold, "prompt_injection": s.injection > self.threshold}
            flagged = flags["jailbreak"] if self.guard_type == "jailbreak" else flags["prompt_injection"]
            results.append(ModerationResult(
                flagged=flagged, categories=flags,
                category_scores={"jailbreak": s.jailbreak, "prompt_injection": s.injection},
                category_applied_input_types={k: ["text"] if v else [] for k, v in flags.items()},
                user_message=PROMPT_GUARD_REFUSAL if flagged else None,
                metadata={"windows": s.windows, "guard_type": self.guard_type},
            ))
        return results
