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
regression: a relevant passage should outscore an irrelevant one of the same question), which writes
them into ``rag/data/fitted.json`` with their cross-validated MRR. A user's cross-encoder
(``rag.rerank``) replaces this stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import fitted
from .fusion import present
from .query import Query
from .scoring import Candidate

SIGNALS = ("dense", "sentence", "bm25", "coverage", "idf_coverage", "bigrams", "phrase", "digits_if_quantity")


@dataclass
class SecondStageModel:
    """Linear score over ``SIGNALS`` (raw values; the fit's standardisation is folded into the weights)."""

    weights: dict[str, float] = field(default_factory=lambda: fitted.values("second_stage")["weights"])

    def score(self, signals: np.ndarray) -> np.ndarray:
        """One score per row of ``signals`` (columns in ``SIGNALS`` order)."""
        return signals @ np.array([self.weights[name] for name in SIGNALS])

    def rescore(self, query: Query, head: Sequence[Candidate]) -> list[float]:
        """The second-stage score of each candidate (the ``Reranker`` protocol)."""
        return [float(s) for s in self.score(signals(query, head))]


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


def signals(query: Query, head: Sequence[Candidate]) -> np.ndarray:
    """The ``SIGNALS`` matrix of the candidates at the head of the first-stage ranking."""
    query_bigrams = bigrams(query.folded)
    top_bm25 = float(max((present(c.bm25) for c in head), default=0.0)) or 1.0
    rows = []
    for c in head:
        sentence = present(c.dense if c.sentence is None else c.sentence)
        digit_share = sum(map(str.isdigit, c.chunk.text)) / max(1, len(c.chunk.text))
        rows.append((
            float(present(c.dense)), float(sentence), float(present(c.bm25)) / top_bm25, c.coverage,
            query.weighted_share(c.folded),
            sum(1 for b in query_bigrams if b in c.folded) / max(1, len(query_bigrams)),
            longest_shared_run(query.folded, c.folded) / max(1, len(query.folded)),
            digit_share * float(query.asks_quantity),
        ))
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(SIGNALS))
