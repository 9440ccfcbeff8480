"""The embedded store: FAISS for vectors, bm25s for BM25, SQLite for records, in one versioned folder.

Files of a version (see ``rag.versions`` for the folder layout)::

    meta.sqlite       documents, chunks (text, offsets, lines, pages) and each report's span of chunk ids
    dense.faiss       passage vectors: IndexIDMap2 over IndexFlatIP (exact), or IVF-SQ8 when large (rag.ann)
    dense.npy         the exact passage vectors beside an approximate dense.faiss (memory-mapped)
    units.faiss       sentence/table-row vectors (when the chunker makes them), flat or IVF-SQ8
    units.npy         the exact unit vectors beside an approximate units.faiss (memory-mapped)
    unit_owner.npy    for each unit, the id of its chunk (non-decreasing)
    aliases.json      the Chinese/English name pairs the passages define (mined at build time)
    bm25/             bm25s index over the index's own jieba tokens

Nothing proportional to the corpus is turned into Python objects at load: passages are read from
SQLite on demand (with a cache), a report filter is a few id ranges, BM25 top-k selects in O(n),
and the IDF of a large index comes from BM25's document frequencies instead of a scan of every text.

A write session (``EmbeddedWriter``) collects whole reports and writes a complete new version on
commit; chunk ids follow the reports' file names, so the same corpus always gets the same ids, and
each report's chunks have consecutive ids.
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
from .ann import (
    FLAT,
    AnnSettings,
    approximate_search,
    build_index,
    default_settings,
    exact_scores,
    open_exact,
    top_k_stable,
)
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

FORMAT_VERSION = 2  # 2: spans table, aliases.json, optional IVF-SQ8 indexes with exact .npy vectors
BM25_CACHE_SIZE = 8
CHUNK_CACHE_SIZE = 65536
_CHUNK_COLUMNS = ('id, citation, source, start, "end", text, heading, table_header, kind, '
                  'line_start, line_end, page')


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
        indexes = manifest.get("indexes", {})
        self.ann = AnnSettings(**manifest["ann"]) if "ann" in manifest else default_settings()
        # Questions must be cut with the same dictionary the passages were indexed with.
        self.tokenizer: Tokenizer = tokenizer_for(manifest.get("user_words", []))
        try:
            import bm25s
            import faiss

            self.dense = faiss.read_index(str(live / "dense.faiss"))
            self.dense_kind = indexes.get("dense", FLAT)
            if self.dense_kind == FLAT:
                self._flat = faiss.downcast_index(self.dense.index)  # type: ignore[attr-defined]
                self._dense_exact = None
            else:
                self._dense_exact = open_exact(live / "dense.npy")
            self.units = faiss.read_index(str(live / "units.faiss")) if (live / "units.faiss").exists() else None
            self.units_kind = indexes.get("units", FLAT)
            self._units_exact = (open_exact(live / "units.npy")
                                 if self.units is not None and self.units_kind != FLAT else None)
            self.unit_owner = np.load(live / "unit_owner.npy") if self.units is not None else None
            self.lexical = bm25s.BM25.load(str(live / "bm25"))
            self._alias_pairs = json.loads((live / "aliases.json").read_text(encoding="utf-8"))
            self._db = sqlite3.connect(f"file:{live / 'meta.sqlite'}?mode=ro", uri=True, check_same_thread=False)
            self.documents: dict[str, StoredDocument] = {}
            for source, sha, text, info, dups, line_starts in self._db.execute("SELECT * FROM documents"):
                self.documents[source] = StoredDocument(source, sha, text, ReportInfo(**json.loads(info)),
                                                        json.loads(dups), json.loads(line_starts))
            self._spans = {source: (first, stop) for source, first, stop in
                           self._db.execute("SELECT source, first, stop FROM spans ORDER BY first")}
            self._count, self._min_id, self._max_id = self._db.execute(
                "SELECT COUNT(*), MIN(id), MAX(id) FROM chunks").fetchone()
        except Exception as exc:  # any damage to the files means the same thing to the user
            raise RagError(f"索引已损坏：{index_dir}（{exc}）。{REBUILD_HINT}") from exc
        self._lock = threading.Lock()
        self._chunk_cache: OrderedDict[int, StoredChunk] = OrderedDict()
        problem = self._inconsistency()
        if problem:
            raise RagError(f"索引文件不一致：{index_dir}（{problem}）。{REBUILD_HINT}")
        self._idf: dict[str, float] = {}
        self._bm25_cache: OrderedDict[tuple[str, ...], np.ndarray] = OrderedDict()

    def _inconsistency(self) -> str | None:
        """What does not fit together between the files of this version (None when all agree)."""
        count = self._count
        if self.dense.ntotal != count or self.manifest.get("chunks") != count:
            return "passages / dense vectors / manifest counts differ"
        if count and (self._min_id != 0 or self._max_id != count - 1):
            return "passage ids are not contiguous"
        if self._dense_exact is not None and self._dense_exact.shape != (count, self.dense.d):
            return "exact passage vectors and passages differ in number"
        expected = 0
        for source, (first, stop) in self._spans.items():
            if source not in self.documents or first != expected or stop < first:
                return "a passage belongs to no stored report"
            expected = stop
        if expected != count:
            return "a passage belongs to no stored report"
        if int(self.lexical.scores.get("num_docs", -1)) != count:
            return "the BM25 index holds another number of passages"
        if self.units is not None:
            owner = self.unit_owner
            if owner is None or len(owner) != self.units.ntotal:
                return "unit vectors and their owners differ in number"
            if len(owner) and (owner.min() < 0 or owner.max() >= count or (np.diff(owner) < 0).any()):
                return "unit owners point outside the passages"
            if self._units_exact is not None and self._units_exact.shape != (len(owner), self.units.d):
                return "exact unit vectors and units differ in number"
        return None

    def __len__(self) -> int:
        return self._count

    @property
    def model(self) -> str:
        """Name of the embedding model that built this index."""
        return self.manifest["model"]

    @cached_property
    def aliases(self) -> AliasTable:
        """Chinese/English name pairs mined from the indexed text (at build time)."""
        return AliasTable({(native, latin) for native, latin in self._alias_pairs})

    @cached_property
    def _folded(self) -> list[str]:
        # Only a small index reads every text (exact substring IDF); see ``idf``.
        with self._lock:
            rows = self._db.execute("SELECT table_header, text FROM chunks ORDER BY id").fetchall()
        return [fold(header + text).replace(" ", "") for header, text in rows]

    def chunk(self, chunk_id: int) -> StoredChunk:
        """One passage by id (read from SQLite on first use, then cached)."""
        chunk_id = int(chunk_id)
        with self._lock:
            cached = self._chunk_cache.get(chunk_id)
            if cached is not None:
                self._chunk_cache.move_to_end(chunk_id)
                return cached
            row = self._db.execute(f"SELECT {_CHUNK_COLUMNS} FROM chunks WHERE id = ?", (chunk_id,)).fetchone()
        if row is None:
            raise IndexError(f"no passage {chunk_id}")
        return self._remember(StoredChunk(*row))

    def _remember(self, chunk: StoredChunk) -> StoredChunk:
        with self._lock:
            self._chunk_cache[chunk.id] = chunk
            while len(self._chunk_cache) > CHUNK_CACHE_SIZE:
                self._chunk_cache.popitem(last=False)
        return chunk

    def chunk_by_citation(self, citation: str) -> StoredChunk | None:
        """The passage with this citation ID, if any."""
        with self._lock:
            row = self._db.execute(f"SELECT {_CHUNK_COLUMNS} FROM chunks WHERE citation = ?", (citation,)).fetchone()
        return None if row is None else self._remember(StoredChunk(*row))

    def chunks_of(self, source: str) -> list[StoredChunk]:
        """Every passage of one report, in reading order."""
        first, stop = self._spans.get(source, (0, 0))
        with self._lock:
            rows = self._db.execute(f"SELECT {_CHUNK_COLUMNS} FROM chunks WHERE id >= ? AND id < ? ORDER BY id",
                                    (first, stop)).fetchall()
        return [StoredChunk(*row) for row in rows]

    def allowed_ids(self, sources: Sequence[str]) -> np.ndarray:
        """Ids of the passages of ``sources`` (each report's ids are one consecutive range)."""
        spans = sorted(self._spans[s] for s in dict.fromkeys(sources) if s in self._spans)
        if not spans:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(first, stop, dtype=np.int64) for first, stop in spans])

    def dense_top_k(self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None) -> Scored:
        """Inner-product top-k: exact through FAISS (an ID selector applies the report filter), or
        approximate and re-scored exactly on a large index (a filter over few passages is exact)."""
        import faiss

        limit = min(k, self.dense.ntotal if allowed is None else len(allowed))
        if limit <= 0:
            return Scored.empty()
        if self._dense_exact is not None:
            if allowed is not None and len(allowed) < self.ann.exact_filter_below:
                ids = np.asarray(allowed, dtype=np.int64)
                scores = exact_scores(self._dense_exact, vector, ids)
                best = top_k_stable(scores, limit)
                return _ordered(ids[best], scores[best])
            ids, scores = approximate_search(self.dense, self._dense_exact, vector, limit, self.ann.nprobe, allowed)
            return _ordered(ids, scores)
        params = None if allowed is None else faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))  # type: ignore[call-arg]
        scores, ids = self.dense.search(vector[None, :].astype(np.float32), limit, params=params)
        return _ordered(ids[0], scores[0])

    def dense_scores(self, vector: np.ndarray, ids: Sequence[int]) -> np.ndarray:
        """Cosine of ``vector`` with the passages ``ids``, computed by FAISS as its search does."""
        import faiss

        wanted = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        if self._dense_exact is not None:
            return exact_scores(self._dense_exact, vector, wanted[0])
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
        limit = min(self.units.ntotal, k)
        if self._units_exact is not None:
            ids, scores = approximate_search(self.units, self._units_exact, vector, limit, self.ann.nprobe)
            order = np.lexsort((ids, -scores))
            return Scored(self.unit_owner[ids[order]].astype(np.int64), scores[order])
        scores, ids = self.units.search(vector[None, :].astype(np.float32), limit)
        valid = ids[0] >= 0
        return Scored(self.unit_owner[ids[0][valid]].astype(np.int64), scores[0][valid])

    def unit_vectors(self, chunk_id: int) -> np.ndarray | None:
        """The unit vectors of one chunk (None when the index has none)."""
        if self.units is None or self.unit_owner is None:
            return None
        first, stop = (int(i) for i in np.searchsorted(self.unit_owner, [chunk_id, chunk_id + 1]))
        if first == stop:
            return np.zeros((0, self.units.d), dtype=np.float32)
        if self._units_exact is not None:
            return np.asarray(self._units_exact[first:stop], dtype=np.float32)
        return np.vstack([self.units.reconstruct(i) for i in range(first, stop)])

    def _bm25_all(self, tokens: Sequence[str]) -> np.ndarray:
        # bm25s scores every passage in one vectorised pass; the top-k call and the candidates' scores
        # of one question share that pass.
        key = tuple(tokens)
        with self._lock:
            if key in self._bm25_cache:
                self._bm25_cache.move_to_end(key)
                return self._bm25_cache[key]
        scores = (np.asarray(self.lexical.get_scores(list(tokens)), dtype=np.float32) if tokens
                  else np.zeros(self._count, dtype=np.float32))
        with self._lock:
            self._bm25_cache[key] = scores
            while len(self._bm25_cache) > BM25_CACHE_SIZE:
                self._bm25_cache.popitem(last=False)
        return scores

    def bm25_top_k(self, tokens: Sequence[str], k: int, allowed: np.ndarray | None = None) -> Scored:
        """The ``k`` best passages with a positive BM25 score (ties in id order)."""
        scores = self._bm25_all(tokens)
        ids = np.flatnonzero(scores > 0) if allowed is None else allowed[scores[allowed] > 0]
        best = ids[top_k_stable(scores[ids].astype(np.float64), k)]
        return Scored(best.astype(np.int64), scores[best])

    def bm25_scores(self, tokens: Sequence[str], ids: Sequence[int]) -> np.ndarray:
        """BM25 scores of the passages ``ids``."""
        return self._bm25_all(tokens)[np.asarray(ids, dtype=np.int64)]

    def idf(self, term: str) -> float:
        """Inverse passage frequency of a folded term: in a small index the share of passages whose text
        contains it (substring match, as coverage counts it); in a large one the number of passages
        BM25 indexed under that token (no scan of every text per question)."""
        if term not in self._idf:
            if self._count < self.ann.idf_exact_below:
                frequency = sum(1 for text in self._folded if term in text)
            else:
                frequency = self._document_frequency(term)
            self._idf[term] = float(np.log((self._count + 1) / (frequency + 0.5)))
        return self._idf[term]

    def _document_frequency(self, term: str) -> int:
        token = self.lexical.vocab_dict.get(term)
        indptr = self.lexical.scores["indptr"]
        if token is None or token + 1 >= len(indptr):
            return 0
        return int(indptr[token + 1] - indptr[token])


