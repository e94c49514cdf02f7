"""Word error rate without third-party packages (scripts/device_check.py runs where jiwer is
not installed): words lower-cased, punctuation dropped, then edit distance over words."""

from __future__ import annotations

import re


def normalise(text: str) -> list[str]:
    """Lower-case words of `text`, punctuation other than apostrophes dropped."""
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, as jiwer counts them;
    0.0 for two empty texts, 1.0 for a hypothesis against an empty reference."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    previous = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        current = [i]
        for j, other in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other)))
        previous = current
    return previous[-1] / len(ref)
