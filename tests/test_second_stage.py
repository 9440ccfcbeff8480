"""The learned second stage: its signals on small texts, and its effect on the real index (real model)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from rag.evaluate import Configuration, evaluate_configuration, load_questions
from rag.query import Query, fold_key
from rag.records import StoredChunk
from rag.scoring import Candidate
from rag.second_stage import SIGNALS, SecondStageModel, bigrams, longest_shared_run, signals


def _query(text: str, weights: dict[str, float], asks_quantity: bool) -> Query:
    return Query(text=text, folded=fold_key(text), terms=tuple(weights), weights=weights,
                 lexical_tokens=tuple(weights), asks_quantity=asks_quantity)


def _candidate(text: str, dense: float, sentence: float, bm25: float, coverage: float) -> Candidate:
    chunk = StoredChunk(0, "x.txt:L1-L1", "x.txt", 0, len(text), text, "", "", "text", 1, 1, None)
    return Candidate(chunk, fold_key(text), np.float32(dense), np.float32(sentence), np.float32(bm25), coverage)


def test_longest_shared_run():
    assert longest_shared_run("源1.0参数量", "浪潮信息源1.0245.7亿") == 4  # 源1.0
    assert longest_shared_run("abc", "xyz") == 0
    assert longest_shared_run("", "abc") == 0


def test_bigrams():
    assert bigrams("参数量") == {"参数", "数量"}
    assert bigrams("a") == set()


def test_signals_of_two_candidates():
    query = _query("gpt-3的参数量是多少", {"gpt-3": 3.0, "参数": 1.0}, asks_quantity=True)
    matrix = signals(query, [_candidate("gpt-3参数量1750亿", 0.7, 0.8, 10.0, 1.0),
                             _candidate("参数规模很大", 0.6, 0.5, 5.0, 0.3)])
    assert matrix.shape == (2, len(SIGNALS))
    row = dict(zip(SIGNALS, matrix[0], strict=True))
    other = dict(zip(SIGNALS, matrix[1], strict=True))
    assert row["bm25"] == 1.0 and other["bm25"] == 0.5  # divided by the best candidate
    assert row["idf_coverage"] == pytest.approx(1.0) and other["idf_coverage"] == pytest.approx(0.25)
    assert row["phrase"] > other["phrase"]
    assert row["bigrams"] > other["bigrams"]
    assert row["digits_if_quantity"] == pytest.approx(5 / 13)  # the question asks 多少: 5 digits of 13 characters


def test_digits_count_only_when_a_quantity_is_asked():
    matrix = signals(_query("gpt-3是谁发布的", {"gpt-3": 1.0}, asks_quantity=False),
                     [_candidate("gpt-3 2020", 0.5, 0.5, 1.0, 1.0)])
    assert matrix[0, SIGNALS.index("digits_if_quantity")] == 0.0


def test_no_fitted_weight_is_negative():
    # More of any signal should never push a passage down; a negative weight would be a fit to noise.
    assert all(weight >= 0 for weight in SecondStageModel().weights.values())
    assert set(SecondStageModel().weights) == set(SIGNALS)


def test_empty_candidate_list():
    assert signals(_query("问题", {"问题": 1.0}, asks_quantity=False), []).shape == (0, len(SIGNALS))


def test_second_stage_beats_the_fused_order_on_the_dev_split(seed_qa):
    """The stage was fitted on dev; on the same questions it must rank better than the fused order."""
    questions = [q for q in load_questions(Path(ROOT / "eval" / "questions.jsonl"), "dev") if q.answerable]
    with_stage = evaluate_configuration(Configuration("default", "hybrid", seed_qa), questions)
    settings = seed_qa.settings
    seed_qa.configure(replace(settings, fusion=replace(settings.fusion, second_stage=False)))
    try:
        without = evaluate_configuration(Configuration("fused", "hybrid", seed_qa), questions)
    finally:
        seed_qa.configure(settings)
    assert with_stage.metrics["mrr@10"] > without.metrics["mrr@10"]
    assert with_stage.metrics["hit@5"] >= without.metrics["hit@5"] - 0.01


def test_second_stage_keeps_search_and_scores_consistent(seed_qa):
    hits = seed_qa.search("GPT-3的参数量是多少", top_k=10).hits
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert np.isfinite(scores).all()
    assert any("1750亿" in h.chunk.text for h in hits[:3])
