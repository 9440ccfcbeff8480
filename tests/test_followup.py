"""Follow-up questions: deterministic rewriting from the chat history, through the API, CLI and UI endpoint."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rag.cli import main
from rag.followup import standalone, standalone_turns, subject_of


@pytest.mark.parametrize(("history", "question", "expected"), [
    (["GPT-3 的参数量是多少？"], "那GPT-4呢？", "GPT-4 的参数量是多少？"),
    (["GPT-3 的参数量是多少？", "那GPT-4呢？"], "它是哪年推出的？", "GPT-4是哪年推出的？"),
    (["科大讯飞是什么时候上市的？"], "这家公司的星火大模型是哪天发布的？", "科大讯飞的星火大模型是哪天发布的？"),
    (["2021年中国人工智能产业规模是多少？"], "那2022年呢？", "2022年中国人工智能产业规模是多少？"),
    (["魔搭社区首批上架了多少个模型？"], "它是谁推出的？", "魔搭社区是谁推出的？"),
    (["飞天智算平台让AI训练效率提升了多少？"], "该平台是哪家公司的？", "飞天智算平台是哪家公司的？"),
])
def test_follow_ups_become_standalone(history, question, expected):
    rewrite, _ = standalone_turns(history, question)
    assert rewrite.rewritten and rewrite.text == expected


@pytest.mark.parametrize("question", ["科大讯飞是什么时候上市的？", "其中哪家公司的参数量最大？",
                                      "GPT-4的参数量是多少？"])
def test_standalone_questions_stay_as_they_are(question):
    rewrite = standalone(question, "GPT-3 的参数量是多少？")
    assert not rewrite.rewritten and rewrite.text == question


def test_first_turn_is_never_rewritten():
    assert standalone("它是哪年推出的？", None).rewritten is False


def test_subject_is_the_opening_phrase_or_name():
    assert subject_of("请问报告中腾讯混元大模型参数量是多少") == "腾讯混元大模型参数量"
    assert subject_of("ERNIE 3.0 TITAN的参数量是多少？") == "ERNIE 3.0 TITAN"
    assert subject_of("是多少？") is None


def test_search_with_history_reports_what_it_searched(tiny_qa):
    alone = tiny_qa.search("那GPT-4呢？")
    follow = tiny_qa.search("那GPT-4呢？", history=["GPT-3 的参数量是多少？"])
    assert alone.standalone is None and "standalone" not in alone.to_json()
    assert follow.standalone == "GPT-4 的参数量是多少？" and follow.to_json()["standalone"] == follow.standalone
    assert follow.analysed is not None and "参数量" in follow.analysed.terms
    assert [h.citation for h in follow.hits] == [h.citation for h in tiny_qa.search("GPT-4 的参数量是多少？").hits]


def test_cli_history_file_in_each_format(tiny_qa, tmp_path):
    formats = {"questions.json": json.dumps(["GPT-3 的参数量是多少？"], ensure_ascii=False),
               "messages.json": json.dumps([{"role": "user", "content": "GPT-3 的参数量是多少？"},
                                            {"role": "assistant", "content": "1750亿"}], ensure_ascii=False),
               "lines.txt": "GPT-3 的参数量是多少？\n"}
    for name, text in formats.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        result = CliRunner().invoke(main, ["--corpus", str(tiny_qa.corpus_dir), "--index", str(tiny_qa.index_dir),
                                           "--model", tiny_qa.model, "ask", "--json", "--history", str(path),
                                           "那GPT-4呢？"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["standalone"] == "GPT-4 的参数量是多少？", name
    plain = CliRunner().invoke(main, ["--corpus", str(tiny_qa.corpus_dir), "--index", str(tiny_qa.index_dir),
                                      "--model", tiny_qa.model, "ask", "--history", str(tmp_path / "lines.txt"),
                                      "那GPT-4呢？"])
    assert "按上文理解为：GPT-4 的参数量是多少？" in plain.stdout


def test_unreadable_history_is_a_clear_error(tiny_qa, tmp_path):
    bad = tmp_path / "history.json"
    bad.write_text('{"not": "a list"}', encoding="utf-8")
    result = CliRunner().invoke(main, ["--corpus", str(tiny_qa.corpus_dir), "--index", str(tiny_qa.index_dir),
                                       "--model", tiny_qa.model, "ask", "--history", str(bad), "那GPT-4呢？"])
    assert result.exit_code == 1 and "history" in result.stderr and "Traceback" not in result.output
