"""The ``rag`` command through click's CliRunner: the JSON contract and errors on the tiny-model index,
answers that depend on retrieval quality on the real seed index."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rag.cli import main

HIT_FIELDS = {"rank": int, "citation": str, "source": str, "title": str, "start": int, "end": int,
              "text": str, "score": float}


def run(qa, *args: str, input: str | None = None, index=None):
    options = ["--corpus", str(qa.corpus_dir), "--index", str(index or qa.index_dir), "--model", qa.model]
    return CliRunner().invoke(main, [*options, *args], input=input, catch_exceptions=True)


def json_lines(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def assert_clean(result, code: int = 0) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    if code == 0:
        assert result.exception is None, repr(result.exception)


def check_hit(hit: dict, qa) -> None:
    for key, kind in HIT_FIELDS.items():
        assert key in hit, key
        assert isinstance(hit[key], kind), (key, hit[key])
    assert hit["source"] in qa.reports()
    document = qa.store.documents[hit["source"]]
    assert document.text[hit["start"]:hit["end"]] == hit["text"]
    assert hit["citation"].startswith(hit["source"] + ":L")


def test_search_json_stdin_one_line_per_question(seed_qa):
    result = run(seed_qa, "search", "--json", input="GPT-3参数量\n\nM6-OFA\n")
    assert_clean(result)
    lines = json_lines(result)
    assert len(result.stdout.strip().split("\n")) == 3
    assert [line["query"] for line in lines] == ["GPT-3参数量", "", "M6-OFA"]
    assert lines[1]["hits"] == [] and lines[1]["error"]
    for line in (lines[0], lines[2]):
        assert "error" not in line
        assert 1 <= len(line["hits"]) <= 5
        assert [h["rank"] for h in line["hits"]] == list(range(1, len(line["hits"]) + 1))
        for hit in line["hits"]:
            check_hit(hit, seed_qa)
    assert any("M6-OFA" in hit["text"] for hit in lines[2]["hits"])


def test_search_json_top_k_and_mode(tiny_qa):
    result = run(tiny_qa, "search", "--json", "--top-k", "2", "--mode", "bm25", "科大讯飞是什么时候上市的")
    assert_clean(result)
    (line,) = json_lines(result)
    assert len(line["hits"]) == 2


def test_ask_json_adds_answer_and_abstained(seed_qa):
    result = run(seed_qa, "ask", "--json", input="科大讯飞是什么时候上市的\n特斯拉2030年火星基地的预算是多少\n")
    assert_clean(result)
    answered, unrelated = json_lines(result)
    for line in (answered, unrelated):
        assert isinstance(line["answer"], str)
        assert isinstance(line["abstained"], bool)
        for hit in line["hits"]:
            check_hit(hit, seed_qa)
    assert answered["abstained"] is False and "[1]" in answered["answer"]
    assert answered["sources"] and answered["sources"][0]["marker"] == 1
    assert unrelated["abstained"] is True and unrelated["answer"] == "在报告中未找到相关内容"


def test_ask_plain_text_lists_sources(tiny_qa):
    result = run(tiny_qa, "ask", "魔搭社区首批上架了多少个模型")
    assert_clean(result)
    assert "[1]" in result.stdout and "来源" in result.stdout


def test_refusal_lists_the_closest_passages_to_check(seed_qa):
    from rag.answer import CLOSEST_TITLE

    refused = seed_qa.ask("报告里给金山办公定的目标价是多少？")
    assert refused.abstained and len(refused.closest) == 3
    result = run(seed_qa, "ask", "报告里给金山办公定的目标价是多少？")
    assert_clean(result)
    lines = result.stdout.splitlines()
    assert lines[0] == "在报告中未找到相关内容" and CLOSEST_TITLE in lines
    for hit in refused.closest:
        assert hit.citation in result.stdout
    assert not seed_qa.ask("GPT-3的参数量是多少").closest  # only a refusal lists them


def test_search_plain_text(tiny_qa):
    result = run(tiny_qa, "search", "GPT-3的参数量是多少")
    assert_clean(result)
    assert "[1]" in result.stdout and ".txt:L" in result.stdout


HOSTILE = {
    "control and emoji": "\x00\x01\x02\x1b[31m\x7f😀🎉🚀\u200b",
    "only control": "\x00\x01\x02\x03\x1b\x7f",
    "english": "What is the parameter count of GPT-3?",
    "sql injection": "'; DROP TABLE chunks; --",
}


@pytest.mark.parametrize("command", ["search", "ask"])
@pytest.mark.parametrize("question", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_questions_return_valid_json(tiny_qa, command, question):
    result = run(tiny_qa, command, "--json", question)
    assert_clean(result)
    (line,) = json_lines(result)
    assert isinstance(line["hits"], list)
    if line.get("error"):
        assert line["hits"] == []
    for hit in line["hits"]:
        check_hit(hit, tiny_qa)
    if command == "ask":
        assert isinstance(line["answer"], str) and isinstance(line["abstained"], bool)
    # the index is untouched by whatever the question said
    assert len(tiny_qa.store) == tiny_qa.store.manifest["chunks"]


def test_20000_character_question(tiny_qa):
    question = ("GPT-3的参数量是多少？" * 2000)[:20000]
    result = run(tiny_qa, "ask", "--json", question)  # ask = search + answer: one (slow) long query
    assert_clean(result)
    (line,) = json_lines(result)
    assert "warning" in line, "the question is truncated with a warning"
    assert line["hits"]
    for hit in line["hits"]:
        check_hit(hit, tiny_qa)
    assert isinstance(line["answer"], str) and isinstance(line["abstained"], bool)


def test_search_without_question_is_a_usage_error(tiny_qa):
    result = run(tiny_qa, "search")
    assert result.exit_code != 0
    assert "Usage" in result.output
    assert "Traceback" not in result.output


def test_missing_index_folder(tiny_qa, tmp_path):
    for args in (["search", "GPT-3"], ["ask", "--json", "GPT-3"], ["cite", "004_e0d667138c034a95.txt:L1-L5"]):
        result = run(tiny_qa, *args, index=tmp_path / "no-index-here")
        assert_clean(result, code=1)
        assert "rag index" in result.stderr


def test_unknown_mode_is_rejected(tiny_qa):
    result = run(tiny_qa, "search", "--mode", "semantic", "GPT-3")
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_index_up_to_date(tiny_qa):
    result = run(tiny_qa, "index")
    assert_clean(result)
    assert "up to date" in result.stdout
