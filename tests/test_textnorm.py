"""Text normalisation: canonical text repairs broken code points and joins cut lines, keeps the rest;
``origin`` maps every canonical character back to the raw text; ``fold`` builds matching keys."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from rag.textnorm import clean_text, fold, repair_char, squeeze

LONG_LINE = "本报告基于对九位来自中国人工智能科技团队的产业人士问卷"  # > 20 chars, ends in a CJK char


def _assert_origin_consistent(raw: str, text: str, origin: list[int]) -> None:
    assert len(origin) == len(text)
    assert origin == sorted(origin), "origin is monotonic"
    for i, ch in enumerate(text):
        assert 0 <= origin[i] < len(raw)
        source = raw[origin[i]]
        assert ch == source or ch in repair_char(source), (i, ch, source)


def test_radicals_are_repaired():
    text, _ = clean_text("⼈⼯智能")  # U+2F08 U+2F2F: Kangxi radicals from a PDF text layer
    assert text == "人工智能"
    text, _ = clean_text("⻜桨")  # U+2EDC: CJK radical supplement
    assert text == "飞桨"
    text, _ = clean_text("百度⻜桨与⼤模型")
    assert text == "百度飞桨与大模型"


def test_full_width_punctuation_is_kept():
    raw = "阿里发布“通义”大模型，包括：（一）通义-M6；（二）通义-AliceMind。"
    text, origin = clean_text(raw)
    assert text == raw
    for mark in "，：（）“”；。":
        assert mark in text
    assert origin == list(range(len(raw)))


def test_mixed_repair_keeps_punctuation_and_maps_offsets():
    raw = "⼈⼯智能，⻜桨：（开源）框架"
    text, origin = clean_text(raw)
    assert text == "人工智能，飞桨：（开源）框架"
    assert origin == list(range(len(raw)))
    _assert_origin_consistent(raw, text, origin)


def test_line_broken_mid_sentence_is_joined():
    raw = f"{LONG_LINE}\n调查，分析了资源投入。"
    text, origin = clean_text(raw)
    assert text == f"{LONG_LINE}调查，分析了资源投入。"
    _assert_origin_consistent(raw, text, origin)
    # the character after the join still points at itself in the raw text
    joined_at = len(LONG_LINE)
    assert raw[origin[joined_at]] == "调" and origin[joined_at] == len(LONG_LINE) + 1


def test_line_ending_a_sentence_is_not_joined():
    raw = f"{LONG_LINE}调查。\n下一段开始讲模型的训练方法和数据来源"
    text, _ = clean_text(raw)
    assert text == raw


def test_blank_lines_are_kept():
    raw = f"{LONG_LINE}\n\n下一段开始讲模型的训练方法和数据来源"
    text, origin = clean_text(raw)
    assert text == raw
    assert origin == list(range(len(raw)))


def test_short_lines_and_list_items_are_not_joined():
    assert clean_text("核心观点\n阿里发布模型")[0] == "核心观点\n阿里发布模型"
    raw = f"{LONG_LINE}\n1、数据、算法、模型三轮驱动"
    assert clean_text(raw)[0] == raw
    raw = f"{LONG_LINE}\n- 数据、算法、模型三轮驱动"
    assert clean_text(raw)[0] == raw


def test_table_lines_are_not_joined():
    raw = "企业名称\t大模型名称\t参数规模与发布时间相关的说明文字\n阿里\tM6\t10万亿"
    text, _ = clean_text(raw)
    assert text == raw


def test_crlf_trailing_spaces_and_control_characters():
    raw = "\ufeff第一行内容  \r\n第二行\x07内容\u200b\r\n\r\n第三行\x0c第四行"
    text, origin = clean_text(raw)
    assert text == "第一行内容\n第二行内容\n\n第三行\n第四行"
    _assert_origin_consistent(raw, text, origin)


def test_origin_maps_unchanged_chars_in_a_seed_like_passage():
    raw = ("  \n\n证券研究报告·行业简评报告  \n\n阿里⼤模型“通义”\r\n发布日期：2023年3月23日\n"
           f"{LONG_LINE}\n调查，分析了⼈⼯智能产业。\n\n\n表：\t模型\t参数\n")
    text, origin = clean_text(raw)
    _assert_origin_consistent(raw, text, origin)
    unchanged = [i for i in range(len(text)) if repair_char(raw[origin[i]]) == raw[origin[i]]]
    assert len(unchanged) > len(text) * 0.9
    assert all(raw[origin[i]] == text[i] for i in unchanged)
    assert text.startswith("证券研究报告")
    assert "阿里大模型“通义”\n发布日期" in text


_RAW_PIECES = st.one_of(
    st.text(st.characters(min_codepoint=0x4E00, max_codepoint=0x9FA5), min_size=1, max_size=25),
    st.sampled_from(list("，。！？；：（）“”、")),
    st.sampled_from(["\n", "\r\n", "\r", "\n\n", "\t", " ", "\u3000", "\x0c", "\x00", "\ufeff", "\u200b"]),
    st.sampled_from(list("⼈⼯⼤⻜⻓⾦\u2f00\uf900")),
    st.sampled_from(["GPT-3", "AI", "１２３", "ＡＢＣ", "- ", "1、"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_RAW_PIECES, max_size=80).map("".join))
def test_origin_property(raw):
    text, origin = clean_text(raw)
    _assert_origin_consistent(raw, text, origin)
    assert text == text.strip("\n")
    assert "\r" not in text
    # nothing but whitespace and broken code points is ever dropped
    kept = squeeze("".join(repair_char(ch) for ch in raw.replace("\r", "")))
    assert squeeze(text) == kept


def test_fold_maps_full_width_to_half_width_and_lowercases():
    assert fold("ＧＰＴ－３") == "gpt-3"
    assert fold("（１７５０亿）") == "(1750亿)"
    assert fold("ＡＩ　框架，ChatGPT") == "ai 框架,chatgpt"
    assert fold("M6-OFA") == "m6-ofa"
    assert fold("⻜桨") == "飞桨"
    assert fold("⼈⼯智能") == "人工智能"


def test_fold_is_idempotent():
    for sample in ("ＧＰＴ－３ 参数（１７５０亿）　ＡＢＣ", "M6-OFA 是什么时候发布的？", "⻜桨 ⼈⼯智能"):
        assert fold(fold(sample)) == fold(sample)
