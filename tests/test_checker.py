"""The generated-answer checker without an LLM: sentence splitting, width folding, numbers not in passages."""

from __future__ import annotations

from rag.checker import check_sentences, numbers_of, split_sentences

QUESTION = "GPT-3 的参数量是多少？"


def test_checker_rejects_number_absent_from_passages(tiny_qa):
    found = tiny_qa.search(QUESTION, top_k=5)
    fake = "GPT-3的参数量为98765亿。"
    checks = check_sentences(found.analysed, found.hits, fake, tiny_qa.embedder.embed_documents)
    assert len(checks) == 1 and not checks[0].verified and "98765" in checks[0].unsupported_numbers


def test_sentences_markers_and_width_folding():
    assert split_sentences("甲为１７５０亿[1]。乙是15%【2】！") == [("甲为１７５０亿。", [1]), ("乙是15%！", [2])]
    assert numbers_of("参数量１，７５０亿，增长25.6%") == ["1750", "25.6"]
