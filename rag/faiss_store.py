"""The embedded store: FAISS for vectors, bm25s for BM25, SQLite for records, in one versioned folder.

A version (see ``rag.versions`` for the folder layout) is one or more immutable *segments*; each
segment holds whole reports and these files::

    meta.sqlite       documents, chunks (text, offsets, lines, pages), each report's span of chunk ids
                      and a fingerprint of what was stored for it
    dense.faiss       passage vectors: IndexIDMap2 over IndexFlatIP (exact), or IVF-SQ8 when large (rag.ann)
    dense.npy         the exact passage vectors beside an approximate dense.faiss (memory-mapped)
    units.faiss       sentence/table-row vectors (when the chunker makes them), flat or IVF-SQ8
    units.npy         the exact unit vectors beside an approximate units.faiss (memory-mapped)
    units.codes.faiss a scalar-quantised copy of the unit vectors beside an IVF-PQ units.faiss of at least
                      ``codes_rescore_above`` vectors: re-scoring reads codes in memory, not rows on disk
                      (an IVF-SQ8 index that large re-scores from its own codes; dense.codes.faiss likewise)
    unit_owner.npy    for each unit, the id of its chunk (non-decreasing)
    aliases.json      the Chinese/English name pairs the passages define (mined at build time)
    bm25/             bm25s index over the index's own jieba tokens

The base segment's files are the version folder itself; later segments are sub-folders ``s-…``.
The manifest lists the segments, the id offset of each (passage ids are global: offset + the id in
the segment) and the reports deleted from each (a deleted report's passages are never returned).

Nothing proportional to the corpus is turned into Python objects at load: passages are read from
SQLite on demand (with a cache), a report filter is a few id ranges, BM25 top-k selects in O(n),
and the IDF of a large index comes from BM25's document frequencies instead of a scan of every text.

A write session (``EmbeddedWriter``) collects reports; ``commit`` publishes a new version. A small
index is rewritten whole, so it is exactly what a fresh build gives (chunk ids follow the reports'
file names; each report's chunks have consecutive ids). A large one keeps its segments (hard-linked
into the new version, not copied), writes only new or changed reports as a new small segment and
marks replaced or removed reports deleted; too many small segments are merged, and a whole rewrite
happens when small segments and deletions grow past a share of the index (``rag/data/scale.json``).
Until then, BM25 weights each segment's term scores by the IDF of the whole index, and passages
stored earlier keep the tokens of the dictionary they were indexed with.

A session does not hold the vectors it is handed in memory: ``add_report`` copies them into spool
files in a hidden ``.spool-<pid>-…`` folder of the index and keeps memory-mapped views, so a build of
a million passages (about 24 GB of float32 vectors with their units) needs memory for its texts
only. The spool is removed when the session ends; one left by a killed process is removed by the
next writer (``rag.versions.clean_leftovers``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import mmap
import os
import shutil
import sqlite3
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .aliases import AliasTable
from .ann import (
    FLAT,
    IVF_PQ,
    RESCORE_EXACT,
    AnnSettings,
    CodeRows,
    ExactRows,
    approximate_search,
    build_index,
    build_rescore_codes,
    default_settings,
    exact_scores,
    open_exact,
    open_rescorer,
    top_k_stable,
)
from .chunking import Chunk
from .errors import RagError
from .metadata import ReportInfo
from .records import StoredChunk, StoredDocument, lexical_text
from .store import ReportRecords, Scored
from .textnorm import fold
from .tokenize import TOKENIZER_VERSION, Tokenizer, tokenizer_for
from .versions import (
    MANIFEST,
    REBUILD_HINT,
    SPOOL_PREFIX,
    file_checksums,
    file_problems,
    manifest_of,
    new_version_name,
    publish,
    resolve_live,
    write_manifest,
)

FORMAT_VERSION = 4  # 4: boilerplate spans recorded per report; 3: segments with deleted reports and
# per-report fingerprints; 2: one segment
BASE = "."  # the base segment's files are the version folder itself
BM25_CACHE_SIZE = 8
CHUNK_CACHE_SIZE = 65536
_CHUNK_COLUMNS = ('id, citation, source, start, "end", text, heading, table_header, kind, '
                  'line_start, line_end, page')
# A report stored again unchanged needs no rewrite when the index's model, chunker and tokenizer are the same.
_COMPATIBLE_KEYS = ("model", "dimension", "chunker", "chunker_version", "tokenizer_version")


class _Segment:
    """One immutable segment of a loaded version; ids here are local (0 … count-1)."""

    def __init__(self, folder: Path, entry: dict, ann: AnnSettings):
        import bm25s
        import faiss

        self.path: str = entry["path"]
        self.offset: int = int(entry["offset"])
        self.identity = segment_identity(folder)
        self.ann = ann
        indexes = entry.get("indexes", {})
        self.dense = faiss.read_index(str(folder / "dense.faiss"))
        rescoring = entry.get("rescore", {})
        self.dense_kind = indexes.get("dense", FLAT)
        # Exact rows (bulk reads: merges, a passage's vectors) and what candidates are re-scored with (the same
        # rows, or codes in memory on the largest indexes: rag.ann).
        self.dense_exact: ExactRows | None = None
        self.dense_rescore: ExactRows | CodeRows | None = None
        if self.dense_kind == FLAT:
            self._flat = faiss.downcast_index(self.dense.index)  # type: ignore[attr-defined]
        else:
            self.dense_exact, self.dense_rescore = _rows_beside(folder, "dense", self.dense, rescoring)
        self.units = faiss.read_index(str(folder / "units.faiss")) if (folder / "units.faiss").exists() else None
        self.units_kind = indexes.get("units", FLAT)
        self.units_exact: ExactRows | None = None
        self.units_rescore: ExactRows | CodeRows | None = None
        if self.units is not None and self.units_kind != FLAT:
            self.units_exact, self.units_rescore = _rows_beside(folder, "units", self.units, rescoring)
        self.unit_owner = np.load(folder / "unit_owner.npy") if self.units is not None else None
        # Memory-mapped: a million passages' postings are ~1 GB, and a question reads only its terms' postings.
        self.lexical = bm25s.BM25.load(str(folder / "bm25"), mmap=True)
        self.alias_pairs = json.loads((folder / "aliases.json").read_text(encoding="utf-8"))
        self.db = sqlite3.connect(f"file:{folder / 'meta.sqlite'}?mode=ro", uri=True, check_same_thread=False)
        self.lock = threading.Lock()
        self._every_document = {row[0]: _document(row) for row in self.db.execute("SELECT * FROM documents")}
        self.spans = {source: (first, stop) for source, first, stop in
                      self.db.execute("SELECT source, first, stop FROM spans ORDER BY first, stop")}
        self.count, self.min_id, self.max_id = self.db.execute(
            "SELECT COUNT(*), MIN(id), MAX(id) FROM chunks").fetchone()
        self._apply_deletions(set(entry.get("deleted", [])))

    def reused(self, entry: dict) -> _Segment:
        """This loaded segment as a newer version lists it (the same files, hard-linked; perhaps more of its
        reports deleted): its indexes, codes and connections are shared, only the deletion masks are new."""
        other = copy.copy(self)
        other.path = entry["path"]
        other._apply_deletions(set(entry.get("deleted", [])))
        return other

    def _apply_deletions(self, deleted: set[str]) -> None:
        """The reports, spans and search masks left when the reports ``deleted`` are masked out."""
        import faiss

        self.deleted = deleted
        self.documents: dict[str, StoredDocument] = {
            source: document for source, document in self._every_document.items() if source not in deleted}
        self.live_spans = {s: span for s, span in self.spans.items() if s not in self.deleted}
        self.live_count = sum(stop - first for first, stop in self.live_spans.values())
        # Deleted passages are masked out of every search with a bitmap selector (None: all live).
        self.live: np.ndarray | None = None
        self._dense_selector = self._units_selector = None
        if self.deleted:
            self.live = np.ones(self.count, dtype=bool)
            for source in self.deleted:
                first, stop = self.spans.get(source, (0, 0))
                self.live[first:stop] = False
            self._dense_bits = np.packbits(self.live, bitorder="little")
            self._dense_selector = faiss.IDSelectorBitmap(self.count, faiss.swig_ptr(self._dense_bits))
            if self.unit_owner is not None and len(self.unit_owner):
                self._units_bits = np.packbits(self.live[self.unit_owner], bitorder="little")
                self._units_selector = faiss.IDSelectorBitmap(len(self.unit_owner),
                                                              faiss.swig_ptr(self._units_bits))

    def inconsistency(self, entry: dict) -> str | None:
        """What does not fit together between this segment's files (None when all agree)."""
        count = self.count
        if self.dense.ntotal != count or entry.get("chunks") != count:
            return "passages / dense vectors / manifest counts differ"
        if count and (self.min_id != 0 or self.max_id != count - 1):
            return "passage ids are not contiguous"
        for rows in (self.dense_exact, self.dense_rescore):
            if rows is not None and rows.shape != (count, self.dense.d):
                return "exact passage vectors and passages differ in number"
        expected = 0
        for source, (first, stop) in self.spans.items():
            if (source not in self.documents and source not in self.deleted) or first != expected or stop < first:
                return "a passage belongs to no stored report"
            expected = stop
        if expected != count:
            return "a passage belongs to no stored report"
        if not self.deleted <= set(self.spans):
            return "a deleted report is not in its segment"
        if int(self.lexical.scores.get("num_docs", -1)) != count:
            return "the BM25 index holds another number of passages"
        if self.units is not None:
            owner = self.unit_owner
            if owner is None or len(owner) != self.units.ntotal:
                return "unit vectors and their owners differ in number"
            if len(owner) and (owner.min() < 0 or owner.max() >= count or (np.diff(owner) < 0).any()):
                return "unit owners point outside the passages"
            for rows in (self.units_exact, self.units_rescore):
                if rows is not None and rows.shape != (len(owner), self.units.d):
                    return "exact unit vectors and units differ in number"
        return None

    # -- vectors ----------------------------------------------------------------------------------------------

    def dense_top_k(self, vector: np.ndarray, k: int, allowed: np.ndarray | None) -> Scored:
        """Local ids and cosines of the best ``k`` live passages (only ``allowed`` ones, when given)."""
        import faiss

        limit = min(k, self.live_count if allowed is None else len(allowed))
        if limit <= 0:
            return Scored.empty()
        if self.dense_rescore is not None:
            if allowed is not None and len(allowed) < self.ann.exact_filter_below:
                ids = np.asarray(allowed, dtype=np.int64)
                scores = exact_scores(self.dense_rescore, vector, ids)
                best = top_k_stable(scores, limit)
                return _ordered(ids[best], scores[best])
            ids, scores = approximate_search(self.dense, self.dense_rescore, vector, limit, self.ann.nprobe, allowed,
                                             self._dense_selector, self._factor(self.dense_kind))
            return _ordered(ids, scores)
        selector = self._dense_selector if allowed is None else faiss.IDSelectorBatch(allowed)
        params = None if selector is None else faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
        scores, ids = self.dense.search(vector[None, :].astype(np.float32), limit, params=params)
        return _ordered(ids[0], scores[0])

    def _factor(self, kind: str) -> int:
        """How many candidates per wanted hit an approximate index of ``kind`` is asked for."""
        return self.ann.pq_rescore_factor if kind == IVF_PQ else 1

    def dense_scores(self, vector: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Cosines of ``vector`` with the local passages ``ids``, computed as the search computes them."""
        import faiss

        wanted = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        if self.dense_rescore is not None:
            return exact_scores(self.dense_rescore, vector, wanted[0])
        out = np.empty(wanted.shape, dtype=np.float32)
        if wanted.size:
            query = np.ascontiguousarray(vector[None, :], dtype=np.float32)
            self._flat.compute_distance_subset(  # type: ignore[attr-defined]
                1, faiss.swig_ptr(query), wanted.shape[1], faiss.swig_ptr(out), faiss.swig_ptr(wanted))
        return out[0]

    def unit_top_k(self, vector: np.ndarray, k: int) -> Scored:
        """The best ``k`` live units as (local owning chunk id, score), best first."""
        import faiss

        if self.units is None or self.unit_owner is None or self.units.ntotal == 0:
            return Scored.empty()
        limit = min(self.units.ntotal, k)
        if self.units_rescore is not None:
            ids, scores = approximate_search(self.units, self.units_rescore, vector, limit, self.ann.nprobe,
                                             None, self._units_selector, self._factor(self.units_kind))
            order = np.lexsort((ids, -scores))
            return Scored(self.unit_owner[ids[order]].astype(np.int64), scores[order])
        params = None if self._units_selector is None else faiss.SearchParameters(sel=self._units_selector)  # type: ignore[call-arg]
        scores, ids = self.units.search(vector[None, :].astype(np.float32), limit, params=params)
        valid = ids[0] >= 0
        return Scored(self.unit_owner[ids[0][valid]].astype(np.int64), scores[0][valid])

    def unit_vectors(self, chunk_id: int) -> np.ndarray | None:
        """The unit vectors of one local chunk (None when the segment has none)."""
        if self.units is None or self.unit_owner is None:
            return None
        first, stop = (int(i) for i in np.searchsorted(self.unit_owner, [chunk_id, chunk_id + 1]))
        if first == stop:
            return np.zeros((0, self.units.d), dtype=np.float32)
        if self.units_exact is not None:
            return np.asarray(self.units_exact[first:stop], dtype=np.float32)
        return np.vstack([self.units.reconstruct(i) for i in range(first, stop)])

    def passage_vectors(self, first: int, stop: int) -> np.ndarray:
        """The exact vectors of the local passages ``first`` … ``stop``-1 (memory-mapped when they lie beside an
        approximate index: merges read whole segments this way without copying them into memory)."""
        if self.dense_exact is not None:
            return self.dense_exact.mapped(first, stop)
        if stop <= first:
            return np.zeros((0, self.dense.d), dtype=np.float32)
        return self.dense.reconstruct_batch(np.arange(first, stop, dtype=np.int64))

    # -- BM25 -----------------------------------------------------------------------------------------------

    def document_frequency(self, token: str) -> int:
        """Number of this segment's passages (deleted ones included) BM25 indexed under ``token``."""
        token_id = self.lexical.vocab_dict.get(token)
        indptr = self.lexical.scores["indptr"]
        if token_id is None or token_id + 1 >= len(indptr):
            return 0
        return int(indptr[token_id + 1] - indptr[token_id])

    def bm25_weighted(self, tokens: Sequence[str], idf_of_index: dict[str, float]) -> np.ndarray:
        """BM25 scores of every local passage, each term's scores rescaled from this segment's IDF to the
        whole index's (a small segment's own IDF would make any rare word in it dominate)."""
        scores = self.lexical.scores
        data, indices, indptr = scores["data"], scores["indices"], scores["indptr"]
        out = np.zeros(self.count, dtype=np.float32)
        for token in tokens:  # repeated tokens count again, as in bm25s
            token_id = self.lexical.vocab_dict.get(token)
            if token_id is None:
                continue
            start, stop = int(indptr[token_id]), int(indptr[token_id + 1])
            own = _lucene_idf(stop - start, self.count)
            if own > 0:
                out[indices[start:stop]] += data[start:stop] * np.float32(idf_of_index[token] / own)
        return out

    # -- records ----------------------------------------------------------------------------------------------

    def row(self, query: str, args: tuple) -> tuple | None:
        """One row of this segment's SQLite database."""
        with self.lock:
            return self.db.execute(query, args).fetchone()

    def rows(self, query: str, args: tuple = ()) -> list[tuple]:
        """Rows of this segment's SQLite database."""
        with self.lock:
            return self.db.execute(query, args).fetchall()


def _lucene_idf(frequency: int, count: int) -> float:
    """The IDF bm25s's default (Lucene) variant gives a term found in ``frequency`` of ``count`` passages."""
    return math.log(1 + (count - frequency + 0.5) / (frequency + 0.5))


class EmbeddedStore:
    """A loaded version of the embedded store."""

    def __init__(self, index_dir: Path, previous: EmbeddedStore | None = None):
        """Load the live version of ``index_dir``. Segments it shares with ``previous`` (an earlier version of the
        same index, still loaded: after an upload, every segment but the new one) are taken over from it instead
        of being read again: at a million passages that is gigabytes of vector indexes and codes."""
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
            self.ann = AnnSettings(**manifest["ann"])
            entries = manifest["segments"]
            kept = ([None] * len(entries) if previous is None or previous.index_dir != index_dir
                    else previous._shared(live, entries))
            # Started first: the read-ahead runs while the vector indexes load.
            read_ahead([path for entry, old in zip(entries, kept, strict=True) if old is None
                        for path in _read_often(live / entry["path"])])
            self.segments: list[_Segment] = [
                _Segment(live / entry["path"], entry, self.ann) if old is None else old.reused(entry)
                for entry, old in zip(entries, kept, strict=True)]
        except Exception as exc:  # any damage to the files means the same thing to the user
            raise RagError(f"索引已损坏：{index_dir}（{exc}）。{REBUILD_HINT}") from exc
        base = self.segments[0]
        # The base segment's indexes (older callers and tests read the vector dimension from here).
        self.dense, self.dense_kind, self.units = base.dense, base.dense_kind, base.units
        self.documents: dict[str, StoredDocument] = {}
        self._spans: dict[str, tuple[int, int]] = {}
        for segment in self.segments:
            self.documents.update(segment.documents)
            self._spans.update({s: (first + segment.offset, stop + segment.offset)
                                for s, (first, stop) in segment.live_spans.items()})
        self._spans = dict(sorted(self._spans.items(), key=lambda item: item[1]))
        self._offsets = np.asarray([s.offset for s in self.segments], dtype=np.int64)
        self._count = sum(s.live_count for s in self.segments)
        self._id_limit = self.segments[-1].offset + self.segments[-1].count
        self._lock = threading.Lock()
        self._chunk_cache: OrderedDict[int, StoredChunk] = OrderedDict()
        problem = self._inconsistency(entries)
        if problem:
            raise RagError(f"索引文件不一致：{index_dir}（{problem}）。{REBUILD_HINT}")
        self._idf: dict[str, float] = {}
        self._bm25_cache: OrderedDict[tuple[str, ...], np.ndarray] = OrderedDict()

    def _shared(self, folder: Path, entries: list[dict]) -> list[_Segment | None]:
        """For each segment ``entries`` list in the version ``folder``: this loaded version's segment with the
        same id offset and the same files (hard-linked), or None."""
        loaded = {(segment.offset, segment.identity): segment for segment in self.segments}
        return [loaded.get((int(entry.get("offset", -1)), segment_identity(folder / str(entry.get("path", "")))))
                if isinstance(entry, dict) else None for entry in entries]

    def lends_to_live(self) -> bool:
        """Whether the version now live in this store's folder shares a segment with this loaded one (then
        loading it with ``previous=self`` takes that segment over instead of reading it again)."""
        live = resolve_live(self.index_dir)
        manifest = manifest_of(live)
        if live is None or manifest is None or not isinstance(manifest.get("segments"), list):
            return False
        return any(segment is not None for segment in self._shared(live, manifest["segments"]))

    def _inconsistency(self, entries: list[dict]) -> str | None:
        """What does not fit together between the files of this version (None when all agree)."""
        if self.manifest.get("chunks") != self._count:
            return "passages / dense vectors / manifest counts differ"
        if entries[0]["path"] != BASE or entries[0]["offset"] != 0:
            return "the base segment is missing"
        stored = 0
        for segment, entry in zip(self.segments, entries, strict=True):
            if segment.offset < stored:
                return "segments overlap"
            stored = segment.offset + segment.count
            problem = segment.inconsistency(entry)
            if problem:
                return problem
        if sum(len(s.live_spans) for s in self.segments) != len(self.documents):
            return "a report is stored in two segments"
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
        return AliasTable({(native, latin) for s in self.segments for native, latin in s.alias_pairs})

    def _segment_of(self, chunk_id: int) -> tuple[_Segment, int]:
        """The segment holding a global passage id, and the id inside it."""
        segment = self.segments[int(np.searchsorted(self._offsets, chunk_id, side="right")) - 1]
        local = chunk_id - segment.offset
        if local >= segment.count or (segment.live is not None and not segment.live[local]):
            raise IndexError(f"no passage {chunk_id}")
        return segment, local

    def _split(self, ids: np.ndarray) -> Iterable[tuple[_Segment, np.ndarray, np.ndarray]]:
        """Sorted global ids, per segment: (segment, positions in ``ids``, local ids)."""
        bounds = np.searchsorted(ids, [s.offset for s in self.segments] + [self._id_limit])
        for number, segment in enumerate(self.segments):
            positions = np.arange(bounds[number], bounds[number + 1])
            if len(positions):
                yield segment, positions, ids[positions] - segment.offset

    @cached_property
    def _folded(self) -> list[str]:
        # Only a small index reads every text (exact substring IDF); see ``idf``.
        texts: list[str] = []
        for segment in self.segments:
            for first, stop in sorted(segment.live_spans.values()):
                rows = segment.rows("SELECT table_header, text FROM chunks WHERE id >= ? AND id < ? ORDER BY id",
                                    (first, stop))
                texts.extend(fold(header + text).replace(" ", "") for header, text in rows)
        return texts

    def chunk(self, chunk_id: int) -> StoredChunk:
        """One passage by id (read from SQLite on first use, then cached)."""
        chunk_id = int(chunk_id)
        with self._lock:
            cached = self._chunk_cache.get(chunk_id)
            if cached is not None:
                self._chunk_cache.move_to_end(chunk_id)
                return cached
        segment, local = self._segment_of(chunk_id)
        row = segment.row(f"SELECT {_CHUNK_COLUMNS} FROM chunks WHERE id = ?", (local,))
        if row is None:
            raise IndexError(f"no passage {chunk_id}")
        return self._remember(_global(row, segment.offset))

    def _remember(self, chunk: StoredChunk) -> StoredChunk:
        with self._lock:
            self._chunk_cache[chunk.id] = chunk
            while len(self._chunk_cache) > CHUNK_CACHE_SIZE:
                self._chunk_cache.popitem(last=False)
        return chunk

    def chunk_by_citation(self, citation: str) -> StoredChunk | None:
        """The passage with this citation ID, if any."""
        for segment in reversed(self.segments):  # newest first: a report lives in one segment only
            row = segment.row(f"SELECT {_CHUNK_COLUMNS} FROM chunks WHERE citation = ?", (citation,))
            if row is not None and row[2] in segment.live_spans:
                return self._remember(_global(row, segment.offset))
        return None

    def chunks_of(self, source: str) -> list[StoredChunk]:
        """Every passage of one report, in reading order."""
        for segment in self.segments:
            if source in segment.live_spans:
                first, stop = segment.live_spans[source]
                rows = segment.rows(f"SELECT {_CHUNK_COLUMNS} FROM chunks WHERE id >= ? AND id < ? ORDER BY id",
                                    (first, stop))
                return [_global(row, segment.offset) for row in rows]
        return []

    def allowed_ids(self, sources: Sequence[str]) -> np.ndarray:
        """Ids of the passages of ``sources`` (each report's ids are one consecutive range)."""
        spans = sorted(self._spans[s] for s in dict.fromkeys(sources) if s in self._spans)
        if not spans:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(first, stop, dtype=np.int64) for first, stop in spans])

    def dense_top_k(self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None) -> Scored:
        """Inner-product top-k: exact through FAISS (an ID selector applies the report filter), or
        approximate and re-scored exactly on a large segment (a filter over few passages is exact)."""
        if len(self.segments) == 1:
            return self.segments[0].dense_top_k(vector, k, allowed)
        if allowed is None:
            parts = [(s, s.dense_top_k(vector, k, None)) for s in self.segments]
        else:
            parts = [(s, s.dense_top_k(vector, k, local)) for s, _, local in self._split(np.asarray(allowed))]
        return _merged(parts, k)

    def dense_scores(self, vector: np.ndarray, ids: Sequence[int]) -> np.ndarray:
        """Cosine of ``vector`` with the passages ``ids``, computed by FAISS as its search does."""
        wanted = np.asarray(ids, dtype=np.int64)
        if len(self.segments) == 1:
            return self.segments[0].dense_scores(vector, wanted)
        order = np.argsort(wanted, kind="stable")
        out = np.zeros(len(wanted), dtype=np.float32)
        for segment, positions, local in self._split(wanted[order]):
            out[order[positions]] = segment.dense_scores(vector, local)
        return out

    def unit_top_k(self, vector: np.ndarray, k: int) -> Scored:
        """Top-k sentence/row units as (owning chunk id, score), best first."""
        if len(self.segments) == 1:
            return self.segments[0].unit_top_k(vector, k)
        return _merged([(s, s.unit_top_k(vector, k)) for s in self.segments], k)

    def unit_vectors(self, chunk_id: int) -> np.ndarray | None:
        """The unit vectors of one chunk (None when the index has none)."""
        segment, local = self._segment_of(int(chunk_id))
        return segment.unit_vectors(local)

    def _bm25_all(self, tokens: Sequence[str]) -> np.ndarray:
        # bm25s scores every passage in one vectorised pass; the top-k call and the candidates' scores
        # of one question share that pass.
        key = tuple(tokens)
        with self._lock:
            if key in self._bm25_cache:
                self._bm25_cache.move_to_end(key)
                return self._bm25_cache[key]
        if not tokens:
            scores = np.zeros(self._id_limit, dtype=np.float32)
        elif len(self.segments) == 1 and self.segments[0].live is None:
            scores = np.asarray(self.segments[0].lexical.get_scores(list(tokens)), dtype=np.float32)
        else:
            stored = sum(s.count for s in self.segments)  # deleted passages still count until a rewrite
            idf_of_index = {t: _lucene_idf(sum(s.document_frequency(t) for s in self.segments), stored)
                            for t in set(tokens)}
            scores = np.zeros(self._id_limit, dtype=np.float32)
            for segment in self.segments:
                part = segment.bm25_weighted(tokens, idf_of_index)
                if segment.live is not None:
                    part[~segment.live] = 0
                scores[segment.offset:segment.offset + segment.count] = part
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
                frequency = sum(s.document_frequency(term) for s in self.segments)
            self._idf[term] = float(np.log((self._count + 1) / (frequency + 0.5)))
        return self._idf[term]


