"""Second stage: re-score the head of the fused ranking with a small learned linear model.

No cross-encoder with bundled weights ships here, so the second stage reads signals a reader would
look at, computed for each of the top ``FusionSettings.rerank_depth`` candidates:

* ``dense`` and ``sentence`` — cosine of the question with the passage and with its best sentence
  (or table row, embedded with the table's header);
* ``bm25`` — BM25 divided by the best BM25 among the candidates;
* ``coverage`` — share of the question's terms (by length) found in the passage;
* ``idf_coverage`` — the same share weighted by inverse passage frequency (rare names count most);
* ``bigrams`` — share of the question's character bigrams found in the passage (catches words
  jieba splits differently in the question and the report);
* ``phrase`` — longest stretch of the question found verbatim in the passage, over its length;
* ``digits_if_quantity`` — digit density of the passage when the question asks for a quantity.

The weights are fitted on the dev split by ``python eval/tune.py rerank`` (pairwise logistic
regression: a relevant passage should outscore an irrelevant one of the same question), which prints
them with their cross-validated MRR. A user's cross-encoder (``rag.rerank``) replaces this stage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .question import asks_quantity, term_weights, weighted_share

SIGNALS = ("dense", "sentence", "bm25", "coverage", "idf_coverage", "bigrams", "phrase", "digits_if_quantity")


@dataclass
class SecondStageModel:
    """Linear score over ``SIGNALS`` (raw values; the fit's standardisation is folded into the weights)."""

    weights: dict[str, float] = field(default_factory=lambda: {
        "dense": 12.586, "sentence": 8.685, "bm25": 1.497, "coverage": 0.026, "idf_coverage": 2.27,
        "bigrams": 2.562, "phrase": 0.29, "digits_if_quantity": 5.28})

    def score(self, signals: np.ndarray) -> np.ndarray:
        """One score per row of ``signals`` (columns in ``SIGNALS`` order)."""
        return signals @ np.array([self.weights[name] for name in SIGNALS])


def bigrams(text: str) -> set[str]:
    """Character bigrams of folded, space-free text."""
    return {text[i:i + 2] for i in range(len(text) - 1)}


def longest_shared_run(query: str, text: str) -> int:
    """Length of the longest substring of ``query`` that occurs in ``text``."""
    best = 0
    for start in range(len(query)):
        end = start + best + 1
        while end <= len(query) and query[start:end] in text:
            best = end - start
            end += 1
    return best


def signals(query_folded: str, terms: Sequence[str], idf: Callable[[str], float], texts_folded: Sequence[str],
            digit_shares: Sequence[float], dense: Sequence[float], sentence: Sequence[float],
            bm25: Sequence[float], coverage: Sequence[float]) -> np.ndarray:
    """The ``SIGNALS`` matrix for candidates given as folded space-free texts and first-stage scores.

    ``query_folded`` is the question folded with spaces removed; ``terms`` its distinct query terms.
    """
    weights = term_weights(terms, idf)
    query_bigrams = bigrams(query_folded)
    quantity = float(asks_quantity(query_folded))
    top_bm25 = max(bm25, default=0.0) or 1.0
    rows = []
    for position, text in enumerate(texts_folded):
        rows.append((
            dense[position], sentence[position], bm25[position] / top_bm25, coverage[position],
            weighted_share(weights, text),
            sum(1 for b in query_bigrams if b in text) / max(1, len(query_bigrams)),
            longest_shared_run(query_folded, text) / max(1, len(query_folded)),
            digit_shares[position] * quantity,
        ))
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(SIGNALS))
