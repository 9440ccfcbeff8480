"""The Milvus store against the embedded one: same passages, same rankings, incremental writes.

Everything is real: Milvus Lite in this process (a ``.db`` file) and ``milvus-lite server`` started
by the session on a free loopback port (stopped by PID), the same pymilvus client code for both.
Mechanics use the tiny model; retrieval quality through Milvus is measured by ``rag eval --store``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SEED_FILES, copy_corpus

from rag.api import ReportQA
from rag.cli import main
from rag.errors import RagError
from rag.llm_server import free_port
from rag.milvus_store import MilvusLocation, MilvusStore, MilvusWriter, bm25_idf, lite_server
from rag.records import lexical_text
from rag.store import open_store, store_setting

pytest.importorskip("pymilvus")

QUESTIONS = ["GPT-3 的参数量是多少？", "通义大模型的合作伙伴", "英伟达 GPU", "智算中心 算力 规模",
             "文心一言", "多模态大模型的应用场景", "百度", "Transformer 架构"]


def running_milvus_server(data: Path):
    """``milvus-lite server`` on a free loopback port, stopped by PID on exit; yields its ``milvus://`` location."""
    return lite_server(data, data.parent / f"{data.name}-server.log")


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's Milvus server (``milvus-lite server``); yields its ``milvus://`` location."""
    with running_milvus_server(tmp_path_factory.mktemp("milvus-server") / "data") as location:
        yield location


