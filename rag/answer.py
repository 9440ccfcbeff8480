"""Extractive answers: the best-matching sentences of the retrieved passages, each cited.

No generative model is involved: every sentence of an answer is copied from a passage and
followed by the marker of that passage ([1], [2] …). When the retrieved passages do not look
relevant the answer abstains with ``NOT_FOUND``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .retrieve import Hit, coverage, query_terms
from .textnorm import SENTENCE_END

NOT_FOUND = "在报告中未找到相关内容"


@dataclass
class AbstentionSettings:
    """When to say nothing was found: the best hit must clear one of these bars."""

    min_dense: float = 0.45
    min_coverage: float = 0.6
    min_dense_with_coverage: float = 0.30


@dataclass
class Answer:
    """An extractive answer and the hits it cites (marker n refers to ``sources[n-1]``)."""

    text: str
    abstained: bool
    sources: list[Hit]


_SENTENCE = re.compile(rf"[^{SENTENCE_END}\n]+[{SENTENCE_END}]?[”’」』）)]*")


def should_abstain(hits: list[Hit], settings: AbstentionSettings) -> bool:
    """True when even the best hit looks unrelated to the question."""
    if not hits:
        return True
    best_dense = max((h.dense_score for h in hits if h.dense_score is not None), default=None)
    best_coverage = max(h.coverage for h in hits)
    if best_dense is None:
        return best_coverage < settings.min_coverage
    if best_dense >= settings.min_dense:
        return False
    return not (best_coverage >= settings.min_coverage and best_dense >= settings.min_dense_with_coverage)


def compose_answer(query: str, hits: list[Hit], settings: AbstentionSettings | None = None,
                   max_sentences: int = 3, max_passages: int = 3) -> Answer:
    """Pick the sentences of the top passages that cover the question best, with markers."""
    settings = settings or AbstentionSettings()
    if should_abstain(hits, settings):
        return Answer(NOT_FOUND, True, [])
    terms = query_terms(query)
    candidates = []
    for position, hit in enumerate(hits[:max_passages]):
        for order, match in enumerate(_SENTENCE.finditer(hit.chunk.text)):
            sentence = match.group(0).strip()
            if len(sentence) < 4:
                continue
            score = coverage(terms, sentence) - 0.1 * position - 0.001 * order
            candidates.append((score, position, order, sentence))
    chosen = sorted(candidates, reverse=True)[:max_sentences]
    chosen = [c for c in chosen if c[0] > 0] or chosen[:1]
    chosen.sort(key=lambda c: (c[1], c[2]))
    used: list[int] = []
    parts = []
    for _, position, _, sentence in chosen:
        if position not in used:
            used.append(position)
        parts.append(f"{sentence}[{used.index(position) + 1}]")
    return Answer("".join(parts), False, [hits[p] for p in used])


def format_sources(sources: list[Hit]) -> list[str]:
    """Numbered source lines: ``[1] 浙商证券《…》2023-03-25 — 001_….txt:L10-L14``."""
    return [f"[{n}] {hit.document.label} — {hit.citation}" for n, hit in enumerate(sources, start=1)]
