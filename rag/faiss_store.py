"""The embedded store: FAISS for vectors, bm25s for BM25, SQLite for records, in one versioned folder.

Files of a version (see ``rag.versions`` for the folder layout)::

    meta.sqlite       documents and chunks: text, offsets, lines, pages
    dense.faiss       IndexIDMap2 over IndexFlatIP, ids = chunk ids (exact search)
    units.faiss       IndexFlatIP over sentence/table-row vectors (when the chunker makes them)
    unit_owner.npy    for each unit, the id of its chunk
    bm25/             bm25s index over the index's own jieba tokens

A write session (``EmbeddedWriter``) collects whole reports and writes a complete new version on
commit; chunk ids follow the reports' file names, so the same corpus always gets the same ids.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict
from functools import cached_property
from pathlib import Path

import numpy as np

from .aliases import AliasTable
from .errors import RagError
from .metadata import ReportInfo
from .records import StoredChunk, StoredDocument, lexical_text
from .store import ReportRecords, Scored
from .textnorm import fold
from .tokenize import TOKENIZER_VERSION, Tokenizer, tokenizer_for
from .versions import (
    REBUILD_HINT,
    file_checksums,
    file_problems,
    manifest_of,
    new_version_name,
    publish,
    resolve_live,
    write_manifest,
)

FORMAT_VERSION = 1
BM25_CACHE_SIZE = 8


class EmbeddedStore:
    """A loaded version of the embedded store."""

    def __init__(self, index_dir: Path):
        self.index_dir = index_dir
        live = resolve_live(index_dir)  # once: every file comes from this one version
        manifest = manifest_of(live)
        if live is None or manifest is None:
            raise RagError(f"索引不存在或无法读取：{index_dir}。{REBUILD_HINT}")
        self.version_dir = live
        if manifest.get("format") != FORMAT_VERSION:
            raise RagError(f"索引格式已过期：{index_dir}。{REBUILD_HINT}")
        if manifest.get("tokenizer_version", 1) != TOKENIZER_VERSION:
            # The BM25 vocabulary was cut by an older tokenizer: questions would no longer meet it.
            raise RagError(f"索引的分词方式已过期：{index_dir}。{REBUILD_HINT}")
        sizes = file_problems(live, manifest.get("files"), hashes=False)
        if sizes:
            raise RagError(f"索引已损坏：{index_dir}（{sizes[0]}）。{REBUILD_HINT}")
        self.manifest = manifest
        # Questions must be cut with the same dictionary the passages were indexed with.
        self.tokenizer: Tokenizer = tokenizer_for(manifest.get("user_words", []))
        try:
            import bm25s
            import faiss

            self.dense = faiss.read_index(str(live / "dense.faiss"))
            self._flat = faiss.downcast_index(self.dense.index)  # type: ignore[attr-defined]
            self.units = faiss.read_index(str(live / "units.faiss")) if (live / "units.faiss").exists() else None
            self.unit_owner = np.load(live / "unit_owner.npy") if self.units is not None else None
            self.lexical = bm25s.BM25.load(str(live / "bm25"))
            db = sqlite3.connect(f"file:{live / 'meta.sqlite'}?mode=ro", uri=True)
            self.chunks = [StoredChunk(*row) for row in db.execute(
                "SELECT id, citation, source, start, \"end\", text, heading, table_header, kind, "
                "line_start, line_end, page FROM chunks ORDER BY id")]
            self.documents: dict[str, StoredDocument] = {}
            for source, sha, text, info, dups, line_starts in db.execute("SELECT * FROM documents"):
                self.documents[source] = StoredDocument(source, sha, text, ReportInfo(**json.loads(info)),
                                                        json.loads(dups), json.loads(line_starts))
            db.close()
        except Exception as exc:  # any damage to the files means the same thing to the user
            raise RagError(f"索引已损坏：{index_dir}（{exc}）。{REBUILD_HINT}") from exc
        problem = self._inconsistency()
        if problem:
            raise RagError(f"索引文件不一致：{index_dir}（{problem}）。{REBUILD_HINT}")
        self._by_citation = {c.citation: c for c in self.chunks}
        self._ids_of: dict[str, list[int]] = {}
        for chunk in self.chunks:
            self._ids_of.setdefault(chunk.source, []).append(chunk.id)
        self._units_of: dict[int, list[int]] = {}
        for unit, chunk_id in enumerate(self.unit_owner if self.unit_owner is not None else []):
            self._units_of.setdefault(int(chunk_id), []).append(unit)
        self._idf: dict[str, float] = {}
        self._bm25_cache: OrderedDict[tuple[str, ...], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def _inconsistency(self) -> str | None:
        """What does not fit together between the files of this version (None when all agree)."""
        count = len(self.chunks)
        if self.dense.ntotal != count or self.manifest.get("chunks") != count:
            return "passages / dense vectors / manifest counts differ"
        if [c.id for c in self.chunks] != list(range(count)):
            return "passage ids are not contiguous"
        if any(c.source not in self.documents for c in self.chunks):
            return "a passage belongs to no stored report"
        if int(self.lexical.scores.get("num_docs", -1)) != count:
            return "the BM25 index holds another number of passages"
        if self.units is not None:
            owner = self.unit_owner
            if owner is None or len(owner) != self.units.ntotal:
                return "unit vectors and their owners differ in number"
            if len(owner) and (owner.min() < 0 or owner.max() >= count or (np.diff(owner) < 0).any()):
                return "unit owners point outside the passages"
        return None

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def model(self) -> str:
        """Name of the embedding model that built this index."""
        return self.manifest["model"]

    @cached_property
    def aliases(self) -> AliasTable:
        """Chinese/English name pairs mined from the indexed text."""
        return AliasTable.mine(c.text for c in self.chunks)

    @cached_property
    def _folded(self) -> list[str]:
        return [fold(c.table_header + c.text).replace(" ", "") for c in self.chunks]

    def chunk(self, chunk_id: int) -> StoredChunk:
        """One passage by id."""
        return self.chunks[chunk_id]

    def chunk_by_citation(self, citation: str) -> StoredChunk | None:
        """The passage with this citation ID, if any."""
        return self._by_citation.get(citation)

    def chunks_of(self, source: str) -> list[StoredChunk]:
        """Every passage of one report, in reading order."""
        return [self.chunks[i] for i in self._ids_of.get(source, [])]

    def allowed_ids(self, sources: Sequence[str]) -> np.ndarray:
        """Ids of the passages of ``sources``."""
        ids = [i for source in dict.fromkeys(sources) for i in self._ids_of.get(source, [])]
        return np.array(sorted(ids), dtype=np.int64)

    def dense_top_k(self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None) -> Scored:
        """Exact inner-product top-k through FAISS (an ID selector applies the report filter)."""
        import faiss

        limit = min(k, self.dense.ntotal if allowed is None else len(allowed))
        if limit <= 0:
            return Scored.empty()
        params = None if allowed is None else faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))  # type: ignore[call-arg]
        scores, ids = self.dense.search(vector[None, :].astype(np.float32), limit, params=params)
        return _ordered(ids[0], scores[0])

    def dense_scores(self, vector: np.ndarray, ids: Sequence[int]) -> np.ndarray:
        """Cosine of ``vector`` with the passages ``ids``, computed by FAISS as its search does."""
        import faiss

        wanted = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        out = np.empty(wanted.shape, dtype=np.float32)
        if wanted.size:
            query = np.ascontiguousarray(vector[None, :], dtype=np.float32)
            self._flat.compute_distance_subset(  # type: ignore[attr-defined]
                1, faiss.swig_ptr(query), wanted.shape[1], faiss.swig_ptr(out), faiss.swig_ptr(wanted))
        return out[0]

    def unit_top_k(self, vector: np.ndarray, k: int) -> Scored:
        """Top-k sentence/row units as (owning chunk id, score), best first."""
        if self.units is None or self.unit_owner is None or self.units.ntotal == 0:
            return Scored.empty()
        scores, ids = self.units.search(vector[None, :].astype(np.float32), min(self.units.ntotal, k))
        valid = ids[0] >= 0
        return Scored(self.unit_owner[ids[0][valid]].astype(np.int64), scores[0][valid])

    def unit_vectors(self, chunk_id: int) -> np.ndarray | None:
        """The unit vectors of one chunk (None when the index has none)."""
        if self.units is None:
            return None
        ids = self._units_of.get(chunk_id, [])
        if not ids:
            return np.zeros((0, self.units.d), dtype=np.float32)
        return np.vstack([self.units.reconstruct(i) for i in ids])

    def _bm25_all(self, tokens: Sequence[str]) -> np.ndarray:
        # bm25s scores every passage in one vectorised pass; the top-k call and the candidates' scores
        # of one question share that pass.
        key = tuple(tokens)
        with self._lock:
            if key in self._bm25_cache:
                self._bm25_cache.move_to_end(key)
                return self._bm25_cache[key]
        scores = (np.asarray(self.lexical.get_scores(list(tokens)), dtype=np.float32) if tokens
                  else np.zeros(len(self.chunks), dtype=np.float32))
        with self._lock:
            self._bm25_cache[key] = scores
            while len(self._bm25_cache) > BM25_CACHE_SIZE:
                self._bm25_cache.popitem(last=False)
        return scores

    def bm25_top_k(self, tokens: Sequence[str], k: int, allowed: np.ndarray | None = None) -> Scored:
        """The ``k`` best passages with a positive BM25 score."""
        scores = self._bm25_all(tokens)
        if allowed is not None:
            masked = np.full(len(scores), -np.inf, dtype=np.float64)
            masked[allowed] = scores[allowed]
        else:
            masked = scores.astype(np.float64)
        positive = np.flatnonzero(masked > 0)
        order = positive[np.argsort(-masked[positive], kind="stable")][:k]
        return Scored(order.astype(np.int64), scores[order])

    def bm25_scores(self, tokens: Sequence[str], ids: Sequence[int]) -> np.ndarray:
        """BM25 scores of the passages ``ids``."""
        return self._bm25_all(tokens)[np.asarray(ids, dtype=np.int64)]

    def idf(self, term: str) -> float:
        """Inverse passage frequency of a folded term (substring match, as coverage counts it)."""
        if term not in self._idf:
            frequency = sum(1 for text in self._folded if term in text)
            self._idf[term] = float(np.log((len(self._folded) + 1) / (frequency + 0.5)))
        return self._idf[term]


def _ordered(ids: np.ndarray, scores: np.ndarray) -> Scored:
    """Valid ids sorted by score, best first, ties by id (as a stable sort of the whole array would)."""
    valid = ids >= 0
    ids, scores = ids[valid].astype(np.int64), scores[valid]
    order = np.lexsort((ids, -scores))
    return Scored(ids[order], scores[order])


class EmbeddedWriter:
    """A write session: reports are collected, ``commit`` writes and publishes a whole new version."""

    def __init__(self, index_dir: Path, dimension: int, tokenizer: Tokenizer):
        self.index_dir = index_dir
        self.dimension = dimension
        self.tokenizer = tokenizer
        self.reports: dict[str, ReportRecords] = {}

    def add_report(self, report: ReportRecords) -> None:
        """Add or replace one report."""
        self.reports[report.document.source] = report

    def remove_report(self, source: str) -> None:
        """Remove one report from the version being written."""
        self.reports.pop(source, None)

    def commit(self, manifest: dict) -> None:
        """Write every file of a new version into a hidden folder, then publish it atomically."""
        import bm25s
        import faiss

        stored, vectors, unit_vectors, unit_owner = self._assemble()
        self.index_dir.mkdir(parents=True, exist_ok=True)
        version = new_version_name()
        build_dir = self.index_dir / f".build-{version}"
        build_dir.mkdir()
        try:
            dense = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dimension))
            dense.add_with_ids(vectors, np.arange(len(stored), dtype=np.int64))
            faiss.write_index(dense, str(build_dir / "dense.faiss"))
            if unit_vectors is not None:
                units = faiss.IndexFlatIP(self.dimension)
                units.add(unit_vectors)
                faiss.write_index(units, str(build_dir / "units.faiss"))
                np.save(build_dir / "unit_owner.npy", np.asarray(unit_owner, dtype=np.int64))
            lexical = bm25s.BM25()
            lexical.index([self.tokenizer.tokens(lexical_text(c)) or ["\x00"] for c in stored], show_progress=False)
            lexical.save(str(build_dir / "bm25"))
            self._write_meta(build_dir / "meta.sqlite", stored)
            write_manifest(build_dir, {**manifest, "format": FORMAT_VERSION, "chunks": len(stored),
                                       "files": file_checksums(build_dir)})
            publish(self.index_dir, build_dir, version)
        except BaseException:
            shutil.rmtree(build_dir, ignore_errors=True)
            raise

    def _assemble(self) -> tuple[list[StoredChunk], np.ndarray, np.ndarray | None, list[int]]:
        stored: list[StoredChunk] = []
        vectors: list[np.ndarray] = []
        unit_vectors: list[np.ndarray] = []
        unit_owner: list[int] = []
        with_units = any(r.unit_vectors is not None for r in self.reports.values())
        for source in sorted(self.reports):
            report = self.reports[source]
            first = len(stored)
            for citation, chunk, line_start, line_end, page in report.chunks:
                stored.append(StoredChunk(len(stored), citation, chunk.source, chunk.start, chunk.end, chunk.text,
                                          chunk.heading, chunk.table_header, chunk.kind, line_start, line_end,
                                          page))
            vectors.append(report.vectors)
            if report.unit_vectors is not None:
                unit_vectors.append(report.unit_vectors)
                unit_owner.extend(first + owner for owner in report.unit_owner)
        dense = np.vstack(vectors).astype(np.float32) if vectors else np.zeros((0, self.dimension), np.float32)
        units = (np.vstack(unit_vectors).astype(np.float32) if unit_vectors
                 else np.zeros((0, self.dimension), np.float32)) if with_units else None
        return stored, dense, units, unit_owner

    def _write_meta(self, path: Path, chunks: list[StoredChunk]) -> None:
        db = sqlite3.connect(path)
        db.executescript("""
            CREATE TABLE documents (source TEXT PRIMARY KEY, sha256 TEXT, text TEXT, info TEXT,
                                    duplicates TEXT, line_starts TEXT);
            CREATE TABLE chunks (id INTEGER PRIMARY KEY, citation TEXT UNIQUE, source TEXT, start INTEGER,
                                 "end" INTEGER, text TEXT, heading TEXT, table_header TEXT, kind TEXT,
                                 line_start INTEGER, line_end INTEGER, page INTEGER);
        """)
        documents = [self.reports[source].document for source in sorted(self.reports)]
        db.executemany("INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?)", [
            (d.source, d.sha256, d.text, json.dumps(asdict(d.info), ensure_ascii=False),
             json.dumps(d.duplicates), json.dumps(d.line_starts)) for d in documents])
        db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       [tuple(asdict(c).values()) for c in chunks])
        db.commit()
        db.close()