@pytest.fixture(scope="session")
def embedded_qa(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> ReportQA:
    """The five seeds in the embedded store (the reference)."""
    base = tmp_path_factory.mktemp("embedded")
    qa = ReportQA(copy_corpus(base / "corpus"), base / "index", model=tiny_model, store_location="faiss")
    qa.build()
    return qa


@pytest.fixture(scope="session", params=["lite", "server"])
def milvus_qa(request: pytest.FixtureRequest, tiny_model: str, embedded_qa: ReportQA,
              tmp_path_factory: pytest.TempPathFactory) -> ReportQA:
    """The same seeds in Milvus: a Milvus Lite file, then the session's Milvus server."""
    base = tmp_path_factory.mktemp(f"milvus-{request.param}")
    location = (f"milvus://{base / 'seeds.db'}" if request.param == "lite"
                else request.getfixturevalue("milvus_server") + "?prefix=seeds")
    qa = ReportQA(embedded_qa.corpus_dir, base / "index", model=tiny_model, store_location=location)
    qa.build()
    return qa


def _same_ranking(reference, other, scores_tolerance: float = 1e-5) -> None:
    assert other.ids.tolist() == reference.ids.tolist()
    assert np.allclose(other.scores, reference.scores, atol=scores_tolerance)


def test_milvus_store_holds_the_same_passages_and_reports(embedded_qa: ReportQA, milvus_qa: ReportQA) -> None:
    """Ids, citations, texts, locations and report records equal the embedded store's."""
    reference, store = embedded_qa.store, milvus_qa.store
    assert isinstance(store, MilvusStore)
    assert len(store) == len(reference)
    assert [store.chunk(i) for i in range(len(store))] == [reference.chunk(i) for i in range(len(reference))]
    assert store.documents == reference.documents
    assert store.chunk_by_citation(reference.chunk(5).citation) == reference.chunk(5)
    assert store.allowed_ids([SEED_FILES[2]]).tolist() == reference.allowed_ids([SEED_FILES[2]]).tolist()
    assert store.aliases.pairs == reference.aliases.pairs
    assert store.idf("参数量") == reference.idf("参数量")
    assert milvus_qa.check() == []
    for chunk_id in (0, 7, len(store) - 1):
        expected = reference.unit_vectors(chunk_id)
        got = store.unit_vectors(chunk_id)
        assert expected is not None and got is not None and got.shape == expected.shape
        assert np.allclose(got, expected, atol=1e-6)


def test_project_bm25_in_milvus_ranks_as_the_embedded_store(embedded_qa: ReportQA, milvus_qa: ReportQA) -> None:
    """BM25 as stored sparse weights + query-side IDF: the same top-k, scores and report filter as bm25s."""
    reference, store = embedded_qa.store, milvus_qa.store
    some = reference.allowed_ids([SEED_FILES[0], SEED_FILES[3]])
    for question in QUESTIONS:
        tokens = embedded_qa.analyse(question).lexical_tokens
        _same_ranking(reference.bm25_top_k(tokens, 60), store.bm25_top_k(tokens, 60))
        _same_ranking(reference.bm25_top_k(tokens, 20, some), store.bm25_top_k(tokens, 20, some))
        ids = list(range(0, len(reference), 5))
        assert np.allclose(store.bm25_scores(tokens, ids), reference.bm25_scores(tokens, ids), atol=1e-5)


def test_dense_search_in_milvus_matches_faiss(embedded_qa: ReportQA, milvus_qa: ReportQA) -> None:
    """Dense top-k and candidate scores agree with FAISS (to float32 rounding)."""
    reference, store = embedded_qa.store, milvus_qa.store
    some = reference.allowed_ids([SEED_FILES[1]])
    for question in QUESTIONS:
        vector = embedded_qa.encoder.encode(question)
        top, got = reference.dense_top_k(vector, 30), store.dense_top_k(vector, 30)
        assert np.allclose(got.scores, top.scores, atol=1e-5)
        # Order can differ only between passages whose cosines are equal to float32 rounding.
        assert set(got.ids.tolist()[:20]) <= set(top.ids.tolist())
        assert set(store.dense_top_k(vector, 10, some).ids.tolist()) <= set(some.tolist())
        ids = list(range(0, len(reference), 3))
        assert np.allclose(store.dense_scores(vector, ids), reference.dense_scores(vector, ids), atol=1e-5)
        units, expected = store.unit_top_k(vector, 50), reference.unit_top_k(vector, 50)
        assert np.allclose(units.scores, expected.scores, atol=1e-5)


def test_search_results_through_milvus(embedded_qa: ReportQA, milvus_qa: ReportQA) -> None:
    """Whole searches (BM25 mode) give the same cited passages through either store; hybrid works."""
    for question in QUESTIONS:
        expected = [h.citation for h in embedded_qa.search(question, top_k=10, mode="bm25").hits]
        assert [h.citation for h in milvus_qa.search(question, top_k=10, mode="bm25").hits] == expected
        hybrid = milvus_qa.search(question, top_k=5).hits
        assert hybrid and all(h.citation for h in hybrid)
    filtered = milvus_qa.search(QUESTIONS[0], top_k=5, sources=[SEED_FILES[4]]).hits
    assert filtered and {h.chunk.source for h in filtered} == {SEED_FILES[4]}


def test_incremental_writes_touch_only_changed_reports(tiny_model: str, tmp_path: Path) -> None:
    """Adding, changing and removing reports rewrites only those; BM25 keeps matching a fresh embedded build."""
    corpus = copy_corpus(tmp_path / "corpus", SEED_FILES[:3])
    location = f"milvus://{tmp_path / 'inc.db'}"
    qa = ReportQA(corpus, tmp_path / "index", model=tiny_model, store_location=location)
    first = qa.build()
    assert not first.skipped
    assert qa.build().skipped  # nothing changed: nothing written

    written: list[tuple[list[str], list[str]]] = []
    original_commit = MilvusWriter.commit

    def recording_commit(self: MilvusWriter, manifest: dict) -> None:
        original_commit(self, manifest)
        written.append((self.inserted, self.removed))

    MilvusWriter.commit = recording_commit  # type: ignore[method-assign]
    try:
        shutil.copy(Path(__file__).resolve().parents[1] / "corpus" / SEED_FILES[3], corpus / SEED_FILES[3])
        qa.build()
        assert written[-1] == ([SEED_FILES[3]], [])
        with open(corpus / SEED_FILES[0], "a", encoding="utf-8") as handle:
            handle.write("\n\n新增的段落：示例公司的昆仑芯片产能在二〇二六年翻倍。\n")
        qa.build()
        assert written[-1] == ([SEED_FILES[0]], [SEED_FILES[0]])
        (corpus / SEED_FILES[2]).unlink()
        qa.build()
        assert written[-1] == ([], [SEED_FILES[2]])
    finally:
        MilvusWriter.commit = original_commit  # type: ignore[method-assign]

    reference = ReportQA(corpus, tmp_path / "fresh", model=tiny_model, store_location="faiss")
    reference.build()
    store = qa.store
    expected = [reference.store.chunk(i).citation for i in range(len(reference.store))]
    assert [store.chunk(i).citation for i in range(len(store))] == expected
    for question in [*QUESTIONS, "昆仑芯片产能"]:
        tokens = reference.analyse(question).lexical_tokens
        _same_ranking(reference.store.bm25_top_k(tokens, 40), store.bm25_top_k(tokens, 40))
    assert qa.search("昆仑芯片产能翻倍", top_k=3, mode="bm25").hits[0].chunk.source == SEED_FILES[0]


def test_milvus_builtin_bm25_differs_from_the_project_bm25(embedded_qa: ReportQA, tmp_path: Path) -> None:
    """Why the store keeps its own BM25: Milvus Lite's built-in BM25 (jieba analyzer) does not rank as bm25s.

    The same passages go into a collection with Milvus' BM25 function, in two inserts (two segments),
    and the project's sparse weights (query-side IDF) into another; only the latter reproduces the
    embedded store's ranking.
    """
    from pymilvus import DataType, Function, FunctionType, MilvusClient

    reference = embedded_qa.store
    client = MilvusClient(str(tmp_path / "builtin.db"))
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("text", DataType.VARCHAR, max_length=65535, enable_analyzer=True,
                     analyzer_params={"tokenizer": "jieba"})
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_function(Function(name="bm25", function_type=FunctionType.BM25, input_field_names=["text"],
                                 output_field_names=["sparse"]))
    index = client.prepare_index_params()
    index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    client.create_collection("builtin", schema=schema, index_params=index)
    rows = [{"id": i, "text": lexical_text(reference.chunk(i))} for i in range(len(reference))]
    half = len(rows) // 2
    client.insert("builtin", rows[:half])
    client.flush("builtin")
    client.insert("builtin", rows[half:])
    client.flush("builtin")

    agree = 0
    negative = False
    for question in QUESTIONS:
        expected = reference.bm25_top_k(embedded_qa.analyse(question).lexical_tokens, 10).ids.tolist()
        hits = client.search("builtin", data=[question], anns_field="sparse", limit=10,
                             search_params={"metric_type": "BM25"})[0]
        negative = negative or any(h["distance"] < 0 for h in hits)
        agree += [int(h["id"]) for h in hits] == expected
    client.close()
    print(f"built-in BM25 top-10 equal to bm25s for {agree}/{len(QUESTIONS)} questions; negative scores: {negative}")
    assert agree < len(QUESTIONS)


def test_store_setting_and_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``faiss`` by default, ``$RAG_STORE`` next, clear errors for what is not a store."""
    monkeypatch.delenv("RAG_STORE", raising=False)
    assert store_setting() == "faiss"
    monkeypatch.setenv("RAG_STORE", "milvus:///x/y.db")
    assert store_setting() == "milvus:///x/y.db"
    assert store_setting("faiss") == "faiss"
    assert MilvusLocation.parse("milvus:///abs/file.db") == MilvusLocation("/abs/file.db")
    server = MilvusLocation.parse("milvus://10.0.0.5:19530?prefix=team")
    assert server == MilvusLocation("http://10.0.0.5:19530", "team")
    for bad in ("sqlite:///x.db", "milvus:///not/a/db/file"):
        with pytest.raises(RagError):
            store_setting(bad) if not bad.startswith("milvus") else MilvusLocation.parse(bad)
    with pytest.raises(RagError, match="rag index"):
        open_store(tmp_path / "index", f"milvus://{tmp_path / 'empty.db'}")


def _rag(arguments: list[str]) -> subprocess.CompletedProcess:
    """``rag`` in a new process (a Milvus Lite file has one opener, and a new process must reopen the store)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "RAG_STORE": ""}
    return subprocess.run([sys.executable, "-m", "rag.cli", *arguments], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.mark.parametrize("kind", ["lite", "server"])
def test_cli_index_and_search_with_store_option(tiny_model: str, tmp_path: Path, kind: str,
                                                request: pytest.FixtureRequest) -> None:
    """``rag --store milvus://… index`` fills the store; a second run in a new process finds it up to date
    (the store is reopened and its collections loaded again); ``search --json`` reads from it."""
    corpus = copy_corpus(tmp_path / "corpus", SEED_FILES[3:])
    store = (f"milvus://{tmp_path / 'cli.db'}" if kind == "lite"
             else request.getfixturevalue("milvus_server") + "?prefix=cli")
    base = ["--corpus", str(corpus), "--index", str(tmp_path / "index"), "--model", tiny_model, "--store", store]
    built = _rag([*base, "index"])
    assert built.returncode == 0, built.stderr
    assert "Milvus：写入 2 份报告" in built.stderr and "→ milvus://" in built.stdout
    again = _rag([*base, "index"])
    assert again.returncode == 0, again.stderr
    assert "索引已是最新" in again.stdout
    found = _rag([*base, "search", "大模型", "--json", "--mode", "bm25"])
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout.strip().splitlines()[-1])["hits"]
    assert hits and {h["source"] for h in hits} <= set(SEED_FILES[3:])
    assert bm25_idf(1, 10) > bm25_idf(5, 10) > 0


