"""The ``Store`` protocol: what retrieval needs from an index, whatever engine holds it.

Retrieval asks a store only for top-k lists and for the scores of a few named passages, never
for a whole-corpus array, so an engine that cannot hand out every score (Milvus, an approximate
FAISS index) can stand behind the same retrieval code. ``open_store`` is the factory, chosen by
``--store`` / ``$RAG_STORE``: ``faiss`` (default; ``rag.faiss_store``: FAISS + bm25s + SQLite in a
versioned folder) or ``milvus://…`` (``rag.milvus_store``: a Milvus Lite file or a Milvus server).

Writing goes through a ``StoreWriter`` session: reports are added and removed, then ``commit``
makes the new state live (the embedded store in one step; Milvus writes only changed reports and
its manifest last).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from .aliases import AliasTable
from .chunking import Chunk
from .errors import RagError
from .records import StoredChunk, StoredDocument
from .tokenize import Tokenizer


@dataclass
class Scored:
    """Passage ids with one score each, best first (ties in id order)."""

    ids: np.ndarray
    scores: np.ndarray

    @classmethod
    def empty(cls) -> Scored:
        """No passages."""
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))

    def as_dict(self) -> dict[int, float]:
        """Passage id → score."""
        return {int(i): float(s) for i, s in zip(self.ids, self.scores, strict=True)}


class Store(Protocol):
    """A loaded index, read side."""

    index_dir: Path
    manifest: dict
    documents: dict[str, StoredDocument]
    tokenizer: Tokenizer

    def __len__(self) -> int:
        """Number of passages."""
        ...

    @property
    def aliases(self) -> AliasTable:
        """Chinese/English name pairs the reports define (``rag.aliases``)."""
        ...

    def chunk(self, chunk_id: int) -> StoredChunk:
        """One passage by id."""
        ...

    def chunk_by_citation(self, citation: str) -> StoredChunk | None:
        """The passage whose citation ID is ``citation``, if any."""
        ...

    def chunks_of(self, source: str) -> list[StoredChunk]:
        """Every passage of one report, in reading order."""
        ...

    def allowed_ids(self, sources: Sequence[str]) -> np.ndarray:
        """Ids of the passages of some reports (the report filter), sorted."""
        ...

    def dense_top_k(self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None) -> Scored:
        """The ``k`` passages most similar to ``vector`` (cosine), optionally only among ``allowed``."""
        ...

    def dense_scores(self, vector: np.ndarray, ids: Sequence[int]) -> np.ndarray:
        """Cosine of ``vector`` with each of the passages ``ids``."""
        ...

    def unit_top_k(self, vector: np.ndarray, k: int) -> Scored:
        """The ``k`` sentence/table-row units most similar to ``vector``, as (owning passage id, score)
        pairs, best first (a passage may appear several times); empty without unit vectors."""
        ...

    def unit_vectors(self, chunk_id: int) -> np.ndarray | None:
        """The unit vectors of one passage in ``unit_sentences`` order (None without unit vectors)."""
        ...

    def bm25_top_k(self, tokens: Sequence[str], k: int, allowed: np.ndarray | None = None) -> Scored:
        """The ``k`` passages with the highest positive BM25 score for ``tokens``."""
        ...

    def bm25_scores(self, tokens: Sequence[str], ids: Sequence[int]) -> np.ndarray:
        """BM25 score of ``tokens`` for each of the passages ``ids``."""
        ...

    def idf(self, term: str) -> float:
        """Inverse passage frequency of a folded, space-free term (substring match)."""
        ...


@dataclass
class ReportRecords:
    """One report ready to store: the document, its passages (with citations) and their vectors.

    ``unit_vectors[i]`` belongs to the passage ``chunks[unit_owner[i]]``.
    """

    document: StoredDocument
    chunks: list[tuple[str, Chunk, int, int, int | None]]  # citation, chunk, line_start, line_end, page
    vectors: np.ndarray
    unit_vectors: np.ndarray | None = None
    unit_owner: list[int] = field(default_factory=list)


class StoreWriter(Protocol):
    """A write session on a store."""

    def add_report(self, report: ReportRecords) -> None:
        """Add (or replace) one report."""
        ...

    def remove_report(self, source: str) -> None:
        """Remove one report."""
        ...

    def commit(self, manifest: dict) -> None:
        """Make every change live at once, with ``manifest`` describing the new state."""
        ...


def store_setting(location: str | None = None) -> str:
    """Which store to use: ``location``, else ``$RAG_STORE``, else ``faiss`` (the embedded store).

    ``milvus:///abs/path/file.db`` is a Milvus Lite file, ``milvus://host:port`` a Milvus server.
    """
    setting = (location or os.environ.get("RAG_STORE") or "faiss").strip()
    if setting != "faiss" and not setting.startswith("milvus://"):
        raise RagError(f"未知的存储：{setting}（可用 faiss、milvus:///绝对路径.db、milvus://主机:端口）/ unknown store")
    if _is_milvus(setting):
        from .milvus_store import MilvusLocation

        MilvusLocation.parse(setting)  # a malformed location fails here, before any model loads
    return setting


def _is_milvus(setting: str) -> bool:
    return setting.startswith("milvus://")


def open_store(index_dir: Path, location: str | None = None, previous: Store | None = None) -> Store:
    """The store in ``index_dir`` (or at ``location``; raises ``RagError`` with a rebuild hint when unusable).

    A build may publish a new version while this one loads: when loading fails and another version
    went live meanwhile, the new one is loaded instead, so a reader never reports a sound index as broken.
    ``previous``, an earlier version of the same embedded index still loaded, lends the segments both share.
    """
    setting = store_setting(location)
    if _is_milvus(setting):
        from .milvus_store import MilvusStore

        return MilvusStore(setting, index_dir)
    from .faiss_store import EmbeddedStore
    from .versions import check_target, resolve_live

    check_target(index_dir)
    borrowed = previous if isinstance(previous, EmbeddedStore) else None
    for _ in range(3):
        before = resolve_live(index_dir)
        try:
            return EmbeddedStore(index_dir, borrowed)
        except RagError:
            if resolve_live(index_dir) == before:
                raise
    return EmbeddedStore(index_dir, borrowed)


def lender(previous: Store | None) -> Store | None:
    """``previous`` when the version now live in its folder shares segments with it (see ``open_store``), else
    None: a caller drops a store that lends nothing before loading the new one, so two whole indexes are
    never in memory at once."""
    from .faiss_store import EmbeddedStore

    return previous if isinstance(previous, EmbeddedStore) and previous.lends_to_live() else None


def verify_store(index_dir: Path, location: str | None = None) -> list[str]:
    """Everything wrong with the live index, checking every file's SHA-256 (empty when healthy)."""
    from .versions import file_problems, resolve_live

    try:
        store = open_store(index_dir, location)
    except RagError as exc:
        return [str(exc)]
    if _is_milvus(store_setting(location)):
        return store.problems()  # type: ignore[attr-defined]
    live = resolve_live(index_dir)
    assert live is not None
    return file_problems(live, store.manifest.get("files"), hashes=True)


