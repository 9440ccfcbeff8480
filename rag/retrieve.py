"""Retrieval: dense (FAISS), lexical (BM25 over jieba tokens), fused, de-duplicated.

``Retriever.search`` returns ``Hit`` dataclasses ranked best first. Hybrid mode fuses the two
rankings with weighted reciprocal-rank fusion; a passage that is a near-copy of a better-ranked
one (the same report extracted twice) is folded into it and listed under ``also_in``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .dedup import containment, grams, passage_key
from .embed import Embedder
from .index import Index, StoredChunk, StoredDocument
from .textnorm import fold
from .tokenize import tokens

MODES = ("hybrid", "dense", "bm25")
MAX_QUERY_CHARS = 2000


@dataclass
class FusionSettings:
    """Weights of the two signals in reciprocal-rank fusion, and the RRF constant."""

    dense_weight: float = 1.0
    bm25_weight: float = 1.0
    rrf_k: int = 60
    candidates: int = 50


@dataclass
class Hit:
    """One retrieved passage with its citation and scores."""

    rank: int
    chunk: StoredChunk
    document: StoredDocument
    score: float
    dense_score: float | None = None
    bm25_score: float | None = None
    coverage: float = 0.0
    also_in: list[str] = field(default_factory=list)

    @property
    def citation(self) -> str:
        """Citation ID of the passage."""
        return self.chunk.citation

    def to_json(self) -> dict:
        """The hit as in the JSON contract (plus a few optional extras)."""
        return {
            "rank": self.rank, "citation": self.chunk.citation, "source": self.chunk.source,
            "title": self.document.info.title or self.chunk.source, "start": self.chunk.start,
            "end": self.chunk.end, "text": self.chunk.text, "score": round(float(self.score), 6),
            "label": self.document.label, "heading": self.chunk.heading,
            "table_header": self.chunk.table_header, "lines": [self.chunk.line_start, self.chunk.line_end],
            "page": self.chunk.page, "also_in": self.also_in,
        }


def query_terms(query: str) -> list[str]:
    """Distinct matching tokens of a question, stopwords removed."""
    return list(dict.fromkeys(tokens(query)))


def coverage(terms: list[str], text: str) -> float:
    """Share of query terms (weighted by length) that occur in ``text``."""
    if not terms:
        return 0.0
    folded = fold(text).replace(" ", "")
    total = sum(len(t) for t in terms)
    return sum(len(t) for t in terms if t.replace(" ", "") in folded) / total


class Retriever:
    """Searches one loaded ``Index`` with one embedder."""

    def __init__(self, index: Index, embedder: Embedder | None, fusion: FusionSettings | None = None):
        self.index = index
        self.embedder = embedder
        self.fusion = fusion or FusionSettings()
        self._grams = [grams(passage_key(c.text)) for c in index.chunks]
        self._embed_query = lru_cache(maxsize=256)(self._embed_query_uncached)

    def clear_cache(self) -> None:
        """Forget cached query vectors (benchmarks time cold queries)."""
        self._embed_query.cache_clear()

    def _embed_query_uncached(self, query: str) -> np.ndarray:
        assert self.embedder is not None
        return self.embedder.embed_queries([query])[0]

    def dense_scores(self, query: str) -> np.ndarray:
        """Cosine similarity of the query with every chunk (index order)."""
        vector = self._embed_query(query)
        count = self.index.dense.ntotal
        scores, ids = self.index.dense.search(vector[None, :], count)
        result = np.full(count, -1.0, dtype=np.float32)
        valid = ids[0] >= 0
        result[ids[0][valid]] = scores[0][valid]
        return result

    def bm25_scores(self, query: str) -> np.ndarray:
        """BM25 score of the query with every chunk (index order)."""
        terms = tokens(query)
        if not terms:
            return np.zeros(len(self.index.chunks), dtype=np.float32)
        return np.asarray(self.index.lexical.get_scores(terms), dtype=np.float32)

    def _ranking(self, query: str, mode: str, allowed: np.ndarray) -> tuple[list[int], dict[int, float],
                                                                              np.ndarray | None, np.ndarray | None]:
        dense = self.dense_scores(query) if mode in ("hybrid", "dense") else None
        lexical = self.bm25_scores(query) if mode in ("hybrid", "bm25") else None
        fused: dict[int, float] = {}
        for scores, weight in ((dense, self.fusion.dense_weight), (lexical, self.fusion.bm25_weight)):
            if scores is None:
                continue
            masked = np.where(allowed, scores, -np.inf)
            order = np.argsort(-masked, kind="stable")[: self.fusion.candidates]
            for rank, chunk_id in enumerate(order):
                if not np.isfinite(masked[chunk_id]) or (scores is lexical and masked[chunk_id] <= 0):
                    continue
                contribution = weight / (self.fusion.rrf_k + rank + 1) if mode == "hybrid" else float(scores[chunk_id])
                fused[int(chunk_id)] = fused.get(int(chunk_id), 0.0) + contribution
        ranked = sorted(fused, key=lambda i: (-fused[i], i))
        return ranked, fused, dense, lexical

    def search(self, query: str, top_k: int = 5, mode: str = "hybrid",
               sources: list[str] | None = None) -> list[Hit]:
        """Top-k passages for ``query``; ``sources`` limits the search to some reports."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        query = query[:MAX_QUERY_CHARS]
        allowed = np.array([sources is None or c.source in sources for c in self.index.chunks], dtype=bool)
        ranked, fused, dense, lexical = self._ranking(query, mode, allowed)
        terms = query_terms(query)
        hits: list[Hit] = []
        for chunk_id in ranked:
            chunk = self.index.chunks[chunk_id]
            copy_of = self._copy_of(chunk_id, hits)
            if copy_of is not None:
                copy_of.also_in.append(chunk.citation)
                continue
            if len(hits) == top_k:
                continue
            hits.append(Hit(rank=len(hits) + 1, chunk=chunk, document=self.index.documents[chunk.source],
                            score=fused[chunk_id],
                            dense_score=None if dense is None else float(dense[chunk_id]),
                            bm25_score=None if lexical is None else float(lexical[chunk_id]),
                            coverage=coverage(terms, chunk.table_header + chunk.text)))
        return hits

    def _copy_of(self, chunk_id: int, hits: list[Hit]) -> Hit | None:
        chunk = self.index.chunks[chunk_id]
        for hit in hits:
            if hit.chunk.source == chunk.source:
                continue
            if hit.chunk.source in self.index.documents[chunk.source].duplicates and \
                    containment(self._grams[chunk_id], self._grams[hit.chunk.id]) >= 0.6:
                return hit
        return None
