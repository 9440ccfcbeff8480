"""Extractive answers: the best-matching sentences of the retrieved passages, each cited.

No generative model is involved: every sentence of an answer is copied from a passage and
followed by the marker of that passage ([1], [2] …). Sentences are chosen by the share of the
question's terms they contain plus ``SIMILARITY_WEIGHT`` times their cosine with the question (the
sentence vectors the index already holds), so a sentence that says the same thing in other words
still wins over one that only repeats the question's words. A table row is copied cell by cell, each cell
after its column name (``参数量（GPT-1：1.2亿；…）``), because a bare row of numbers does not say
which number belongs to what. When the retrieved passages do not look relevant the answer abstains
with ``NOT_FOUND``; when they might only talk around the question it comes with ``CAUTION``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from .answerability import AnswerabilityModel, features
from .chunking import sentence_spans
from .retrieve import Hit, coverage, query_terms
from .tables import quote_row
from .textnorm import fold, squeeze

NOT_FOUND = "在报告中未找到相关内容"
# About 270 characters; `python eval/tune.py answers` prints the dev answer metrics for 3, 4 and 5.
ANSWER_SENTENCES = 4
# Chosen on dev by `python eval/tune.py answers`: 0 (terms only) cites a relevant passage in 0.868 of
# the answers and states 0.775 of the reference numbers; 3 gives 0.921 and 0.813.
SIMILARITY_WEIGHT = 3.0
CAUTION = "提示：报告中可能没有直接回答这个问题的内容，以下摘录仅供参考，请核对引文。"
# A refusal can be wrong (about 4% of answerable dev questions are refused); the passages that came
# closest are listed under it so the reader can judge for themselves.
CLOSEST_TITLE = "最接近的段落（未必回答了这个问题，供核对）："
EXCERPT_CHARS = 80


@dataclass
class AbstentionSettings:
    """When to say nothing was found.

    With dense scores (hybrid and dense search) the answerability model decides (see
    ``rag.answerability``); without them (BM25 only) the best hit must cover enough of the question.
    Below the model's refusal bar but at or above ``caution`` the answer is given with ``CAUTION``:
    the answerability model cannot tell a near-miss from a real answer well enough to refuse more
    often without refusing real answers (see the trade-off in the eval report), but it can warn.
    The bar is the highest that refuses or flags at least 80% of the dev split's unanswerable questions
    (``python eval/tune.py abstention`` prints it).
    """

    model: AnswerabilityModel = field(default_factory=AnswerabilityModel)
    min_coverage: float = 0.6
    caution: float = 0.25


@dataclass
class Answer:
    """An extractive answer and the hits it cites (marker n refers to ``sources[n-1]``)."""

    text: str
    abstained: bool
    sources: list[Hit]
    unanswerable_probability: float | None = None
    caution: bool = False


def has_dense_scores(hits: list[Hit]) -> bool:
    """True when the hits come from a search that embedded the question (hybrid or dense, not bm25)."""
    return any(h.dense_score is not None for h in hits)


def unanswerable_probability(query: str, hits: list[Hit], settings: AbstentionSettings,
                             idf: Callable[[str], float]) -> float | None:
    """The answerability model's probability that the hits do not answer ``query`` (None without dense scores)."""
    if not has_dense_scores(hits):
        return None
    return settings.model.probability(features(query, hits, idf))


def refuses(probability: float | None, hits: list[Hit], settings: AbstentionSettings) -> bool:
    """The decision for a probability from ``unanswerable_probability`` (coverage rule when it is None)."""
    if not hits:
        return True
    if probability is None:
        return max(h.coverage for h in hits) < settings.min_coverage
    return probability >= settings.model.threshold


@dataclass
class AnswerUnit:
    """A sentence or table row of a passage: its text, how it is quoted, and the text it is scored as."""

    text: str
    quoted: str
    scored_as: str


def _answer_units(hit: Hit) -> list[AnswerUnit]:
    """Sentences, or table rows scored with their header and quoted with their column names."""
    text = hit.chunk.text
    if hit.chunk.kind != "table":
        return [AnswerUnit(text[a:b], text[a:b], text[a:b]) for a, b in sentence_spans(text)]
    context_lines = [line for line in hit.chunk.table_header.split("\n") if line.strip()]
    header = context_lines[-1] if context_lines else ""
    context = {line.strip() for line in context_lines}
    rows = [line for line in text.split("\n") if line.strip() and line.strip() not in context]
    return [AnswerUnit(row.strip(), quote_row(header, row), f"{header}\t{row}") for row in rows]


def _leftover(sentence: str, terms: list[str]) -> str:
    """What a sentence says beyond the question's own terms (folded, punctuation and spaces dropped)."""
    rest = fold(sentence)
    for term in sorted(terms, key=len, reverse=True):
        rest = rest.replace(term, "")
    return re.sub(r"[\W_]+", "", rest)


def compose_answer(query: str, hits: list[Hit], idf: Callable[[str], float],
                   settings: AbstentionSettings | None = None, max_sentences: int = ANSWER_SENTENCES,
                   max_passages: int = 3, similarities: Callable[[Hit], dict[str, float]] | None = None,
                   similarity_weight: float = SIMILARITY_WEIGHT) -> Answer:
    """Pick the sentences of the top passages that answer the question best, with markers.

    ``similarities`` gives, for a hit, the question's cosine with each of its sentences keyed by the
    squeezed sentence (``Retriever.sentence_similarities``); without it sentences are chosen by terms only.
    """
    settings = settings or AbstentionSettings()
    probability = unanswerable_probability(query, hits, settings, idf)
    if refuses(probability, hits, settings):
        return Answer(NOT_FOUND, True, [], probability)
    terms = query_terms(query)
    candidates = []
    seen: set[str] = set()
    for position, hit in enumerate(hits[:max_passages]):
        cosines = similarities(hit) if similarities is not None else {}
        for order, unit in enumerate(_answer_units(hit)):
            if len(_leftover(unit.text, terms)) < 4:
                continue  # a header row or a line that only repeats the question says nothing new
            key = squeeze(unit.text)
            if key in seen:
                continue  # overlapping passages share sentences; quote each once, from the better hit
            seen.add(key)
            score = (coverage(terms, unit.scored_as) + similarity_weight * cosines.get(key, 0.0)
                     - 0.1 * position - 0.001 * order)
            candidates.append((score, position, order, unit.quoted))
    chosen = sorted(candidates, reverse=True)[:max_sentences]
    chosen = [c for c in chosen if c[0] > 0] or chosen[:1]
    chosen.sort(key=lambda c: (c[1], c[2]))
    used: list[int] = []
    parts = []
    for _, position, _, sentence in chosen:
        if position not in used:
            used.append(position)
        parts.append(f"{sentence}[{used.index(position) + 1}]")
    return Answer("".join(parts), False, [hits[p] for p in used], probability,
                  caution=probability is not None and probability >= settings.caution)


def format_sources(sources: list[Hit]) -> list[str]:
    """Numbered source lines: ``[1] 浙商证券《…》2023-03-25 — 001_….txt:L10-L14``."""
    return [f"[{n}] {hit.document.label} — {hit.citation}" for n, hit in enumerate(sources, start=1)]


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """The start of a passage on one line (whitespace collapsed), cut at ``limit`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit] + "…"
