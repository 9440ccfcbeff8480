"""Retrieval: a ``Query`` in, ranked and cited ``Hit``s out.

The pipeline, one module per step: ``scoring.gather`` asks the store for each signal's top-k and
fills in the candidates' other scores; ``fusion.fuse`` orders them by one fused score; a
``rerank.Reranker`` (the learned second stage in hybrid mode, or a user's cross-encoder in any
mode) re-sorts the head; ``dedup.collapse_copies`` folds near-copies from duplicate reports into
the passage they copy (listed under ``also_in``); passages that are mostly report boilerplate
(``rag.boilerplate``) go below the rest unless the question is about such text; each hit finally
carries its sentences' cosines with the question, which the answer needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from .boilerplate import PASSAGE_SHARE, passage_plain_text, passage_share, share_beyond_issuer
from .dedup import collapse_copies, grams, passage_key
from .embed import QueryEncoder
from .fusion import FusionSettings, fuse
from .query import Query, fold_key
from .records import StoredChunk, unit_sentences
from .rerank import Reranker, rerank
from .results import Hit
from .scoring import MODES, Candidate, folded_text, gather
from .second_stage import SecondStageModel
from .store import Store
from .textnorm import squeeze

__all__ = ["MODES", "Retriever"]


class Retriever:
    """Searches one loaded ``Store`` with one query encoder (None: BM25 only)."""

    def __init__(self, store: Store, encoder: QueryEncoder | None, fusion: FusionSettings | None = None,
                 cross_encoder: Reranker | None = None):
        self.store = store
        self.encoder = encoder
        self.fusion = fusion or FusionSettings()
        self.cross_encoder = cross_encoder
        self.second_stage = SecondStageModel() if self.fusion.second_stage else None
        self._folded = lru_cache(maxsize=8192)(lambda chunk_id: folded_text(store.chunk(chunk_id)))
        self._grams = lru_cache(maxsize=8192)(lambda chunk_id: grams(passage_key(store.chunk(chunk_id).text)))

    def search(self, query: Query, top_k: int = 5, mode: str = "hybrid",
               sources: Sequence[str] | None = None) -> list[Hit]:
        """Top-k passages for ``query``; ``sources`` limits the search to some reports."""
        ranked = self.ranking(query, mode, sources)
        reranker = self.cross_encoder or (self.second_stage if mode == "hybrid" else None)
        if reranker is not None and ranked:
            ranked = rerank(ranked, reranker, query, self.fusion.rerank_depth)
        if not query.about_boilerplate:
            ranked = self.boilerplate_last(query, ranked)
        kept = collapse_copies(ranked, self.store.documents, top_k, self._grams)
        vector = self.encoder.encode(query.text) if self.encoder is not None and mode != "bm25" else None
        return [self._hit(rank, candidate, also_in, vector)
                for rank, (candidate, also_in) in enumerate(kept, start=1)]

    def ranking(self, query: Query, mode: str = "hybrid", sources: Sequence[str] | None = None) -> list[Candidate]:
        """The first-stage candidates of ``query`` in fused order (before re-ranking)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        if mode != "bm25" and self.encoder is None:
            raise ValueError("dense and hybrid search need an embedding model")
        allowed = self.store.allowed_ids(sources) if sources else None
        candidates = gather(self.store, query, mode, lambda: self._vector(query), self.fusion.candidates, allowed,
                            self._folded, sentence_candidates=bool(self.fusion.sentence_weight))
        return fuse(candidates, mode, self.fusion)

    def boilerplate_last(self, query: Query, ranked: list[Candidate]) -> list[Candidate]:
        """The same candidates with boilerplate passages (``rag.boilerplate``) moved below all others, in
        order. A boilerplate passage keeps its place when its match with the question does not come from
        its boilerplate lines (a risk list that shares a passage with the disclaimer), or when it covers the
        question's terms (IDF-weighted) better than every other candidate: then it is what the question is
        about (boilerplate loses ties)."""
        shares, demotable = [], []
        for c in ranked:
            document = self.store.documents[c.chunk.source]
            share = share_beyond_issuer(query, self._folded(c.chunk.id), document)
            shares.append(share)
            demotable.append(self._is_boilerplate(c.chunk) and share_beyond_issuer(
                query, fold_key(c.chunk.table_header + passage_plain_text(c.chunk, document)), document) < share)
        best_plain = max((share for share, flag in zip(shares, demotable, strict=True) if not flag), default=0.0)
        demoted = [flag and share <= best_plain for flag, share in zip(demotable, shares, strict=True)]
        return ([c for c, down in zip(ranked, demoted, strict=True) if not down]
                + [c for c, down in zip(ranked, demoted, strict=True) if down])

    def _is_boilerplate(self, chunk: StoredChunk) -> bool:
        return passage_share(chunk, self.store.documents[chunk.source]) >= PASSAGE_SHARE

    def _vector(self, query: Query) -> np.ndarray:
        assert self.encoder is not None
        return self.encoder.encode(query.text)

    def _hit(self, rank: int, candidate: Candidate, also_in: list[str], vector: np.ndarray | None) -> Hit:
        chunk = candidate.chunk
        return Hit(rank=rank, chunk=chunk, document=self.store.documents[chunk.source], score=float(candidate.score),
                   dense_score=None if candidate.dense is None else float(candidate.dense),
                   bm25_score=None if candidate.bm25 is None else float(candidate.bm25),
                   sentence_score=None if candidate.sentence is None else float(candidate.sentence),
                   coverage=candidate.coverage, also_in=also_in, boilerplate=self._is_boilerplate(chunk),
                   sentence_similarities={} if vector is None else self.sentence_similarities(vector, chunk))

    def sentence_similarities(self, vector: np.ndarray, chunk: StoredChunk) -> dict[str, float]:
        """Cosine of the question with each sentence (table row) of a chunk that has its own vector, keyed by
        the sentence with whitespace removed; empty without sentence vectors."""
        vectors, sentences = self.store.unit_vectors(chunk.id), unit_sentences(chunk)
        if vectors is None or len(vectors) != len(sentences) or not sentences:
            return {}
        scores = vectors @ vector
        return {squeeze(sentence): float(score) for sentence, score in zip(sentences, scores, strict=True)}
