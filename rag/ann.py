"""Vector indexes for the embedded store: exact search for small corpora, IVF + 8-bit scalar quantisation
above, IVF + product quantisation for the largest.

A flat (exact) inner-product index answers a small corpus in microseconds and gives the exact
scores retrieval was tuned on, so it is kept below a size threshold. Above it, an inverted-file
index over 8-bit quantised vectors (``IndexIVFScalarQuantizer``) scans only ``nprobe`` of its
``nlist`` lists per question; the exact float32 vectors stay on disk beside it (memory-mapped) and
re-score every hit, so the scores handed to retrieval are exact cosines even when the candidate
list is approximate. A report filter over few passages skips the approximate index altogether and
scores the allowed passages exactly.

Scalar quantisation keeps one byte per dimension (768 bytes a vector): a million passages' sentence
and table-row units (about seven million vectors) would need 5.4 GB of codes in every search
process. Above ``pq_above`` vectors the inverted file holds product-quantisation codes instead
(``pq_bytes`` bytes a vector, ``IndexIVFPQ``); their scores are coarser, so the search takes
``pq_rescore_factor`` times as many candidates and the exact re-scoring picks the best of them.

Re-scoring reads a few hundred exact rows per question from disk. At a million passages the exact
unit vectors (~21 GB) outgrow the page cache, and those scattered reads cost more than the rest of a
search. An approximate index of at least ``codes_rescore_above`` vectors therefore re-scores from
codes held in memory instead: an IVF-SQ8 index from its own 8-bit codes (found by id through a direct
map), an IVF-PQ index from a separate ``rescore_bits``-bit scalar-quantised copy written beside it.
Those scores are approximate (about 1e-3 off); the exact rows stay on disk for merges and for a
passage's own unit vectors.

The threshold and the IVF parameters live in ``rag/data/scale.json`` with their provenance (the
benchmark run that measured recall and latency: ``python benchmarks/scale.py``), not in code.
"""

from __future__ import annotations

import json
import math
import os
import weakref
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields, replace
from functools import cached_property, lru_cache
from importlib import resources
from typing import Any

import numpy as np

FLAT = "flat"
IVF_SQ8 = "ivf_sq8"
IVF_PQ = "ivf_pq"

# How an approximate index's candidates are re-scored (a segment's manifest entry records it; absent: exact).
RESCORE_EXACT = "exact"  # float32 rows read from disk (ExactRows)
RESCORE_OWN_CODES = "own_codes"  # the IVF-SQ8 index's own codes, found by id through its direct map
RESCORE_SQ = "sq"  # a separate scalar-quantised copy (``<name>.codes.faiss``), beside an IVF-PQ index


