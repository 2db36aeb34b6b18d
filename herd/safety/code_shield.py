"""Code Shield: insecure-code detection for code the model writes, with Meta's `codeshield` package.

Code comes from code_interpreter tool calls (Python), fenced code blocks (the fence's language
when codeshield supports it, else every language) and, when a message has neither, its whole text
(as Llama Stack's code-scanner does). codeshield runs regex rules and semgrep rules locally
(semgrep with `--metrics off`; nothing leaves the machine); a scan takes about half a second
when every language is tried, less with a known language. A finding is a violation carrying
the rule ids (pattern_id), CWE ids and line numbers.

Unlike `CodeShield.scan_code`, which reports "secure" when the scanner itself fails, a failing
scan here is an error: a shield that cannot look must not say the code is fine.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from herd.errors import HerdError
from herd.safety.types import (
    MessageLike,
    ModerationResult,
    SafetyViolation,
    ShieldResult,
)
from herd.tokenizer.messages import to_messages

CODE_SHIELD_REFUSAL = "Sorry, I found security concerns in the code."  # Llama Stack's message
_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)```", re.DOTALL)
# fence tags -> codeshield language names
_ALIASES = {"py": "python", "python3": "python", "js": "javascript", "jsx": "javascript", "node": "javascript",
            "c++": "cpp", "cc": "cpp", "cxx": "cpp", "h": "c", "cs": "csharp", "c#": "csharp", "rs": "rust",
            "kt": "kotlin", "objc": "objective_c", "objective-c": "objective_c"}


@dataclass(frozen=True)
class CodeIssue:
    """One finding: the rule, its CWE, where it is, and how bad."""

    pattern_id: str
    cwe_id: str
    line: int | None  # 1-based, within the snippet
    severity: str  # error | warning | advice
    description: str
    analyzer: str  # regex | semgrep
    language: str
    snippet: int  # which extracted snippet (0-based)


@dataclass(frozen=True)
class CodeSnippet:
    """A piece of code to scan, with its language when known."""

    code: str
    language: str | None


def _rule_id(raw: Any) -> str:
    """A rule id without the config-path prefix semgrep puts before it ("...._generated_.<id>")."""
    return re.sub(r"^.*\._generated_\.", "", str(raw or "unknown"))


def supported_languages() -> list[str]:
    """Languages codeshield has rules for (c, cpp, csharp, java, javascript, php, python, rust)."""
    from codeshield.insecure_code_detector.languages import get_supported_languages

    return [lang.value for lang in get_supported_languages()]


def extract_code(messages: Sequence[MessageLike]) -> list[CodeSnippet]:
    """The code in a conversation: code_interpreter calls, fenced blocks, else each message's text."""
    langs = set(supported_languages())
    out: list[CodeSnippet] = []
    for m in to_messages(messages, lenient=True):
        found: list[CodeSnippet] = []
        for call in m.tool_calls:
            code = call.arguments.get("code")
            if call.tool_name == "code_interpreter" and isinstance(code, str):
                found.append(CodeSnippet(code, "python"))
        for tag, body in _FENCE.findall(m.content or ""):
            lang = _ALIASES.get(tag.lower(), tag.lower())
            found.append(CodeSnippet(body, lang if lang in langs else None))
        if not found and m.content.strip():
            found.append(CodeSnippet(m.content, None))
        out += found
    return out


