"""The learned second stage: its signals on small texts, and its effect on the real index (real model)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from rag.evaluate import Configuration, evaluate_configuration, load_questions
from rag.second_stage import SIGNALS, SecondStageModel, bigrams, longest_shared_run, signals


def test_longest_shared_run():
    assert longest_shared_run("源1.0参数量", "浪潮信息源1.0245.7亿") == 4  # 源1.0
    assert longest_shared_run("abc", "xyz") == 0
    assert longest_shared_run("", "abc") == 0


def test_bigrams():
    assert bigrams("参数量") == {"参数", "数量"}
    assert bigrams("a") == set()


def test_signals_of_two_candidates():
    idf = {"gpt-3": 3.0, "参数": 1.0}.get
    matrix = signals("gpt-3的参数量是多少", ["gpt-3", "参数"], lambda t: idf(t, 1.0),
                     ["gpt-3参数量1750亿", "参数规模很大"], [0.4, 0.0], [0.7, 0.6], [0.8, 0.5], [10.0, 5.0],
                     [1.0, 0.3])
    assert matrix.shape == (2, len(SIGNALS))
    row = dict(zip(SIGNALS, matrix[0], strict=True))
    other = dict(zip(SIGNALS, matrix[1], strict=True))
    assert row["bm25"] == 1.0 and other["bm25"] == 0.5  # divided by the best candidate
    assert row["idf_coverage"] == pytest.approx(1.0) and other["idf_coverage"] == pytest.approx(0.25)
    assert row["phrase"] > other["phrase"]
    assert row["bigrams"] > other["bigrams"]
    assert row["digits_if_quantity"] == pytest.approx(0.4)  # the question asks 多少


def test_digits_count_only_when_a_quantity_is_asked():
    matrix = signals("gpt-3是谁发布的", ["gpt-3"], lambda t: 1.0, ["gpt-3 2020"], [0.5], [0.5], [0.5], [1.0], [1.0])
    assert matrix[0, SIGNALS.index("digits_if_quantity")] == 0.0


def test_no_fitted_weight_is_negative():
    # More of any signal should never push a passage down; a negative weight would be a fit to noise.
    assert all(weight >= 0 for weight in SecondStageModel().weights.values())
    assert set(SecondStageModel().weights) == set(SIGNALS)


def test_empty_candidate_list():
    assert signals("问题", [], lambda t: 1.0, [], [], [], [], [], []).shape == (0, len(SIGNALS))


def test_second_stage_beats_the_fused_order_on_the_dev_split(seed_qa):
    """The stage was fitted on dev; on the same questions it must rank better than the fused order."""
    questions = [q for q in load_questions(Path(ROOT / "eval" / "questions.jsonl"), "dev") if q.answerable]
    with_stage = evaluate_configuration(Configuration("default", "hybrid", seed_qa), questions)
    fusion = seed_qa.retriever.fusion
    seed_qa.retriever.fusion = replace(fusion, second_stage=None)
    try:
        without = evaluate_configuration(Configuration("fused", "hybrid", seed_qa), questions)
    finally:
        seed_qa.retriever.fusion = fusion
    assert with_stage.metrics["mrr@10"] > without.metrics["mrr@10"]
    assert with_stage.metrics["hit@5"] >= without.metrics["hit@5"] - 0.01


def test_second_stage_keeps_search_and_scores_consistent(seed_qa):
    hits = seed_qa.search("GPT-3的参数量是多少", top_k=10).hits
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert np.isfinite(scores).all()
    assert any("1750亿" in h.chunk.text for h in hits[:3])
