"""Search, cite and ask over the real seed index (session fixture ``seed_qa``)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import ROOT

from rag.answer import NOT_FOUND
from rag.cli import main
from rag.dedup import PASSAGE_THRESHOLD, containment, grams, passage_key
from rag.errors import RagError
from rag.textnorm import fold, squeeze


def all_chunks(qa):
    return [qa.store.chunk(i) for i in range(len(qa.store))]

MODES = ["hybrid", "dense", "bm25"]
DUP_A, DUP_B = "000_d576216d646d2508.txt", "001_79922efeaeca942f.txt"

# (question, evidence that a top-5 passage must contain; whitespace ignored). Written from the reports.
QUESTIONS = [
    ("GPT-3的参数量是多少", "1750亿"),                                             # 000/001 tables
    ("M6-OFA 是什么时候发布的", "2022年1月，业界首个通用的统一大模型M6-OFA发布"),   # 004
    ("2021年中国人工智能产业规模是多少", "4041亿元"),                               # 002
    ("科大讯飞是什么时候上市的", "2008年5月于深交所上市"),                           # 003
    ("魔搭社区首批上架了多少个模型", "首批上架超300个模型"),                          # 004
    ("文本到视频生成扩散模型的参数量有多大", "整体模型参数约17亿"),                   # 004
    ("飞天智算平台让AI训练效率提升了多少", "AI训练效率提升11倍"),                     # 004
    ("多少比例的调研公司AI投资达到亿级规模", "66.7%"),                                # 002
    ("Pytorch版本多久更新一次", "每3~4个月更新一次"),                                 # 000/001
]


def _cli(qa, *args: str, input: str | None = None):
    runner = CliRunner()
    return runner.invoke(main, ["--corpus", str(qa.corpus_dir), "--index", str(qa.index_dir), *args],
                         input=input, catch_exceptions=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("question", "evidence"), QUESTIONS, ids=[q for q, _ in QUESTIONS])
def test_question_finds_its_evidence(seed_qa, question, evidence, mode):
    result = seed_qa.search(question, top_k=5, mode=mode)
    assert result.error is None
    assert 1 <= len(result.hits) <= 5
    assert [hit.rank for hit in result.hits] == list(range(1, len(result.hits) + 1))
    scores = [hit.score for hit in result.hits]
    assert scores == sorted(scores, reverse=True)
    texts = [squeeze(hit.chunk.text) for hit in result.hits]
    assert any(squeeze(evidence) in text for text in texts), (
        f"{evidence!r} not in top 5 ({mode}): {[hit.citation for hit in result.hits]}")


def test_source_filter(seed_qa):
    only = "003_f39dbdfe66606f1e.txt"
    hits = seed_qa.search("M6-OFA 是什么时候发布的", sources=[only]).hits
    assert hits and {hit.chunk.source for hit in hits} == {only}


def test_unknown_mode_is_a_rag_error(seed_qa):
    with pytest.raises(RagError):
        seed_qa.search("GPT-3", mode="semantic")


def test_empty_question_gives_error_not_exception(seed_qa):
    for question in ("", "   ", "\x00\x07\n"):
        result = seed_qa.search(question)
        assert result.error and result.hits == []


# -- citations ------------------------------------------------------------------------------------

ROUND_TRIP_QUESTIONS = ["GPT-3的参数量是多少", "科大讯飞是什么时候上市的", "通义大模型的合作伙伴有哪些"]


@pytest.mark.parametrize("question", ROUND_TRIP_QUESTIONS)
def test_citation_round_trip(seed_qa, question):
    hits = seed_qa.search(question, top_k=5).hits
    assert hits
    for hit in hits:
        view = seed_qa.cite(hit.citation)
        assert view.text == hit.chunk.text
        assert view.document.source == hit.chunk.source
        assert (view.line_start, view.line_end) == (hit.chunk.line_start, hit.chunk.line_end)
        document = seed_qa.store.documents[hit.chunk.source]
        assert document.text[hit.chunk.start:hit.chunk.end] == hit.chunk.text


def test_every_indexed_citation_resolves_to_its_text(seed_qa):
    chunks = all_chunks(seed_qa)
    assert len({c.citation for c in chunks}) == len(chunks), "citation IDs are unique"
    for chunk in chunks:
        assert seed_qa.cite(chunk.citation).text == chunk.text


def test_citation_lines_match_the_original_file(seed_qa):
    for chunk in all_chunks(seed_qa)[::7]:
        raw_lines = (seed_qa.corpus_dir / chunk.source).read_text(encoding="utf-8").split("\n")
        quoted = squeeze(fold("".join(raw_lines[chunk.line_start - 1:chunk.line_end])))
        first_line = squeeze(fold(chunk.text.split("\n")[0]))
        assert first_line[:10] in quoted, chunk.citation


def test_cli_cite_prints_the_passage(seed_qa):
    for hit in seed_qa.search("魔搭社区首批上架了多少个模型", top_k=3).hits:
        result = _cli(seed_qa, "cite", hit.citation)
        assert result.exit_code == 0, result.output
        assert hit.chunk.text in result.stdout
        assert hit.citation.split(":")[0] in result.stdout
        as_json = _cli(seed_qa, "cite", "--json", hit.citation)
        assert as_json.exit_code == 0
        payload = json.loads(as_json.stdout)
        assert payload["text"] == hit.chunk.text and payload["citation"] == hit.citation


def test_hand_widened_line_range_resolves(seed_qa):
    chunks = seed_qa.store.chunks_of("004_e0d667138c034a95.txt")
    first, second = chunks[3], chunks[4]
    view = seed_qa.cite(f"{first.source}:L{first.line_start}-L{second.line_end}")
    assert first.text in view.text or squeeze(first.text)[-20:] in squeeze(view.text)
    assert second.text[-20:] in view.text


BAD_CITATIONS = {
    "unknown report": "999_nope.txt:L1-L5",
    "malformed id": "004_e0d667138c034a95.txt-line-12",
    "out of range": "004_e0d667138c034a95.txt:L90000-L90010",
    "reversed range": "004_e0d667138c034a95.txt:L20-L10",
    "zero line": "004_e0d667138c034a95.txt:L0-L0",
}


@pytest.mark.parametrize("citation", BAD_CITATIONS.values(), ids=BAD_CITATIONS.keys())
def test_bad_citation(seed_qa, citation):
    with pytest.raises(RagError) as caught:
        seed_qa.cite(citation)
    assert str(caught.value)
    result = _cli(seed_qa, "cite", citation)
    assert result.exit_code == 1
    assert "错误 / error:" in result.stderr
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, RagError)  # turned into a message, not raised


# -- ask ------------------------------------------------------------------------------------------

ANSWERABLE = ["GPT-3的参数量是多少", "科大讯飞是什么时候上市的", "魔搭社区首批上架了多少个模型",
              "飞天智算平台让AI训练效率提升了多少"]


@pytest.mark.parametrize("question", ANSWERABLE)
def test_ask_answers_with_verbatim_cited_sentences(seed_qa, question):
    result = seed_qa.ask(question)
    assert result.abstained is False
    assert "[1]" in result.answer
    assert result.sources
    markers = [int(m) for m in re.findall(r"\[(\d+)\]", result.answer)]
    assert set(markers) == set(range(1, len(result.sources) + 1))
    pieces = re.split(r"\[\d+\]", result.answer)
    assert pieces[-1] == "", "the answer ends with a marker"
    sentences = [p for p in pieces if p.strip()]
    assert sentences
    # each sentence is quoted from the passage its marker points to; a table row is quoted cell by
    # cell after its column names, so there every cell and name must come from that passage
    for sentence, marker in zip(pieces, markers, strict=False):
        source = result.sources[marker - 1].chunk
        if source.kind == "table" and sentence not in source.text:
            cells = [c.strip() for c in re.split(r"[（）；：|]", sentence) if c.strip()]
            assert cells and all(c in source.table_header + source.text for c in cells), sentence
        else:
            assert sentence in source.text, sentence
    payload = result.to_json()
    assert payload["abstained"] is False
    assert [s["citation"] for s in payload["sources"]] == [h.citation for h in result.sources]


@pytest.mark.parametrize(("question", "fact"), [
    ("科大讯飞是什么时候上市的", "2008年5月"),
    ("魔搭社区首批上架了多少个模型", "300"),
    ("GPT-3的参数量是多少", "1750亿"),
])
def test_ask_answer_states_the_fact(seed_qa, question, fact):
    result = seed_qa.ask(question)
    assert not result.abstained
    assert fact in squeeze(result.answer)


def test_answer_quotes_the_sentence_that_says_it_in_other_words(seed_qa):
    # No term of the question ("开会迟到", "帮上什么忙") is in the answering sentence; its cosine with
    # the question is what picks it (rag.answer.SIMILARITY_WEIGHT).
    result = seed_qa.ask("如果线上开会迟到了，微软那个AI助手能帮上什么忙？")
    assert not result.abstained
    assert "copilot会提供一份错过的内容摘要" in squeeze(fold(result.answer))


def test_sentence_similarities_agree_with_the_sentence_index(seed_qa):
    question = "魔搭社区首批上架了多少个模型"
    hit = seed_qa.search(question).hits[0]
    cosines = hit.sentence_similarities  # they arrive with the hit, for the answer
    assert cosines and all(key == squeeze(key) for key in cosines)
    assert any("首批上架超300个模型" in key for key in cosines)
    assert max(cosines.values()) == pytest.approx(hit.sentence_score, abs=1e-5)


def test_table_row_is_quoted_with_its_column_names(seed_qa):
    # The GPT table's rows are "参数量	1.2亿	15.8亿	1750亿	13亿" under "	GPT-1	GPT-2	GPT-3	…": the bare
    # row would not say which number is GPT-3's.
    result = seed_qa.ask("GPT-3的参数量是多少")
    assert "GPT-3：1750亿" in result.answer


def test_quote_row_pairs_cells_with_column_names():
    from rag.tables import quote_row

    assert quote_row("GPT-1\tGPT-2", "参数量\t1.2亿\t15.8亿") == "参数量（GPT-1：1.2亿；GPT-2：15.8亿）"
    assert quote_row("企业\t大模型\t大参数", "浪潮信息\t源 1.0\t245.7亿") == \
        "企业：浪潮信息；大模型：源 1.0；大参数：245.7亿"
    assert quote_row("\t供应商\t型号", "\t寒武纪\t思元290") == "供应商：寒武纪；型号：思元290"  # merged first cell
    assert quote_row("A\tB\tC", "x\ty") == "A：x；B：y"  # the row's empty trailing cell was trimmed
    assert quote_row("A\tB", "x\ty\tz\tw") == "x | y | z | w"  # cells that do not line up stay as they are


@pytest.mark.parametrize("question", ["特斯拉2030年火星基地的预算是多少", "如何烹饪红烧肉",
                                      "What is the capital of France?"])
def test_ask_abstains_on_unrelated_questions(seed_qa, question):
    result = seed_qa.ask(question)
    assert result.abstained is True
    assert result.answer == NOT_FOUND == "在报告中未找到相关内容"
    assert result.sources == []
    assert result.to_json()["abstained"] is True


def test_ask_empty_question(seed_qa):
    result = seed_qa.ask("  ")
    assert result.abstained and result.error


# -- near-duplicate reports -----------------------------------------------------------------------

def test_index_records_the_duplicate_pair(seed_qa):
    documents = seed_qa.store.documents
    assert documents[DUP_A].duplicates == [DUP_B]
    assert documents[DUP_B].duplicates == [DUP_A]
    for other in ("002_f3649e5dfb89d976.txt", "003_f39dbdfe66606f1e.txt", "004_e0d667138c034a95.txt"):
        assert documents[other].duplicates == []
    assert seed_qa.store.manifest["duplicates"] == {DUP_A: [DUP_B], DUP_B: [DUP_A]}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("question", ["GPT-3的参数量是多少", "Pytorch版本多久更新一次"])
def test_duplicate_report_does_not_repeat_a_passage(seed_qa, question, mode):
    hits = seed_qa.search(question, top_k=5, mode=mode).hits
    shown = {hit.citation for hit in hits}
    copies = [citation for hit in hits for citation in hit.also_in]
    assert copies, "the twin report's copy of the passage is folded into the hit"
    for hit in hits:
        twin = DUP_B if hit.chunk.source == DUP_A else DUP_A
        assert all(c.startswith(twin + ":") for c in hit.also_in)
    assert not shown & set(copies), "a folded copy is not also shown as a hit"
    for a in hits:
        for b in hits:
            if (a.chunk.source, b.chunk.source) == (DUP_A, DUP_B):
                overlap = containment(grams(passage_key(a.chunk.text)), grams(passage_key(b.chunk.text)))
                assert overlap < PASSAGE_THRESHOLD, (a.citation, b.citation, overlap)
    # the fact itself is shown once, from one of the two copies
    evidence = "1750亿" if "GPT" in question else "每3~4个月更新一次"
    holders = [hit for hit in hits if squeeze(evidence) in squeeze(hit.chunk.text)]
    assert holders


def test_every_table_row_unit_carries_its_header(seed_qa):
    # A row of the first part of a table quotes the header only once, at the top of the passage;
    # the row's own embedding input must still name the columns.
    from rag.records import sentence_units

    tables = [c for c in all_chunks(seed_qa) if c.kind == "table"]
    assert tables
    for chunk in tables:
        header_row = chunk.table_header.split("\n")[-1]
        units = sentence_units(chunk, seed_qa.store.documents[chunk.source].info)
        assert units and all(header_row in unit for unit in units), chunk.citation


def test_question_about_one_table_row_finds_that_row(seed_qa):
    # The table writes "源 1.0"; other tables carry "1.0" and "参数量" too (ERNIE 1.0). The joined
    # version token makes the row naming 源1.0 the first hit.
    hits = seed_qa.search("源1.0 参数量", top_k=3).hits
    assert "浪潮信息源1.0245.7亿" in squeeze(hits[0].chunk.text)


@pytest.mark.parametrize("question", ["英伟达H200单卡售价大概多少美元？", "GPT-3 的参数量是多少？",
                                      "哪些公司是通义大模型的合作伙伴？"])
def test_answer_quotes_each_sentence_once(seed_qa, question):
    # Neighbouring passages overlap (the H200 passages share their first sentence); a shared sentence
    # must be quoted once. The bar is lifted so the answer is composed whatever abstention decides.
    from dataclasses import replace

    from rag.answer import compose_answer

    abstention = seed_qa.settings.answer.abstention
    settings = replace(seed_qa.settings.answer,
                       abstention=replace(abstention, model=replace(abstention.model, threshold=2.0)))
    found = seed_qa.search(question, top_k=5)
    answer = compose_answer(found.analysed, found.hits, settings)
    quoted = [squeeze(part) for part in re.split(r"\[\d+\]", answer.text) if part.strip()]
    assert quoted and len(quoted) == len(set(quoted))


def test_query_path_benchmark_runs_side_by_side(tiny_qa, tiny_model, tmp_path):
    # benchmarks/query_path.py on the tiny index, against this same checkout as the "baseline".
    questions = tmp_path / "questions.jsonl"
    records = [{"id": f"q{i}", "split": "dev", "question": q, "answer": "", "evidence": [], "docs": [], "type": "fact"}
               for i, q in enumerate(["GPT-3 的参数量是多少？", "昇腾910的算力"])]
    questions.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records), encoding="utf-8")
    script = ROOT / "benchmarks" / "query_path.py"
    done = subprocess.run([sys.executable, str(script), "--index", str(tiny_qa.index_dir), "--model", tiny_model,
                           "--questions", str(questions), "--baseline-tree", str(ROOT), "--rounds", "1"],
                          capture_output=True, text=True, timeout=600, check=True)
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| this checkout", "| baseline"))]
    assert len(rows) == 2
    for row in rows:
        rest_p50, rest_p95, embedding = (float(cell) for cell in row.strip("|").split("|")[1:4])
        assert 0 < rest_p50 <= rest_p95 and embedding > 0
