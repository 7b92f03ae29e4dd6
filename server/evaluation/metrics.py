"""Reference-based scores, Chinese-aware: compared character by character, never split on spaces.

Support answers mix Chinese and English, and Chinese has no spaces to split words on, so the
scores here compare normalized characters: exact match, character-level F1 (multiset overlap, as
SQuAD's F1 over tokens, with characters as tokens) and ROUGE-L (longest common subsequence of
characters, F-measure). Normalizing folds width and case (NFKC, casefold) and drops whitespace and
punctuation, so "满99元包邮。" and "满９９元包邮" match.
"""

from __future__ import annotations

import unicodedata
from collections import Counter


def normalize(text: str) -> str:
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in folded if not ch.isspace() and not unicodedata.category(ch).startswith("P"))


def exact_match(answer: str, reference: str) -> float:
    return float(normalize(answer) == normalize(reference))


def char_f1(answer: str, reference: str) -> float:
    got, want = normalize(answer), normalize(reference)
    if not got or not want:
        return float(got == want)
    common = sum((Counter(got) & Counter(want)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


def rouge_l(answer: str, reference: str) -> float:
    got, want = normalize(answer), normalize(reference)
    if not got or not want:
        return float(got == want)
    lcs = _lcs_length(got, want)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(got), lcs / len(want)
    return 2 * precision * recall / (precision + recall)


def _lcs_length(a: str, b: str) -> int:
    """Longest common subsequence, in O(len(a) * len(b)) time and O(len(b)) memory."""
    previous = [0] * (len(b) + 1)
    for ch in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if ch == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def scores(answer: str, reference: str | None) -> dict[str, float]:
    """Every reference score of one answer; empty without a reference."""
    if reference is None:
        return {}
    return {
        "exact": exact_match(answer, reference),
        "f1": char_f1(answer, reference),
        "rouge_l": rouge_l(answer, reference),
    }
