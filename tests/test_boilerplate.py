"""Report boilerplate: found in a report's own text, kept out of answers and below real passages,
and still findable for questions about it. Runs on the seed reports with the tiny model (mechanics)."""

from __future__ import annotations

import re

from conftest import CORPUS

from rag.answer import AnswerSettings, compose_answer
from rag.boilerplate import BoilerplateMap, asks_about_boilerplate, boilerplate_map
from rag.evaluate import Question, answer_quality, numbers_in
from rag.query import analyse
from rag.results import Answer, Hit
from rag.store import Store, open_store
from rag.tables import quote_row

ZHESHANG = "001_79922efeaeca942f.txt"
TIANFENG = "002_f3649e5dfb89d976.txt"
CSC = "004_e0d667138c034a95.txt"


def _line_flags(name: str) -> dict[str, bool]:
    text = (CORPUS / name).read_text(encoding="utf-8")
    notices = boilerplate_map(text)
    flags, begin = {}, 0
    for line in text.split("\n"):
        if line.strip():
            flags[line.strip()] = notices.covers(begin, begin + len(line))
        begin += len(line) + 1
    return flags


def _flag_of(flags: dict[str, bool], fragment: str) -> bool:
    matches = [flag for line, flag in flags.items() if fragment in line]
    assert matches, fragment
    return matches[0]


def test_notices_contacts_and_sources_are_boilerplate_facts_are_not():
    flags = _line_flags(ZHESHANG)
    notices = ("本报告由浙商证券股份有限公司", "本报告仅供本公司的客户作参考之用", "1、看好：行业指数相对于沪深300指数",
               "邮箱\tliuwenshu03", "证书编号", "上海总部地址", "资料来源：中国信息通信研究院")
    for notice in notices:
        assert _flag_of(flags, notice), notice
    for fact in ("行业评级: 看好", "分析师\t刘雯蜀", "GPT-3"):
        assert not _flag_of(flags, fact), fact
    csc = _line_flags(CSC)
    assert _flag_of(csc, "本报告由中信建投证券股份有限公司及/或其附属机构")
    assert _flag_of(csc, "SAC编号：S1440518040002")
    assert not _flag_of(csc, "代码\t简称\t业务\t客户")  # a table header repeated across pages labels data


def test_the_share_of_a_span_counts_only_its_boilerplate_characters():
    text = "正文第一行\n本报告由某某证券股份有限公司制作\n正文第二行"
    notices = boilerplate_map(text)
    first, second = text.index("本报告"), text.index("\n正文第二行")
    assert notices.share(first, second) == 1.0
    assert notices.share(0, first - 1) == 0.0
    assert 0.0 < notices.share(0, len(text)) < 1.0


def test_questions_about_notices_are_recognised():
    assert asks_about_boilerplate("浙商证券的行业评级标准是什么？")
    assert asks_about_boilerplate("这份报告的分析师是谁？")
    assert asks_about_boilerplate("这份报告的作者有哪些？")
    assert not asks_about_boilerplate("GPT-3 的参数量是多少？")


def _hit(store: Store, rank: int, chunk_id: int) -> Hit:
    chunk = store.chunk(chunk_id)
    return Hit(rank=rank, chunk=chunk, document=store.documents[chunk.source], score=1.0, coverage=1.0)


def _passage_with(store: Store, source: str, fragment: str) -> int:
    return next(c.id for c in store.chunks_of(source) if fragment in c.text)


def test_answers_skip_notice_sentences_unless_the_question_is_about_them(tiny_qa):
    store = tiny_qa.store
    cover = _passage_with(store, ZHESHANG, "行业评级: 看好")
    notice = _passage_with(store, ZHESHANG, "本报告由浙商证券股份有限公司")
    definitions = _passage_with(store, ZHESHANG, "1、看好：行业指数相对于沪深300指数")
    hits = [_hit(store, 1, notice), _hit(store, 2, definitions), _hit(store, 3, cover)]
    rating = compose_answer(analyse("浙商证券对AI行业给的是什么评级？", store), hits, AnswerSettings())
    assert "看好" in rating.text
    assert "本报告由" not in rating.text and "沪深300" not in rating.text
    about_notice = compose_answer(analyse("浙商证券的法律声明说了什么", store), hits, AnswerSettings())
    assert "本报告由浙商证券股份有限公司" in about_notice.text
    # Only notice text retrieved, and it matches the question best: it is what the question is about.
    csc = _passage_with(store, CSC, "本报告由中信建投证券股份有限公司及/或其附属机构")
    query = analyse("中信建投证券股份有限公司及其附属机构", store)
    answer = compose_answer(query, [_hit(store, 1, csc)], AnswerSettings())
    assert "中信建投证券股份有限公司及/或其附属机构" in answer.text


def test_survey_question_lines_are_never_quoted(tiny_qa):
    store = tiny_qa.store
    survey = _passage_with(store, TIANFENG, "7.39万元")
    query = analyse("企业平均的GPU和TPU单价成本是多少元？", store)
    answer = compose_answer(query, [_hit(store, 1, survey)], AnswerSettings())
    assert "7.39万元" in answer.text
    assert "Q：" not in answer.text and "？" not in answer.text


def test_search_puts_boilerplate_passages_below_the_others(tiny_qa):
    query = tiny_qa.analyse("人工智能行业的投资研究报告")
    assert not query.about_boilerplate
    notices = notice_ids(tiny_qa.store)
    ranked = tiny_qa.retriever.ranking(query, mode="bm25")
    flags = [c.chunk.id in notices for c in ranked[:30]]
    assert any(flags) and not all(flags)  # the question's words are in notices and in real passages alike
    reordered = [c.chunk.id in notices for c in tiny_qa.retriever.boilerplate_last(query, ranked)]
    assert reordered == sorted(reordered)  # every real passage before every notice passage
    hits = tiny_qa.search(query.text, top_k=10, mode="bm25").hits
    assert not any(h.boilerplate for h in hits)


