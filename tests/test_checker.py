"""The generated-answer checker without an LLM: sentence splitting, width folding, numbers not in passages."""

from __future__ import annotations

from rag.checker import Unit, check_sentences, number_supported, numbers_of, split_sentences

QUESTION = "GPT-3 的参数量是多少？"


def test_checker_rejects_number_absent_from_passages(tiny_qa):
    found = tiny_qa.search(QUESTION, top_k=5)
    fake = "GPT-3的参数量为98765亿。"
    checks = check_sentences(found.analysed, found.hits, fake, tiny_qa.embedder.embed_documents)
    assert len(checks) == 1 and not checks[0].verified and "98765" in checks[0].unsupported_numbers


def test_sentences_markers_and_width_folding():
    assert split_sentences("甲为１７５０亿[1]。乙是15%【2】！") == [("甲为１７５０亿。", [1]), ("乙是15%！", [2])]
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
