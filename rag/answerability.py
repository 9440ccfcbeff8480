"""Answerability: do the retrieved passages state what the question asks, or only talk around it?

Off-topic questions are easy to refuse: nothing in the reports resembles them. The hard case is the
near-miss ("乌兰察布智算中心的PUE是多少？"): the entity is in the reports, the asked detail is not,
and the best passage is as similar to the question as a real answer would be. No reader or NLI model
ships here, so the check is a small logistic model over signals a reader would look at:

* ``best_sentence`` — the best cosine of the question with one sentence or table row;
* ``window_support`` — the share of the question's terms (IDF-weighted) found close to a candidate
  answer: in the ``BEFORE_NUMBER`` characters before a number and ``AFTER_NUMBER`` after it when the
  question asks for a quantity (Chinese states the subject and attribute before the value), else
  anywhere in a sliding window of ``WINDOW`` characters each side; for a table, the row plus its header;
* ``sentence_coverage`` — the same share within the best single sentence;
* ``asks_quantity`` — whether the question asks for a number (most near-misses do);
* ``score_gap`` — how far the first hit stands above the fifth.

Its coefficients are fitted on the dev split by ``python eval/tune.py abstention``, which prints them
with the threshold that keeps false abstentions at or under 5% on dev.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .chunking import sentence_spans
from .question import asks_quantity, term_weights, weighted_share
from .retrieve import Hit, query_terms
from .textnorm import fold

WINDOW = 40
BEFORE_NUMBER = 80
AFTER_NUMBER = 20
TOP_PASSAGES = 5
FEATURES = ("best_sentence", "window_support", "sentence_coverage", "asks_quantity", "score_gap")
NUMBER = re.compile(r"\d+(?:[.,]\d+)*|[一二两三四五六七八九十百千万亿]+(?=[万亿倍个家种张台年月日%])")


@dataclass
class AnswerabilityModel:
    """Logistic model over ``FEATURES`` (standardised with ``means``/``scales``) and its refusal bar."""

    weights: dict[str, float] = field(default_factory=lambda: {
        "best_sentence": -1.385, "window_support": -0.76, "sentence_coverage": 1.219, "asks_quantity": 1.61,
        "score_gap": 0.078})
    means: dict[str, float] = field(default_factory=lambda: {
        "best_sentence": 0.5887, "window_support": 0.5079, "sentence_coverage": 0.462, "asks_quantity": 0.513,
        "score_gap": 4.5312})
    scales: dict[str, float] = field(default_factory=lambda: {
        "best_sentence": 0.0967, "window_support": 0.2538, "sentence_coverage": 0.2369, "asks_quantity": 0.4998,
        "score_gap": 2.3631})
    bias: float = -2.494
    threshold: float = 0.465

    def probability(self, features: dict[str, float]) -> float:
        """Probability that the question is not answered by the passages."""
        z = self.bias + sum(self.weights[name] * (features[name] - self.means[name]) / self.scales[name]
                            for name in FEATURES)
        return float(1.0 / (1.0 + np.exp(-z)))


def _windows(hit: Hit, numeric: bool) -> list[str]:
    """Stretches of a passage where an answer could sit, as folded text without spaces."""
    text = fold(hit.chunk.text).replace(" ", "")
    positions = ([m.start() for m in NUMBER.finditer(text)] if numeric
                 else list(range(0, len(text), 10)))
    if hit.chunk.kind != "table":
        before, after = (BEFORE_NUMBER, AFTER_NUMBER) if numeric else (WINDOW, WINDOW)
        return [text[max(0, p - before):p + after] for p in positions]
    header = fold(hit.chunk.table_header).replace(" ", "")
    rows = []
    for p in positions:
        start = text.rfind("\n", 0, p) + 1
        end = text.find("\n", p)
        rows.append(header + text[start:len(text) if end < 0 else end])
    return rows


def features(query: str, hits: Sequence[Hit], idf: Callable[[str], float]) -> dict[str, float]:
    """The model's inputs for one question and its ranked hits."""
    top = list(hits[:TOP_PASSAGES])
    weights = term_weights(query_terms(query), idf)
    quantity = asks_quantity(query)
    window_support = max((weighted_share(weights, w) for h in top for w in _windows(h, quantity)),
                         default=0.0)
    sentence_coverage = max((weighted_share(weights, fold(h.chunk.text[a:b]).replace(" ", ""))
                             for h in top for a, b in sentence_spans(h.chunk.text)), default=0.0)
    sentence_scores = [h.sentence_score if h.sentence_score is not None else h.dense_score for h in top]
    best_sentence = max((s for s in sentence_scores if s is not None), default=0.0)
    gap = top[0].score - top[-1].score if len(top) > 1 else 0.0
    return {"best_sentence": float(best_sentence), "window_support": float(window_support),
            "sentence_coverage": float(sentence_coverage), "asks_quantity": float(quantity),
            "score_gap": float(gap)}
