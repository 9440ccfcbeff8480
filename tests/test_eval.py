"""The question set is sound, the metric glue is right, and `rag eval` runs end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import CORPUS, ROOT

from rag.cli import main
from rag.evaluate import Question, _ranx_scores, is_relevant, load_questions

QUESTIONS = ROOT / "eval" / "questions.jsonl"
TYPES = {"fact", "table", "numeric", "list", "paraphrase", "multi", "unanswerable"}


def _squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return [json.loads(line) for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_question_set_shape(rows):
    assert len(rows) >= 160
    assert len({r["id"] for r in rows}) == len(rows)
    assert {r["split"] for r in rows} == {"dev", "test", "holdout"}
    assert {r["type"] for r in rows} <= TYPES
    unanswerable = [r for r in rows if r["type"] == "unanswerable"]
    # ~10% in the test split; dev carries extra near-miss ones to calibrate abstention on.
    assert 0.05 <= len(unanswerable) / len(rows) <= 0.20
    test_rows = [r for r in rows if r["split"] == "test"]
    assert 0.05 <= sum(r["type"] == "unanswerable" for r in test_rows) / len(test_rows) <= 0.15
    assert all(not r["evidence"] and not r["docs"] for r in unanswerable)
    for report in sorted(p.name for p in CORPUS.glob("*.txt")):
        assert sum(report in r["docs"] for r in rows) >= 25, report


def test_every_evidence_string_is_verbatim_in_its_reports(rows):
    raw = {p.name: _squeeze(p.read_text(encoding="utf-8")) for p in CORPUS.glob("*.txt")}
    for row in rows:
        if row["type"] == "unanswerable":
            continue
        assert 1 <= len(row["evidence"]) <= 3, row["id"]
        assert all(8 <= len(_squeeze(e)) <= 60 for e in row["evidence"]), row["id"]
        for doc in row["docs"]:
            assert any(_squeeze(e) in raw[doc] for e in row["evidence"]), (row["id"], doc)
        for evidence in row["evidence"]:
            assert any(_squeeze(evidence) in raw[doc] for doc in row["docs"]), (row["id"], evidence)


def test_relevance_ignores_whitespace_and_checks_the_report():
    question = Question(id="x", question="q", evidence=["参数量1750亿"], docs=["a.txt"], type="fact")
    assert is_relevant("GPT-3 的参数量\n 1750亿。", "a.txt", question)
    assert not is_relevant("GPT-3 的参数量 1750亿。", "b.txt", question)
    assert not is_relevant("参数量 175 亿", "a.txt", question)


def test_ranx_glue_on_tiny_rankings():
    scores = _ranx_scores({
        "first": [("a", True), ("b", False)],
        "third": [("a", False), ("b", False), ("c", True)],
        "none": [("a", False)],
    })
    assert scores["first"]["hit@1"] == 1.0 and scores["first"]["mrr@10"] == 1.0
    assert scores["third"]["hit@1"] == 0.0 and scores["third"]["hit@3"] == 1.0
    assert scores["third"]["mrr@10"] == pytest.approx(1 / 3)
    assert scores["none"]["hit@10"] == 0.0 and scores["none"]["mrr@10"] == 0.0


def test_bootstrap_interval_brackets_the_mean_and_is_reproducible():
    from rag.evaluate import ConfigResult, bootstrap_interval, metric_interval

    values = [1.0] * 60 + [0.5] * 10 + [0.0] * 5
    low, high = bootstrap_interval(values)
    assert low < sum(values) / len(values) < high
    assert (low, high) == bootstrap_interval(values)  # fixed seed
    assert bootstrap_interval([0.7] * 20) == pytest.approx((0.7, 0.7))
    better = ConfigResult("a", per_question={str(i): {"mrr@10": 1.0} for i in range(30)})
    worse = ConfigResult("b", per_question={str(i): {"mrr@10": 0.5 if i % 3 else 1.0} for i in range(30)})
    lead_low, _ = metric_interval(better, "mrr@10", worse)
    assert lead_low > 0  # a lead on every third question is not resampling noise
    assert metric_interval(better, "mrr@10", better) == (0.0, 0.0)


def test_numbers_in_reads_separators_and_full_width_digits():
    from rag.evaluate import numbers_in

    assert numbers_in("H100 NVL 为 3,958 TFLOPS，约１７５０亿参数") == {"100", "3958", "1750"}
    assert numbers_in("增长 12.5%") == {"12.5"}


def test_separation_auc():
    from rag.evaluate import separation_auc

    assert separation_auc([0.9, 0.8], [0.1, 0.2, 0.3]) == 1.0
    assert separation_auc([0.1], [0.9]) == 0.0
    assert separation_auc([0.5, 0.9], [0.5, 0.1]) == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    assert separation_auc([None], [0.2]) is None  # bm25: no model, no AUC


def test_limit_spreads_over_the_split():
    from rag.evaluate import spread

    items = list(range(10))
    assert spread(items, 3) == [0, 3, 6] and spread(items, None) == items and spread(items, 20) == items
    assert spread(items, 0) == [] and spread(items, 10) == items


def test_resumed_answer_eval_keeps_only_matching_records(tmp_path):
    from rag.answer_eval import load_records

    questions = [Question("a", "甲是多少？", [], [], "numeric"), Question("b", "乙是多少？", [], [], "numeric")]
    lines = [{"id": "a", "question": "甲是多少？", "model": "m"},
             {"id": "b", "question": "乙是多少？", "model": "other"},  # another model's answer
             {"id": "b", "question": "乙以前怎么问？", "model": "m"}]  # the question was reworded since
    path = tmp_path / "answers-test.records.jsonl"
    path.write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in lines) + '\n{"id": "b", "qu',
                    encoding="utf-8")  # the last line of a run killed mid-write
    assert set(load_records(path, questions, "m")) == {"a"}
    assert load_records(tmp_path / "missing.jsonl", questions, "m") == {}


def test_load_questions_rejects_a_bad_file(tmp_path):
    from rag.errors import RagError

    bad = tmp_path / "q.jsonl"
    bad.write_text('{"id": 1}\n', encoding="utf-8")
    with pytest.raises(RagError, match="第 1 行"):
        load_questions(bad)


def test_rag_eval_runs_end_to_end_on_a_subset(tiny_qa, tmp_path):
    out = tmp_path / "results"
    result = CliRunner().invoke(main, [
        "--corpus", str(tiny_qa.corpus_dir), "--index", str(tiny_qa.index_dir), "--model", tiny_qa.model,
        "eval", "--split", "dev", "--limit", "12", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    numbers = json.loads(result.stdout[result.stdout.index("{"):])
    assert set(numbers) == {"bm25", "dense", "recipe", "default"}
    for config in numbers.values():
        for name in ("hit@1", "hit@5", "mrr@10", "ndcg@10", "false_abstain"):
            assert 0.0 <= config["metrics"][name] <= 1.0
        assert config["latency_ms"]["p50"] >= 0
    written = sorted(p.suffix for p in Path(out).iterdir())
    assert written == [".md", ".png"]
    report = next(Path(out).glob("*.md")).read_text(encoding="utf-8")
    assert "| default |" in report and "| recipe |" in report
    assert "95% bootstrap" in report and "| AUC |" in report and "Extractive answers" in report
    for name in ("answer_cites_relevant", "answer_states_numbers"):
        assert 0.0 <= numbers["default"]["metrics"][name] <= 1.0
    assert numbers["default"]["metrics"]["answer_chars"] > 0
    for config in numbers.values():
        low, high = config["intervals"]["mrr@10"]
        assert low <= config["metrics"]["mrr@10"] <= high


def test_rag_eval_runs_a_users_file_without_splits_whole(seed_qa, tmp_path):
    questions = tmp_path / "mine.jsonl"
    questions.write_text("\n".join(json.dumps(q, ensure_ascii=False) for q in [
        {"id": "a", "question": "GPT-3的参数量是多少", "evidence": ["1750亿"]},
        {"id": "b", "question": "科大讯飞是什么时候上市的", "evidence": ["2008年5月"]},
    ]) + "\n", encoding="utf-8")
    out = tmp_path / "results"
    result = CliRunner().invoke(main, [
        "--corpus", str(seed_qa.corpus_dir), "--index", str(seed_qa.index_dir), "--model", seed_qa.model,
        "eval", "--questions", str(questions), "--configs", "default", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = next(Path(out).glob("*-all.md")).read_text(encoding="utf-8")
    assert "Questions: 2 from" in report
    row = next(line for line in report.splitlines() if line.startswith("| default |"))
    assert row.split(" | ")[3] == "1.000"  # Hit@5 over both questions
    assert row.split(" | ")[7:9] == ["—", "—"]  # no multi-evidence and no unanswerable questions
