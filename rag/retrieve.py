"""Retrieval: dense (FAISS), lexical (BM25 over jieba tokens), fused, de-duplicated.

``Retriever.search`` returns ``Hit`` dataclasses ranked best first. Hybrid mode fuses the two
rankings with weighted reciprocal-rank fusion; a passage that is a near-copy of a better-ranked
one (the same report extracted twice) is folded into it and listed under ``also_in``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .aliases import AliasTable
from .dedup import containment, grams, passage_key
from .embed import Embedder
from .index import Index, StoredChunk, StoredDocument, lexical_text, unit_sentences
from .rerank import Reranker
from .second_stage import SecondStageModel, signals
from .textnorm import fold, squeeze
from .tokenize import tokens

MODES = ("hybrid", "dense", "bm25")
MAX_QUERY_CHARS = 2000
# Two extractions of one report cut passages at different places, so copies overlap only partly;
# between reports already known to be duplicates a modest shared share means the same passage.
DUPLICATE_OVERLAP = 0.3


@dataclass
class FusionSettings:
    """How hybrid search combines its signals.

    ``method="score"`` (default) adds weighted scores: passage cosine, best sentence cosine, BM25
    divided by the best BM25 among the candidates, and query-term coverage; chosen on the dev split
    (``eval/tune.py``). ``method="rrf"`` is weighted reciprocal-rank fusion of the three rankings.
    ``second_stage`` then re-scores the top ``rerank_depth`` passages (``rag.second_stage``); None
    keeps the fused order.
    """

    method: str = "score"
    dense_weight: float = 1.0
    sentence_weight: float = 0.5
    bm25_weight: float = 0.3
    coverage_weight: float = 0.1
    rrf_k: int = 60
    candidates: int = 50
    rerank_depth: int = 20
    second_stage: SecondStageModel | None = field(default_factory=SecondStageModel)


@dataclass
class Hit:
    """One retrieved passage with its citation and scores."""

    rank: int
    chunk: StoredChunk
    document: StoredDocument
    score: float
    dense_score: float | None = None
    bm25_score: float | None = None
    sentence_score: float | None = None
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
    """Distinct matching tokens of a question as written (stopwords and synthetic joins removed)."""
    written = fold(query).replace(" ", "")
    return [t for t in dict.fromkeys(tokens(query)) if t.replace(" ", "") in written]


def coverage(terms: list[str], text: str) -> float:
    """Share of query terms (weighted by length) that occur in ``text``."""
    return folded_coverage(terms, fold(text).replace(" ", ""))


def folded_coverage(terms: list[str], folded: str) -> float:
    """``coverage`` for text already folded with spaces removed."""
    if not terms:
        return 0.0
    total = sum(len(t) for t in terms)
    return sum(len(t) for t in terms if t.replace(" ", "") in folded) / total


class Retriever:
    """Searches one loaded ``Index`` with one embedder."""

    def __init__(self, index: Index, embedder: Embedder | None, fusion: FusionSettings | None = None,
                 reranker: Reranker | None = None):
        self.index = index
        self.embedder = embedder
        self.fusion = fusion or FusionSettings()
        self.reranker = reranker
        self._grams = [grams(passage_key(c.text)) for c in index.chunks]
        self._folded = [fold(c.table_header + c.text).replace(" ", "") for c in index.chunks]
        self._digit_shares = [sum(ch.isdigit() for ch in c.text) / max(1, len(c.text)) for c in index.chunks]
        self.aliases = AliasTable.mine(c.text for c in index.chunks)
        self._units_of: dict[int, list[int]] = {}
        for unit, chunk_id in enumerate(index.unit_owner if index.unit_owner is not None else []):
            self._units_of.setdefault(int(chunk_id), []).append(unit)
        self._cached_query_vector = lru_cache(maxsize=256)(self._embed_query_uncached)
        self._query_lock = threading.Lock()
        self.idf = lru_cache(maxsize=4096)(self._idf)

    def _idf(self, term: str) -> float:
        """Inverse passage frequency of a folded term (substring match, as coverage counts it)."""
        frequency = sum(1 for text in self._folded if term in text)
        return float(np.log((len(self._folded) + 1) / (frequency + 0.5)))

    def clear_cache(self) -> None:
        """Forget cached query vectors (benchmarks time cold queries)."""
        self._cached_query_vector.cache_clear()

    def _embed_query(self, query: str) -> np.ndarray:
        # The embedder encodes one batch at a time anyway; holding a lock across the cache lookup
        # makes simultaneous identical questions share one encoding instead of queueing several.
        with self._query_lock:
            return self._cached_query_vector(query)

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

    def sentence_scores(self, query: str) -> np.ndarray | None:
        """Per chunk, the best cosine of the query with one of its sentences (None without units)."""
        units, owner = self.index.units, self.index.unit_owner
        if units is None or owner is None or units.ntotal == 0:
            return None
        vector = self._embed_query(query)
        scores, ids = units.search(vector[None, :], min(units.ntotal, 200))
        result = np.full(len(self.index.chunks), -1.0, dtype=np.float32)
        for score, unit in zip(scores[0], ids[0], strict=True):
            if unit >= 0:
                chunk_id = owner[unit]
                result[chunk_id] = max(result[chunk_id], score)
        return result

    def sentence_similarities(self, query: str, chunk: StoredChunk) -> dict[str, float]:
        """Cosine of the query with each sentence (table row) of a chunk that has its own vector, keyed by
        the sentence with whitespace removed; empty without sentence vectors."""
        units, ids = self.index.units, self._units_of.get(chunk.id, [])
        sentences = unit_sentences(chunk)
        if units is None or self.embedder is None or len(ids) != len(sentences):
            return {}
        vector = self._embed_query(query)
        scores = np.vstack([units.reconstruct(i) for i in ids]) @ vector
        return {squeeze(sentence): float(score) for sentence, score in zip(sentences, scores, strict=True)}

    def bm25_scores(self, query: str) -> np.ndarray:
        """BM25 score of the query, plus the English names the reports give its Chinese ones
        (``rag.aliases``), with every chunk (index order)."""
        terms = tokens(query) + [t for alias in self.aliases.expand(query) for t in tokens(alias)]
        if not terms:
            return np.zeros(len(self.index.chunks), dtype=np.float32)
        return np.asarray(self.index.lexical.get_scores(terms), dtype=np.float32)

    def _ranking(self, query: str, terms: list[str], mode: str, allowed: np.ndarray
                 ) -> tuple[list[int], np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        dense = self.dense_scores(query) if mode in ("hybrid", "dense") else None
        lexical = self.bm25_scores(query) if mode in ("hybrid", "bm25") else None
        sentences = self.sentence_scores(query) if dense is not None else None
        if dense is not None and lexical is not None:
            scores = self._fuse(terms, dense, sentences, lexical, allowed)
        elif dense is not None:
            scores = np.where(dense > -1.0, dense, -np.inf)
        else:
            assert lexical is not None
            scores = np.where(lexical > 0, lexical, -np.inf)
        scores = np.where(allowed, scores, -np.inf)
        order = np.argsort(-scores, kind="stable")
        ranked = [int(i) for i in order[: max(self.fusion.candidates, 1) * 3] if np.isfinite(scores[i])]
        return ranked, scores, dense, lexical, sentences

    def _fuse(self, terms: list[str], dense: np.ndarray, sentences: np.ndarray | None, lexical: np.ndarray,
              allowed: np.ndarray) -> np.ndarray:
        """Hybrid score of every chunk (-inf outside the candidate set)."""
        fusion = self.fusion
        if sentences is None or not fusion.sentence_weight:
            sentences = dense
        signals = [dense, sentences, np.where(lexical > 0, lexical, -1.0)]
        candidates: set[int] = set()
        for signal in signals:
            masked = np.where(allowed & (signal > -1.0), signal, -np.inf)
            candidates.update(int(i) for i in np.argsort(-masked, kind="stable")[: fusion.candidates]
                              if np.isfinite(masked[i]))
        fused = np.full(len(self.index.chunks), -np.inf)
        if fusion.method == "rrf":
            for signal, weight in ((dense, fusion.dense_weight), (lexical, fusion.bm25_weight),
                                   (sentences, fusion.sentence_weight)):
                ranks = np.empty(len(signal), dtype=np.int64)
                ranks[np.argsort(-signal, kind="stable")] = np.arange(len(signal))
                for chunk_id in candidates:
                    fused[chunk_id] = max(fused[chunk_id], 0.0) + weight / (fusion.rrf_k + ranks[chunk_id] + 1)
            return fused
        top_bm25 = float(max((lexical[i] for i in candidates), default=0.0))
        for chunk_id in candidates:
            fused[chunk_id] = (fusion.dense_weight * dense[chunk_id]
                               + fusion.sentence_weight * sentences[chunk_id]
                               + (fusion.bm25_weight * lexical[chunk_id] / top_bm25 if top_bm25 > 0 else 0.0)
                               + fusion.coverage_weight * folded_coverage(terms, self._folded[chunk_id]))
        return fused

    def search(self, query: str, top_k: int = 5, mode: str = "hybrid",
               sources: list[str] | None = None) -> list[Hit]:
        """Top-k passages for ``query``; ``sources`` limits the search to some reports."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        query = query[:MAX_QUERY_CHARS]
        allowed = np.array([sources is None or c.source in sources for c in self.index.chunks], dtype=bool)
        terms = query_terms(query)
        ranked, fused, dense, lexical, sentences = self._ranking(query, terms, mode, allowed)
        if self.reranker is not None and ranked:
            ranked, fused = self._rerank(query, ranked, fused)
        elif mode == "hybrid" and self.fusion.second_stage is not None and ranked:
            assert dense is not None and lexical is not None
            ranked, fused = self._second_stage(query, terms, ranked, fused, dense, sentences, lexical)
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
                            score=float(fused[chunk_id]),
                            dense_score=None if dense is None else float(dense[chunk_id]),
                            bm25_score=None if lexical is None else float(lexical[chunk_id]),
                            sentence_score=None if sentences is None else float(sentences[chunk_id]),
                            coverage=folded_coverage(terms, self._folded[chunk_id])))
        return hits

    def _rerank(self, query: str, ranked: list[int], fused: np.ndarray) -> tuple[list[int], np.ndarray]:
        """Re-order the head of the ranking by the cross-encoder; its scores replace the fused ones."""
        assert self.reranker is not None
        head = ranked[: self.fusion.rerank_depth]
        scores = self.reranker.score(query, [lexical_text(self.index.chunks[i]) for i in head])
        return self._reorder(ranked, fused, head, [float(s) for s in scores])

    def _second_stage(self, query: str, terms: list[str], ranked: list[int], fused: np.ndarray, dense: np.ndarray,
                      sentences: np.ndarray | None, lexical: np.ndarray) -> tuple[list[int], np.ndarray]:
        """Re-order the head of the ranking by the learned second stage (``rag.second_stage``)."""
        assert self.fusion.second_stage is not None
        head, matrix = self._head_signals(query, terms, ranked, dense, sentences, lexical)
        return self._reorder(ranked, fused, head, [float(s) for s in self.fusion.second_stage.score(matrix)])

    def _head_signals(self, query: str, terms: list[str], ranked: list[int], dense: np.ndarray,
                      sentences: np.ndarray | None, lexical: np.ndarray) -> tuple[list[int], np.ndarray]:
        """The head of the ranking the second stage re-scores, and its signal matrix."""
        head = ranked[: self.fusion.rerank_depth]
        if sentences is None:  # an index without sentence vectors: the passage is its own best sentence
            sentences = dense
        return head, signals(fold(query).replace(" ", ""), terms, self.idf, [self._folded[i] for i in head],
                       [self._digit_shares[i] for i in head], dense[head].tolist(), sentences[head].tolist(),
                       lexical[head].tolist(),
                       [folded_coverage(terms, self._folded[i]) for i in head])

    def second_stage_candidates(self, query: str) -> tuple[list[StoredChunk], np.ndarray]:
        """The passages the second stage would re-score for ``query`` and their signals (for fitting it)."""
        query = query[:MAX_QUERY_CHARS]
        terms = query_terms(query)
        allowed = np.ones(len(self.index.chunks), dtype=bool)
        ranked, _, dense, lexical, sentences = self._ranking(query, terms, "hybrid", allowed)
        assert dense is not None and lexical is not None
        head, matrix = self._head_signals(query, terms, ranked, dense, sentences, lexical)
        return [self.index.chunks[i] for i in head], matrix

    @staticmethod
    def _reorder(ranked: list[int], fused: np.ndarray, head: list[int], scores: list[float]
                 ) -> tuple[list[int], np.ndarray]:
        """The head re-sorted by ``scores`` (which replace its fused scores), the tail kept below it."""
        rescored = fused.copy()
        for chunk_id, score in zip(head, scores, strict=True):
            rescored[chunk_id] = score
        head = sorted(head, key=lambda i: -rescored[i])
        floor = min(scores) if scores else 0.0
        for chunk_id in ranked[len(head):]:
            rescored[chunk_id] = floor - 1.0  # keep the tail below every re-scored passage
        return head + ranked[len(head):], rescored

    def _copy_of(self, chunk_id: int, hits: list[Hit]) -> Hit | None:
        chunk = self.index.chunks[chunk_id]
        for hit in hits:
            if hit.chunk.source == chunk.source:
                continue
            if hit.chunk.source in self.index.documents[chunk.source].duplicates and \
                    containment(self._grams[chunk_id], self._grams[hit.chunk.id]) >= DUPLICATE_OVERLAP:
                return hit
        return None
