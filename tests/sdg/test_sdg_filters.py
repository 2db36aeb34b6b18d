"""SDG filters against their definitions: exact and near-duplicate removal (MinHash LSH keeps exactly what a
brute-force Jaccard pass keeps on data with planted near-duplicates), length and language, and the n-gram
decontamination test (a planted evaluation prompt is flagged; unrelated text is not)."""
from __future__ import annotations

import random

from herd.sdg.filters import (Decontaminator, FilterReport, shingles, exact_dedupe, jaccard, language_filter,
                              length_filter, near_dedupe, prompt_text)

VOCAB = ("weather forecast city booking table restaurant flight ticket price stock currency convert meters feet "
         "recipe pasta train schedule hotel room museum opening hours translate sentence french spanish email "
         "calendar meeting reminder tomorrow morning evening weekend distance route traffic").split()


def brute_force(rows, threshold):
    kept = []
    for i, r in enumerate(rows):
        sh = shingles(prompt_text(r))
        if all(jaccard(sh, shingles(prompt_text(rows[j]))) < threshold for j in kept):
            kept.append(i)
    return [rows[i] for i in kept]


def test_near_dedupe_keeps_what_brute_force_keeps():
    rng = random.Random(0)
    base = [" ".join(rng.choice(VOCAB) for _ in range(rng.randint(20, 40))) for _ in range(60)]
    rows = []
    for text in base:
        rows.append({"prompt": text})
        if rng.random() < 0.5:  # a near-duplicate: one word changed at the end (Jaccard >= 0.9)
            w = text.split()
            w[-1] = "zzz"
            rows.append({"prompt": " ".join(w)})
    rng.shuffle(rows)
    report = FilterReport()
    got = near_dedupe(rows, prompt_text, report, threshold=0.8)
    assert got == brute_force(rows, 0.8)
    assert report.counts["near_duplicate"] == len(rows) - len(got) > 10


def test_exact_length_and_language():
    rows = [{"messages": [{"role": "user", "content": "What's the weather in Paris?"}]},
            {"messages": [{"role": "user", "content": "what's the WEATHER in paris"}]},
            {"prompt": "x"},
            {"prompt": "Quel temps fait-il à Paris aujourd'hui, s'il vous plaît, mon ami de la ville?"},
            {"prompt": "Can you tell me how to convert 3 miles to kilometres for my run?"},
            {"prompt": "今日の東京の天気はどうですか"}]
    report = FilterReport()
    rows = exact_dedupe(rows, prompt_text, report)
    rows = length_filter(rows, prompt_text, report, min_chars=5)
    rows = language_filter(rows, prompt_text, report)
    assert [prompt_text(r) for r in rows] == ["What's the weather in Paris?",
                                             "Can you tell me how to convert 3 miles to kilometres for my run?"]
    assert report.counts == {"exact_duplicate": 1, "length": 1, "language": 2}


def test_decontamination_flags_a_planted_eval_prompt():
    evals = ["Find the area of a triangle with a base of 10 units and height of 5 units.",
             "def has_close_elements(numbers, threshold): Check if in given list of numbers, are any two numbers "
             "closer to each other than given threshold.", "Roll a die"]
    d = Decontaminator(evals, n=8)
    rows = [{"prompt": "Please find the area of a triangle with a base of 10 units and height of 5 units, thanks"},
            {"prompt": "What is the area of a circle with radius 3?"},
            {"prompt": "check if in given list of numbers are any two numbers closer"},
            {"prompt": "Could you roll a die for me?"},
            {"prompt": "Rolling dice is fun"}]
    hits = d.check(rows)
    assert sorted(hits) == [0, 2, 3]
    assert hits[0] == "find the area of a triangle with a"  # the first shared 8-gram