def _rows_beside(folder: Path, name: str, index, rescoring: dict) -> tuple[ExactRows, ExactRows | CodeRows]:
    """The exact rows beside the approximate index ``name`` of a segment, and what its candidates are re-scored
    with, as the segment's manifest entry records (``rescoring``; absent: the exact rows)."""
    exact = open_exact(folder / f"{name}.npy")
    return exact, open_rescorer(rescoring.get(name, RESCORE_EXACT), index, exact, folder / f"{name}.codes.faiss")


def segment_identity(folder: Path) -> tuple:
    """What tells a segment's files apart from any other's: the inode, size and modification time of its
    passages and its vector index (a segment kept into a newer version is hard-linked, so these stay)."""
    identity = []
    for name in ("meta.sqlite", "dense.faiss"):
        try:
            info = (folder / name).stat()
        except OSError:
            return (folder, None)  # unreadable: never equal to a loaded segment's
        identity.append((name, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(identity)


def _read_often(folder: Path) -> list[Path]:
    """A segment's files every question reads at random places: its passages and its BM25 postings (the
    vector indexes are read into memory at load)."""
    return [folder / "meta.sqlite", *sorted((folder / "bm25").glob("*.npy"))]


def read_ahead(paths: list[Path], memory_share: float = 0.25) -> threading.Thread | None:
    """Read ``paths`` once from a background thread, so the kernel keeps them in its page cache, when together
    they take at most ``memory_share`` of the available memory.

    A search reads a hundred or so passages and a few posting lists at random places; on a freshly started
    machine each is a disk read (a million passages: about 20 ms of every question for a long while). Read
    ahead in one sequential sweep, they are in memory seconds after the store opens (``posix_fadvise``
    WILLNEED alone brought in only part of them). The thread is returned so tests can wait for it."""
    try:
        total = sum(path.stat().st_size for path in paths)
        available = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                         if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None
    if not total or total > memory_share * available:
        return None

    def sweep() -> None:
        buffer = bytearray(4 << 20)
        for path in paths:
            try:
                with open(path, "rb", buffering=0) as handle:
                    while handle.readinto(buffer):
                        pass
            except OSError:
                continue  # a file replaced meanwhile: nothing to warm

    thread = threading.Thread(target=sweep, name="rag-read-ahead", daemon=True)
    thread.start()
    return thread


def _global(row: tuple, offset: int) -> StoredChunk:
    chunk = StoredChunk(*row)
    chunk.id += offset
    return chunk


def _ordered(ids: np.ndarray, scores: np.ndarray) -> Scored:
    """Valid ids sorted by score, best first, ties by id (as a stable sort of the whole array would)."""
    valid = ids >= 0
    ids, scores = ids[valid].astype(np.int64), scores[valid]
    order = np.lexsort((ids, -scores))
    return Scored(ids[order], scores[order])


def _merged(parts: list[tuple[_Segment, Scored]], k: int) -> Scored:
    """The best ``k`` of several segments' local results, as global ids, best first, ties by id."""
    ids = np.concatenate([part.ids + segment.offset for segment, part in parts] or [np.zeros(0, np.int64)])
    scores = np.concatenate([part.scores for _, part in parts] or [np.zeros(0, np.float32)])
    order = np.lexsort((ids, -scores))[:k]
    return Scored(ids[order].astype(np.int64), scores[order])


# -- writing ----------------------------------------------------------------------------------------------------

def report_fingerprint(report: ReportRecords) -> str:
    """SHA-256 of what is stored for a report besides its vectors (which follow from the texts and the
    model): the document, its description, its passages with their locations and the unit layout."""
    d = report.document
    payload = json.dumps([d.source, d.sha256, asdict(d.info), d.duplicates, d.line_starts,
                          [(citation, c.source, c.start, c.end, c.text, c.heading, c.table_header, c.kind, start, end,
                            page) for citation, c, start, end, page in report.chunks],
                          report.unit_vectors is None, list(map(int, report.unit_owner)), list(report.vectors.shape)],
                         ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass
class _Previous:
    """The live version a commit builds on: its folder, manifest and which segment holds each report."""

    folder: Path
    manifest: dict
    entries: list[dict]
    holder: dict[str, int] = field(default_factory=dict)  # live report → segment number
    fingerprints: dict[str, str] = field(default_factory=dict)
    spans: list[dict[str, tuple[int, int]]] = field(default_factory=list)  # per segment, every report


class _VectorSpool:
    """Vectors handed to a write session, kept in files of a hidden folder in the index instead of in
    memory. The files are memory-mapped in extents of at least ``EXTENT`` bytes (one mapping, one file
    descriptor per extent, not per report); ``keep`` copies an array in and returns a read-only view."""

    EXTENT = 1 << 30

    def __init__(self, index_dir: Path):
        self.index_dir = index_dir
        self.folder: Path | None = None
        self._extents: list[mmap.mmap] = []
        self._used = 0
        self._finalizer: Any = None

    def keep(self, vectors: np.ndarray | None) -> np.ndarray | None:
        """``vectors`` as float32, backed by the spool (empty and missing arrays are returned as they are)."""
        if vectors is None or not len(vectors):
            return vectors
        array = np.asarray(vectors, dtype=np.float32)
        if not self._extents or self._used + array.nbytes > len(self._extents[-1]):
            self._new_extent(max(self.EXTENT, array.nbytes))
        view: np.ndarray = np.ndarray(array.shape, dtype=np.float32, buffer=self._extents[-1], offset=self._used)
        view[...] = array
        view.flags.writeable = False
        self._used += -(-array.nbytes // 64) * 64  # the next array starts aligned
        return view

    def _new_extent(self, size: int) -> None:
        if self.folder is None:
            self.index_dir.mkdir(parents=True, exist_ok=True)
            self.folder = self.index_dir / f"{SPOOL_PREFIX}{os.getpid()}-{time.time_ns()}"
            self.folder.mkdir()
            # Also removed when the session is dropped without committing.
            self._finalizer = weakref.finalize(self, shutil.rmtree, self.folder, True)
        descriptor = os.open(self.folder / f"{len(self._extents)}.f32", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(descriptor, size)  # sparse: only what is written takes disk space
            self._extents.append(mmap.mmap(descriptor, size))
        finally:
            os.close(descriptor)
        self._used = 0

    def close(self) -> None:
        """Remove the spool files; views already handed out stay readable until they are dropped (the
        mappings outlive the names)."""
        if self._finalizer is not None:
            self._finalizer()
        self._extents, self._finalizer, self.folder = [], None, None


class EmbeddedWriter:
    """A write session: reports are collected, ``commit`` publishes a new version.

    By default the session describes the whole new state (reports not added are gone), as a build
    does; with ``update=True`` it starts from the live index and ``add_report``/``remove_report``
    change single reports (the rest stays). Either way a large index is not rewritten: see the module
    docstring. ``reuse=False`` rewrites everything (a damaged index must not lend its files).
    ``ann`` decides which vector indexes are exact and which approximate (default: ``rag/data/scale.json``).
    """

    def __init__(self, index_dir: Path, dimension: int, tokenizer: Tokenizer, ann: AnnSettings | None = None,
                 update: bool = False, reuse: bool = True, log: Callable[[str], None] = lambda message: None):
        self.index_dir = index_dir
        self.log = log
        self.dimension = dimension
        self.tokenizer = tokenizer
        self.ann = ann or default_settings()
        self.update = update
        self.reuse = reuse
        self.reports: dict[str, ReportRecords] = {}
        self.removed: set[str] = set()
        self.spool = _VectorSpool(index_dir)
        self.last_commit: dict[str, Any] = {}  # what the last commit did (for logs and benchmarks)

    def add_report(self, report: ReportRecords) -> None:
        """Add or replace one report (its vectors go to the session's spool file, not memory)."""
        vectors = self.spool.keep(report.vectors)
        assert vectors is not None
        self.reports[report.document.source] = replace(report, vectors=vectors,
                                                       unit_vectors=self.spool.keep(report.unit_vectors))
        self.removed.discard(report.document.source)

    def remove_report(self, source: str) -> None:
        """Remove one report from the version being written."""
        self.reports.pop(source, None)
        self.removed.add(source)

    def commit(self, manifest: dict) -> None:
        """Write the changed files of a new version into a hidden folder, then publish it atomically; the
        session's spool is removed either way."""
        try:
            self._commit(manifest)
        finally:
            self.spool.close()

    def _commit(self, manifest: dict) -> None:
        previous = self._previous(manifest) if self.reuse else None
        if previous is None:
            if self.update and resolve_live(self.index_dir) is not None:
                # A session on an index whose files cannot be reused: nothing to build on but its records.
                raise RagError(f"索引无法增量更新：{self.index_dir}。{REBUILD_HINT}")
            return self._publish_whole(manifest, [self.reports[s] for s in sorted(self.reports)])
        if self.update:
            new = [self.reports[s] for s in sorted(self.reports)]
            gone = {s for s in self.removed | set(self.reports) if s in previous.holder}
        else:
            new = [self.reports[s] for s in sorted(self.reports)
                   if previous.fingerprints.get(s) != report_fingerprint(self.reports[s])]
            gone = {s for s in previous.holder if s not in self.reports} | {r.document.source for r in new
                                                                            if r.document.source in previous.holder}
        entries = [dict(e, deleted=sorted(set(e.get("deleted", [])) | {s for s in gone if previous.holder[s] == n}))
                   for n, e in enumerate(previous.entries)]
        new_passages = sum(len(r.chunks) for r in new)
        stored = sum(e["chunks"] for e in entries) + new_passages
        live = stored - sum(_deleted_passages(e, previous.spans[n]) for n, e in enumerate(entries))
        outside_base = stored - entries[0]["chunks"] + _deleted_passages(entries[0], previous.spans[0])
        if live < self.ann.rewrite_below or outside_base > self.ann.merge_share * stored:
            return self._publish_whole(manifest, self._all_reports(previous, entries, new))
        small = entries[1:]
        if len(small) + bool(new) > self.ann.max_segments:
            # Merge the small segments (and the new reports) into one: only they are rewritten.
            kept = self._live_reports(previous, entries, range(1, len(entries)))
            new = sorted(kept + new, key=lambda r: r.document.source)
            entries = entries[:1]
        self._publish_segments(manifest, previous, entries, new)

    # -- planning -----------------------------------------------------------------------------------------------

    def _previous(self, manifest: dict) -> _Previous | None:
        """The live version when its segments can be kept (same format, model, chunker, tokenizer and
        vector index settings; every file present with its recorded size), else None."""
        folder = resolve_live(self.index_dir)
        old = manifest_of(folder)
        if folder is None or old is None or old.get("format") != FORMAT_VERSION:
            return None
        if any(old.get(key) != manifest.get(key) for key in _COMPATIBLE_KEYS if key in manifest):
            return None
        if old.get("dimension", self.dimension) != self.dimension or not self.ann.same_indexes(old.get("ann", {})):
            return None
        if not isinstance(old.get("segments"), list) or file_problems(folder, old.get("files"), hashes=False):
            return None
        previous = _Previous(folder, old, [dict(e) for e in old["segments"]])
        try:
            for number, entry in enumerate(previous.entries):
                db = sqlite3.connect(f"file:{folder / entry['path'] / 'meta.sqlite'}?mode=ro", uri=True)
                try:
                    rows = db.execute("SELECT source, first, stop, fingerprint FROM spans").fetchall()
                finally:
                    db.close()
                deleted = set(entry.get("deleted", []))
                previous.spans.append({source: (first, stop) for source, first, stop, _ in rows})
                for source, _, _, fingerprint in rows:
                    if source not in deleted:
                        previous.holder[source] = number
                        previous.fingerprints[source] = fingerprint
        except (sqlite3.Error, KeyError, TypeError):
            return None
        return previous

    def _all_reports(self, previous: _Previous, entries: list[dict], new: list[ReportRecords]) -> list[ReportRecords]:
        """Every report of the new state, for a whole rewrite."""
        if not self.update:
            return [self.reports[s] for s in sorted(self.reports)]
        kept = self._live_reports(previous, entries, range(len(entries)))
        return sorted(kept + new, key=lambda r: r.document.source)

    def _live_reports(self, previous: _Previous, entries: list[dict], numbers: Iterable[int]) -> list[ReportRecords]:
        """The reports still live in the segments ``numbers`` of the previous version, read back."""
        reports: list[ReportRecords] = []
        for number in numbers:
            entry = entries[number]
            deleted = set(entry.get("deleted", []))
            sources = [s for s in previous.spans[number] if s not in deleted]
            if not sources:
                continue
            segment = _Segment(previous.folder / entry["path"], entry, self.ann)
            try:
                reports.extend(_read_report(segment, source) for source in sorted(sources))
            finally:
                segment.db.close()
        return reports

    # -- writing ------------------------------------------------------------------------------------------------

    def _publish_whole(self, manifest: dict, reports: list[ReportRecords]) -> None:
        """Write every report into a new version with one (base) segment."""
        self.index_dir.mkdir(parents=True, exist_ok=True)
        version = new_version_name()
        build_dir = self.index_dir / f".build-{version}"
        build_dir.mkdir()
        try:
            entry = self._write_segment(build_dir, BASE, 0, reports)
            self._finish(build_dir, version, manifest, [entry], file_checksums(build_dir))
        except BaseException:
            shutil.rmtree(build_dir, ignore_errors=True)
            raise
        self.last_commit = {"kind": "rewrite", "written_passages": entry["chunks"], "segments": 1}

    def _publish_segments(self, manifest: dict, previous: _Previous, entries: list[dict],
                          new: list[ReportRecords]) -> None:
        """Link the kept segments' files into a new version, write the new reports as one more segment."""
        version = new_version_name()
        build_dir = self.index_dir / f".build-{version}"
        build_dir.mkdir()
        try:
            files = {}
            old_files = previous.manifest["files"]
            for entry in entries:
                prefix = "" if entry["path"] == BASE else entry["path"] + "/"
                for relative, checksum in old_files.items():
                    top = relative.split("/", 1)[0]
                    inside = (not top.startswith("s-")) if entry["path"] == BASE else relative.startswith(prefix)
                    if inside:
                        _link(previous.folder / relative, build_dir / relative)
                        files[relative] = checksum  # immutable: the recorded checksum still holds
            if new:
                offset = max(e["offset"] + e["chunks"] for e in entries)
                path = f"s-{version[2:]}"
                entries = entries + [self._write_segment(build_dir / path, path, offset, new)]
                files.update({f"{path}/{k}": v for k, v in file_checksums(build_dir / path).items()})
            self._finish(build_dir, version, manifest, entries, files)
        except BaseException:
            shutil.rmtree(build_dir, ignore_errors=True)
            raise
        self.last_commit = {"kind": "segment", "written_passages": sum(len(r.chunks) for r in new),
                            "segments": len(entries)}

    def _finish(self, build_dir: Path, version: str, manifest: dict, entries: list[dict], files: dict) -> None:
        live = 0
        for entry in entries:
            spans = _spans_of(build_dir / entry["path"]) if entry.get("deleted") else {}
            live += entry["chunks"] - sum(stop - first for s, (first, stop) in spans.items() if s in entry["deleted"])
        write_manifest(build_dir, {**manifest, "format": FORMAT_VERSION, "chunks": live,
                                   "indexes": entries[0]["indexes"], "ann": self.ann.as_dict(),
                                   "segments": entries, "files": files})
        publish(self.index_dir, build_dir, version)

    def _write_segment(self, folder: Path, path: str, offset: int, reports: list[ReportRecords]) -> dict:
        """Write one segment's files for ``reports`` (sorted by source) and return its manifest entry."""
        import bm25s

        folder.mkdir(parents=True, exist_ok=True)
        stored, unit_owner = self._assemble(reports)
        kinds = {"dense": self._write_vectors(folder, "dense", [r.vectors for r in reports], True, "passage")}
        if any(r.unit_vectors is not None for r in reports):
            unit_parts = [r.unit_vectors for r in reports if r.unit_vectors is not None]
            kinds["units"] = self._write_vectors(folder, "units", unit_parts, False, "sentence/table-row")
            np.save(folder / "unit_owner.npy", np.asarray(unit_owner, dtype=np.int64))
        for name, kind in (("dense.npy", kinds["dense"]), ("units.npy", kinds.get("units", FLAT))):
            if kind == FLAT:  # a flat index holds the exact vectors itself
                (folder / name).unlink(missing_ok=True)
        lexical = bm25s.BM25()
        lexical.index([self.tokenizer.tokens(lexical_text(c)) or ["\x00"] for c in stored], show_progress=False)
        lexical.save(str(folder / "bm25"))
        del lexical
        aliases = sorted(AliasTable.mine(c.text for c in stored).pairs)
        (folder / "aliases.json").write_text(json.dumps(aliases, ensure_ascii=False), encoding="utf-8")
        self._write_meta(folder / "meta.sqlite", reports, stored)
        rescoring = {name: self.ann.rescoring(count, kinds[name])
                     for name, count in (("dense", len(stored)), ("units", len(unit_owner))) if name in kinds}
        entry = {"path": path, "offset": offset, "chunks": len(stored), "units": len(unit_owner), "indexes": kinds,
                 "deleted": []}
        if any(way not in ("", RESCORE_EXACT) for way in rescoring.values()):
            entry["rescore"] = rescoring
        return entry

    def _write_vectors(self, folder: Path, name: str, parts: list[np.ndarray], with_ids: bool, what: str) -> str:
        """Write ``<name>.npy`` (the exact vectors of ``parts``), ``<name>.faiss`` and, when the settings ask for
        them, ``<name>.codes.faiss`` (re-scoring codes); return the index kind. The index and the codes are
        freed on return, before the next index is built."""
        import faiss

        vectors = self._stacked(folder / f"{name}.npy", parts)
        index, kind = build_index(vectors, self.ann, with_ids=with_ids, progress=self._progress(what))
        faiss.write_index(index, str(folder / f"{name}.faiss"))
        del index
        codes = build_rescore_codes(vectors, self.ann, kind, self._progress(f"{what} re-scoring codes"))
        if codes is not None:
            faiss.write_index(codes, str(folder / f"{name}.codes.faiss"))
        return kind

    def _progress(self, what: str) -> Callable[[int, int], None]:
        """A progress callback for filling an approximate vector index (minutes at millions of vectors): it
        logs about every tenth of the way."""
        said = [-1]

        def report(done: int, total: int) -> None:
            tenth = done * 10 // max(1, total)
            if tenth != said[0]:
                said[0] = tenth
                self.log(f"向量索引 / {what} vector index: {done:,}/{total:,}")

        return report

    def _assemble(self, reports: list[ReportRecords]) -> tuple[list[StoredChunk], list[int]]:
        """The segment's passages (ids from 0, in report order) and each unit's owning passage."""
        stored: list[StoredChunk] = []
        unit_owner: list[int] = []
        for report in reports:
            first = len(stored)
            for citation, chunk, line_start, line_end, page in report.chunks:
                stored.append(StoredChunk(len(stored), citation, chunk.source, chunk.start, chunk.end, chunk.text,
                                          chunk.heading, chunk.table_header, chunk.kind, line_start, line_end,
                                          page))
            if report.unit_vectors is not None:
                unit_owner.extend(first + owner for owner in report.unit_owner)
        return stored, unit_owner

    def _stacked(self, path: Path, parts: list[np.ndarray]) -> np.ndarray:
        """The reports' vectors as one float32 array, written straight into a memory-mapped ``.npy`` file
        (no second in-memory copy of a large index's vectors; the file is kept beside an approximate index)."""
        from numpy.lib.format import open_memmap

        rows = sum(len(part) for part in parts)
        stacked = open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, self.dimension))
        first = 0
        for part in parts:
            stacked[first:first + len(part)] = part
            first += len(part)
        stacked.flush()
        return stacked

    def _write_meta(self, path: Path, reports: list[ReportRecords], chunks: list[StoredChunk]) -> None:
        db = sqlite3.connect(path)
        db.executescript("""
            CREATE TABLE documents (source TEXT PRIMARY KEY, sha256 TEXT, text TEXT, info TEXT,
                                    duplicates TEXT, line_starts TEXT, boilerplate TEXT);
            CREATE TABLE chunks (id INTEGER PRIMARY KEY, citation TEXT UNIQUE, source TEXT, start INTEGER,
                                 "end" INTEGER, text TEXT, heading TEXT, table_header TEXT, kind TEXT,
                                 line_start INTEGER, line_end INTEGER, page INTEGER);
            CREATE TABLE spans (source TEXT PRIMARY KEY, first INTEGER, stop INTEGER, fingerprint TEXT);
        """)
        documents = [r.document for r in reports]
        db.executemany("INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?, ?)", [
            (d.source, d.sha256, d.text, json.dumps(asdict(d.info), ensure_ascii=False),
             json.dumps(d.duplicates), json.dumps(d.line_starts), json.dumps(d.boilerplate)) for d in documents])
        db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       [tuple(asdict(c).values()) for c in chunks])
        first = 0
        spans = []
        for report in reports:  # every report has a span, an empty one too (it is tracked like the others)
            stop = first + len(report.chunks)
            spans.append((report.document.source, first, stop, report_fingerprint(report)))
            first = stop
        db.executemany("INSERT INTO spans VALUES (?, ?, ?, ?)", spans)
        db.commit()
        db.close()


def _spans_of(folder: Path) -> dict[str, tuple[int, int]]:
    db = sqlite3.connect(f"file:{folder / 'meta.sqlite'}?mode=ro", uri=True)
    try:
        return {source: (first, stop) for source, first, stop in db.execute("SELECT source, first, stop FROM spans")}
    finally:
        db.close()


def _deleted_passages(entry: dict, spans: dict[str, tuple[int, int]]) -> int:
    return sum(stop - first for source, (first, stop) in spans.items() if source in set(entry.get("deleted", [])))


def _link(source: Path, target: Path) -> None:
    """Put an immutable file of the previous version into the new one: a hard link (no copy), or a copy
    where the file system has none."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _document(row: tuple) -> StoredDocument:
    """A report from its row in the documents table."""
    source, sha, text, info, dups, line_starts, boilerplate = row
    return StoredDocument(source, sha, text, ReportInfo(**json.loads(info)), json.loads(dups),
                          json.loads(line_starts), [tuple(span) for span in json.loads(boilerplate)])


def _read_report(segment: _Segment, source: str) -> ReportRecords:
    """One stored report with its vectors, as a build hands it to the writer (for merges)."""
    first, stop = segment.spans[source]
    doc = segment.row("SELECT * FROM documents WHERE source = ?", (source,))
    assert doc is not None
    document = _document(doc)
    rows = segment.rows(f"SELECT {_CHUNK_COLUMNS} FROM chunks WHERE id >= ? AND id < ? ORDER BY id", (first, stop))
    chunks = [StoredChunk(*row) for row in rows]
    located = [(c.citation, Chunk(c.source, c.start, c.end, c.text, c.heading, c.table_header, c.kind),
                c.line_start, c.line_end, c.page) for c in chunks]
    units = owners = None
    if segment.units is not None and segment.unit_owner is not None:
        low, high = (int(i) for i in np.searchsorted(segment.unit_owner, [first, stop]))
        if segment.units_exact is not None:
            units = segment.units_exact.mapped(low, high)
        elif high > low:
            units = segment.units.reconstruct_n(low, high - low)
        else:
            units = np.zeros((0, segment.units.d), dtype=np.float32)
        owners = (segment.unit_owner[low:high] - first).tolist()
    return ReportRecords(document, located, segment.passage_vectors(first, stop), units, owners or [])


__all__ = ["EmbeddedStore", "EmbeddedWriter", "FORMAT_VERSION", "MANIFEST", "report_fingerprint"]
