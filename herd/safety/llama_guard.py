"""Llama Guard 3 as a shield: the exact prompt, greedy classification on the herd engine, verdict parsing.

Three renderings of the Llama Guard 3 prompt exist (see LLAMA31.md §4); `prompt_format` picks:
- "template": the checkpoint's own chat template (HF `tokenizer_config.json`), as transformers
  users run it; used by "auto" whenever the checkpoint carries a Llama Guard template.
- "recipe": Meta's llama-recipes `PROMPT_TEMPLATE_3` (single spaces after the user header and
  before <|eot_id|>, category lines "S1: Violent Crimes. "); "auto" uses it otherwise (Meta layout).
- "chat": the prompt body sent as one user message through the Llama 3 chat format, as Llama
  Stack does, but with the trained "User"/"Agent" role names.
All three name assistant turns "Agent", as the guard was trained; Llama Stack's provider writes
"Assistant" (role.capitalize()), a divergence from training that Herd does not reproduce.

Text that the messages carry is always encoded as plain text: a "<|eot_id|>" typed by a user
never becomes a special token, unlike `apply_chat_template` followed by tokenization.
"""
from __future__ import annotations

import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from herd.config import ModelArgs
from herd.errors import HerdError
from herd.safety.taxonomy import (
    BY_CODE,
    LLAMA_GUARD_REFUSAL,
    Category,
    guard_categories,
    parse_codes,
)
from herd.safety.types import (
    MessageLike,
    ModerationResult,
    SafetyViolation,
    ShieldResult,
    message_text,
)
from herd.tokenizer.chat_format import ChatFormat
from herd.tokenizer.messages import Message, to_messages
from herd.tokenizer.templates import ChatTemplate
from herd.tokenizer.tokenizer import Tokenizer

PromptFormat = Literal["auto", "template", "recipe", "chat"]
PROMPT_FORMATS: tuple[str, ...] = ("auto", "template", "recipe", "chat")
TASK = ("Task: Check if there is unsafe content in '{agent}' messages in conversations according our "
        "safety policy with the below categories.")
INSTRUCTIONS = ("Provide your safety assessment for ONLY THE LAST {agent} message in the above conversation:\n"
                " - First line must read 'safe' or 'unsafe'.\n"
                " - If unsafe, a second line must include a comma-separated list of violated categories.")
BEGIN_CATEGORIES, END_CATEGORIES = "<BEGIN UNSAFE CONTENT CATEGORIES>", "<END UNSAFE CONTENT CATEGORIES>"
_SENTINEL = "\ue000{}\ue001"  # private-use characters: stand-ins for message text while rendering
_SENTINEL_RE = re.compile("\ue000(\\d+)\ue001")
_CODE_LINE = re.compile(r"^(S\d+):")


class GuardOutputError(HerdError):
    """The guard model answered something other than `safe` or `unsafe\\nS1,S2`."""


@dataclass(frozen=True)
class GuardPrompt:
    """The exact prompt sent to the guard: text, token ids, which rendering, and what it asks."""

    text: str
    token_ids: list[int]
    format: str  # "template" | "recipe" | "chat"
    agent_type: str  # "User" or "Agent": whose last message is judged
    categories: tuple[str, ...]  # the codes listed in the prompt


@dataclass
class GuardVerdict:
    """What the guard said about one conversation."""

    codes: tuple[str, ...]  # the codes it named (empty when it said safe)
    violated: tuple[str, ...]  # those codes that are not excluded
    p_unsafe: float | None  # P(first non-blank output token = "unsafe"); None if it was not scored
    output: str  # the raw generated text
    prompt: GuardPrompt
    category_scores: dict[str, float] = field(default_factory=dict)  # code -> score (moderations only)

    @property
    def safe(self) -> bool:
        return not self.violated


def is_8b_class(args: ModelArgs) -> bool:
    """True for Llama-Guard-3-8B-sized models (S14 is in their taxonomy); 1B/3B-sized ones are not."""
    return args.num_params() >= 4_000_000_000


def guard_turns(messages: Sequence[MessageLike]) -> list[tuple[str, str]]:
    """Messages as alternating ("user" | "assistant", text) turns, preprocessed as Llama Stack does.

    A non-user first message becomes a user message and of two leading user messages the first is
    dropped (Llama Stack's rules); later system messages are dropped; tool results count as user-side
    input; consecutive turns of one side are joined with a blank line, so the turns alternate.
    """
    msgs = to_messages(messages, lenient=True)
    if msgs[0].role != "user":
        msgs[0] = Message("user", message_text(msgs[0]))
    if len(msgs) >= 2 and msgs[0].role == msgs[1].role == "user":
        msgs = msgs[1:]
    turns: list[tuple[str, str]] = []
    for m in msgs:
        if m.role == "system":
            continue
        side, text = ("assistant" if m.role == "assistant" else "user"), message_text(m)
        if turns and turns[-1][0] == side:
            turns[-1] = (side, turns[-1][1] + "\n\n" + text)
        else:
            turns.append((side, text))
    return turns