def test_boilerplate_that_matches_the_question_best_keeps_its_place(tiny_qa):
    # An analyst's biography is notice text, but nothing else names him: it is what is asked.
    hits = tiny_qa.search("阎贵成 北京大学学士 云计算", top_k=3, mode="bm25").hits
    assert hits[0].boilerplate and "阎贵成" in hits[0].chunk.text
    about = tiny_qa.search("中信建投的法律主体说明和分析师声明", top_k=3, mode="bm25").hits
    assert about[0].boilerplate


def test_the_label_is_recorded_in_the_index_at_ingest(tiny_qa):
    for source, document in tiny_qa.store.documents.items():
        assert document.boilerplate == boilerplate_map(document.text).spans(), source
    # A new store object reads the documents table from disk: the same label, no recomputation.
    reloaded = open_store(tiny_qa.index_dir)
    assert reloaded.documents[CSC].boilerplate == tiny_qa.store.documents[CSC].boilerplate != []


def test_lines_repeated_across_reports_are_not_boilerplate_by_repetition():
    # Reports reuse content lines (two seed reports carry the GPT-3 parameter row); repetition across
    # reports is therefore no sign of a notice.
    holders = [path.name for path in sorted(CORPUS.glob("*.txt"))
               if "参数量1.2亿15.8亿1750亿" in re.sub(r"\s+", "", path.read_text(encoding="utf-8"))]
    assert len(holders) >= 2
    for name in holders:
        rows = [flag for line, flag in _line_flags(name).items() if "15.8亿" in line and "1750亿" in line]
        assert rows and not any(rows), name


def notice_ids(store: Store) -> set[int]:
    """Ids of the passages that are mostly boilerplate."""
    return {c.id for source in store.documents for c in store.chunks_of(source)
            if boilerplate_map(store.documents[source].text).covers(c.start, c.end)}


def test_the_sentence_stating_the_number_leads(tiny_qa):
    store = tiny_qa.store
    survey = _passage_with(store, TIANFENG, "7.39万元")
    query = analyse("企业平均的GPU和TPU单价成本是多少元？", store)
    answer = compose_answer(query, [_hit(store, 1, survey)], AnswerSettings())
    lead = answer.text.split("[1]")[0]
    assert "7.39万元" in lead


def test_a_table_row_quotes_only_the_columns_the_question_names():
    header, row = "\tGPT-1\tGPT-2\tGPT-3", "参数量\t1.17亿\t15亿\t1750亿"
    assert quote_row(header, row) == "参数量（GPT-1：1.17亿；GPT-2：15亿；GPT-3：1750亿）"
    asked = quote_row(header, row, asked=lambda name: name == "GPT-3")
    assert asked == "参数量（GPT-3：1750亿）"
    # A question naming no column gets the whole row.
    assert quote_row(header, row, asked=lambda name: False) == quote_row(header, row)


def test_answer_quality_measures_precision_lead_and_boilerplate(tiny_qa):
    store = tiny_qa.store
    survey = _passage_with(store, TIANFENG, "7.39万元")
    notice = _passage_with(store, ZHESHANG, "本报告由浙商证券股份有限公司")
    hit, notice_hit = _hit(store, 1, survey), _hit(store, 2, notice)
    sentence = next(s for s in store.chunk(survey).text.replace("\n", "。").split("。") if "7.39" in s)
    notice_sentence = next(s for s in store.chunk(notice).text.split("。") if "本报告由" in s)
    question = Question("x", "企业平均的GPU和TPU单价成本是多少元？", evidence=[sentence], docs=[TIANFENG],
                        type="numeric", answer="GPU 7.39万元，TPU 2.29万元")
    led = Answer(f"{sentence}[1]{notice_sentence}[2]", False, [hit, notice_hit])
    measures = answer_quality(led, question, tiny_qa)
    assert measures["lead_correct"] == 1.0
    assert measures["boilerplate_share"] == 0.5
    stray = numbers_in(notice_sentence) - numbers_in(" ".join([question.question, question.answer, sentence]))
    stated = numbers_in(sentence + notice_sentence)
    assert measures["number_precision"] == (len(stated) - len(stray)) / len(stated)
    buried = Answer(f"{notice_sentence}[1]{sentence}[2]", False, [notice_hit, hit])
    assert answer_quality(buried, question, tiny_qa)["lead_correct"] == 0.0
    assert "lead_correct" in answer_quality(Answer("在报告中未找到相关内容", True, []), question, tiny_qa)


def test_a_passage_matching_by_its_plain_lines_is_not_demoted(tiny_qa):
    # The risk list shares a passage with the rating definitions: the match is the risk line, not boilerplate.
    query = tiny_qa.analyse("AIGC有哪些版权和伦理方面的风险？")
    ranked = tiny_qa.retriever.ranking(query, mode="bm25")
    risk = next(i for i, c in enumerate(ranked[:10]) if "版权、伦理和监管风险" in c.chunk.text)
    assert tiny_qa.retriever._is_boilerplate(ranked[risk].chunk)  # mostly rating definitions by length
    reordered = tiny_qa.retriever.boilerplate_last(query, ranked)
    assert reordered.index(ranked[risk]) == risk


def test_plain_text_leaves_out_boilerplate_lines():
    notices = BoilerplateMap((5, 20), (10, 25))
    text = "0123456789" * 3
    assert notices.plain_text(text, 0, 30) == "01234\n0123456789\n56789"
    assert notices.plain_text(text, 6, 9) == "\n"
