"""First-stage scorers: which passages are candidates for a question, with every signal fusion needs.

Each signal comes from one top-k call to the store: passage cosine (dense), best sentence/row
cosine (units) and BM25. In hybrid mode the candidates are the union of the top ``candidates`` of
each signal, and the store then fills in each candidate's missing scores; in dense or BM25 mode
they are that signal's top ``3 × candidates``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .query import Query, fold_key
from .records import StoredChunk
from .store import Store

MODES = ("hybrid", "dense", "bm25")
UNIT_DEPTH = 200  # sentence units read per question; a passage none of whose units is among them scores -1
# Signals stay float32 scalars, as the store returns them: fusion sums them in float32, so the order of
# near-ties does not depend on where a score was computed.
_NONE = np.float32(-1.0)


@dataclass
class Candidate:
    """A passage considered for a question and its first-stage signals.

    ``sentence`` is the best cosine of the question with one of the passage's sentences or table
    rows (-1 when none of them is among the question's nearest units; None when the index has no
    unit vectors or the search did not embed the question).
    """

    chunk: StoredChunk
    folded: str
    dense: np.float32 | None = None
    sentence: np.float32 | None = None
    bm25: np.float32 | None = None
    coverage: float = 0.0
    score: float | np.floating = 0.0

    @property
    def id(self) -> int:
        """The passage id."""
        return self.chunk.id


def folded_text(chunk: StoredChunk) -> str:
    """A passage (with its table header) as matched against query terms: folded, spaces removed."""
    return fold_key(chunk.table_header + chunk.text)


def best_unit_scores(store: Store, vector: np.ndarray) -> dict[int, np.float32] | None:
    """Per passage, the best cosine of one of its units among the question's nearest ``UNIT_DEPTH`` units."""
    units = store.unit_top_k(vector, UNIT_DEPTH)
    if not len(units.ids):
        return None
    best: dict[int, np.float32] = {}
    for chunk_id, score in zip(units.ids.tolist(), units.scores, strict=True):
        best[chunk_id] = max(best.get(chunk_id, _NONE), score)
    return best


def _members(ids: list[int], allowed: np.ndarray) -> set[int]:
    """Which of a few ``ids`` are in the sorted array ``allowed`` (no set over every allowed passage)."""
    if not ids or not len(allowed):
        return set()
    wanted = np.asarray(ids, dtype=np.int64)
    positions = np.minimum(np.searchsorted(allowed, wanted), len(allowed) - 1)
    return set(wanted[allowed[positions] == wanted].tolist())


def gather(store: Store, query: Query, mode: str, vector: Callable[[], np.ndarray], depth: int,
           allowed: np.ndarray | None, folded: Callable[[int], str], sentence_candidates: bool = True
           ) -> list[Candidate]:
    """The candidates of ``query`` in ``mode`` with their signals (``vector`` embeds the question on demand).

    ``sentence_candidates`` adds the passages of the best units to the hybrid candidates (off when
    fusion gives the sentence signal no weight).
    """
    query_vector = vector() if mode in ("hybrid", "dense") else None
    sentences = best_unit_scores(store, query_vector) if query_vector is not None else None
    allowed_set = None if allowed is None or sentences is None else _members(list(sentences), allowed)
    if mode == "hybrid":
        assert query_vector is not None
        ids: dict[int, None] = {}
        for chunk_id in store.dense_top_k(query_vector, depth, allowed).ids.tolist():
            ids[chunk_id] = None
        sentence_ranking = sorted(((-s, i) for i, s in (sentences or {}).items() if sentence_candidates
                                   and (allowed_set is None or i in allowed_set)))[:depth]
        for _, chunk_id in sentence_ranking:
            ids[chunk_id] = None
        for chunk_id in store.bm25_top_k(query.lexical_tokens, depth, allowed).ids.tolist():
            ids[chunk_id] = None
        chosen = list(ids)
        dense = store.dense_scores(query_vector, chosen)
        lexical = store.bm25_scores(query.lexical_tokens, chosen)
    elif mode == "dense":
        assert query_vector is not None
        top = store.dense_top_k(query_vector, 3 * depth, allowed)
        chosen, dense, lexical = top.ids.tolist(), top.scores, None
    else:
        top = store.bm25_top_k(query.lexical_tokens, 3 * depth, allowed)
        chosen, dense, lexical = top.ids.tolist(), None, top.scores
    candidates = []
    for position, chunk_id in enumerate(chosen):
        text = folded(chunk_id)
        candidates.append(Candidate(
            chunk=store.chunk(chunk_id), folded=text,
            dense=None if dense is None else dense[position],
            sentence=None if sentences is None else sentences.get(chunk_id, _NONE),
            bm25=None if lexical is None else lexical[position],
            coverage=query.coverage(text)))
    return candidates
