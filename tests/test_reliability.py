"""Reliability (issue #14): nothing escapes the corpus, nothing is overwritten, every skip is told.

Document-level tests need no model; the few that need an index build one over one or two short
texts (their embeddings are cached by content hash after the first run).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path

import pytest

from rag.documents import load_corpus, load_document, scan_corpus
from rag.errors import RagError

REPORT = "阿里云发布了通义千问大模型，首批合作伙伴包括浙江大学和中国石化。\n通义千问支持多轮对话与文案创作。\n"
OTHER = "百度的文心一言于2023年3月发布，主要面向搜索和办公场景。\n文心一言的底座是ERNIE 3.0。\n"


def make_corpus(folder: Path, files: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {"report.txt": REPORT}).items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def reasons(failures) -> dict[str, str]:
    return {failure.source: failure.reason for failure in failures}


def assert_one_bilingual_line(reason: str, name: str) -> None:
    assert reason.startswith(f"{name}: ")
    assert "\n" not in reason and " / " in reason
    assert any("\u4e00" <= ch <= "\u9fff" for ch in reason), "Chinese first"


# --- symlinks and special files ----------------------------------------------------------------

def test_symlink_outside_the_corpus_is_not_read(tmp_path):
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("root:x:0:0:root:/root:/bin/bash 机密内容不应被索引\n", encoding="utf-8")
    corpus = make_corpus(tmp_path / "corpus")
    (corpus / "passwd_link.txt").symlink_to(secret)
    (corpus / "etc_link.txt").symlink_to("/etc/passwd")
    (corpus / "up_link.txt").symlink_to("../outside/secret.txt")  # relative, still outside

    documents, failures = load_corpus(corpus)
    assert [d.source for d in documents] == ["report.txt"]
    assert all("root:x" not in d.text for d in documents)
    found = reasons(failures)
    for name in ("passwd_link.txt", "etc_link.txt", "up_link.txt"):
        assert "语料目录之外" in found[name] and "outside the corpus" in found[name]
        assert_one_bilingual_line(found[name], name)


def test_symlink_inside_the_corpus_is_read_under_its_own_name(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    (corpus / "alias.txt").symlink_to("report.txt")
    (corpus / "abs_alias.md").symlink_to(corpus / "report.txt")
    documents, failures = load_corpus(corpus)
    assert failures == []
    assert sorted(d.source for d in documents) == ["abs_alias.md", "alias.txt", "report.txt"]
    assert len({d.text for d in documents}) == 1


def test_a_corpus_folder_reached_through_a_link_still_reads(tmp_path):
    real = make_corpus(tmp_path / "real")
    (real / "alias.txt").symlink_to(real / "report.txt")
    linked = tmp_path / "linked"
    linked.symlink_to(real)
    documents, failures = load_corpus(linked)
    assert failures == [] and sorted(d.source for d in documents) == ["alias.txt", "report.txt"]


def test_fifo_does_not_hang_and_is_reported(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    os.mkfifo(corpus / "pipe.txt")
    (corpus / "pipe_link.txt").symlink_to("pipe.txt")
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(result=load_corpus(corpus)), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "load_corpus blocked on a FIFO"
    documents, failures = outcome["result"]
    assert [d.source for d in documents] == ["report.txt"]
    found = reasons(failures)
    for name in ("pipe.txt", "pipe_link.txt"):
        assert "特殊文件" in found[name] and "FIFO" in found[name]
        assert_one_bilingual_line(found[name], name)


def test_reading_a_fifo_directly_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.txt")
    outcome: dict = {}

    def read() -> None:
        try:
            load_document(tmp_path / "pipe.txt")
        except RagError as exc:
            outcome["error"] = str(exc)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "load_document blocked on a FIFO"
    assert "不是普通文件" in outcome["error"]


def test_hidden_entries_folders_and_dangling_links_each_get_one_line(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    (corpus / ".draft.txt").write_text(OTHER, encoding="utf-8")
    (corpus / ".git").mkdir()
    (corpus / "archive").mkdir()
    (corpus / "archive" / "old.txt").write_text(OTHER, encoding="utf-8")
    (corpus / "gone.txt").symlink_to("nowhere.txt")
    (corpus / "loop.txt").symlink_to("loop.txt")
    (corpus / "metadata.json").write_text("{}", encoding="utf-8")
    (corpus / ".replaced").mkdir()  # this tool's own backup folder: skipped without a line

    documents, failures = load_corpus(corpus)
    assert [d.source for d in documents] == ["report.txt"]
    found = reasons(failures)
    assert sorted(found) == [".draft.txt", ".git", "archive", "gone.txt", "loop.txt"]
    assert "隐藏文件" in found[".draft.txt"] and "hidden file" in found[".draft.txt"]
    assert "隐藏文件夹" in found[".git"] and "hidden folder" in found[".git"]
    assert "子文件夹" in found["archive"] and "sub-folder" in found["archive"]
    for name in ("gone.txt", "loop.txt"):
        assert "dangling" in found[name]
    for name, reason in found.items():
        assert_one_bilingual_line(reason, name)


def test_oversize_file_is_skipped_with_its_size(tmp_path, monkeypatch):
    corpus = make_corpus(tmp_path / "corpus", {"small.txt": REPORT, "big.txt": OTHER * 400})
    big = (corpus / "big.txt").stat().st_size
    documents, failures = load_corpus(corpus, max_bytes=big - 1)
    assert [d.source for d in documents] == ["small.txt"]
    (failure,) = failures
    assert failure.source == "big.txt" and "超过上限" in failure.reason and "RAG_MAX_FILE_MB" in failure.reason
    assert_one_bilingual_line(failure.reason, "big.txt")
    # The default limit comes from RAG_MAX_FILE_MB (megabytes)
    monkeypatch.setenv("RAG_MAX_FILE_MB", str((big - 1) / (1024 * 1024)))
    assert [f.name for f in scan_corpus(corpus)[0]] == ["small.txt"]
    monkeypatch.setenv("RAG_MAX_FILE_MB", "20")
    assert [f.name for f in scan_corpus(corpus)[0]] == ["big.txt", "small.txt"]
    monkeypatch.setenv("RAG_MAX_FILE_MB", "-3")
    with pytest.raises(RagError, match="RAG_MAX_FILE_MB"):
        scan_corpus(corpus)


# --- encodings and PDF warnings ----------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_utf16_text_is_decoded(tmp_path, encoding):
    path = tmp_path / "report.txt"
    text = "GPT-3 的参数量为1750亿。\n阿里发布通义大模型，参数规模达到10万亿。\n"
    path.write_bytes(text.encode(encoding))
    assert load_document(path).text == text.strip()


def test_random_bytes_are_still_binary(tmp_path):
    path = tmp_path / "noise.txt"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(RagError, match="binary file"):
        load_document(path)


def _ascii_pdf(path: Path, truncate_eof: bool = False) -> Path:
    fpdf = pytest.importorskip("fpdf")
    pdf = fpdf.FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.multi_cell(0, 8, "Quarterly report: revenue grew 12 percent, margins were stable.")
    data = bytes(pdf.output())
    if truncate_eof:  # "%%EO": pypdf reads it, logging "EOF marker seems truncated"
        data = data[:data.rindex(b"%%EOF") + 4]
    path.write_bytes(data)
    return path


def test_pdf_warning_is_reported_with_the_file_name(tmp_path, caplog):
    path = _ascii_pdf(tmp_path / "no_eof.pdf", truncate_eof=True)
    with caplog.at_level(logging.WARNING):
        document = load_document(path)
    assert "revenue grew" in document.text
    assert not [r for r in caplog.records if r.name.startswith("pypdf")], "pypdf's bare warning leaked"
    ours = [r.getMessage() for r in caplog.records if r.name == "rag.documents"]
    assert len(ours) == 1 and "no_eof.pdf" in ours[0] and "EOF marker" in ours[0]


def test_pdf_failure_message_carries_pypdf_warnings(tmp_path, caplog):
    path = tmp_path / "truncated.pdf"
    path.write_bytes(b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R\n" + b"x" * 512)
    with caplog.at_level(logging.WARNING), pytest.raises(RagError) as caught:
        load_document(path)
    assert "truncated.pdf" in str(caught.value) and "\n" not in str(caught.value)
    assert not [r for r in caplog.records if r.name.startswith("pypdf")]
    assert logging.getLogger("pypdf").propagate, "the pypdf logger is restored"


# --- metadata.json -----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o644, 0o664, 0o600])
def test_metadata_rewrite_keeps_the_file_mode(tmp_path, mode):
    from rag.metadata import ReportInfo, forget_report, load_metadata, save_metadata

    corpus = make_corpus(tmp_path / "corpus")
    path = corpus / "metadata.json"
    path.write_text('{"report.txt": {"title": "旧标题"}}', encoding="utf-8")
    os.chmod(path, mode)
    save_metadata(corpus, {"report.txt": ReportInfo(title="新标题"), "b.txt": ReportInfo(institution="某证券")})
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert load_metadata(corpus)["report.txt"].title == "新标题"
    assert forget_report(corpus, "report.txt") and not forget_report(corpus, "report.txt")
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert list(load_metadata(corpus)) == ["b.txt"]
    assert sorted(p.name for p in corpus.iterdir()) == ["metadata.json", "report.txt"], "no temporary left"


def test_new_metadata_file_follows_the_umask(tmp_path):
    from rag.metadata import ReportInfo, save_metadata

    corpus = make_corpus(tmp_path / "corpus")
    old = os.umask(0o022)
    try:
        save_metadata(corpus, {"report.txt": ReportInfo(title="标题")})
    finally:
        os.umask(old)
    assert stat.S_IMODE((corpus / "metadata.json").stat().st_mode) == 0o644


def test_metadata_fifo_does_not_block(tmp_path):
    from rag.metadata import load_metadata

    corpus = make_corpus(tmp_path / "corpus")
    os.mkfifo(corpus / "metadata.json")
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(result=load_metadata(corpus)), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive() and outcome["result"] == {}


# --- an index over two short reports -----------------------------------------------------------

LINES = [
    "# 星河科技大模型专题报告",
    "",
    "星河科技在二零二四年发布了天枢大模型，该模型面向金融文档审阅场景并已完成首批部署",  # joined with the next
    "首批客户包括三家城市商业银行和两家保险公司。",
    "天枢大模型采用混合专家结构，推理成本下降四成。",
    "公司计划明年推出面向保险行业的专用版本。",
    "管理层预计商业化收入三年内超过传统软件业务。",
    "训练使用了八百张加速卡，训练周期为四十五天。",
    "训练数据包括两千万份公开公告和研究报告。",
    "后续版本计划在医疗影像领域落地。",
    "预计下一代模型的训练成本将下降一半。",
    "绿色算力中心预计二零二五年投入使用。",
]
STAR = "\n".join(LINES) + "\n"
SECRET = "root:x:0:0:root:/root:/bin/bash 这是语料目录之外的机密文件\n"


@pytest.fixture(scope="module")
def linked_qa(tmp_path_factory, tiny_model):
    from rag.api import ReportQA

    base = tmp_path_factory.mktemp("tiny")
    corpus = make_corpus(base / "corpus", {"star.txt": STAR, "wenxin.txt": OTHER})
    (base / "secret.txt").write_text(SECRET, encoding="utf-8")
    (corpus / "passwd_link.txt").symlink_to(base / "secret.txt")
    os.mkfifo(corpus / "pipe.txt")
    qa = ReportQA(corpus_dir=corpus, index_dir=base / "index", model=tiny_model)
    report = qa.build()
    assert report.documents == 2
    assert sorted(f.source for f in report.failures) == ["passwd_link.txt", "pipe.txt"]
    return qa


def cli(qa, *args: str):
    from click.testing import CliRunner

    from rag.cli import main

    return CliRunner().invoke(main, ["--corpus", str(qa.corpus_dir), "--index", str(qa.index_dir),
                                     "--model", qa.model, *args])


def test_linked_secret_is_not_searchable(linked_qa):
    assert set(linked_qa.reports()) == {"star.txt", "wenxin.txt"}
    for mode in ("bm25", "hybrid"):
        for hit in linked_qa.search("root:x:0:0", mode=mode).hits:
            assert "root:x" not in hit.chunk.text and "机密" not in hit.chunk.text


def test_rag_index_prints_each_skip_line_once(linked_qa):
    result = cli(linked_qa, "index")
    assert result.exit_code == 0, result.output
    assert "up to date" in result.stdout
    lines = result.stderr.splitlines()
    for name in ("passwd_link.txt", "pipe.txt"):
        skipped = [line for line in lines if line.startswith(f"跳过 / skipped: {name}:")]
        assert len(skipped) == 1, result.stderr
    assert "语料 / corpus: 2 个文件 / files" in result.stderr


def test_unknown_report_in_the_filter_is_an_error(linked_qa):
    for call in (linked_qa.search, linked_qa.ask):
        with pytest.raises(RagError) as caught:
            call("天枢大模型用了多少张加速卡", sources=["star.txt", "nope.txt"])
        message = str(caught.value)
        assert "nope.txt" in message and "不存在" in message and "unknown report" in message
        assert "star.txt" not in message
    with pytest.raises(RagError, match="nope.txt"):
        linked_qa.find("天枢", sources=["nope.txt"])
    hits = linked_qa.search("天枢大模型用了多少张加速卡", sources=["star.txt"]).hits
    assert hits and {h.chunk.source for h in hits} == {"star.txt"}


@pytest.mark.parametrize("command", ["search", "ask"])
def test_cli_unknown_source_is_one_line_and_exit_1(linked_qa, command):
    result = cli(linked_qa, command, "--source", "nope.txt", "天枢大模型用了多少张加速卡")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert "nope.txt" in line and "unknown report" in line


def _ask_endpoint(qa):
    from rag import webui

    app = webui.build_app(qa)
    (function,) = [block.fn for block in app.fns.values() if block.api_name == "ask"]
    return function


def test_ask_endpoint_takes_a_number_or_says_what_is_wrong(linked_qa):
    ask = _ask_endpoint(linked_qa)
    numeric = ask(2024)
    assert numeric["query"] == "2024" and isinstance(numeric["answer"], str) and "error" not in numeric
    for bad in ([1, 2], {"q": 1}):
        result = ask(bad)
        assert result["abstained"] and "问题必须是文本" in result["error"]
    assert "问题为空" in ask(None)["error"]
    unknown = ask("天枢大模型用了多少张加速卡", 5, ["nope.txt"])
    assert unknown["abstained"] and "nope.txt" in unknown["error"]


# --- citations of a line range -----------------------------------------------------------------

def test_cite_a_sub_range_shows_exactly_those_lines(linked_qa):
    chunk = next(c for c in linked_qa.store.chunks_of("star.txt") if c.line_start <= 8 <= c.line_end)
    assert (chunk.line_start, chunk.line_end) != (8, 9), "the range must not be a passage of its own"
    view = linked_qa.cite("star.txt:L8-L9")
    assert view.text == f"{LINES[7]}\n{LINES[8]}"
    assert (view.line_start, view.line_end) == (8, 9)
    assert view.document.text[view.start:view.end] == view.text
    assert view.before().endswith(LINES[6] + "\n") and view.after().startswith("\n" + LINES[9])
    # line 4 was joined to line 3 in the canonical text: still exactly line 4
    assert linked_qa.cite("star.txt:L4-L4").text == LINES[3]
    assert linked_qa.cite("star.txt:L12-L40").text == LINES[11], "a range past the end stops at the last line"
    with pytest.raises(RagError, match="blank"):
        linked_qa.cite("star.txt:L2-L2")
    with pytest.raises(RagError, match="outside"):
        linked_qa.cite("star.txt:L30-L40")
    whole = linked_qa.cite(chunk.citation)  # a passage's own ID is unchanged
    assert whole.text == chunk.text


def test_cli_cite_sub_range(linked_qa):
    result = cli(linked_qa, "cite", "star.txt:L8-L9", "--context", "30")
    assert result.exit_code == 0, result.output
    passage = result.stdout.split("—— 引文 / passage ——\n")[1].split("\n—— 下文 / after ——")[0]
    assert passage == f"{LINES[7]}\n{LINES[8]}"
    assert "行 L8-L9" in result.stdout


def test_cite_after_the_file_changed_shows_the_passages_with_their_real_lines(linked_qa):
    path = linked_qa.corpus_dir / "star.txt"
    try:
        path.write_text(STAR + "新增的一行。\n", encoding="utf-8")
        view = linked_qa.cite("star.txt:L8-L9")
    finally:
        path.write_text(STAR, encoding="utf-8")
    assert LINES[7] in view.text and LINES[8] in view.text
    assert view.line_start < 8 or view.line_end > 9, "labelled with the lines actually shown"
    assert linked_qa.cite("star.txt:L8-L9").text == f"{LINES[7]}\n{LINES[8]}"


# --- uploads never overwrite silently ----------------------------------------------------------

JUNK = "这是一份误传的草稿，只有一句话。\n"


@pytest.fixture
def upload_qa(tmp_path, tiny_model):
    import json

    from rag.api import ReportQA

    corpus = make_corpus(tmp_path / "corpus", {"star.txt": STAR, "wenxin.txt": OTHER})
    (corpus / "metadata.json").write_text(json.dumps(
        {"star.txt": {"title": "星河科技大模型专题报告", "institution": "示例证券", "date": "2024-05-01",
                      "analysts": []}}, ensure_ascii=False), encoding="utf-8")
    qa = ReportQA(corpus_dir=corpus, index_dir=tmp_path / "index", model=tiny_model)
    qa.build()
    assert qa.store.documents["star.txt"].info.institution == "示例证券"
    return qa


def test_upload_of_an_existing_name_is_refused(upload_qa, tmp_path):
    from rag.api import ReportExists

    upload = tmp_path / "star.txt"
    upload.write_text(JUNK, encoding="utf-8")
    built_at = upload_qa.store.manifest["built_at"]
    with pytest.raises(ReportExists) as caught:
        upload_qa.add_report(upload)
    assert not caught.value.identical
    assert "已有同名报告" in str(caught.value) and "not overwritten" in str(caught.value)
    assert (upload_qa.corpus_dir / "star.txt").read_text(encoding="utf-8") == STAR
    assert upload_qa.store.manifest["built_at"] == built_at, "nothing was rebuilt"
    assert not (upload_qa.corpus_dir / ".replaced").exists()


def test_identical_upload_says_it_is_already_there(upload_qa, tmp_path):
    from rag.api import ReportExists

    upload = tmp_path / "star.txt"
    upload.write_text(STAR, encoding="utf-8")
    for replace in (False, True):
        with pytest.raises(ReportExists) as caught:
            upload_qa.add_report(upload, replace=replace)
        assert caught.value.identical and "已存在" in str(caught.value) and "无需更改" in str(caught.value)
    assert sorted(p.name for p in upload_qa.corpus_dir.iterdir()) == ["metadata.json", "star.txt", "wenxin.txt"]


def test_replace_resets_metadata_and_keeps_a_backup_until_the_build_completes(upload_qa, tmp_path):
    import uuid

    from rag.metadata import load_metadata

    upload = tmp_path / "star.txt"
    # new text every run, so the embedding cache cannot skip the build's progress callbacks
    upload.write_text(f"{JUNK}草稿编号{uuid.uuid4().hex[:12]}。\n", encoding="utf-8")
    seen: dict = {}

    def progress(done: int, total: int) -> None:  # look at the corpus while the replacing build runs
        if "backup" not in seen:
            backups = list((upload_qa.corpus_dir / ".replaced").rglob("star.txt"))
            seen["backup"] = backups[0].read_text(encoding="utf-8") if backups else None
            seen["metadata"] = load_metadata(upload_qa.corpus_dir)

    report = upload_qa.add_report(upload, replace=True, progress=progress)
    assert seen["backup"] == STAR, "the replaced version is recoverable while the build runs"
    fresh = seen["metadata"].get("star.txt")  # by now the build may have written what it detected
    assert fresh is None or (fresh.institution, fresh.title) != ("示例证券", "星河科技大模型专题报告"), \
        "the old title is forgotten"
    assert report.documents == 2
    assert (upload_qa.corpus_dir / "star.txt").read_text(encoding="utf-8") == upload.read_text(encoding="utf-8")
    assert not (upload_qa.corpus_dir / ".replaced").exists(), "deleted after the build completed"
    info = upload_qa.store.documents["star.txt"].info
    assert info.institution != "示例证券" and info.title != "星河科技大模型专题报告"
    assert "示例证券" not in upload_qa.store.documents["star.txt"].label


def test_backup_survives_a_failed_build(upload_qa, tmp_path):
    upload = tmp_path / "star.txt"
    upload.write_text(JUNK, encoding="utf-8")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("", encoding="utf-8")
    upload_qa.index_dir = blocker / "index"  # the build cannot write its index there
    with pytest.raises((RagError, OSError)):
        upload_qa.add_report(upload, replace=True)
    (backup,) = (upload_qa.corpus_dir / ".replaced").rglob("star.txt")
    assert backup.read_text(encoding="utf-8") == STAR
    documents, failures = load_corpus(upload_qa.corpus_dir)
    assert failures == [], "the loader skips .replaced without a word"
    assert sorted(d.source for d in documents) == ["star.txt", "wenxin.txt"]


def test_upload_refuses_to_replace_a_folder_or_link(upload_qa, tmp_path):
    from rag.api import ReportExists

    (upload_qa.corpus_dir / "folder.txt").mkdir()
    (upload_qa.corpus_dir / "link.txt").symlink_to("wenxin.txt")
    for name in ("folder.txt", "link.txt"):
        upload = tmp_path / name
        upload.write_text(JUNK, encoding="utf-8")
        with pytest.raises(ReportExists, match="not a regular file"):
            upload_qa.add_report(upload, replace=True)
    assert (upload_qa.corpus_dir / "wenxin.txt").read_text(encoding="utf-8") == OTHER


def test_ui_upload_refuses_then_replaces_when_ticked(upload_qa, tmp_path):
    import socket

    from gradio_client import Client, handle_file

    from rag import webui

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = webui.launch(upload_qa, host="127.0.0.1", port=port, block=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        same = tmp_path / "same" / "star.txt"
        same.parent.mkdir()
        same.write_text(STAR, encoding="utf-8")
        junk = tmp_path / "star.txt"
        junk.write_text(JUNK, encoding="utf-8")
        message = client.predict(handle_file(str(same)), [], api_name="/add_report")[0]
        assert "未做更改" in message and "已存在" in message
        message = client.predict(handle_file(str(junk)), [], api_name="/add_report")[0]
        assert "未添加" in message and "替换同名报告" in message
        assert (upload_qa.corpus_dir / "star.txt").read_text(encoding="utf-8") == STAR
        message = client.predict(handle_file(str(junk)), [], True, api_name="/add_report")[0]
        assert "已添加" in message, message
        assert (upload_qa.corpus_dir / "star.txt").read_text(encoding="utf-8") == JUNK
        answer = client.predict(12345, 3, None, api_name="/ask")  # a number, through the real endpoint
        assert answer["query"] == "12345" and isinstance(answer["answer"], str) and "error" not in answer
    finally:
        app.close()


# --- rag index: per-file limit, size and time estimate -----------------------------------------

def test_rag_index_skips_oversize_files_and_says_what_it_embeds(tmp_path, monkeypatch, tiny_model):
    import uuid

    from rag.api import ReportQA

    # one new sentence every run, so the embedding cache cannot answer it and embedding is reported
    text = f"{REPORT}编号{uuid.uuid4().hex[:8]}的样本公司本季度收入增长两成。\n"
    corpus = make_corpus(tmp_path / "corpus", {"small.txt": text, "big.txt": OTHER * 40})
    big = (corpus / "big.txt").stat().st_size
    assert len(text.encode()) < 4096 < big
    monkeypatch.delenv("RAG_MAX_FILE_MB", raising=False)
    qa = ReportQA(corpus_dir=corpus, index_dir=tmp_path / "index", model=tiny_model)
    result = cli(qa, "index", "--max-file-mb", str(4096 / (1024 * 1024)))
    assert result.exit_code == 0, result.output
    assert "indexed 1 reports" in result.stdout
    skipped = [line for line in result.stderr.splitlines() if line.startswith("跳过 / skipped: big.txt:")]
    assert len(skipped) == 1 and "超过上限 4.0 KB" in skipped[0]
    assert "语料 / corpus: 1 个文件 / files" in result.stderr
    assert "需要嵌入 / to embed:" in result.stderr
    assert "RAG_MAX_FILE_MB" not in os.environ, "the option does not outlive the command"
    assert list(qa.reports()) == ["small.txt"]
    bad = cli(qa, "index", "--max-file-mb", "0")
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_time_estimate_is_said_only_for_a_long_embedding():
    from rag.cli import eta_line

    line = eta_line(32, 3232, 8.0)  # 4 texts/s, 800 s to go
    assert line is not None and "约 13 分钟" in line and "4.0 texts/s" in line
    assert eta_line(32, 40, 8.0) is None, "two seconds left: not worth a line"
    assert eta_line(40, 40, 8.0) is None and eta_line(0, 40, 8.0) is None


# --- the load script asks unique questions -----------------------------------------------------

def test_load_script_questions_are_unique_unless_asked_to_repeat():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("load_ui", Path(__file__).resolve().parents[1]
                                                  / "benchmarks" / "load_ui.py")
    assert spec is not None and spec.loader is not None
    load_ui = importlib.util.module_from_spec(spec)
    sys.modules["load_ui"] = load_ui  # its dataclass looks its module up there
    try:
        spec.loader.exec_module(load_ui)
    finally:
        del sys.modules["load_ui"]

    asked = load_ui.user_questions(40, 5, repeat=False)
    every = [q for user in asked for q in user]
    assert len(every) == 200 and len(set(every)) == 200
    assert not set(every) & set(load_ui.QUESTIONS), "a warm-up of the bare questions caches none of them"
    assert all(any(base in q for base in load_ui.QUESTIONS) for q in every)
    assert len(set(load_ui.unique_questions(2000))) == 2000
    assert not set(load_ui.unique_questions(50, seed=0)) & set(load_ui.unique_questions(50, seed=1))
    repeated = [q for user in load_ui.user_questions(40, 5, repeat=True) for q in user]
    assert set(repeated) == set(load_ui.QUESTIONS)
