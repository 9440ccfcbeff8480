"""Aliases mined from the reports ("视觉问答（VQA）") widen the BM25 query of a Chinese question."""

from __future__ import annotations

from rag.aliases import AliasTable


def test_pairs_are_mined_from_both_orders():
    table = AliasTable.mine(["图像字幕和视觉问答（VQA）；", "推出AI开源社区“魔搭”（ModelScope）",
                             "Prometheus（普罗米修斯）"])
    assert table.pairs == {("图像字幕和视觉问答", "vqa"), ("魔搭", "modelscope"), ("普罗米修斯", "prometheus")}


def test_question_with_the_chinese_name_gets_the_english_one():
    table = AliasTable.mine(["图像字幕和视觉问答（VQA）", "时，英伟达（NVIDIA）", "缩放定律（Scaling Laws）"])
    assert table.expand("阿里在视觉问答比赛里成绩如何") == ["vqa"]
    assert table.expand("英伟达的护城河是什么") == ["nvidia"]
    assert table.expand("什么是缩放定律") == ["scaling laws"]


def test_no_expansion_for_short_fragments_or_names_already_written():
    table = AliasTable.mine(["图像字幕和视觉问答（VQA）"])
    assert table.expand("问答系统有哪些") == []  # two-character tail of a longer run: too loose
    assert table.expand("视觉问答（VQA）的准确率") == []  # the English name is in the question already


def test_seed_reports_define_their_aliases(tiny_qa):
    pairs = tiny_qa.store.aliases.pairs
    assert ("英伟达", "nvidia") in pairs
    assert ("魔搭", "modelscope") in pairs


def test_chinese_question_reaches_the_english_passage_by_bm25(tiny_qa):
    hits = tiny_qa.search("阿里的模型在视觉问答比赛里的准确率怎么样", top_k=5, mode="bm25").hits
    assert "vqa challenge" in hits[0].chunk.text.lower()
