"""The embedded store at scale: IVF-SQ8 indexes, exact re-scoring, report filters, IDF, on-demand passages.

The same seed corpus (tiny model) is written twice: once as ``ReportQA`` builds it (small, so every
index is exact) and once with settings that make every index approximate, so the large-index code
paths run on real text, real FAISS and real bm25s in a few seconds.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rag.ann import FLAT, IVF_SQ8, default_settings, provenance, top_k_stable
from rag.api import ReportQA
from rag.chunking import Chunk
from rag.faiss_store import EmbeddedStore, EmbeddedWriter
from rag.query import analyse
from rag.retrieve import Retriever
from rag.store import ReportRecords, open_store
from tests.conftest import copy_corpus


@pytest.fixture(scope="module")
def exact_qa(tiny_model, tmp_path_factory) -> ReportQA:
    """The seed reports indexed as usual (small: every index exact)."""
    root = tmp_path_factory.mktemp("scale")
    qa = ReportQA(corpus_dir=copy_corpus(root / "corpus"), index_dir=root / "index", model=tiny_model)
    qa.build()
    return qa


def _rewrite(store: EmbeddedStore, index_dir: Path, **settings) -> EmbeddedStore:
    """The same reports and vectors written again with other ``rag.ann`` settings."""
    writer = EmbeddedWriter(index_dir, store.dense.d, store.tokenizer, ann=replace(default_settings(), **settings))
    for source, document in store.documents.items():
        chunks = store.chunks_of(source)
        units = [store.unit_vectors(c.id) for c in chunks]
        writer.add_report(ReportRecords(
            document,
            [(c.citation, Chunk(c.source, c.start, c.end, c.text, c.heading, c.table_header, c.kind),
              c.line_start, c.line_end, c.page) for c in chunks],
            store.dense.reconstruct_batch(np.array([c.id for c in chunks], dtype=np.int64)),  # type: ignore[attr-defined]
            np.vstack(units).astype(np.float32),
            [position for position, u in enumerate(units) for _ in range(len(u))]))
    writer.commit({k: v for k, v in store.manifest.items() if k not in ("files", "indexes", "ann", "chunks")})
    return EmbeddedStore(index_dir)


@pytest.fixture(scope="module")
def approximate(exact_qa, tmp_path_factory) -> EmbeddedStore:
    """The seed index with every vector index IVF-SQ8, scanning every list, IDF from BM25 document frequencies."""
    return _rewrite(exact_qa.store, tmp_path_factory.mktemp("approximate") / "index", exact_below=1, min_lists=8,
                    max_lists=8, train_per_list=40, nprobe=8, exact_filter_below=1, idf_exact_below=1)


def test_scale_settings_come_from_the_data_file_with_provenance():
    settings = default_settings()
    assert settings.exact_below > 10_000 and settings.nprobe >= 1
    assert provenance()["command"].startswith("python benchmarks/scale.py")
    assert settings.exact().exact_below > 10**12


@pytest.mark.parametrize("k", [1, 3, 10, 50, 500])
def test_top_k_stable_is_a_stable_sort_prefix(k):
    values = np.random.default_rng(k).integers(0, 7, size=200).astype(np.float64)  # many ties
    assert top_k_stable(values, k).tolist() == np.argsort(-values, kind="stable")[:k].tolist()


def test_the_seed_index_stays_exact(exact_qa):
    store = exact_qa.store
    assert store.manifest["indexes"] == {"dense": FLAT, "units": FLAT}
    assert not (store.version_dir / "dense.npy").exists()


def test_large_index_is_approximate_with_exact_scores(exact_qa, approximate):
    exact = exact_qa.store
    assert approximate.manifest["indexes"] == {"dense": IVF_SQ8, "units": IVF_SQ8}
    vectors = exact.dense.reconstruct_n(0, len(exact))  # type: ignore[attr-defined]
    for chunk_id in range(0, len(exact), 37):
        top = approximate.dense_top_k(vectors[chunk_id], 5)
        # A stored vector finds itself or a near-copy (the tiny random model's vectors are all close together,
        # closer than 8-bit quantisation can tell apart).
        assert chunk_id in top.ids or top.scores[0] >= vectors[chunk_id] @ vectors[chunk_id] - 1e-3
        assert np.allclose(top.scores, vectors[top.ids] @ vectors[chunk_id], atol=1e-5)  # re-scored exactly
        ids = [chunk_id, 0, len(exact) - 1]
        assert np.allclose(approximate.dense_scores(vectors[chunk_id], ids), exact.dense_scores(vectors[chunk_id], ids),
                           atol=1e-5)
    for chunk_id in (0, 5, len(exact) - 1):
        ours, theirs = approximate.unit_vectors(chunk_id), exact.unit_vectors(chunk_id)
        assert ours is not None and theirs is not None and np.allclose(ours, theirs)
    units = approximate.unit_top_k(vectors[3], 20)
    reference = exact.unit_top_k(vectors[3], 20)
    assert units.ids[0] == reference.ids[0] and np.isclose(units.scores[0], reference.scores[0], atol=1e-5)


def test_report_filter_is_id_ranges_and_applies_on_every_path(exact_qa, approximate, tmp_path):
    exact = exact_qa.store
    source = sorted(exact.documents)[2]
    allowed = approximate.allowed_ids([source, source])
    assert allowed.tolist() == [c.id for c in exact.chunks_of(source)] == exact.allowed_ids([source]).tolist()
    vector = exact.dense.reconstruct(int(allowed[4]))  # type: ignore[attr-defined]
    through_ivf = approximate.dense_top_k(vector, 10, allowed)  # exact_filter_below=1: the IVF selector path
    assert set(through_ivf.ids.tolist()) <= set(allowed.tolist())
    assert allowed[4] in through_ivf.ids or through_ivf.scores[0] >= vector @ vector - 1e-3
    scanned = _rewrite(exact, tmp_path / "scanned", exact_below=1, min_lists=8, max_lists=8, nprobe=1,
                       exact_filter_below=10**6)
    brute = scanned.dense_top_k(vector, 10, allowed)  # few allowed passages: scored exactly, no IVF
    expected = exact.dense_top_k(vector, 10, allowed)
    assert brute.ids.tolist() == expected.ids.tolist()
    tokens = exact.tokenizer.tokens("大模型")
    assert approximate.bm25_top_k(tokens, 5, allowed).ids.tolist() == exact.bm25_top_k(tokens, 5, allowed).ids.tolist()


def test_large_index_idf_reads_bm25_document_frequencies(exact_qa, approximate):
    texts = [exact_qa.store.tokenizer.tokens(c.text) for source in approximate.documents
             for c in approximate.chunks_of(source)]
    for term in ("模型", "gpt", "没有这个词"):
        frequency = sum(1 for tokens in texts if term in tokens)
        expected = np.log((len(approximate) + 1) / (frequency + 0.5))
        assert approximate.idf(term) == pytest.approx(expected, rel=0.05)  # ±: tables add a header row


def test_passages_come_from_sqlite_on_demand_and_hybrid_search_works(exact_qa, approximate):
    assert not hasattr(approximate, "chunks")  # nothing per passage is held at load
    first = exact_qa.store.chunk(7)
    assert approximate.chunk(7) == first and approximate.chunk_by_citation(first.citation) == first
    assert approximate.chunk_by_citation("no-such.txt:L1-L2") is None
    assert approximate.aliases.pairs == exact_qa.store.aliases.pairs
    question = "阿里通义大模型的合作伙伴"
    vector = exact_qa.encoder.encode(question)

    class Fixed:
        def encode(self, text: str) -> np.ndarray:
            return vector

    hits = Retriever(approximate, Fixed()).search(analyse(question, approximate), top_k=5)  # type: ignore[arg-type]
    assert len(hits) == 5 and all(h.chunk == approximate.chunk(h.chunk.id) for h in hits)


def test_approximate_index_survives_the_load_checks(approximate, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(approximate.index_dir, copy, symlinks=True)
    live = (copy / "current").resolve()
    np.save(live / "dense.npy", np.load(live / "dense.npy")[:-1])
    with pytest.raises(Exception, match="rag index"):
        open_store(copy)


def test_sentence_candidates_keep_only_allowed_passages():
    from rag.scoring import _members

    allowed = np.array([2, 3, 4, 10, 11], dtype=np.int64)
    assert _members([0, 3, 11, 12, 5], allowed) == {3, 11}
    assert _members([1], np.zeros(0, dtype=np.int64)) == set() and _members([], allowed) == set()
