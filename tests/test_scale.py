"""The embedded store at scale: IVF-SQ8 indexes, exact re-scoring, report filters, IDF, on-demand passages.

The same seed corpus (tiny model) is written twice: once as ``ReportQA`` builds it (small, so every
index is exact) and once with settings that make every index approximate, so the large-index code
paths run on real text, real FAISS and real bm25s in a few seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rag.ann import (
    FLAT,
    IVF_PQ,
    IVF_SQ8,
    RESCORE_OWN_CODES,
    RESCORE_SQ,
    AnnSettings,
    CodeRows,
    default_settings,
    provenance,
    top_k_stable,
)
from rag.api import ReportQA
from rag.chunking import Chunk
from rag.faiss_store import EmbeddedStore, EmbeddedWriter
from rag.query import analyse
from rag.retrieve import Retriever
from rag.store import ReportRecords, open_store, verify_store
from tests.conftest import copy_corpus


@pytest.fixture(scope="module")
def exact_qa(tiny_model, tmp_path_factory) -> ReportQA:
    """The seed reports indexed as usual (small: every index exact)."""
    root = tmp_path_factory.mktemp("scale")
    qa = ReportQA(corpus_dir=copy_corpus(root / "corpus"), index_dir=root / "index", model=tiny_model)
    qa.build()
    return qa


def _rewrite(store: EmbeddedStore, index_dir: Path, log=lambda message: None, **settings) -> EmbeddedStore:
    """The same reports and vectors written again with other ``rag.ann`` settings."""
    writer = EmbeddedWriter(index_dir, store.dense.d, store.tokenizer, ann=replace(default_settings(), **settings),
                            log=log)
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


# -- segments: adding and deleting a report without rewriting the index ---------------------------------------

SEGMENTED = {"rewrite_below": 1, "merge_share": 1.0, "max_segments": 8}  # never rewrite whole on its own


def _records(store: EmbeddedStore) -> dict[str, ReportRecords]:
    from rag.faiss_store import _read_report

    return {source: _read_report(segment, source) for segment in store.segments for source in segment.live_spans}


def _writer(index_dir: Path, store: EmbeddedStore, update: bool, **settings) -> EmbeddedWriter:
    return EmbeddedWriter(index_dir, store.dense.d, store.tokenizer, ann=replace(default_settings(), **settings),
                          update=update)


def _manifest(store: EmbeddedStore) -> dict:
    return {k: v for k, v in store.manifest.items() if k not in ("files", "indexes", "ann", "chunks", "segments")}


@pytest.fixture(scope="module")
def seed_records(exact_qa) -> dict[str, ReportRecords]:
    """Every seed report as the writer receives it (read back from the exact index)."""
    return _records(exact_qa.store)


def _commit(index_dir: Path, store: EmbeddedStore, reports, update=False, removed=(), **settings) -> EmbeddedWriter:
    writer = _writer(index_dir, store, update, **{**SEGMENTED, **settings})
    for report in reports:
        writer.add_report(report)
    for source in removed:
        writer.remove_report(source)
    writer.commit(_manifest(store))
    return writer


def _by_citation(store: EmbeddedStore, scored) -> list[tuple[str, float]]:
    return [(store.chunk(i).citation, round(float(s), 5)) for i, s in zip(scored.ids, scored.scores, strict=True)]


@pytest.mark.parametrize("vectors", ["flat", "ivf"])
def test_adding_a_report_writes_only_a_new_segment(exact_qa, seed_records, tmp_path, vectors):
    ivf = {"exact_below": 1, "min_lists": 4, "max_lists": 4, "nprobe": 4, "exact_filter_below": 1}
    ivf = ivf if vectors == "ivf" else {}
    exact = exact_qa.store
    sources = sorted(seed_records)
    index_dir = tmp_path / "index"
    _commit(index_dir, exact, [seed_records[s] for s in sources[:4]], **ivf)
    before = EmbeddedStore(index_dir)
    writer = _commit(index_dir, exact, [seed_records[sources[4]]], update=True, **ivf)
    assert writer.last_commit == {"kind": "segment", "written_passages": len(seed_records[sources[4]].chunks),
                                  "segments": 2}
    after = EmbeddedStore(index_dir)
    assert [e["path"] for e in after.manifest["segments"]][0] == "." and len(after.segments) == 2
    # The base segment's files are the previous version's, linked, not copied.
    assert (after.version_dir / "dense.faiss").stat().st_ino == (before.version_dir / "dense.faiss").stat().st_ino
    assert sorted(after.documents) == sources and len(after) == len(exact)
    added = after.chunks_of(sources[4])
    assert [c.text for c in added] == [c.text for c in exact.chunks_of(sources[4])]
    assert after.allowed_ids([sources[4]]).tolist() == [c.id for c in added]
    assert after.chunk_by_citation(added[3].citation) == added[3] == after.chunk(added[3].id)
    vector = seed_records[sources[4]].vectors[3]
    top = after.dense_top_k(vector, 5)
    assert added[3].id in top.ids or top.scores[0] >= vector @ vector - 1e-3
    if vectors == "flat":  # exact search over two segments is exact search over the whole
        assert _by_citation(after, top) == _by_citation(exact, exact.dense_top_k(vector, 5))
        units = after.unit_top_k(vector, 10)
        assert [after.chunk(i).citation for i in units.ids] == [exact.chunk(i).citation for i in
                                                                exact.unit_top_k(vector, 10).ids]
        ids = [added[0].id, 0, added[-1].id]
        same = [exact.chunk_by_citation(after.chunk(i).citation).id for i in ids]  # type: ignore[union-attr]
        assert np.allclose(after.dense_scores(vector, ids), exact.dense_scores(vector, same), atol=1e-5)
    filtered = after.dense_top_k(vector, 5, after.allowed_ids([sources[4]]))
    assert set(filtered.ids.tolist()) <= {c.id for c in added} and len(filtered.ids) == 5
    assert np.allclose(after.unit_vectors(added[3].id), seed_records[sources[4]].unit_vectors[
        [i for i, owner in enumerate(seed_records[sources[4]].unit_owner) if owner == 3]])
    # BM25 over segments weighs each segment's terms with the whole index's IDF: nearly the scores of one index
    # (only the length normalisation differs: each segment has its own average passage length).
    for words in ("阿里通义大模型的合作伙伴", "GPT-3 参数量", "算力"):
        tokens = exact.tokenizer.tokens(words)
        ours, theirs = dict(_by_citation(after, after.bm25_top_k(tokens, 10))), \
            dict(_by_citation(exact, exact.bm25_top_k(tokens, 10)))
        assert len(set(list(ours)[:5]) & set(list(theirs)[:5])) >= 4
        for citation in set(ours) & set(theirs):
            assert ours[citation] == pytest.approx(theirs[citation], rel=0.05)
    assert not verify_store(index_dir)  # rag check: every file, linked or new, matches its checksum


def test_deleting_and_replacing_a_report_hides_the_old_passages(exact_qa, seed_records, tmp_path):
    exact = exact_qa.store
    sources = sorted(seed_records)
    index_dir = tmp_path / "index"
    _commit(index_dir, exact, [seed_records[s] for s in sources])
    gone, changed = sources[1], sources[3]
    old = exact.chunks_of(gone)
    writer = _commit(index_dir, exact, [], update=True, removed=[gone])
    assert writer.last_commit["written_passages"] == 0
    store = EmbeddedStore(index_dir)
    assert gone not in store.documents and len(store) == len(exact) - len(old)
    assert store.allowed_ids([gone]).size == 0 and store.chunks_of(gone) == []
    assert store.chunk_by_citation(old[2].citation) is None
    with pytest.raises(IndexError):
        store.chunk(old[2].id)
    for chunk in old[::7]:
        vector = seed_records[gone].vectors[chunk.id - old[0].id]
        for found in (store.dense_top_k(vector, 20).ids, store.unit_top_k(vector, 50).ids,
                      store.bm25_top_k(exact.tokenizer.tokens(chunk.text[:30]), 50).ids):
            assert not {c.id for c in old} & set(found.tolist())
    # Replacing: the new text is found, the old one no longer.
    report = seed_records[changed]
    citation, first, *rest = report.chunks[0]
    edited = replace(first, text=first.text + "独一无二的新增词语甲乙丙")
    new_report = replace(report, chunks=[(citation, edited, *rest), *report.chunks[1:]],
                         document=replace(report.document, sha256="changed"))
    _commit(index_dir, exact, [new_report], update=True)
    store = EmbeddedStore(index_dir)
    assert [len(s.deleted) for s in store.segments] == [2, 0]
    assert store.documents[changed].sha256 == "changed" and len(store) == len(exact) - len(old)
    hits = store.bm25_top_k(store.tokenizer.tokens("独一无二的新增词语甲乙丙"), 3)
    assert store.chunk(int(hits.ids[0])).text.endswith("甲乙丙") and store.chunk(int(hits.ids[0])).source == changed
    assert len(store.chunks_of(changed)) == len(report.chunks)
    assert not verify_store(index_dir)


def test_a_build_session_rewrites_only_changed_reports(exact_qa, seed_records, tmp_path):
    exact = exact_qa.store
    sources = sorted(seed_records)
    index_dir = tmp_path / "index"
    _commit(index_dir, exact, [seed_records[s] for s in sources])
    unchanged = _commit(index_dir, exact, [seed_records[s] for s in sources])  # the same state again
    assert unchanged.last_commit == {"kind": "segment", "written_passages": 0, "segments": 1}
    report = seed_records[sources[2]]
    moved = replace(report, document=replace(report.document, duplicates=["elsewhere.txt"]))
    writer = _commit(index_dir, exact, [seed_records[s] for s in sources if s not in sources[2:4]] + [moved])
    assert writer.last_commit == {"kind": "segment", "written_passages": len(report.chunks), "segments": 2}
    store = EmbeddedStore(index_dir)
    assert sorted(store.documents) == sorted(set(sources) - {sources[3]})
    assert store.documents[sources[2]].duplicates == ["elsewhere.txt"]


def test_small_segments_are_merged_and_a_large_change_rewrites_the_whole_index(exact_qa, seed_records, tmp_path):
    exact = exact_qa.store
    sources = sorted(seed_records)
    index_dir = tmp_path / "index"
    _commit(index_dir, exact, [seed_records[sources[0]]])
    _commit(index_dir, exact, [seed_records[sources[1]]], update=True, max_segments=1)
    merged = _commit(index_dir, exact, [seed_records[sources[2]]], update=True, max_segments=1)
    assert merged.last_commit["segments"] == 2
    store = EmbeddedStore(index_dir)
    assert sorted(store.documents) == sources[:3] and len(store.segments) == 2
    assert [c.text for c in store.chunks_of(sources[1])] == [c.text for c in exact.chunks_of(sources[1])]
    whole = _commit(index_dir, exact, [seed_records[sources[3]]], update=True, merge_share=0.1)
    assert whole.last_commit == {"kind": "rewrite", "written_passages": sum(
        len(seed_records[s].chunks) for s in sources[:4]), "segments": 1}
    store = EmbeddedStore(index_dir)
    fresh = _commit(tmp_path / "fresh", exact, [seed_records[s] for s in sources[:4]])
    assert fresh.last_commit["kind"] == "rewrite"
    reference = EmbeddedStore(tmp_path / "fresh")
    assert [store.chunk(i).citation for i in range(len(store))] == \
        [reference.chunk(i).citation for i in range(len(reference))]
    assert np.allclose(store.unit_vectors(5), reference.unit_vectors(5))


def test_a_crash_while_adding_a_report_loses_nothing(exact_qa, seed_records, tmp_path, monkeypatch):
    from rag import faiss_store

    exact = exact_qa.store
    sources = sorted(seed_records)
    index_dir = tmp_path / "index"
    _commit(index_dir, exact, [seed_records[s] for s in sources[:4]])
    live = (index_dir / "current").resolve()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as a kill between the linked files and the new segment would

    monkeypatch.setattr(faiss_store.EmbeddedWriter, "_write_segment", crash)
    with pytest.raises(KeyboardInterrupt):
        _commit(index_dir, exact, [seed_records[sources[4]]], update=True)
    monkeypatch.undo()
    assert (index_dir / "current").resolve() == live and not list(index_dir.glob(".build-*"))
    store = EmbeddedStore(index_dir)
    assert sorted(store.documents) == sources[:4] and not verify_store(index_dir)


def test_the_seed_build_is_one_segment(exact_qa):
    store = exact_qa.store
    assert [(e["path"], e["offset"], e["deleted"]) for e in store.manifest["segments"]] == [(".", 0, [])]


# -- the largest indexes: product quantisation, and a writer that keeps vectors out of memory ------------------

def test_the_largest_indexes_hold_pq_codes_and_return_exact_scores(exact_qa, tmp_path):
    exact = exact_qa.store
    said: list[str] = []
    pq = _rewrite(exact, tmp_path / "pq", said.append, exact_below=1, min_lists=4, max_lists=4, train_per_list=100,
                  nprobe=4, pq_above=1, pq_bytes=8, pq_rescore_factor=4)
    assert pq.manifest["indexes"] == {"dense": IVF_PQ, "units": IVF_PQ}
    units_total = sum(len(exact.unit_vectors(c.id)) for s in exact.documents for c in exact.chunks_of(s))
    assert any(f"{units_total:,}/{units_total:,}" in line for line in said)  # filling the index is reported
    vectors = exact.dense.reconstruct_n(0, len(exact))  # type: ignore[attr-defined]
    for chunk_id in range(0, len(exact), 41):
        top = pq.dense_top_k(vectors[chunk_id], 5)
        assert len(top.ids) == 5 and list(top.scores) == sorted(top.scores, reverse=True)
        assert np.allclose(top.scores, vectors[top.ids] @ vectors[chunk_id], atol=1e-5)  # re-scored exactly
        # All lists scanned, 4x candidates re-scored: the stored vector finds itself or a near-copy.
        assert chunk_id in top.ids or top.scores[0] >= vectors[chunk_id] @ vectors[chunk_id] - 1e-3
    units = pq.unit_top_k(vectors[3], 20)
    reference = exact.unit_top_k(vectors[3], 20)
    assert np.isclose(units.scores[0], reference.scores[0], atol=1e-5)
    # A PQ index written by older settings (no PQ) is not reused: the settings say what the files are.
    assert not default_settings().same_indexes(pq.manifest["ann"])
    old = {k: v for k, v in default_settings().as_dict().items() if not k.startswith("pq_")}
    assert replace(default_settings(), pq_above=2**62).same_indexes(old)


def test_the_largest_indexes_re_score_from_codes_in_memory(exact_qa, tmp_path):
    exact = exact_qa.store
    passages = len(exact)
    said: list[str] = []
    # Passages stay IVF-SQ8 (fewer than pq_above), units become IVF-PQ; both are above codes_rescore_above.
    coded = _rewrite(exact, tmp_path / "codes", said.append, exact_below=1, min_lists=4, max_lists=4,
                     train_per_list=100, nprobe=4, pq_above=passages + 1, pq_bytes=8, pq_rescore_factor=4,
                     codes_rescore_above=1, rescore_bits=6)
    entry = coded.manifest["segments"][0]
    assert entry["indexes"] == {"dense": IVF_SQ8, "units": IVF_PQ}
    assert entry["rescore"] == {"dense": RESCORE_OWN_CODES, "units": RESCORE_SQ}
    assert (coded.version_dir / "units.codes.faiss").exists() and not (coded.version_dir / "dense.codes.faiss").exists()
    assert any("re-scoring codes" in line for line in said)
    segment = coded.segments[0]
    assert isinstance(segment.dense_rescore, CodeRows) and isinstance(segment.units_rescore, CodeRows)
    vectors = exact.dense.reconstruct_n(0, passages)  # type: ignore[attr-defined]
    for chunk_id in range(0, passages, 41):
        query = vectors[chunk_id]
        top = coded.dense_top_k(query, 5)
        assert len(top.ids) == 5 and list(top.scores) == sorted(top.scores, reverse=True)
        # Scores come from the codes: close to the exact cosines, equal to the decoded vectors' products.
        assert np.allclose(top.scores, vectors[top.ids] @ query, atol=0.02)
        decoded = coded.dense.reconstruct_batch(top.ids)  # type: ignore[attr-defined]
        assert np.allclose(top.scores, decoded @ query, atol=1e-5)
        ids = [chunk_id, 0, passages - 1]
        assert np.allclose(coded.dense_scores(query, ids), vectors[ids] @ query, atol=0.02)
        assert chunk_id in top.ids or top.scores[0] >= query @ query - 0.02
    units = coded.unit_top_k(vectors[3], 20)
    reference = exact.unit_top_k(vectors[3], 20)
    assert abs(units.scores[0] - reference.scores[0]) < 0.02
    # A passage's own unit vectors and merges still read the exact rows.
    assert np.allclose(coded.unit_vectors(5), exact.unit_vectors(5))
    # Each segment records how it re-scores: an index written before codes existed keeps its segments (and exact
    # rows) under the new policy instead of being rewritten whole on the next upload.
    settings = AnnSettings(**coded.manifest["ann"])
    old = {k: v for k, v in coded.manifest["ann"].items() if k not in ("codes_rescore_above", "rescore_bits")}
    assert settings.same_indexes(old) and replace(settings, codes_rescore_above=2**62).same_indexes(old)


def test_a_write_session_keeps_vectors_in_a_spool_not_in_memory(exact_qa, seed_records, tmp_path):
    exact = exact_qa.store
    index_dir = tmp_path / "index"
    writer = _writer(index_dir, exact, update=False, **SEGMENTED)
    for report in seed_records.values():
        writer.add_report(report)
    kept = next(iter(writer.reports.values()))
    assert not kept.vectors.flags.owndata and not kept.vectors.flags.writeable  # a view of the spool's mapping
    spools = list(index_dir.glob(".spool-*"))
    assert len(spools) == 1 and spools[0].name.startswith(f".spool-{os.getpid()}-")
    writer.commit(_manifest(exact))
    assert not list(index_dir.glob(".spool-*"))  # removed with the session
    store = EmbeddedStore(index_dir)
    assert np.allclose(store.unit_vectors(5), exact.unit_vectors(5))
    assert np.allclose(store.dense.reconstruct(7), exact.dense.reconstruct(7))  # type: ignore[attr-defined]

    # A session killed while adding reports leaves its spool behind; the next writer removes it (its process
    # is gone), but not the spool of a live session.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    (index_dir / f".spool-{dead}-1").mkdir()
    (index_dir / f".spool-{dead}-1" / "0.f32").write_bytes(b"\0" * 64)
    live_session = _writer(index_dir, exact, update=True, **SEGMENTED)
    live_session.add_report(seed_records[sorted(seed_records)[0]])
    _commit(index_dir, exact, [seed_records[sorted(seed_records)[1]]], update=True)
    assert [p.name for p in index_dir.glob(".spool-*")] == [live_session.spool.folder.name]
    live_session.commit(_manifest(exact))
    assert not list(index_dir.glob(".spool-*"))


def test_the_scale_benchmark_runs_on_a_small_generated_corpus(exact_qa, tmp_path):
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "scale.py"
    done = subprocess.run([sys.executable, str(script), "--seed-index", str(exact_qa.index_dir), "--sizes", "700",
                           "--configs", "scaled", "--queries", "8", "--warmup", "5", "--work", str(tmp_path), "--json"],
                          capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "generated data" in done.stderr
    result = json.loads(done.stdout)["results"][0]
    numbers = result["configs"]["scaled"]
    assert result["passages"] == 700 and result["units"] > 700
    assert numbers["added_found"] and numbers["deleted_gone"]
    assert numbers["hybrid_again_ms"]["n"] == 8 and numbers["first_questions_ms"]["n"] == 5
    assert 0 < numbers["build_peak_anon_mb"] <= numbers["build_peak_rss_mb"]
    assert numbers["reload_after_add_s"] >= 0 and numbers["reload_after_delete_s"] >= 0
    assert numbers["page_cache"] == "as left"  # --drop-caches not given (it would empty the whole machine's cache)
    # 700 passages are far below the approximate threshold: the store is exact, so recall must be 1.
    assert numbers["dense_recall@10"] == 1.0 and numbers["unit_recall@10"] == 1.0


def test_the_scale_benchmark_says_when_it_cannot_drop_the_page_cache(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "scale_benchmark", Path(__file__).resolve().parent.parent / "benchmarks" / "scale.py")
    assert spec is not None and spec.loader is not None
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    said: list[str] = []
    control = tmp_path / "drop_caches"
    assert scale.drop_page_cache(said.append, control) and control.read_text() == "1\n" and not said
    assert not scale.drop_page_cache(said.append, tmp_path / "missing" / "drop_caches")  # not root / no such file
    assert len(said) == 1 and "page cache not dropped" in said[0]


def _large_index_of_four(tiny_model, tmp_path, monkeypatch) -> tuple[ReportQA, list[str], str]:
    """Four seed reports indexed under settings that make them a segmented ("large") index; the fifth left out."""
    from rag import build, faiss_store
    from tests.conftest import SEED_FILES

    segmented = replace(default_settings(), **SEGMENTED)  # the seed reports count as a large index here
    monkeypatch.setattr(build, "default_settings", lambda: segmented)
    monkeypatch.setattr(faiss_store, "default_settings", lambda: segmented)
    first, last = sorted(SEED_FILES)[:4], sorted(SEED_FILES)[4]
    qa = ReportQA(corpus_dir=copy_corpus(tmp_path / "corpus", first), index_dir=tmp_path / "index", model=tiny_model)
    qa.build()
    return qa, first, last


def test_an_upload_to_a_large_index_reads_and_embeds_only_that_report(tiny_model, tmp_path, monkeypatch):
    from rag import build
    from rag.documents import file_sha256
    from tests.conftest import CORPUS, SEED_FILES

    qa, first, last = _large_index_of_four(tiny_model, tmp_path, monkeypatch)
    parsed: list[str] = []
    real_load = build.load_document
    monkeypatch.setattr(build, "load_document", lambda path, source=None: parsed.append(source) or real_load(
        path, source=source))

    before = qa.store
    added = qa.add_report(CORPUS / last)
    store = qa.store
    assert parsed == [last] and not added.skipped  # only the new report was read
    assert store is not before and store.segments[0].dense is before.segments[0].dense  # base segment taken over
    assert added.documents == 5 and sorted(store.documents) == sorted(SEED_FILES)
    own_texts = len(store.chunks_of(last)) + sum(len(store.unit_vectors(c.id)) for c in store.chunks_of(last))
    assert added.embedded + added.reused == own_texts  # nothing of the other reports was embedded again
    assert [e["path"] == "." for e in store.manifest["segments"]] == [True, False]  # a new segment, no rewrite
    assert store.manifest["corpus"] == {name: file_sha256(CORPUS / name) for name in SEED_FILES}
    passage = store.chunks_of(last)[3]
    assert passage.id in qa.store.allowed_ids([last]).tolist()
    assert passage.id in store.bm25_top_k(store.tokenizer.tokens(passage.text), 3).ids.tolist()

    removed = qa.remove_report(first[0])
    store = qa.store
    assert parsed == [last] and removed.documents == 4 and first[0] not in store.documents
    assert first[0] not in store.manifest["corpus"] and not store.allowed_ids([first[0]]).size
    assert store.manifest["segments"][0]["deleted"] == [first[0]]

    # The same upload to a small index (the default threshold) is a full build, as before.
    monkeypatch.setattr(build, "default_settings", default_settings)
    assert build.update_index(qa.corpus_dir, qa.index_dir, qa.embedder, qa.settings.chunker, [last], []) is None


def test_rag_index_on_a_large_index_reads_only_the_reports_that_changed(tiny_model, tmp_path, monkeypatch):
    import shutil

    from rag import build
    from tests.conftest import CORPUS, SEED_FILES

    qa, first, last = _large_index_of_four(tiny_model, tmp_path, monkeypatch)
    parsed: list[str] = []
    for name in ("load_document", "load_corpus"):
        real = getattr(build, name)
        monkeypatch.setattr(build, name, lambda *a, real=real, name=name, **k: parsed.append(
            k.get("source", name)) or real(*a, **k))
    said: list[str] = []

    shutil.copy(CORPUS / last, qa.corpus_dir / last)  # a report dropped into the corpus folder, then `rag index`
    added = qa.build(log=said.append)
    assert parsed == [last] and not added.skipped and added.documents == 5
    assert any("updated in place" in line for line in said)
    store = qa.store
    assert sorted(store.documents) == sorted(SEED_FILES)
    assert [e["path"] == "." for e in store.manifest["segments"]] == [True, False]  # a new segment, no rewrite
    passage = store.chunks_of(last)[3]
    assert passage.id in store.bm25_top_k(store.tokenizer.tokens(passage.text), 3).ids.tolist()

    (qa.corpus_dir / first[0]).unlink()
    removed = qa.build()
    assert parsed == [last] and removed.documents == 4 and first[0] not in qa.store.documents
    assert qa.store.manifest["segments"][0]["deleted"] == [first[0]]

    broken = qa.corpus_dir / "broken.pdf"
    broken.write_bytes(b"not a pdf")
    qa.build()
    assert parsed == [last, "broken.pdf"]  # a new file is read alone, fails, and is recorded as failed
    assert [f["source"] for f in qa.store.manifest["failures"]] == ["broken.pdf"]
    assert qa.build().skipped and parsed == [last, "broken.pdf", "load_corpus"]  # nothing changed: checked, skipped
    later = time.time() + 5
    os.utime(broken, (later, later))  # a failed file is read again once it is edited
    qa.build()
    assert parsed == [last, "broken.pdf", "load_corpus", "broken.pdf"]
    broken.unlink()
    qa.build(force=True)  # a forced build reads the whole corpus and rewrites it
    assert parsed[-1] == "load_corpus" and parsed.count("load_corpus") == 2
    assert [e["path"] for e in qa.store.manifest["segments"]] == ["."] and not qa.store.manifest["failures"]


def test_read_ahead_sweeps_the_files_a_search_reads_at_random_within_a_memory_share(exact_qa, tmp_path):
    from rag.faiss_store import _read_often, read_ahead

    files = _read_often(exact_qa.store.version_dir)
    assert files[0].name == "meta.sqlite" and any(f.parent.name == "bm25" for f in files)
    thread = read_ahead(files)
    assert thread is not None
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert read_ahead(files, memory_share=1e-12) is None  # more than the share of available memory: left alone
    assert read_ahead([tmp_path / "missing"]) is None


TINY_IVF = {"exact_below": 1, "min_lists": 2, "max_lists": 2, "train_per_list": 100, "nprobe": 2}


def _four_then_one(index_dir: Path, store: EmbeddedStore, seed_records, between=lambda: None,
                   **fifth_settings) -> list[str]:
    """Four seed reports committed as IVF segments, then (after ``between()``) the fifth as an update."""
    sources = sorted(seed_records)
    _commit(index_dir, store, [seed_records[s] for s in sources[:4]], **TINY_IVF)
    between()
    _commit(index_dir, store, [seed_records[sources[4]]], update=True, **{**TINY_IVF, **fifth_settings})
    return sources


def test_segments_with_and_without_codes_work_side_by_side(exact_qa, seed_records, tmp_path):
    exact = exact_qa.store
    index_dir = tmp_path / "index"
    # Four reports written before codes existed (exact rows), then one more under the codes policy: the old segment
    # is kept as it is (no rewrite), the new one re-scores from its own codes.
    sources = _four_then_one(index_dir, exact, seed_records, codes_rescore_above=1)
    store = EmbeddedStore(index_dir)
    assert [e.get("rescore") for e in store.manifest["segments"]] == [None, {"dense": RESCORE_OWN_CODES,
                                                                             "units": RESCORE_OWN_CODES}]
    assert isinstance(store.segments[1].dense_rescore, CodeRows)
    assert not isinstance(store.segments[0].dense_rescore, CodeRows)
    for source in (sources[0], sources[4]):
        passage = exact.chunks_of(source)[2]
        vector = exact.dense.reconstruct(passage.id)  # type: ignore[attr-defined]
        top = store.dense_top_k(vector, 3)
        found = [store.chunk(int(i)).citation for i in top.ids]
        # The tiny model's vectors are close together: the passage itself or a copy as close as quantisation can tell.
        assert passage.citation in found or top.scores[0] >= vector @ vector - 0.02
        assert np.allclose(store.dense_scores(vector, top.ids.tolist()), top.scores, atol=1e-5)


def test_a_newer_version_takes_over_the_segments_it_shares_with_the_loaded_one(exact_qa, seed_records, tmp_path):
    import shutil

    exact = exact_qa.store
    index_dir = tmp_path / "index"
    loaded: list[EmbeddedStore] = []
    sources = _four_then_one(index_dir, exact, seed_records, between=lambda: loaded.append(EmbeddedStore(index_dir)))
    first = loaded[0]
    assert first.lends_to_live()
    added = EmbeddedStore(index_dir, previous=first)
    assert added.segments[0].dense is first.segments[0].dense and added.segments[0].db is first.segments[0].db
    assert len(added.segments) == 2 and added.segments[1].dense is not first.segments[0].dense
    _commit(index_dir, exact, [], removed=[sources[0]], update=True, **TINY_IVF)
    removed = EmbeddedStore(index_dir, previous=added)
    assert removed.segments[0].units is added.segments[0].units
    assert sources[0] not in removed.documents and sources[0] in added.documents  # the lender is not changed
    fresh = EmbeddedStore(index_dir)
    vectors = exact.dense.reconstruct_n(0, len(exact))  # type: ignore[attr-defined]
    for vector in vectors[::29]:
        for k in (3, 40):
            ours, theirs = removed.dense_top_k(vector, k), fresh.dense_top_k(vector, k)
            assert ours.ids.tolist() == theirs.ids.tolist() and np.allclose(ours.scores, theirs.scores)
            ours, theirs = removed.unit_top_k(vector, k), fresh.unit_top_k(vector, k)
            assert ours.ids.tolist() == theirs.ids.tolist() and np.allclose(ours.scores, theirs.scores)
    tokens = exact.tokenizer.tokens(exact.chunks_of(sources[1])[2].text)
    assert removed.bm25_top_k(tokens, 10).ids.tolist() == fresh.bm25_top_k(tokens, 10).ids.tolist()
    assert removed.documents.keys() == fresh.documents.keys() and len(removed) == len(fresh)
    # The version folder the shared segment was first opened from is removed by later commits: its files live
    # on in the newer version (hard links) and are read through open descriptors.
    old_folder = first.version_dir
    assert old_folder != removed.version_dir
    shutil.rmtree(old_folder, ignore_errors=True)
    assert not old_folder.exists()
    segment = removed.segments[0]
    assert segment.units_exact is not None and np.allclose(segment.units_exact.mapped(0, 3),
                                                           fresh.segments[0].units_exact.mapped(0, 3))
    live_id = fresh.chunks_of(sources[1])[2].id
    assert removed.chunk(live_id).text == fresh.chunk(live_id).text
    # A whole rewrite shares nothing: the old store lends nothing, so a caller can drop it before loading.
    _commit(index_dir, exact, [seed_records[s] for s in sources], rewrite_below=2**62, **TINY_IVF)
    assert not removed.lends_to_live()
