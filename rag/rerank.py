"""Optional second stage: a cross-encoder that re-scores the top candidates.

No Chinese cross-encoder with bundled weights is available here, so the default pipeline's second
stage is the score fusion in ``rag.retrieve`` (passage and sentence similarity, BM25, query-term
coverage). Users who have a cross-encoder on disk (for example a bge-reranker folder) can set
``RAG_RERANKER`` or ``rag --reranker PATH``; it then re-orders the top ``depth`` candidates.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from .errors import RagError


class Reranker(Protocol):
    """Scores (query, passage) pairs; higher is more relevant."""

    def score(self, query: str, passages: list[str]) -> list[float]:
        """One score per passage."""
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

    def score(self, query: str, passages: list[str]) -> list[float]:
        """Cross-encoder relevance of each passage to the query."""
        if not passages:
            return []
        return [float(s) for s in self.model.predict([(query, p) for p in passages])]


def load_reranker(path: str | None) -> Reranker | None:
    """The configured reranker (``path`` or ``RAG_RERANKER``), or None when none is configured."""
    chosen = path or os.environ.get("RAG_RERANKER")
    return CrossEncoderReranker(chosen) if chosen else None