def _cli_error(arguments: list[str]) -> str:
    """Run the CLI, expect exit status 1 with a one-line user error (no traceback); return its output."""
    result = CliRunner().invoke(main, arguments, env={"RAG_STORE": ""})
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("错误 / error: ")
    return result.output


@pytest.mark.parametrize(("location", "message"), [
    ("sqlite:///tmp/x.db", "未知的存储"),
    ("milvus:///tmp/reports.txt", "Milvus Lite 需要以 .db 结尾的绝对路径"),
    ("milvus://reports.db", "三个斜杠"),
    ("milvus://localhost", "milvus://主机:端口"),
    ("milvus://localhost:port", "milvus://主机:端口"),
    ("milvus://user:secret@localhost:19530", "暂不支持带账号"),
    ("milvus:///tmp/x.db?prefix=1bad-name", "集合前缀"),
])
def test_bad_store_locations_are_clear_errors(tiny_model: str, tmp_path: Path, location: str, message: str) -> None:
    """A malformed ``--store`` fails at once with a Chinese message saying what a valid location looks like."""
    output = _cli_error(["--index", str(tmp_path / "index"), "--model", tiny_model, "--store", location,
                         "search", "大模型"])
    assert message in output


def test_unreachable_server_and_lite_file_in_use_are_clear_errors(tiny_model: str, tmp_path: Path) -> None:
    """No server on the port, a Lite path that is a plain file, a Lite file another process has open."""
    corpus = copy_corpus(tmp_path / "corpus", SEED_FILES[4:])
    base = ["--corpus", str(corpus), "--index", str(tmp_path / "index"), "--model", tiny_model]
    output = _cli_error([*base, "--store", f"milvus://127.0.0.1:{free_port()}", "index"])
    assert "无法连接 Milvus 服务器" in output and "服务器未运行" in output

    plain = tmp_path / "plain.db"
    plain.write_text("not milvus")
    assert "不是 Milvus Lite 数据" in _cli_error([*base, "--store", f"milvus://{plain}", "index"])

    held = tmp_path / "held.db"
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from pymilvus import MilvusClient; "
                               f"MilvusClient({str(held)!r}); print('open', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"open"
        assert "正被另一个进程使用" in _cli_error([*base, "--store", f"milvus://{held}", "index"])
    finally:
        holder.kill()
        holder.wait()


def test_server_that_goes_down_is_a_clear_error(tiny_model: str, tmp_path: Path) -> None:
    """A search against a Milvus server that stopped after the index loaded: a ``RagError``, no traceback."""
    corpus = copy_corpus(tmp_path / "corpus", SEED_FILES[4:])
    with running_milvus_server(tmp_path / "server") as location:
        qa = ReportQA(corpus, tmp_path / "index", model=tiny_model, store_location=location)
        qa.build()
        expected = [h.citation for h in qa.search("大模型", top_k=3, mode="bm25").hits]
        assert expected
    with pytest.raises(RagError, match="Milvus 服务器 .* 请求失败"):
        qa.search("大模型", top_k=3, mode="bm25")
    # Restarted on the same data: its collections come back released, and are loaded again on open.
    with running_milvus_server(tmp_path / "server") as location:
        again = ReportQA(corpus, tmp_path / "index", model=tiny_model, store_location=location)
        assert again.build().skipped
        assert [h.citation for h in again.search("大模型", top_k=3, mode="bm25").hits] == expected
