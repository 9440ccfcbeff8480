"""The answer candidates every answer is chosen from, and the diagnostic that bounds what choosing
among them can reach (eval/answer_ceiling.py). Seed reports with the tiny model (mechanics)."""

from __future__ import annotations

import importlib.util
import re
import sys

from conftest import ROOT

from rag.answer import AnswerSettings, answer_candidates, cited_answer, compose_answer
from rag.evaluate import numbers_in
from rag.query import analyse
from rag.results import Hit

TIANFENG = "002_f3649e5dfb89d976.txt"
SPEC = importlib.util.spec_from_file_location("answer_ceiling", ROOT / "eval" / "answer_ceiling.py")
assert SPEC is not None and SPEC.loader is not None
ceiling = importlib.util.module_from_spec(SPEC)
sys.modules["answer_ceiling"] = ceiling  # its dataclasses look their module up
SPEC.loader.exec_module(ceiling)


def _survey_hit(store) -> Hit:
    chunk = next(c for c in store.chunks_of(TIANFENG) if "7.39万元" in c.text)
    return Hit(rank=1, chunk=chunk, document=store.documents[chunk.source], score=1.0, coverage=1.0)


def test_candidates_are_ranked_and_the_answer_leads_with_the_best(tiny_qa):
    store = tiny_qa.store
    query = analyse("企业平均的GPU和TPU单价成本是多少元？", store)
    hits = [_survey_hit(store)]
    candidates = answer_candidates(query, hits, AnswerSettings())
    assert candidates and [c.score for c in candidates] == sorted((c.score for c in candidates), reverse=True)
    assert all(not c.quoted.startswith("Q：") for c in candidates)  # survey question lines are never candidates
    answer = compose_answer(query, hits, AnswerSettings())
    assert answer.text.startswith(candidates[0].quoted + "[1]")
    quoted = cited_answer(candidates[:2], hits)
    assert quoted.text == f"{candidates[0].quoted}[1]{candidates[1].quoted}[1]" and quoted.sources == hits


def test_the_perfect_clause_reader_quotes_only_what_covers_the_reference(tiny_qa):
    store = tiny_qa.store
    query = analyse("企业平均的GPU和TPU单价成本是多少元？", store)
    hits = [_survey_hit(store)]
    candidates = answer_candidates(query, hits, AnswerSettings())
    pool, features = ceiling.clause_features(query, candidates, None, None)
    assert len(pool) == len(features) and all(len(row) == len(features[0]) for row in features)
    wanted = {"7.39", "2.29"}
    allowed = wanted | numbers_in(query.text)
    picked = ceiling.oracle_clauses(pool, wanted, set(), allowed)
    assert picked and set().union(*(numbers_in(c.text) for c in picked)) >= wanted
    answer = ceiling.quote_clauses(picked, {c.rank: -c.rank for c in pool}, hits)
    # Every quoted piece stands in the passage as written; left-out clauses are marked, never silently joined.
    for part in re.split(r"\[\d+\]", answer.text):
        for piece in filter(None, part.split(ceiling.ELISION)):
            assert piece in hits[0].chunk.text
    # Fewer stray numbers than quoting the candidate sentences the clauses came from, whole.
    whole = cited_answer([c.candidate for c in picked], hits)
    assert len(numbers_in(answer.text) - allowed) <= len(numbers_in(whole.text) - allowed)