def parse_verdict(text: str) -> tuple[str, ...]:
    """`safe` -> (); `unsafe\\nS1,S3` -> ("S1", "S3"); anything else raises GuardOutputError."""
    s = text.strip()
    if s == "safe":
        return ()
    m = re.fullmatch(r"unsafe\n([^\n]*)", s)
    codes = tuple(c.strip() for c in m.group(1).split(",")) if m else ()
    if not codes or any(c not in BY_CODE for c in codes):
        shown = s if len(s) <= 80 else s[:77] + "..."
        raise GuardOutputError(f"unexpected Llama Guard output {shown!r}: expected 'safe' or 'unsafe' and a "
                               "line of category codes (is this model a Llama Guard 3 checkpoint?)")
    return codes


class LlamaGuardPrompter:
    """Renders and encodes Llama Guard 3 prompts for one tokenizer (no weights needed)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        with_s14: bool,
        excluded_categories: Sequence[str] | str = (),
        prompt_format: str = "auto",
    ) -> None:
        if not tokenizer.is_llama3():
            raise HerdError("Llama Guard 3 needs the Llama 3 vocabulary; this tokenizer is not Llama 3's")
        if prompt_format not in PROMPT_FORMATS:
            raise HerdError(f"prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")
        self.tokenizer = tokenizer
        self.categories: tuple[Category, ...] = guard_categories(with_s14)
        self.excluded = parse_codes(excluded_categories, what="excluded category")
        is_guard_template = bool(tokenizer.chat_template) and BEGIN_CATEGORIES in tokenizer.chat_template
        if prompt_format == "template" and not is_guard_template:
            raise HerdError("prompt_format 'template' needs a checkpoint whose chat template is a Llama Guard one")
        self.format = ("template" if is_guard_template else "recipe") if prompt_format == "auto" else prompt_format
        self.template = ChatTemplate.from_tokenizer(tokenizer) if self.format == "template" else None

    def listed(self) -> tuple[str, ...]:
        """Codes the prompt lists: the model's minus the excluded ones (all of them if all are excluded)."""
        codes = [c.code for c in self.categories if c.code not in self.excluded]
        return tuple(codes) if codes else tuple(c.code for c in self.categories)

    def render(self, messages: Sequence[MessageLike]) -> GuardPrompt:
        """The exact prompt for a conversation; its last message is the one judged."""
        turns = guard_turns(messages)
        agent = "User" if turns[-1][0] == "user" else "Agent"
        # each text becomes its leading/trailing whitespace around a stand-in, so a template that trims
        # contents trims exactly as it would the real text; the stand-in then turns into the stripped text
        texts = [t.strip() for _, t in turns]
        slots = [(side, t[: len(t) - len(t.lstrip())] + _SENTINEL.format(i) + t[len(t.rstrip()):] if t.strip()
                  else t + _SENTINEL.format(i)) for i, (side, t) in enumerate(turns)]
        if self.format == "chat":
            body = self._body(slots, agent, trailing_space=False)
            body = _SENTINEL_RE.sub(lambda m: texts[int(m.group(1))], body)
            fmt = ChatFormat(self.tokenizer)
            msg = [Message("user", body)]
            ids = fmt.encode_dialog_prompt(msg, compose_system=False)
            return GuardPrompt(fmt.render_dialog(msg, compose_system=False), ids, "chat", agent, self.listed())
        if self.format == "recipe":
            skeleton = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|> "
                        + self._body(slots, agent, trailing_space=True)
                        + " <|eot_id|><|start_header_id|>assistant<|end_header_id|>")
        else:
            skeleton = self._render_template(slots)
        text, ids = self._encode(skeleton, texts)
        return GuardPrompt(text, ids, self.format, agent, _listed_in(skeleton))

    def _body(self, slots: list[tuple[str, str]], agent: str, *, trailing_space: bool) -> str:
        by_code = {c.code: c for c in self.categories}
        end = ". " if trailing_space else "."  # llama-recipes' names end in ". "
        lines = "\n".join(f"{code}: {by_code[code].name}{end}" for code in self.listed())
        conversation = "\n\n".join(f"{'User' if side == 'user' else 'Agent'}: {s}" for side, s in slots)
        return (f"{TASK.format(agent=agent)}\n\n{BEGIN_CATEGORIES}\n{lines}\n{END_CATEGORIES}\n"
                f"\n<BEGIN CONVERSATION>\n\n{conversation}\n\n<END CONVERSATION>\n\n"
                f"{INSTRUCTIONS.format(agent=agent)}")

    def _render_template(self, slots: list[tuple[str, str]]) -> str:
        assert self.template is not None
        excluded = [c for c in self.excluded if c not in self.listed()]
        failure: HerdError | None = None
        # the 8B template reads string contents, the 1B/Vision ones lists of {"type": "text"} parts
        for as_parts in (False, True):
            chat = [{"role": side, "content": [{"type": "text", "text": s}] if as_parts else s} for side, s in slots]
            try:
                out = self.template.render(chat, add_generation_prompt=True, excluded_category_keys=excluded)
            except HerdError as e:
                failure = failure or e
                continue
            if all(_SENTINEL.format(i) in out for i in range(len(slots))):
                return _drop_category_lines(out, excluded)
        raise HerdError(f"this checkpoint's Llama Guard chat template did not render the conversation"
                        f"{f' ({failure})' if failure else ''}; try prompt_format 'recipe'")

    def _encode(self, skeleton: str, texts: list[str]) -> tuple[str, list[int]]:
        """Special tokens of the skeleton become ids; everything else (message text too) plain text."""
        tok = self.tokenizer
        marked = _SENTINEL_RE.sub(lambda m: tok.mark_literal(texts[int(m.group(1))]), skeleton)
        return tok.unmark(marked), tok.encode_marked(marked)