def _run_coroutine(coro: Any) -> Any:
    """Run a coroutine to completion, also when called from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


class CodeShield:
    """Scans code with codeshield's Insecure Code Detector; no weights needed."""

    kind = "code-shield"

    def __init__(self, *, languages: Sequence[str] | None = None, min_severity: str = "warning") -> None:
        """languages limits scans of code of unknown language; findings below min_severity are ignored."""
        try:
            with warnings.catch_warnings():  # its semgrep lookup uses a deprecated importlib API
                warnings.simplefilter("ignore", DeprecationWarning)
                import codeshield.insecure_code_detector.insecure_code_detector  # noqa: F401
        except ImportError:
            raise HerdError("Code Shield needs the codeshield package: pip install codeshield") from None
        except Exception as e:  # noqa: BLE001 - it locates semgrep's binary at import time
            raise HerdError(f"codeshield cannot start ({type(e).__name__}: {e})") from None
        known = supported_languages()
        self.languages = list(languages) if languages else known
        bad = [lang for lang in self.languages if lang not in known]
        if bad:
            raise HerdError(f"code-shield: unsupported language(s) {', '.join(bad)} (supported: {', '.join(known)})")
        order = ["advice", "warning", "error"]
        if min_severity not in order:
            raise HerdError(f"min_severity must be one of {', '.join(order)}, got {min_severity!r}")
        self.min_level = order.index(min_severity)

    def scan(self, snippets: Sequence[CodeSnippet]) -> list[CodeIssue]:
        """Findings in the snippets, in order; a scanner failure is a HerdError."""
        jobs = [(i, lang) for i, s in enumerate(snippets) for lang in ([s.language] if s.language else self.languages)]
        if not jobs:
            return []
        results = _run_coroutine(self._analyze_all(snippets, jobs))
        order = ["advice", "warning", "error"]
        issues: list[CodeIssue] = []
        seen: set[tuple[Any, ...]] = set()
        for (i, lang), found in zip(jobs, results):
            for f in found or []:
                sev = str(getattr(f.severity, "value", f.severity)).lower()
                if sev in order and order.index(sev) < self.min_level:
                    continue
                key = (i, f.pattern_id, f.line)
                if key in seen:
                    continue
                seen.add(key)
                issues.append(CodeIssue(_rule_id(f.pattern_id or f.rule), str(f.cwe_id), f.line, sev,
                                        str(f.description), str(getattr(f.analyzer, "value", f.analyzer)), lang, i))
        return issues

    async def _analyze_all(self, snippets: Sequence[CodeSnippet], jobs: list[tuple[int, str]]) -> list[Any]:
        from codeshield.insecure_code_detector import insecure_code_detector
        from codeshield.insecure_code_detector.languages import Language
        from codeshield.insecure_code_detector.usecases import UseCase

        async def one(i: int, lang: str) -> Any:
            try:
                return await insecure_code_detector.analyze(Language(lang), snippets[i].code,
                                                            usecase=UseCase.CODESHIELD)
            except Exception as e:  # noqa: BLE001 - semgrep missing, rule errors, ...
                raise HerdError(f"code-shield: the {lang} scan failed ({type(e).__name__}: {e})") from None

        return list(await asyncio.gather(*(one(i, lang) for i, lang in jobs)))

    def scan_text(self, code: str, language: str | None = None) -> list[CodeIssue]:
        """Findings in one piece of code (every supported language when language is None)."""
        return self.scan([CodeSnippet(code, _ALIASES.get(language, language) if language else None)])

    def run(self, messages: Sequence[MessageLike]) -> ShieldResult:
        """A violation (level error, as Llama Stack's code-scanner) naming rule ids, CWEs and lines."""
        issues = self.scan(extract_code(messages))
        if not issues:
            return ShieldResult(None)
        meta = {"violation_type": ",".join(dict.fromkeys(i.pattern_id for i in issues)),
                "cwe_ids": sorted({i.cwe_id for i in issues}),
                "recommended_treatment": "block" if any(i.severity == "error" for i in issues) else "warn",
                "issues": [asdict(i) for i in issues]}
        return ShieldResult(SafetyViolation("error", CODE_SHIELD_REFUSAL, meta))

    def moderate(self, texts: Sequence[str]) -> list[ModerationResult]:
        """Per text: one category per rule that fired (as Llama Stack's code-scanner moderation)."""
        results = []
        for text in texts:
            issues = self.scan(extract_code([{"role": "assistant", "content": text}]))
            ids = list(dict.fromkeys(i.pattern_id for i in issues))
            results.append(ModerationResult(
                flagged=bool(issues), categories=dict.fromkeys(ids, True), category_scores=dict.fromkeys(ids, 1.0),
                category_applied_input_types={k: ["text"] for k in ids},
                user_message=CODE_SHIELD_REFUSAL if issues else None,
                metadata={"violation_type": ",".join(ids), "issues": [asdict(i) for i in issues]} if issues else {},
            ))
        return results
