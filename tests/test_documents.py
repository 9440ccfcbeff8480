"""Documents: a real two-page Chinese PDF (made with fpdf2) keeps its pages; bad files fail clearly."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
from conftest import CORPUS, SEED_FILES

from rag.api import ReportQA
from rag.documents import load_corpus, load_document
from rag.errors import RagError

PREFERRED_FONT = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")

PAGE_ONE = [
    "第一章 星河科技的天枢大模型",
    "星河科技公司在二零二三年发布了天枢大模型，参数规模为三百亿。",
    "该模型主要用于金融文档的自动审阅，首批客户包括三家城市商业银行。",
    "天枢大模型采用混合专家结构，推理成本较上一代下降了四成。",
    "公司计划在明年推出面向保险行业的专用版本，并开放应用接口。",
    "管理层表示，天枢大模型的商业化收入将在三年内超过传统软件业务。",
    "分析师认为，金融行业对可解释性的要求是该模型面临的主要挑战。",
]
PAGE_TWO = [
    "第二章 天枢大模型的训练资源",
    "天枢大模型的训练使用了八百张加速卡，训练周期为四十五天。",
    "训练数据包括两千万份公开的上市公司公告和研究报告。",
    "后续版本计划在医疗影像领域落地，合作医院已经完成数据脱敏。",
    "星河科技预计下一代模型的训练成本将下降一半，能耗降低三成。",
    "公司同时建设了位于西部地区的绿色算力中心，以降低电力成本。",
    "该算力中心预计在二零二五年投入使用，可容纳两万张加速卡。",
]


def _cjk_font() -> tuple[Path, int] | None:
    """A font file with CJK glyphs that fpdf2 can embed, and its index in a collection."""
    if PREFERRED_FONT.is_file():
        return PREFERRED_FONT, 0
    candidates: list[Path] = []
    for root in ("/usr/share/fonts", "/usr/local/share/fonts", str(Path.home() / ".fonts")):
        for folder, _, files in os.walk(root):
            candidates += [Path(folder) / f for f in files if f.lower().endswith((".ttf", ".ttc", ".otf"))]
    keywords = ("wqy", "cjk", "notosanssc", "notoserifsc", "droidsansfallback", "uming", "ukai", "simhei", "simsun")
    for path in sorted(candidates, key=lambda p: (not p.name.lower().endswith(".ttf"), p.name)):
        if any(k in path.name.lower().replace("-", "") for k in keywords):
            return path, 0
    return None


def make_pdf(path: Path, pages: list[list[str]]) -> Path:
    fpdf = pytest.importorskip("fpdf")
    font = _cjk_font()
    if font is None:
        pytest.skip("no CJK font installed (apt-get install fonts-wqy-microhei)")
    pdf = fpdf.FPDF()
    pdf.add_font("cjk", fname=str(font[0]), collection_font_number=font[1])
    pdf.set_font("cjk", size=12)
    for lines in pages:
        pdf.add_page()
        for line in lines:
            pdf.multi_cell(0, 8, line)
            pdf.ln(2)
    pdf.output(str(path))
    return path


@pytest.fixture
def two_page_pdf(tmp_path: Path) -> Path:
    return make_pdf(tmp_path / "星河科技报告.pdf", [PAGE_ONE, PAGE_TWO])


def test_pdf_text_and_pages(two_page_pdf):
    document = load_document(two_page_pdf)
    assert document.source == two_page_pdf.name
    assert document.raw_page_starts is not None and len(document.raw_page_starts) == 2
    for page, lines in ((1, PAGE_ONE), (2, PAGE_TWO)):
        for line in lines:
            offset = document.text.find(line)
            assert offset >= 0, f"{line!r} missing from extracted text {document.text!r}"
            assert document.page_of(offset) == page
            assert document.page_of(offset + len(line) - 1) == page
    assert document.text.find(PAGE_ONE[-1]) < document.text.find(PAGE_TWO[0])


def test_text_file_has_no_pages():
    document = load_document(CORPUS / SEED_FILES[4])
    assert document.page_of(100) is None
    assert document.line_of(0) >= 1


def test_pdf_hit_reports_its_page(two_page_pdf, tmp_path, tiny_model):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    two_page_pdf.rename(corpus / two_page_pdf.name)
    qa = ReportQA(corpus_dir=corpus, index_dir=tmp_path / "index", model=tiny_model)
    report = qa.build()
    assert report.documents == 1 and report.failures == []
    pages = {chunk.page for source in qa.store.documents for chunk in qa.store.chunks_of(source)}
    assert pages == {1, 2}, "the PDF is cut into passages on both pages"

    result = qa.search("天枢大模型的训练使用了多少张加速卡", top_k=3)
    assert result.hits
    best = result.hits[0]
    assert "八百张加速卡" in best.chunk.text
    payload = best.to_json()
    assert payload["page"] == 2
    assert payload["source"] == two_page_pdf.name

    first_page = qa.search("天枢大模型的参数规模是多少", top_k=3).hits[0]
    assert "三百亿" in first_page.chunk.text
    assert first_page.to_json()["page"] == 1
    view = qa.cite(best.citation)
    assert view.page == 2 and view.text == best.chunk.text


# -- bad files ------------------------------------------------------------------------------------

def _write_bad_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "empty": folder / "empty_report.txt",
        "binary": folder / "binary_report.txt",
        "docx": folder / "word_report.docx",
        "pdf": folder / "corrupt_report.pdf",
    }
    files["empty"].write_bytes(b"")
    files["binary"].write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(2048))
    with zipfile.ZipFile(files["docx"], "w") as docx:
        docx.writestr("word/document.xml", "<w:document>阿里通义大模型</w:document>")
    files["pdf"].write_bytes(os.urandom(4096))
    return files


@pytest.mark.parametrize("kind", ["empty", "binary", "docx", "pdf"])
def test_bad_file_gives_clear_error(tmp_path, kind):
    path = _write_bad_files(tmp_path)[kind]
    with pytest.raises(RagError) as caught:
        load_document(path)
    message = str(caught.value)
    assert path.name in message
    assert "Traceback" not in message and "\n" not in message


def test_pdf_with_pdf_header_but_garbage_body(tmp_path):
    path = tmp_path / "truncated.pdf"
    path.write_bytes(b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R\n" + os.urandom(512))
    with pytest.raises(RagError, match="truncated.pdf"):
        load_document(path)


def test_whitespace_only_text_file_is_empty(tmp_path):
    path = tmp_path / "blank.md"
    path.write_text(" \n\t\n\u3000\n", encoding="utf-8")
    with pytest.raises(RagError, match="blank.md"):
        load_document(path)


def test_gb18030_text_is_decoded(tmp_path):
    path = tmp_path / "gbk_report.txt"
    path.write_bytes("阿里发布通义大模型，参数规模达到十万亿。".encode("gb18030"))
    assert load_document(path).text == "阿里发布通义大模型，参数规模达到十万亿。"


def test_load_corpus_keeps_good_reports_and_lists_failures(tmp_path):
    corpus = tmp_path / "corpus"
    files = _write_bad_files(corpus)
    good = SEED_FILES[4]
    (corpus / good).write_bytes((CORPUS / good).read_bytes())
    (corpus / "metadata.json").write_text("{}", encoding="utf-8")
    (corpus / ".hidden.txt").write_text("ignored", encoding="utf-8")

    documents, failures = load_corpus(corpus)
    assert [d.source for d in documents] == [good]
    assert "通义" in documents[0].text
    # the hidden file is not read, but it is reported like every other skipped entry
    assert sorted(f.source for f in failures) == sorted([".hidden.txt", *(p.name for p in files.values())])
    for failure in failures:
        assert failure.source in failure.reason


def test_build_skips_bad_files_and_indexes_the_good_one(tmp_path, tiny_model):
    corpus = tmp_path / "corpus"
    files = _write_bad_files(corpus)
    good = SEED_FILES[4]
    (corpus / good).write_bytes((CORPUS / good).read_bytes())
    qa = ReportQA(corpus_dir=corpus, index_dir=tmp_path / "index", model=tiny_model)
    report = qa.build()
    assert report.documents == 1
    assert sorted(f.source for f in report.failures) == sorted(p.name for p in files.values())
    assert list(qa.reports()) == [good]


def test_missing_corpus_folder(tmp_path):
    with pytest.raises(RagError, match="corpus folder not found"):
        load_corpus(tmp_path / "nowhere")