def store_manifest(index_dir: Path, location: str | None = None) -> dict | None:
    """The live index's manifest (None when there is no readable index)."""
    setting = store_setting(location)
    if _is_milvus(setting):
        from .milvus_store import milvus_manifest

        return milvus_manifest(setting)
    from .versions import read_manifest

    return read_manifest(index_dir)


def store_version(index_dir: Path, location: str | None = None) -> str | None:
    """Which version of the index is live (cheap; a reader reloads when it changes)."""
    setting = store_setting(location)
    if _is_milvus(setting):
        manifest = store_manifest(index_dir, setting)
        return None if manifest is None else str(manifest.get("built_at"))
    from .versions import live_version

    return live_version(index_dir)


def store_writer(index_dir: Path, dimension: int, tokenizer: Tokenizer, location: str | None = None,
                 log: Callable[[str], None] = lambda message: None, reuse: bool = True,
                 update: bool = False) -> StoreWriter:
    """A write session on the store in ``index_dir`` (or at ``location``); ``log`` hears what an
    incremental store wrote.

    The session describes the whole new state (reports not added are removed), unless ``update``:
    then it starts from the live index and changes only the reports added or removed. ``reuse=False``
    writes every file anew instead of keeping the unchanged parts of the live index (a damaged index;
    embedded store only).
    """
    setting = store_setting(location)
    if _is_milvus(setting):
        from .milvus_store import MilvusWriter

        if update:  # a Milvus session always describes the whole new state; it writes only what changed anyway
            raise ValueError("update sessions are an embedded-store feature; pass every report to a Milvus session")
        return MilvusWriter(setting, dimension, tokenizer, log=log)
    from .faiss_store import EmbeddedWriter

    return EmbeddedWriter(index_dir, dimension, tokenizer, reuse=reuse, update=update, log=log)
