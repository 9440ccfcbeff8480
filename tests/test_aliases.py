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


def test_expansion_looks_up_suffixes_and_equals_testing_every_pair():
    from rag.aliases import MIN_SUFFIX, AliasTable
    from rag.textnorm import fold

    table = AliasTable({("视觉问答", "vqa"), ("英伟达", "nvidia"), ("魔搭", "modelscope"),
                        ("图像字幕和视觉问答", "vqa"), ("大语言模型", "llm"), ("语言模型", "lm"), ("通义千问", "qwen")})

    def every_pair(query: str) -> list[str]:  # the definition: some checked suffix of the run occurs in the question
        folded = fold(query).replace(" ", "")
        found: list[str] = []
        for native, latin in sorted(table.pairs):
            if latin.replace(" ", "") not in folded and latin not in found and any(
                    native[-n:] in folded for n in range(len(native), 1, -1) if n >= MIN_SUFFIX or n == len(native)):
                found.append(latin)
        return found

    questions = ["视觉问答比赛谁赢了", "问答", "魔搭社区有多少模型", "英伟达（NVIDIA）的市值", "大语言模型和语言模型",
                 "千问", "通义千问的参数量", "达的", "GPT-4 是什么", ""]
    assert [table.expand(q) for q in questions] == [every_pair(q) for q in questions]
    assert table.expand("视觉问答比赛谁赢了") == ["vqa"] and table.expand("英伟达（NVIDIA）的市值") == []
