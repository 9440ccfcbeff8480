"""Re-ranking the head of the first-stage ranking, behind one small protocol.

Two implementations: the learned second stage (``rag.second_stage``, the default in hybrid mode)
and a cross-encoder from a local folder (``RAG_RERANKER`` or ``rag --reranker PATH``, for example a
bge-reranker; no Chinese cross-encoder with bundled weights ships here), which replaces it in every
mode. ``rerank`` re-sorts the head by the new scores and keeps the tail below it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from .errors import RagError
from .query import Query
from .records import lexical_text
from .scoring import Candidate


class Reranker(Protocol):
    """Scores the head candidates of a question; higher is more relevant."""

    def rescore(self, query: Query, head: Sequence[Candidate]) -> list[float]:
        """One score per candidate."""
        ...


class CrossEncoderReranker:
    """sentence-transformers ``CrossEncoder`` loaded from a local folder (the Hub is never used)."""

    def __init__(self, path: str):
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise RagError(f"找不到重排序模型目录 / reranker model folder not found: {folder}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import CrossEncoder

        try:
            self.model = CrossEncoder(str(folder), device="cpu", local_files_only=True)
        except Exception as exc:  # the library raises many types for an unusable folder
            raise RagError(f"无法加载重排序模型 / cannot load reranker {folder}: {exc}") from exc

    def rescore(self, query: Query, head: Sequence[Candidate]) -> list[float]:
        """Cross-encoder relevance of each passage (with its table header) to the question."""
        if not head:
            return []
        return [float(s) for s in self.model.predict([(query.text, lexical_text(c.chunk)) for c in head])]


def load_cross_encoder(path: str | None) -> Reranker | None:
    """The configured cross-encoder (``path`` or ``RAG_RERANKER``), or None when none is configured."""
    chosen = path or os.environ.get("RAG_RERANKER")
    return CrossEncoderReranker(chosen) if chosen else None


def rerank(ranked: list[Candidate], reranker: Reranker, query: Query, depth: int) -> list[Candidate]:
    """The top ``depth`` re-sorted by ``reranker`` (its scores replace theirs), the rest kept below them."""
    head, tail = ranked[:depth], ranked[depth:]
    scores = reranker.rescore(query, head)
    for candidate, score in zip(head, scores, strict=True):
        candidate.score = score
    head = sorted(head, key=lambda c: -c.score)
    floor = min(scores) if scores else 0.0
    for candidate in tail:
        candidate.score = floor - 1.0  # keep the tail below every re-scored passage
    return head + tail
