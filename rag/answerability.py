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

Its coefficients are fitted on the dev split by ``python eval/tune.py abstention``, which writes them
into ``rag/data/fitted.json`` with the threshold that keeps false abstentions at or under 5% on dev.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import fitted
from .chunking import sentence_spans
from .query import Query, fold_key
from .results import Hit

WINDOW = 40
BEFORE_NUMBER = 80
AFTER_NUMBER = 20
TOP_PASSAGES = 5
FEATURES = ("best_sentence", "window_support", "sentence_coverage", "asks_quantity", "score_gap")
NUMBER = re.compile(r"\d+(?:[.,]\d+)*|[一二两三四五六七八九十百千万亿]+(?=[万亿倍个家种张台年月日%])")


def _fitted(key: str):
    return field(default_factory=lambda: fitted.values("answerability")[key])


@dataclass
class AnswerabilityModel:
    """Logistic model over ``FEATURES`` (standardised with ``means``/``scales``) and its refusal bar."""

    weights: dict[str, float] = _fitted("weights")
    means: dict[str, float] = _fitted("means")
    scales: dict[str, float] = _fitted("scales")
    bias: float = _fitted("bias")
    threshold: float = _fitted("threshold")

    def probability(self, features: dict[str, float]) -> float:
        """Probability that the question is not answered by the passages."""
        z = self.bias + sum(self.weights[name] * (features[name] - self.means[name]) / self.scales[name]
                            for name in FEATURES)
        return float(1.0 / (1.0 + np.exp(-z)))


def _windows(hit: Hit, numeric: bool) -> list[str]:
    """Stretches of a passage where an answer could sit, as folded text without spaces."""
    text = fold_key(hit.chunk.text)
    positions = ([m.start() for m in NUMBER.finditer(text)] if numeric
                 else list(range(0, len(text), 10)))
    if hit.chunk.kind != "table":
        before, after = (BEFORE_NUMBER, AFTER_NUMBER) if numeric else (WINDOW, WINDOW)
        return [text[max(0, p - before):p + after] for p in positions]
    header = fold_key(hit.chunk.table_header)
    rows = []
    for p in positions:
        start = text.rfind("\n", 0, p) + 1
        end = text.find("\n", p)
        rows.append(header + text[start:len(text) if end < 0 else end])
    return rows


def features(query: Query, hits: Sequence[Hit]) -> dict[str, float]:
    """The model's inputs for one question and its ranked hits."""
    top = list(hits[:TOP_PASSAGES])
    quantity = query.asks_quantity
    window_support = max((query.weighted_share(w) for h in top for w in _windows(h, quantity)), default=0.0)
    sentence_coverage = max((query.weighted_share(fold_key(h.chunk.text[a:b]))
                             for h in top for a, b in sentence_spans(h.chunk.text)), default=0.0)
    sentence_scores = [h.sentence_score if h.sentence_score is not None else h.dense_score for h in top]
    best_sentence = max((s for s in sentence_scores if s is not None), default=0.0)
    gap = top[0].score - top[-1].score if len(top) > 1 else 0.0
    return {"best_sentence": float(best_sentence), "window_support": float(window_support),
            "sentence_coverage": float(sentence_coverage), "asks_quantity": float(quantity),
            "score_gap": float(gap)}