@dataclass(frozen=True)
class AnnSettings:
    """When and how a vector index becomes approximate (see ``rag/data/scale.json``)."""

    exact_below: int  # vectors: an index with fewer is exact (flat)
    lists_per_sqrt: float  # nlist = lists_per_sqrt × √n, clamped to [min_lists, max_lists]
    min_lists: int
    max_lists: int
    train_per_list: int  # k-means training sample: this many vectors per list
    nprobe: int  # lists scanned per question
    exact_filter_below: int  # a report filter allowing fewer passages than this is scored exactly
    idf_exact_below: int  # passages: below, IDF counts substring matches in every text; above, BM25 df
    rewrite_below: int  # passages: an index smaller than this is rewritten whole on every commit (no segments)
    max_segments: int  # more small segments than this beside the base are merged into one
    merge_share: float  # small segments plus deleted passages above this share of all stored: rewrite whole
    # Product quantisation; the defaults describe indexes written before it existed (never PQ).
    pq_above: int = 2**62  # vectors: an approximate index with at least this many holds PQ codes, not SQ8
    pq_bytes: int = 96  # bytes per PQ code (sub-quantisers of 8 bits; must divide the dimension)
    pq_rescore_factor: int = 4  # a PQ search takes this many times k candidates for exact re-scoring
    # Re-scoring from codes in memory; the defaults describe indexes written before it existed (always exact rows).
    codes_rescore_above: int = 2**62  # vectors: an approximate index with at least this many re-scores from codes
    rescore_bits: int = 6  # bits per dimension of the scalar-quantised copy beside an IVF-PQ index (4, 6 or 8)

    def as_dict(self) -> dict[str, Any]:
        """The settings as recorded in a manifest."""
        return asdict(self)

    def exact(self) -> AnnSettings:
        """The same settings with every index exact (today's behaviour at any size; benchmarks' baseline)."""
        big = 2**62
        return replace(self, exact_below=big, idf_exact_below=big)

    def same_indexes(self, other: dict) -> bool:
        """Whether an index written with the settings ``other`` (a manifest's) has the vector indexes and
        IDF these settings would give it (the segment policy may differ)."""
        # Not the re-scoring settings: each segment records how it re-scores, so segments written with and
        # without codes work side by side, and a new policy does not force a large index to be rewritten.
        shaping = ("exact_below", "lists_per_sqrt", "min_lists", "max_lists", "train_per_list", "idf_exact_below",
                   "pq_above", "pq_bytes")
        mine, theirs = self.as_dict(), AnnSettings(**other).as_dict() if _complete(other) else other
        return all(theirs.get(key) == mine[key] for key in shaping)

    def rescoring(self, count: int, kind: str) -> str:
        """How an index of ``kind`` over ``count`` vectors re-scores its candidates (``RESCORE_*``)."""
        if kind == FLAT:
            return ""  # a flat index scores exactly itself
        if count < self.codes_rescore_above:
            return RESCORE_EXACT
        return RESCORE_SQ if kind == IVF_PQ else RESCORE_OWN_CODES

    def lists_for(self, count: int) -> int:
        """How many inverted lists an index of ``count`` vectors gets."""
        return int(min(self.max_lists, max(self.min_lists, round(self.lists_per_sqrt * math.sqrt(count)))))


def _complete(recorded: dict) -> bool:
    """Whether ``recorded`` (a manifest's settings) names every setting without a default."""
    required = [f.name for f in fields(AnnSettings) if f.default is MISSING]
    return all(name in recorded for name in required) and set(recorded) <= {f.name for f in fields(AnnSettings)}


@lru_cache(maxsize=1)
def _data() -> dict:
    return json.loads(resources.files("rag.data").joinpath("scale.json").read_text(encoding="utf-8"))


def default_settings() -> AnnSettings:
    """The settings in ``rag/data/scale.json``."""
    return AnnSettings(**_data()["values"])


def provenance() -> dict:
    """Where the values in ``rag/data/scale.json`` come from."""
    return dict(_data()["provenance"])


def build_index(vectors: np.ndarray, settings: AnnSettings, with_ids: bool,
                progress: Callable[[int, int], None] | None = None) -> tuple[Any, str]:
    """An index over ``vectors`` (ids 0..n-1) and its kind: flat below the threshold, IVF-SQ8 above,
    IVF-PQ from ``pq_above``. ``progress(added, total)`` is called as an approximate index fills.

    ``with_ids`` wraps a flat index in ``IndexIDMap2`` (the passage index's format since format 1).
    """
    import faiss

    count, dimension = vectors.shape
    if count < settings.exact_below:
        flat = faiss.IndexFlatIP(dimension)
        if with_ids:
            index = faiss.IndexIDMap2(flat)
            index.add_with_ids(vectors, np.arange(count, dtype=np.int64))
            return index, FLAT
        flat.add(vectors)
        return flat, FLAT
    lists = settings.lists_for(count)
    quantizer = faiss.IndexFlatIP(dimension)
    # faiss's Python wrapper keeps the quantizer alive as long as the IVF index refers to it.
    ivf: Any
    if count >= settings.pq_above:
        kind = IVF_PQ
        ivf = faiss.IndexIVFPQ(quantizer, dimension, lists, settings.pq_bytes, 8, faiss.METRIC_INNER_PRODUCT)
    else:
        kind = IVF_SQ8
        ivf = faiss.IndexIVFScalarQuantizer(quantizer, dimension, lists, faiss.ScalarQuantizer.QT_8bit,
                                            faiss.METRIC_INNER_PRODUCT)
    ivf.train(_training_sample(vectors, lists * settings.train_per_list))
    _fill(ivf, vectors, progress)
    if settings.rescoring(count, kind) == RESCORE_OWN_CODES:
        ivf.make_direct_map()  # re-scoring finds a candidate's codes by id
    return ivf, kind


