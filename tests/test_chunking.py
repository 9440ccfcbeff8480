"""Chunking: exact offsets, jieba word boundaries, table headers, and full coverage of the text.

Runs the real chunker with real jieba over the five seed reports, plus a hypothesis property test
over random Chinese-looking text.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

import pytest
from conftest import CORPUS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rag.chunking import Chunk, Chunker, is_slide_title, line_spans
from rag.documents import Document, load_corpus
from rag.tokenize import tokenizer_for

word_spans = tokenizer_for().word_spans


@pytest.fixture(scope="module")
def seed_chunks() -> list[tuple[Document, list[Chunk]]]:
    documents, failures = load_corpus(CORPUS)
    assert failures == []
    assert len(documents) == 5
    chunker = Chunker()
    return [(document, chunker.chunk(document.source, document.text)) for document in documents]


def test_every_seed_report_is_chunked(seed_chunks):
    for document, chunks in seed_chunks:
        assert len(chunks) >= 10, document.source
        assert all(chunk.source == document.source for chunk in chunks)
        assert all(chunk.text.strip() for chunk in chunks), document.source


def test_chunk_offsets_are_exact(seed_chunks):
    for document, chunks in seed_chunks:
        for chunk in chunks:
            assert 0 <= chunk.start < chunk.end <= len(document.text)
            assert document.text[chunk.start:chunk.end] == chunk.text, (document.source, chunk.start)


def test_chunks_are_in_reading_order(seed_chunks):
    for document, chunks in seed_chunks:
        starts = [chunk.start for chunk in chunks]
        assert starts == sorted(starts), document.source


def test_no_chunk_boundary_cuts_a_jieba_word(seed_chunks):
    checked = 0
    for document, chunks in seed_chunks:
        lines = line_spans(document.text)
        line_starts = [start for start, _ in lines]
        boundaries: dict[int, set[int]] = {}
        for chunk in chunks:
            for offset in (chunk.start, chunk.end):
                number = bisect.bisect_right(line_starts, offset) - 1
                line_start, line_end = lines[number]
                if not line_start < offset < line_end:
                    continue  # at a line edge: always a boundary
                if number not in boundaries:
                    line = document.text[line_start:line_end]
                    boundaries[number] = {start for start, _ in word_spans(line)} | {len(line)}
                checked += 1
                assert offset - line_start in boundaries[number], (
                    f"{document.source}: boundary at {offset} cuts a word: "
                    f"{document.text[max(line_start, offset - 8):offset]!r}|{document.text[offset:offset + 8]!r}")
    assert checked > 0, "no chunk boundary fell inside a line; the test checked nothing"


def _table_runs(text: str) -> list[tuple[int, int, str]]:
    """(first line start, last line end, header row) of every run of tab-separated lines."""
    runs, current = [], []
    for start, end in line_spans(text) + [(len(text) + 1, len(text) + 1)]:
        if start <= len(text) and "\t" in text[start:end].strip():
            current.append((start, end))
            continue
        if len(current) >= 2:
            runs.append((current[0][0], current[-1][1], text[slice(*current[0])].strip()))
        current = []
    return runs


def test_table_chunks_carry_their_header(seed_chunks):
    tables_seen = 0
    for document, chunks in seed_chunks:
        runs = _table_runs(document.text)
        by_table: dict[int, list[Chunk]] = defaultdict(list)
        for chunk in chunks:
            if chunk.kind != "table":
                continue
            assert chunk.table_header, (document.source, chunk.start)
            header_row = chunk.table_header.split("\n")[-1]
            assert "\t" in header_row, (document.source, chunk.table_header)
            # The header row is quoted in the passage itself or carried beside it.
            assert header_row in chunk.text or header_row in chunk.table_header
            inside = [n for n, (first, last, _) in enumerate(runs) if first <= chunk.end - 1 <= last]
            assert len(inside) == 1, (document.source, chunk.start)
            by_table[inside[0]].append(chunk)
        for number, table_chunks in by_table.items():
            tables_seen += 1
            first, last, header_row = runs[number]
            headers = {chunk.table_header for chunk in table_chunks}
            assert len(headers) == 1, f"{document.source}: one table, several headers: {headers}"
            assert headers.pop().split("\n")[-1] == header_row
            assert header_row in table_chunks[0].text, "the first part of a table quotes its header row"
            # The parts of a table cover every row of it.
            covered = "".join(document.text[c.start:c.end] for c in table_chunks)
            for row in document.text[first:last].split("\n"):
                assert row.strip() in covered, (document.source, row)
    assert tables_seen >= 5


def test_long_table_is_split_and_every_part_has_the_header():
    header = "公司\t模型\t参数量\t发布时间"
    rows = [f"公司{n}\t模型{n}号\t{n * 10}亿\t2023年{n % 12 + 1}月" for n in range(60)]
    text = "近期发布的大模型\n\n表1：国内大模型一览\n" + "\n".join([header, *rows]) + "\n\n资料来源：公司公告。"
    chunks = [c for c in Chunker().chunk("t.txt", text) if c.kind == "table"]
    assert len(chunks) >= 3
    assert {c.table_header for c in chunks} == {"表1：国内大模型一览\n" + header}
    assert header in chunks[0].text
    assert all(header not in c.text for c in chunks[1:])
    assert all(text[c.start:c.end] == c.text for c in chunks)
    covered = "".join(c.text for c in chunks)
    assert all(row in covered for row in rows)


def test_slide_title_opens_a_passage_and_becomes_its_heading(seed_chunks):
    # 004 is a slide deck: "合作伙伴-电商平台方案商" stands alone above its bullet; the passage about
    # e-commerce partners must start there instead of trailing the previous slide's passage.
    document, chunks = next((d, c) for d, c in seed_chunks if d.source.startswith("004_"))
    title = document.text.index("合作伙伴-电商平台方案商")
    owner = next(c for c in chunks if c.start <= title < c.end)
    assert owner.start == title
    following = next(c for c in chunks if c.start > title)
    assert following.heading == "合作伙伴-电商平台方案商" or owner.heading == "合作伙伴-电商平台方案商"


@pytest.mark.parametrize(("lines", "expected"), [
    (["", "核心观点", "", "- 阿里推出通义系列大模型。"], True),
    (["", "图表：阿里云计算智算中心", "", "- 张北智算中心建设规模为12 FLOPS。"], False),
    (["上一行", "核心观点", "", "- 阿里推出通义系列大模型。"], False),
    (["", "核心观点", "", "短句。"], False),
    (["", "这一行以句号结束。", "", "- 要点"], False),
])
def test_slide_title_rule(lines, expected):
    assert is_slide_title(lines, 1) is expected


# -- property test ------------------------------------------------------------------------------

_CJK = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FA5)
_PIECES = st.one_of(
    st.text(_CJK, min_size=1, max_size=30),
    st.sampled_from(list("，。！？；：、")),
    st.sampled_from(["\n", "\n\n", "\t", " ", "  "]),
    st.sampled_from(["GPT-3", "AI", "Transformer", "M6-OFA", "ChatGPT", "hello", "x"]),
    st.integers(min_value=0, max_value=10**9).map(str),
    st.sampled_from(["一、", "1.2 ", "第一章", "# ", "（一）", "表1："]),
)
random_reports = st.lists(_PIECES, min_size=0, max_size=200).map("".join)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_reports)
def test_chunks_are_exact_and_cover_all_text(text):
    chunks = Chunker().chunk("random.txt", text)
    for chunk in chunks:
        assert 0 <= chunk.start < chunk.end <= len(text)
        assert text[chunk.start:chunk.end] == chunk.text
        assert chunk.text == chunk.text.strip(), "chunks do not start or end with whitespace"
    starts = [chunk.start for chunk in chunks]
    assert starts == sorted(starts), "chunks are in reading order"
    covered = bytearray(len(text))
    for chunk in chunks:
        covered[chunk.start:chunk.end] = b"\x01" * (chunk.end - chunk.start)
    missing = [i for i, ch in enumerate(text) if not ch.isspace() and not covered[i]]
    assert not missing, f"characters outside every chunk: {[text[i] for i in missing[:10]]} at {missing[:10]}"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(_CJK, min_size=5, max_size=40), min_size=80, max_size=150))
def test_long_paragraph_without_punctuation_is_cut_at_word_ends(words):
    text = "".join(words)
    limits = Chunker().settings
    chunks = Chunker().chunk("long.txt", text)
    assert len(chunks) >= 2
    boundaries = {start for start, _ in word_spans(text)} | {len(text)}
    for chunk in chunks:
        assert text[chunk.start:chunk.end] == chunk.text
        assert chunk.start in boundaries and chunk.end in boundaries
        assert len(chunk.text) <= limits.target_chars + limits.min_chars
