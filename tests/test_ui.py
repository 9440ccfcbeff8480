"""The Gradio app over loopback, called the way a script would: through ``gradio_client``.

One app serves the seed reports indexed with the tiny model (read-only wiring: endpoints, filters,
lookups); one serves the real-model seed index, for what depends on the answer itself; a third
serves a small writable ReportQA over copies of two seed reports, for uploads.
"""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from conftest import SEED_FILES, copy_corpus
from gradio_client import Client, handle_file

from rag import present, webui
from rag.api import MAX_UPLOAD_BYTES, ReportQA, safe_file_name

M6_REPORT = "004_e0d667138c034a95.txt"


def free_port() -> int:
    """A currently unused TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(qa: ReportQA):
    """Launch the UI for ``qa`` on a free loopback port; returns (app, url)."""
    port = free_port()
    app = webui.launch(qa, host="127.0.0.1", port=port, block=False)
    return app, f"http://127.0.0.1:{port}/"


def _served(qa: ReportQA):
    app, url = serve(qa)
    yield url
    app.close()


@pytest.fixture(scope="module")
def seed_app(tiny_qa):
    yield from _served(tiny_qa)


@pytest.fixture(scope="module")
def seed_client(seed_app) -> Client:
    return Client(seed_app, verbose=False)


@pytest.fixture(scope="module")
def real_client(seed_qa):
    for url in _served(seed_qa):
        yield Client(url, verbose=False)


@pytest.fixture(scope="module")
def upload_qa(tmp_path_factory, tiny_model) -> ReportQA:
    """A separate, writable ReportQA over copies of two seed reports."""
    base = tmp_path_factory.mktemp("ui-upload")
    qa = ReportQA(corpus_dir=copy_corpus(base / "corpus", SEED_FILES[3:5]), index_dir=base / "index",
                  model=tiny_model)
    qa.build()
    return qa


@pytest.fixture(scope="module")
def upload_app(upload_qa):
    yield from _served(upload_qa)


@pytest.fixture(scope="module")
def upload_client(upload_app) -> Client:
    return Client(upload_app, verbose=False)


def corpus_names(qa: ReportQA) -> set[str]:
    return {p.name for p in qa.corpus_dir.iterdir()}


# --- serving --------------------------------------------------------------------------------

def test_binds_loopback_only(seed_app):
    assert seed_app.startswith("http://127.0.0.1:")
    assert httpx.get(seed_app, timeout=10).status_code == 200


def test_named_endpoints(seed_client):
    endpoints = seed_client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/ask", "/lookup", "/add_report"} <= set(endpoints)


# --- ask ------------------------------------------------------------------------------------

def test_ask_returns_answer_with_marker(real_client):
    result = real_client.predict("M6-OFA 是什么时候发布的？", 5, None, api_name="/ask")
    assert isinstance(result, dict)
    assert not result["abstained"] and "error" not in result
    assert "[1]" in result["answer"]
    assert "2022年1月" in result["answer"]
    assert result["sources"][0]["marker"] == 1
    assert result["sources"][0]["citation"].startswith(M6_REPORT)
    assert "中信建投" in result["sources"][0]["label"]
    assert "来源" in result["text"]


def test_ask_report_filter_limits_sources(seed_client):
    result = seed_client.predict("哪些公司是通义大模型的合作伙伴？", 3, [SEED_FILES[2]], api_name="/ask")
    assert result["hits"], result
    assert {hit["source"] for hit in result["hits"]} == {SEED_FILES[2]}
    assert len(result["hits"]) <= 3


def test_ask_takes_the_chat_history(seed_client):
    result = seed_client.predict("那GPT-4呢？", 5, None, ["GPT-3 的参数量是多少？"], api_name="/ask")
    assert result["standalone"] == "GPT-4 的参数量是多少？"
    assert "按上文理解为：GPT-4 的参数量是多少？" in result["text"]


def test_ask_empty_question_is_a_message(seed_client):
    result = seed_client.predict("   ", api_name="/ask")
    assert result["abstained"] and "问题为空" in result["error"]


# --- citation lookup --------------------------------------------------------------------------

def test_lookup_citation_from_an_answer(real_client):
    answer = real_client.predict("M6-OFA 是什么时候发布的？", api_name="/ask")
    citation = answer["sources"][0]["citation"]
    page = real_client.predict(citation, api_name="/lookup")
    assert citation in page and "rag-cited" in page
    assert "业界首个通用的统一大模型M6-OFA发布" in page
    assert "中信建投" in page


def test_lookup_unknown_citation_and_missing_phrase(seed_client):
    assert "未找到报告" in seed_client.predict("nope.txt:L1-L2", api_name="/lookup")
    assert "未找到短语" in seed_client.predict("“这句话不在任何报告里出现”", api_name="/lookup")
    assert "请输入" in seed_client.predict("", api_name="/lookup")


def test_lookup_phrase_highlights_matches(seed_client):
    page = seed_client.predict("“通义千问”", api_name="/lookup")
    assert "找到" in page and "<mark>通义千问</mark>" in page


# --- formatting -----------------------------------------------------------------------------

def test_highlight_marks_folded_terms_and_escapes_html():
    out = present.highlight("<b>ＧＰＴ－３</b> 的参数\n量为1750亿", ["gpt-3", "参数量"])
    assert out.startswith("&lt;b&gt;<mark>ＧＰＴ－３</mark>&lt;/b&gt;")
    assert "<mark>参数<br>量</mark>" in out
    assert "<script>" not in present.highlight("<script>alert(1)</script>", ["alert"])


def test_answer_html_has_sources_context_and_marks(seed_qa):
    result = seed_qa.ask("M6-OFA 是什么时候发布的？")
    page = present.answer_html(seed_qa, result)
    assert '<span class="rag-marker">[1]</span>' in page
    assert "<details" in page and "上下文" in page
    assert "<mark>m6-ofa</mark>" in page.lower()
    assert result.sources[0].citation in page and result.sources[0].document.label in page


def test_caution_note_shows_above_a_cautious_answer(seed_qa):
    from rag.answer import CAUTION

    cautious = seed_qa.ask("英伟达H200单卡售价大概多少美元？")
    assert cautious.caution
    page = present.answer_html(seed_qa, cautious)
    assert page.index(CAUTION) < page.index("rag-answer-text")
    assert CAUTION not in present.answer_html(seed_qa, seed_qa.ask("GPT-3的参数量是多少"))


def test_refusal_shows_the_closest_passages(seed_qa):
    refused = seed_qa.ask("报告里给金山办公定的目标价是多少？")
    page = present.answer_html(seed_qa, refused)
    assert "最接近的段落" in page and 'rag-sources-title">来源<' not in page
    assert all(hit.citation in page for hit in refused.closest)
    assert page.index("在报告中未找到相关内容") < page.index("最接近的段落")


def test_also_in_is_listed(seed_qa):
    # The two 浙商证券 files are near-copies: their shared passages are folded into one hit.
    # Whether a cited passage has a folded copy depends on ranking, so one of several such questions must.
    results = [seed_qa.ask(q) for q in ("GPT-3 的参数量是多少？", "微软365 Copilot主要是由哪个模型驱动的？",
                                        "文心一言是哪家公司的？")]
    folded = [r for r in results if any(hit.also_in for hit in r.sources)]
    assert folded, "no cited passage lists its near-copy"
    page = present.answer_html(seed_qa, folded[0])
    assert "亦见" in page
    assert all(c in page for hit in folded[0].sources for c in hit.also_in)


# --- uploads --------------------------------------------------------------------------------

def _exe(path):
    path.write_bytes(b"MZ\x90\x00 not a report")


def _empty(path):
    path.write_bytes(b"")


def _oversized(path):
    with path.open("wb") as handle:
        handle.truncate(MAX_UPLOAD_BYTES + 1)


@pytest.mark.parametrize(("name", "make", "message_part"), [
    ("report.exe", _exe, "不支持的文件类型"),
    ("empty.txt", _empty, "文件为空"),
    ("big.txt", _oversized, "文件超过"),
])
def test_upload_rejects_unusable_files(upload_client, upload_qa, tmp_path, name, make, message_part):
    before = corpus_names(upload_qa)
    bad = tmp_path / name
    make(bad)
    message = upload_client.predict(handle_file(str(bad)), [], api_name="/add_report")[0]
    assert message_part in message
    assert corpus_names(upload_qa) == before


def test_malformed_pdf_is_an_error_and_index_survives(upload_client, upload_qa, tmp_path):
    before = corpus_names(upload_qa)
    pdf = tmp_path / "broken.pdf"
    pdf.write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >>\nthis is not a pdf\n%%EOF")
    message = upload_client.predict(handle_file(str(pdf)), [], api_name="/add_report")[0]
    assert "添加失败" in message and "PDF" in message
    assert corpus_names(upload_qa) == before
    assert upload_qa.index_status() is None
    answer = upload_client.predict("M6-OFA 是什么时候发布的？", api_name="/ask")
    assert "[1]" in answer["answer"]


def test_traversal_name_lands_inside_corpus(upload_client, upload_app, upload_qa, tmp_path):
    corpus = upload_qa.corpus_dir.resolve()
    body = "# 越界测试报告\n\n天枢大模型由示例科技于2024年5月发布，用于路径安全测试。\n".encode()
    # Upload with a hostile multipart file name, then hand the stored file to the endpoint.
    response = httpx.post(f"{upload_app}gradio_api/upload",
                          files={"files": ("../../evil.txt", body, "text/plain")}, timeout=30)
    response.raise_for_status()
    stored = response.json()[0]
    message = upload_client.predict({"path": stored, "orig_name": "../../evil.txt",
                                     "meta": {"_type": "gradio.FileData"}}, [], api_name="/add_report")[0]
    assert "已添加" in message, message
    assert (corpus / "evil.txt").is_file()
    assert not (corpus.parent / "evil.txt").exists() and not (corpus.parent.parent / "evil.txt").exists()
    # The API sanitises names on its own too, whatever the caller passes.
    source = tmp_path / "plain.txt"
    source.write_bytes(body)
    assert safe_file_name("../../evil.txt") == "evil.txt"
    assert safe_file_name("..\\..\\evil2.txt") == "evil2.txt"
    upload_qa.add_report(source, name="../../../evil3.txt")
    assert (corpus / "evil3.txt").is_file()
    assert not any(p.name.startswith("evil") for p in corpus.parent.iterdir() if p.is_file())
    assert all(Path(p).resolve().parent == corpus for p in corpus.glob("evil*"))


def test_uploaded_report_is_searchable_and_filterable(upload_client, upload_qa, tmp_path):
    report = tmp_path / "星河报告.md"
    report.write_text("# 星河大模型专题报告\n\n示例证券 2024年6月1日\n\n"
                      "星河大模型由北辰科技于2024年5月20日正式发布，参数量为七千亿。\n\n"
                      "北辰科技表示，星河大模型将首先用于智能客服和代码生成。\n", encoding="utf-8")
    message, filter_update, *_ = upload_client.predict(handle_file(str(report)), [], api_name="/add_report")
    assert "已添加" in message, message
    assert (upload_qa.corpus_dir / "星河报告.md").is_file()
    values = [value for _, value in filter_update["choices"]]
    assert "星河报告.md" in values
    answer = upload_client.predict("星河大模型是什么时候发布的？", 5, ["星河报告.md"], api_name="/ask")
    assert "[1]" in answer["answer"] and "2024年5月20日" in answer["answer"]
    assert answer["sources"][0]["citation"].startswith("星河报告.md:")


# --- no index yet ---------------------------------------------------------------------------

def test_missing_index_is_a_message_not_a_failure(tmp_path, tiny_model):
    qa = ReportQA(corpus_dir=copy_corpus(tmp_path / "corpus", [M6_REPORT]), index_dir=tmp_path / "index",
                  model=tiny_model)
    assert qa.index_status()
    app, url = serve(qa)
    try:
        client = Client(url, verbose=False)
        result = client.predict("M6-OFA 是什么时候发布的？", api_name="/ask")
        assert result["abstained"] and "索引" in result["error"] and result["sources"] == []
        assert "索引" in client.predict(f"{M6_REPORT}:L66-L81", api_name="/lookup")
        assert qa.index_status()  # asking never builds behind the user's back
    finally:
        app.close()