def build_rescore_codes(vectors: np.ndarray, settings: AnnSettings, kind: str,
                        progress: Callable[[int, int], None] | None = None) -> Any | None:
    """The scalar-quantised copy of ``vectors`` an index of ``kind`` re-scores from, when its settings ask
    for one (``RESCORE_SQ``: an IVF-PQ index of at least ``codes_rescore_above`` vectors), else None."""
    import faiss

    count, dimension = vectors.shape
    if settings.rescoring(count, kind) != RESCORE_SQ:
        return None
    bits = {4: faiss.ScalarQuantizer.QT_4bit, 6: faiss.ScalarQuantizer.QT_6bit, 8: faiss.ScalarQuantizer.QT_8bit}
    codes = faiss.IndexScalarQuantizer(dimension, bits[settings.rescore_bits], faiss.METRIC_INNER_PRODUCT)
    codes.train(_training_sample(vectors, settings.lists_for(count) * settings.train_per_list))
    _fill(codes, vectors, progress)
    return codes


def _training_sample(vectors: np.ndarray, size: int) -> np.ndarray:
    """A fixed random sample of at most ``size`` rows (the same for every build of the same vectors)."""
    count = len(vectors)
    chosen = np.sort(np.random.default_rng(0).choice(count, min(count, size), replace=False))
    return np.ascontiguousarray(vectors[chosen], dtype=np.float32)


def _fill(index: Any, vectors: np.ndarray, progress: Callable[[int, int], None] | None) -> None:
    """Add ``vectors`` in slices (no second full-size copy of a memory-mapped array), reporting progress."""
    count = len(vectors)
    for start in range(0, count, 65536):
        index.add(np.ascontiguousarray(vectors[start:start + 65536], dtype=np.float32))
        if progress is not None:
            progress(min(count, start + 65536), count)


