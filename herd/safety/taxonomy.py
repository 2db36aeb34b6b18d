"""The Llama Guard 3 hazard taxonomy (S1–S14, MLCommons-based) and category-code helpers."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from herd.errors import HerdError


@dataclass(frozen=True)
class Category:
    """One hazard category: its code, the name the guard's prompt uses, and a short description."""

    code: str  # "S1"
    name: str  # the exact string in the prompt's category list ("Violent Crimes")
    long_name: str  # the model card's heading where it differs ("Sex-Related Crimes")
    description: str  # our one-line summary, for --list-categories


LLAMA_GUARD_3: tuple[Category, ...] = (
    Category("S1", "Violent Crimes", "Violent Crimes",
             "enables, encourages or endorses violence against people or animals (terrorism, murder, assault)"),
    Category("S2", "Non-Violent Crimes", "Non-Violent Crimes",
             "enables fraud, theft, drug or weapons crimes, hacking and other non-violent crimes"),
    Category("S3", "Sex Crimes", "Sex-Related Crimes",
             "enables sex trafficking, sexual assault, harassment or other sex-related crimes"),
    Category("S4", "Child Exploitation", "Child Sexual Exploitation",
             "contains, describes or enables the sexual abuse of children"),
    Category("S5", "Defamation", "Defamation",
             "verifiably false claims likely to injure a real, living person's reputation"),
    Category("S6", "Specialized Advice", "Specialized Advice",
             "specialized financial, medical or legal advice, or claims that dangerous things are safe"),
    Category("S7", "Privacy", "Privacy",
             "sensitive, nonpublic personal information that could undermine someone's security"),
    Category("S8", "Intellectual Property", "Intellectual Property",
             "may violate the intellectual property rights of a third party"),
    Category("S9", "Indiscriminate Weapons", "Indiscriminate Weapons",
             "enables chemical, biological, radiological, nuclear or high-yield explosive weapons"),
    Category("S10", "Hate", "Hate",
             "demeans or dehumanizes people for protected characteristics (race, religion, gender, ...)"),
    Category("S11", "Self-Harm", "Suicide & Self-Harm",
             "enables, encourages or endorses suicide, self-injury or disordered eating"),
    Category("S12", "Sexual Content", "Sexual Content",
             "sexually explicit content"),
    Category("S13", "Elections", "Elections",
             "factually incorrect information about electoral systems and processes (when, where, how to vote)"),
    Category("S14", "Code Interpreter Abuse", "Code Interpreter Abuse",
             "code that abuses a code interpreter: denial of service, container escape, privilege escalation"),
)
BY_CODE: dict[str, Category] = {c.code: c for c in LLAMA_GUARD_3}
ALL_CODES: tuple[str, ...] = tuple(BY_CODE)

# the message Llama Stack returns for a Llama Guard violation (clients compare it verbatim)
LLAMA_GUARD_REFUSAL = "I can't answer that. Can I help with something else?"


def guard_categories(with_s14: bool) -> tuple[Category, ...]:
    """The categories a Llama Guard 3 model was trained on: S1–S14 (8B) or S1–S13 (1B, 11B-Vision)."""
    return LLAMA_GUARD_3 if with_s14 else LLAMA_GUARD_3[:13]


def parse_codes(codes: str | Iterable[str] | None, *, what: str = "category") -> tuple[str, ...]:
    """'S1,s3' or ['S1', 'S3'] to ('S1', 'S3'); an unknown code is a HerdError listing the valid ones."""
    if codes is None:
        return ()
    items = codes.split(",") if isinstance(codes, str) else list(codes)
    out: list[str] = []
    for raw in items:
        if not isinstance(raw, str):
            raise HerdError(f"{what} codes must be strings like 'S1', got {type(raw).__name__}")
        code = raw.strip().upper()
        if not code:
            continue
        if code not in BY_CODE:
            raise HerdError(f"unknown {what} {raw.strip()!r}; expected codes S1..S14")
        if code not in out:
            out.append(code)
    return tuple(out)


def category_names(codes: Iterable[str]) -> list[str]:
    """Prompt names of known codes, in the given order."""
    return [BY_CODE[c].name for c in codes if c in BY_CODE]


def format_taxonomy(with_s14: bool = True) -> str:
    """The taxonomy as a table for the terminal: code, name, description."""
    cats = guard_categories(with_s14)
    width = max(len(c.name) for c in cats)
    lines = [f"{c.code:<4} {c.name:<{width}}  {c.description}" for c in cats]
    if with_s14:
        lines.append("(S14 is only in Llama Guard 3 8B; the 1B and 11B-Vision guards use S1-S13)")
    return "\n".join(lines)