def _ordered(ids: np.ndarray, scores: np.ndarray) -> Scored:
    """Valid ids sorted by score, best first, ties by id (as a stable sort of the whole array would)."""
    valid = ids >= 0
    ids, scores = ids[valid].astype(np.int64), scores[valid]
    order = np.lexsort((ids, -scores))
    return Scored(ids[order], scores[order])


class EmbeddedWriter:
    """A write session: reports are collected, ``commit`` writes and publishes a whole new version.

    ``ann`` decides which vector indexes are exact and which approximate (default: ``rag/data/scale.json``).
    """

    def __init__(self, index_dir: Path, dimension: int, tokenizer: Tokenizer, ann: AnnSettings | None = None):
        self.index_dir = index_dir
        self.dimension = dimension
        self.tokenizer = tokenizer
        self.ann = ann or default_settings()
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
            dense, dense_kind = build_index(vectors, self.ann, with_ids=True)
            faiss.write_index(dense, str(build_dir / "dense.faiss"))
            del dense
            if dense_kind != FLAT:
                np.save(build_dir / "dense.npy", vectors)
            kinds = {"dense": dense_kind}
            if unit_vectors is not None:
                units, kinds["units"] = build_index(unit_vectors, self.ann, with_ids=False)
                faiss.write_index(units, str(build_dir / "units.faiss"))
                del units
                if kinds["units"] != FLAT:
                    np.save(build_dir / "units.npy", unit_vectors)
                np.save(build_dir / "unit_owner.npy", np.asarray(unit_owner, dtype=np.int64))
            lexical = bm25s.BM25()
            lexical.index([self.tokenizer.tokens(lexical_text(c)) or ["\x00"] for c in stored], show_progress=False)
            lexical.save(str(build_dir / "bm25"))
            del lexical
            aliases = sorted(AliasTable.mine(c.text for c in stored).pairs)
            (build_dir / "aliases.json").write_text(json.dumps(aliases, ensure_ascii=False), encoding="utf-8")
            self._write_meta(build_dir / "meta.sqlite", stored)
            write_manifest(build_dir, {**manifest, "format": FORMAT_VERSION, "chunks": len(stored),
                                       "indexes": kinds, "ann": self.ann.as_dict(),
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
            CREATE TABLE spans (source TEXT PRIMARY KEY, first INTEGER, stop INTEGER);
        """)
        documents = [self.reports[source].document for source in sorted(self.reports)]
        db.executemany("INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?)", [
            (d.source, d.sha256, d.text, json.dumps(asdict(d.info), ensure_ascii=False),
             json.dumps(d.duplicates), json.dumps(d.line_starts)) for d in documents])
        db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       [tuple(asdict(c).values()) for c in chunks])
        spans: dict[str, list[int]] = {}
        for chunk in chunks:
            spans.setdefault(chunk.source, [chunk.id, chunk.id])[1] = chunk.id + 1
        db.executemany("INSERT INTO spans VALUES (?, ?, ?)", [(s, a, b) for s, (a, b) in spans.items()])
        db.commit()
        db.close()