def approximate_search(index: Any, exact: Rows, query: np.ndarray, k: int, nprobe: int,
                       allowed: np.ndarray | None = None, selector: Any = None,
                       rescore_factor: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Ids and re-scored cosines of the approximately best ``k`` vectors of an IVF index (optionally only
    ``allowed`` ids, or those a FAISS ``selector`` lets through); ``exact`` gives the vectors the hits
    are re-scored with (exact rows, or codes held in memory). With ``rescore_factor`` > 1 the index is
    asked for that many times ``k`` candidates and the ``k`` best by re-scored value are kept (best first,
    ties by id)."""
    import faiss

    if allowed is not None:
        selector = faiss.IDSelectorBatch(allowed)
    params = faiss.SearchParametersIVF(nprobe=nprobe, sel=selector)  # type: ignore[call-arg]
    wanted = k * max(1, rescore_factor)
    _, ids = index.search(np.ascontiguousarray(query[None, :], dtype=np.float32), wanted, params=params)
    found = ids[0][ids[0] >= 0]
    scores = exact_scores(exact, query, found)
    if wanted > k:
        best = np.lexsort((found, -scores))[:k]
        found, scores = found[best], scores[best]
    return found, scores


class ExactRows:
    """The exact vectors beside an approximate index (a ``.npy`` file of float32 rows), read with ``pread``.

    Re-scoring reads a few hundred scattered rows per question. Reading them with ``pread`` instead of
    through a memory map keeps those pages in the shared page cache without mapping them into the
    searching process (a map makes every row ever touched count as the process's own memory, and its
    read-ahead pulls in whole neighbourhoods). Bulk reads for merges come memory-mapped (``mapped``), so
    rewriting a large segment never copies its vectors into memory.
    """

    def __init__(self, path):
        from numpy.lib import format as npy

        with open(path, "rb") as handle:
            version = npy.read_magic(handle)
            shape, fortran, dtype = (npy.read_array_header_1_0(handle) if version == (1, 0)
                                     else npy.read_array_header_2_0(handle))
            self.offset = handle.tell()
        if fortran or dtype != np.float32 or len(shape) != 2:
            raise ValueError(f"{path}: not a float32 matrix")
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self._row_bytes = self.shape[1] * 4
        self._descriptor = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._descriptor)

    def __getitem__(self, key: slice | np.ndarray) -> np.ndarray:
        """Rows ``first:stop`` (one read), or the rows of an id array (one read per row, in file order)."""
        if isinstance(key, slice):
            first, stop, _ = key.indices(self.shape[0])
            count = max(0, stop - first)
            data = os.pread(self._descriptor, count * self._row_bytes, self.offset + first * self._row_bytes)
            return np.frombuffer(data, dtype=np.float32).reshape(count, self.shape[1])
        ids = np.asarray(key, dtype=np.int64)
        out = np.empty((len(ids), self.shape[1]), dtype=np.float32)
        for position in np.argsort(ids, kind="stable"):
            row = int(ids[position])
            if not 0 <= row < self.shape[0]:
                raise IndexError(f"row {row} outside {self.shape[0]}")
            out[position] = np.frombuffer(os.pread(self._descriptor, self._row_bytes,
                                                   self.offset + row * self._row_bytes), dtype=np.float32)
        return out

    def mapped(self, first: int, stop: int) -> np.ndarray:
        """Rows ``first:stop`` as a read-only memory map (bulk reads: merges and rewrites)."""
        return self._map[first:stop]

    @cached_property
    def _map(self) -> np.ndarray:
        # One map per file: a merge reads every report of a segment, and a map per report would hold a file
        # descriptor per report. Mapped from the open descriptor, not the path: a segment taken over by a newer
        # version may outlive the version folder it was first opened from.
        with os.fdopen(os.dup(self._descriptor), "rb") as handle:
            return np.memmap(handle, dtype=np.float32, mode="r", offset=self.offset, shape=self.shape)


class CodeRows:
    """Rows decoded from quantised codes held in memory: an IVF-SQ8 index's own (through its direct map)
    or a scalar-quantised copy beside an IVF-PQ index. Approximate (about 1e-3), but no disk read."""

    def __init__(self, index: Any):
        self.index = index
        self.shape: tuple[int, int] = (int(index.ntotal), int(index.d))

    def __getitem__(self, key: slice | np.ndarray) -> np.ndarray:
        """Rows ``first:stop`` or the rows of an id array, decoded."""
        if isinstance(key, slice):
            first, stop, _ = key.indices(self.shape[0])
            key = np.arange(first, max(first, stop))
        ids = np.asarray(key, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.shape[0]):
            raise IndexError(f"row outside {self.shape[0]}")
        if not len(ids):
            return np.zeros((0, self.shape[1]), dtype=np.float32)
        return self.index.reconstruct_batch(ids)


Rows = np.ndarray | ExactRows | CodeRows


def open_exact(path) -> ExactRows:
    """The exact vectors beside an approximate index (see ``ExactRows``)."""
    return ExactRows(path)


def open_rescorer(rescoring: str, index: Any, exact: ExactRows, codes_path) -> ExactRows | CodeRows:
    """What an approximate ``index`` re-scores its candidates with, as its segment recorded (``RESCORE_*``):
    the ``exact`` rows, its own codes, or the scalar-quantised copy at ``codes_path`` (read into memory)."""
    import faiss

    if rescoring == RESCORE_OWN_CODES:
        return CodeRows(index)
    if rescoring == RESCORE_SQ:
        return CodeRows(faiss.read_index(str(codes_path)))
    return exact


def exact_scores(vectors: Rows, query: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """float32 inner products of ``query`` with the rows ``ids`` of a vector array or an ``ExactRows`` file."""
    if not len(ids):
        return np.zeros(0, dtype=np.float32)
    rows = np.asarray(vectors[np.asarray(ids)], dtype=np.float32)
    return rows @ np.asarray(query, dtype=np.float32)


def top_k_stable(values: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest values, best first, ties by position: what a stable full sort of
    ``-values`` would put first, in O(n) instead of O(n log n)."""
    if k <= 0 or not len(values):
        return np.zeros(0, dtype=np.int64)
    if k < len(values):
        threshold = np.partition(values, len(values) - k)[len(values) - k]
        above = np.flatnonzero(values > threshold)
        ties = np.flatnonzero(values == threshold)[:k - len(above)]
        chosen = np.concatenate([above, ties])
    else:
        chosen = np.arange(len(values))
    return chosen[np.lexsort((chosen, -values[chosen]))][:k]
