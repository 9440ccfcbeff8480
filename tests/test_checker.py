"""The generated-answer checker without an LLM: sentence splitting, width folding, numbers not in passages."""

from __future__ import annotations

from rag.checker import (
    Claim,
    Unit,
    check_sentences,
    figures_of,
    names_of,
    number_supported,
    numbers_of,
    split_sentences,
)
from rag.textnorm import fold

QUESTION = "GPT-3 的参数量是多少？"


def test_checker_rejects_number_absent_from_passages(tiny_qa):
    found = tiny_qa.search(QUESTION, top_k=5)
    fake = "GPT-3的参数量为98765亿。"
    checks = check_sentences(found.analysed, found.hits, fake, tiny_qa.embedder.embed_documents)
    assert len(checks) == 1 and not checks[0].verified and "98765" in checks[0].unsupported_numbers


def test_sentences_markers_and_width_folding():
    assert split_sentences("甲为１７５０亿[1]。乙是15%【2】！") == [("甲为１７５０亿。", [1]), ("乙是15%！", [2])]
    assert split_sentences("15.8亿 [编号2]") == [("15.8亿", [2])]
    assert numbers_of("参数量１，７５０亿，增长25.6%") == ["1750", "25.6"]


def test_number_from_a_sibling_version_is_not_tied_to_the_subject():
    row = Unit(0, "", "参数量(gpt-1:1.2亿;gpt-2:15.8亿;gpt-3:1750亿;gpt-4:-)")  # a table row quoted with its header
    assert number_supported("1750", [row], ["gpt-4", "参数量"]) == (True, False)  # the GPT-3 cell given for GPT-4
    assert number_supported("1750", [row], ["gpt-3", "参数量"]) == (True, True)
    assert number_supported("15.8", [row], ["gpt2", "参数量"]) == (True, True)
    prose = Unit(0, "", "gpt-4相比gpt-3的1750亿参数有大幅提升")
    assert number_supported("1750", [prose], ["gpt-4", "参数"]) == (True, False)


def test_list_numbering_is_not_a_figure():
    answer = "以下改进：\n1. 添加了两种新机制。\n2、提供了更简单的流程。（3）版本1.8支持AMD GPU。改进：1.8版"
    assert [text for text, _ in split_sentences(answer)] == [
        "以下改进：", "添加了两种新机制。", "提供了更简单的流程。", "版本1.8支持AMD GPU。", "改进：1.8版"]


MCKINSEY = ("而根据麦肯锡预测，人工智能整体将为全球经济带来高达 25.6 万亿美元的正面经济影响，"
            "而其中来自 GenAI 的贡献高达 7.9 万亿美元。")


def _unit(text: str) -> Unit:
    return Unit(0, text, fold(text).replace(" ", ""))


def _claim(terms: list[str], *numbers: str, **measures: str) -> Claim:
    """A checked sentence's claim: its question terms, its numbers, and measure=number for those written with one."""
    return Claim(tuple(terms), frozenset(numbers), {n: frozenset({m}) for m, n in measures.items()})


def test_a_rival_number_that_owns_the_claimed_terms_takes_the_number_away():
    subjects = ["经济", "麦肯锡", "贡献", "测算"]
    # "生成式AI能给全球经济贡献25.6万亿美元": 贡献 (and the "ai" of GenAI) stand by 7.9, not by 25.6.
    claimed = ["经济", "生成式", "ai", "麦肯锡", "贡献", "测算", "全球"]
    assert number_supported("25.6", [_unit(MCKINSEY)], subjects, _claim(claimed, "25.6")) == (True, False)
    # Both clauses hold a claimed term the other lacks: neither number passes alone.
    assert number_supported("7.9", [_unit(MCKINSEY)], subjects, _claim(claimed, "7.9")) == (True, False)
    # Stated together, they are no rivals; and what only 25.6's clause says ties 25.6 to it.
    assert number_supported("25.6", [_unit(MCKINSEY)], subjects, _claim(claimed, "25.6", "7.9")) == (True, True)
    assert number_supported("25.6", [_unit(MCKINSEY)], subjects, _claim(["人工智能", "经济"], "25.6")) == (True, True)


def test_rival_rule_keeps_a_plain_list_of_figures():
    row = _unit("GPU单价7.39万元，TPU单价2.29万元。")
    assert number_supported("7.39", [row], ["gpu", "单价"], _claim(["gpu", "单价"], "7.39")) == (True, True)
    assert number_supported("7.39", [row], ["tpu", "单价"], _claim(["tpu", "单价"], "7.39")) == (True, False)


