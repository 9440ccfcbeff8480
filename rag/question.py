"""What a question asks for and how much each of its terms weighs (used by the second stage and abstention)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

ASKS_QUANTITY = re.compile(r"多少|几|多大|多长|多高|多快|多久|比例|占比|百分|分数|得分|多强")


def asks_quantity(question: str) -> bool:
    """True when the question asks for a number (多少, 几, 占比 …)."""
    return bool(ASKS_QUANTITY.search(question))


def term_weights(terms: Iterable[str], idf: Callable[[str], float]) -> dict[str, float]:
    """Each distinct query term, spaces removed (as in folded passage text), with its IDF weight."""
    return {term: idf(term) for term in {t.replace(" ", "") for t in terms} - {""}}


def weighted_share(weights: dict[str, float], text: str) -> float:
    """Share of the terms' total weight found in ``text`` (folded, without spaces); 0 without terms."""
    total = sum(weights.values())
    return sum(w for term, w in weights.items() if term in text) / total if total else 0.0