def _drop_category_lines(text: str, excluded: Sequence[str]) -> str:
    """Remove excluded codes' lines from the categories block (the 8B template lists all 14 always)."""
    start, end = text.find(BEGIN_CATEGORIES), text.find(END_CATEGORIES)
    if not excluded or start < 0 or end < start:
        return text
    block = text[start:end].split("\n")
    kept = [line for line in block if not ((m := _CODE_LINE.match(line)) and m.group(1) in excluded)]
    return text[:start] + "\n".join(kept) + text[end:]


def _listed_in(text: str) -> tuple[str, ...]:
    start, end = text.find(BEGIN_CATEGORIES), text.find(END_CATEGORIES)
    block = text[start:end].split("\n") if 0 <= start < end else []
    return tuple(m.group(1) for line in block if (m := _CODE_LINE.match(line)))


def model_args_of(model: str | Path) -> ModelArgs:
    """A checkpoint's ModelArgs without loading its weights."""
    from herd import hub

    return hub.model_args(hub.resolve(model))


class LlamaGuard:
    """A Llama Guard 3 checkpoint (1B or 8B, HF/Meta/GGUF) running greedily on the herd engine."""

    kind = "llama-guard"

    def __init__(
        self,
        llm: Any,
        *,
        excluded_categories: Sequence[str] | str = (),
        prompt_format: str = "auto",
        with_s14: bool | None = None,
        max_tokens: int = 32,
    ) -> None:
        """Wrap a loaded `herd.LLM`; with_s14 None decides by model size (8B-class guards know S14)."""
        self.llm = llm
        if with_s14 is None:
            with_s14 = is_8b_class(llm.model.args)
        self.prompter = LlamaGuardPrompter(llm.tokenizer, with_s14=bool(with_s14),
                                           excluded_categories=excluded_categories, prompt_format=prompt_format)
        if not isinstance(max_tokens, int) or max_tokens < 2:
            raise HerdError(f"max_tokens must be an integer >= 2, got {max_tokens!r}")
        self.max_tokens = max_tokens
        tok = llm.tokenizer
        self._unsafe_id = tok.encode("unsafe")[0]
        self._code_prefix = tok.encode("unsafe\nS")
        self._digit_ids = {tok.encode(c.code[1:])[0]: c.code for c in self.prompter.categories}
        self._lock = threading.Lock()  # one engine, one caller at a time

    @classmethod
    def load(
        cls,
        model: str | Path,
        *,
        device: str | None = None,
        dtype: str | None = None,
        max_model_len: int = 16384,
        max_num_seqs: int = 4,
        kv_cache_memory: int | None = None,
        **params: Any,
    ) -> LlamaGuard:
        """Load a guard checkpoint; params are excluded_categories, prompt_format, with_s14, max_tokens."""
        from herd.config import EngineConfig
        from herd.llm import LLM

        allowed = {"excluded_categories", "prompt_format", "with_s14", "max_tokens"}
        unknown = set(params) - allowed
        if unknown:
            raise HerdError(f"llama-guard: unknown param(s) {', '.join(sorted(unknown))} (allowed: "
                            f"{', '.join(sorted(allowed | {'device', 'dtype', 'max_model_len', 'max_num_seqs', 'kv_cache_memory'}))})")
        config = EngineConfig(max_num_seqs=max_num_seqs, max_model_len=max_model_len, kv_cache_memory=kv_cache_memory)
        return cls(LLM(model, dtype=dtype, device=device, engine_config=config), **params)

    @property
    def excluded(self) -> tuple[str, ...]:
        return self.prompter.excluded

    def prompt(self, messages: Sequence[MessageLike]) -> GuardPrompt:
        """The exact prompt this guard sends for a conversation."""
        return self.prompter.render(messages)

    def classify(self, conversations: Sequence[Sequence[MessageLike]], *, scores: bool = False) -> list[GuardVerdict]:
        """Judge the last message of each conversation (one batch); scores=True adds per-category scores."""
        from herd.engine.request import SamplingParams

        prompts = [self.prompt(c) for c in conversations]
        params = SamplingParams(temperature=0.0, max_tokens=self.max_tokens, logprobs=20)
        with self._lock:
            outs = [o.outputs[0] for o in self.llm.generate([p.token_ids for p in prompts], params, use_tqdm=False)]
            verdicts = [self._verdict(p, o) for p, o in zip(prompts, outs)]
            if scores:
                self._score_categories(verdicts, outs)
        return verdicts

    def _first_word(self, out: Any) -> int | None:
        """Index of the first generated token that is not whitespace (the 8B guard begins with "\\n\\n")."""
        for i, t in enumerate(out.token_ids):
            if self.llm.tokenizer.decode([t]).strip():
                return i
        return None

    def _verdict(self, prompt: GuardPrompt, out: Any) -> GuardVerdict:
        codes = parse_verdict(out.text)
        i = self._first_word(out)
        p_unsafe = None
        if i is not None and out.logprobs:
            p_unsafe = math.exp(out.logprobs[i].get(self._unsafe_id, -math.inf))  # 0 if not in the top 20
        violated = tuple(c for c in codes if c not in self.excluded)
        if set(codes) <= set(self.excluded):  # Llama Stack: only excluded codes -> no violation
            violated = ()
        return GuardVerdict(codes, violated, p_unsafe, out.text, prompt)

    def _score_categories(self, verdicts: list[GuardVerdict], outs: list[Any]) -> None:
        """score(Sk) = P(unsafe) x P(first code is Sk | "unsafe\\nS"): one extra token, prefix-cached."""
        from herd.engine.request import SamplingParams

        todo = [(v, o) for v, o in zip(verdicts, outs) if v.p_unsafe and v.p_unsafe > 1e-6]
        for v in verdicts:
            v.category_scores = {c: 0.0 for c in v.prompt.categories}
        if not todo:
            return
        prefixes = [v.prompt.token_ids + o.token_ids[: self._first_word(o)] + self._code_prefix for v, o in todo]
        params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=20)
        for (v, _), res in zip(todo, self.llm.generate(prefixes, params, use_tqdm=False)):
            dist = res.outputs[0].logprobs[0] if res.outputs[0].logprobs else {}
            for tid, lp in dist.items():
                code = self._digit_ids.get(tid)
                if code in v.category_scores:
                    v.category_scores[code] = v.p_unsafe * math.exp(lp)

    def run(self, messages: Sequence[MessageLike]) -> ShieldResult:
        """Llama Stack's run-shield: a violation (level error, the canned refusal) naming the codes."""
        v = self.classify([messages])[0]
        if v.safe:
            return ShieldResult(None)
        meta = {"violation_type": ",".join(v.codes), "categories": [BY_CODE[c].name for c in v.codes],
                "p_unsafe": v.p_unsafe}
        return ShieldResult(SafetyViolation("error", LLAMA_GUARD_REFUSAL, meta))

    def moderate(self, texts: Sequence[str]) -> list[ModerationResult]:
        """One moderation result per text, each judged as a user message; scores from P(unsafe)."""
        verdicts = self.classify([[{"role": "user", "content": t}] for t in texts], scores=True)
        results = []
        for v in verdicts:
            cats = self.prompter.categories
            results.append(ModerationResult(
                flagged=not v.safe,
                categories={c.name: c.code in v.violated for c in cats},
                category_scores={c.name: _score(v, c.code) for c in cats},
                category_applied_input_types={c.name: ["text"] if c.code in v.violated else [] for c in cats},
                user_message=None if v.safe else LLAMA_GUARD_REFUSAL,
                metadata={"violation_type": list(v.codes), "p_unsafe": v.p_unsafe} if not v.safe
                else {"p_unsafe": v.p_unsafe},
            ))
        return results


def _score(v: GuardVerdict, code: str) -> float:
    if v.p_unsafe is None:  # no logprobs: fall back to the verdict itself
        return 1.0 if code in v.violated else 0.0
    return float(v.category_scores.get(code, 0.0))
