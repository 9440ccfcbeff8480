"""Fusion: one first-stage score per candidate from its signals, and the fused ranking.

``method="score"`` (the fitted default) adds weighted signals: passage cosine, best sentence
cosine, BM25 divided by the best BM25 among the candidates, and query-term coverage.
``method="rrf"`` is weighted reciprocal-rank fusion of the dense, BM25 and sentence rankings of the
candidates. The weights are fitted values (``rag.fitted``, written by ``eval/tune.py fusion``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import fitted
from .scoring import Candidate

__all__ = ["FusionSettings", "fuse", "present"]


@dataclass
class FusionSettings:
    """How hybrid search combines its signals; ``second_stage`` re-scores the top ``rerank_depth``."""

    method: str = field(default_factory=lambda: fitted.values("fusion")["method"])
    dense_weight: float = field(default_factory=lambda: fitted.values("fusion")["dense_weight"])
    sentence_weight: float = field(default_factory=lambda: fitted.values("fusion")["sentence_weight"])
    bm25_weight: float = field(default_factory=lambda: fitted.values("fusion")["bm25_weight"])
    coverage_weight: float = field(default_factory=lambda: fitted.values("fusion")["coverage_weight"])
    rrf_k: int = 60
    candidates: int = 50
    rerank_depth: int = 20
    second_stage: bool = True


def present(signal: np.float32 | None) -> np.float32:
    """A signal every hybrid candidate has (the store filled it in)."""
    assert signal is not None, "hybrid candidates carry every signal"
    return signal


def _sentence(candidate: Candidate, settings: FusionSettings) -> np.float32:
    # Without unit vectors (or with no weight on them) the passage is its own best sentence.
    if candidate.sentence is None or not settings.sentence_weight:
        return present(candidate.dense)
    return candidate.sentence


def fuse(candidates: list[Candidate], mode: str, settings: FusionSettings) -> list[Candidate]:
    """The candidates ordered best first, each with its fused ``score`` (ties in passage-id order)."""
    for candidate in candidates:
        if mode == "dense":
            candidate.score = present(candidate.dense)
        elif mode == "bm25":
            candidate.score = present(candidate.bm25)
    if mode == "hybrid":
        (_rrf if settings.method == "rrf" else _weighted)(candidates, settings)
    return sorted(candidates, key=lambda c: (-c.score, c.id))


def _weighted(candidates: list[Candidate], settings: FusionSettings) -> None:
    top_bm25 = float(max((present(c.bm25) for c in candidates), default=0.0))
    for c in candidates:
        c.score = (settings.dense_weight * present(c.dense) + settings.sentence_weight * _sentence(c, settings)
                   + (settings.bm25_weight * present(c.bm25) / top_bm25 if top_bm25 > 0 else 0.0)
                   + settings.coverage_weight * c.coverage)


def _rrf(candidates: list[Candidate], settings: FusionSettings) -> None:
    """Ranks are taken within the candidate set (the store hands out top-k lists, not whole rankings)."""
    for c in candidates:
        c.score = 0.0
    for weight, signal in ((settings.dense_weight, lambda c: present(c.dense)),
                           (settings.bm25_weight, lambda c: present(c.bm25)),
                           (settings.sentence_weight, lambda c: _sentence(c, settings))):
        for rank, c in enumerate(sorted(candidates, key=lambda c: (-signal(c), c.id))):
            c.score += weight / (settings.rrf_k + rank + 1)