def test_a_table_cell_is_read_with_its_column_name():
    row = _unit("参数量(gpt-1:1.2亿;gpt-2:15.8亿;gpt-3:1750亿)")
    assert number_supported("15.8", [row], ["gpt-2", "参数量"], _claim(["gpt-2", "参数量"], "15.8", 亿="15.8")) == (
        True, True)
    assert number_supported("1750", [row], ["gpt-2", "参数量"], _claim(["gpt-2", "参数量"], "1750", 亿="1750")) == (
        True, False)


def test_a_number_must_stand_there_with_the_measure_it_is_written_with():
    passage = _unit("张北和乌兰察布智算中心分别提供12 FLOPS和3 FLOPS的AI算力，"
                    "可以将计算资源利用率提高3倍以上，推理效率提升6倍。")
    subjects = ["智算", "推理"]
    # "推理速度能快3倍": the 3 of "3 FLOPS" is no 倍, and the 3倍 belongs to 利用率 while 推理 stands by 6倍.
    assert number_supported("3", [passage], subjects, _claim(["智算", "推理"], "3", 倍="3")) == (True, False)
    assert number_supported("6", [passage], subjects, _claim(["智算", "推理"], "6", 倍="6")) == (True, True)
    bloomberg = _unit("到2032年，生成式AI驱动的广告支出将达到$192,492 million。")
    in_yi = _claim(["广告"], "192492", 亿美元="192492")  # "192,492亿美元" for $192,492 million
    assert number_supported("192492", [bloomberg], ["广告"], in_yi) == (True, False)
    assert number_supported("192492", [bloomberg], ["广告"], _claim(["广告"], "192492")) == (True, True)
    table_cell = _unit("推出年份(gpt-3:2020;gpt-4:2023)")  # a bare year in a table may be written 2023年
    assert number_supported("2023", [table_cell], ["gpt-4"], _claim(["gpt-4"], "2023", 年="2023")) == (True, True)


def test_digits_of_a_name_are_no_figure():
    assert figures_of("阿里巴巴，M6。") == [] and names_of("阿里巴巴，M6。") == ["m6"]
    assert figures_of("GPT-4的参数量为1,750亿，A100 GPU") == ["1750"]
    assert names_of("GPT-4 与 A100") == ["gpt4", "a100"]


def test_a_remark_about_the_passages_states_nothing():
    from rag.checker import says_something

    assert not says_something("根据段落中的信息。")
    assert not says_something("以上是报告中的相关内容。[2]")
    assert says_something("英伟达[1]") and says_something("源1.0 参数量为245.7亿。")
    assert says_something("根据段落，华为海思的昇腾910在半精度下可以达到320TFLOPS的计算速度。")


def test_a_remark_is_never_verified(tiny_qa):
    found = tiny_qa.search(QUESTION, top_k=5)
    checks = check_sentences(found.analysed, found.hits, "根据段落中的信息。", tiny_qa.embedder.embed_documents)
    assert len(checks) == 1 and not checks[0].verified and "states nothing" in (checks[0].reason or "")


def test_a_year_the_sentence_gives_the_number_must_stand_with_it():
    unit = _unit("据中国信通院公布的测算数据，2021年中国人工智能产业规模为4041亿元，同比增长33.3%。")
    subjects = ["人工智能", "产业规模"]

    def claim(year: str) -> Claim:
        return Claim(("人工智能", "产业规模"), frozenset({"4041"}), {"4041": frozenset({"亿元"})},
                     {"4041": frozenset({year})})

    assert number_supported("4041", [unit], subjects, claim("2023")) == (True, False)  # 2021's figure for 2023
    assert number_supported("4041", [unit], subjects, claim("2021")) == (True, True)


def test_a_question_term_the_passages_never_mention_ties_no_number(tiny_qa):
    from rag.query import analyse
    from rag.results import Hit

    store = tiny_qa.store
    passage = next(c for source in store.documents for c in store.chunks_of(source) if "4041亿元" in c.text)
    hits = [Hit(1, passage, store.documents[passage.source], 1.0)]
    query = analyse("信通院测算的中国人工智能产业规模和投资额分别是多少？", store)

    def check(sentence: str):
        return check_sentences(query, hits, sentence, tiny_qa.embedder.embed_documents)[0]

    assert check("2021年中国人工智能产业规模为4041亿元。").unsupported_numbers == []
    assert check("中国人工智能产业投资额为4041亿元。").unsupported_numbers == ["4041"]  # the passage never says 投资额
    assert "4041" in check("预计2023年中国人工智能产业规模为4041亿元。").unsupported_numbers  # 2021 figure
