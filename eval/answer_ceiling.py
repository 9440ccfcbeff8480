"""How far can an extractive answer go on "states the numbers" and "number precision" together?
A diagnostic: it selects and changes nothing.

    python eval/answer_ceiling.py                    # dev
    python eval/answer_ceiling.py --split test       # the clause selector is still fitted on dev only
    python eval/answer_ceiling.py --embed-clauses    # adds each clause's cosine with the question

The answer goals (#16) ask for states ≥ 0.90 *and* number precision ≥ 0.80 with answers no longer
than today's. This script measures, over the sentences ``rag.answer`` may quote (every sentence of
the top three passages, ``answer_candidates``), what selections reach:

* the sentences ``rag ask`` quotes, with and without its refusals;
* upper bounds that know the reference answer: every candidate sentence; only the candidate
  sentences that state a reference number (or a key term when the reference has none); and the
  clauses (split at ，；) that cover the reference numbers with the fewest stray numbers — a perfect
  clause-level reader;
* a clause selector that does not know the reference: a logistic model over what the question and
  the passages say (term coverage of the clause and its neighbours, the sentence's score and rank,
  whether the clause writes a new number and the question asks for one, …), fitted on dev (grouped
  5-fold cross-validation when judged on dev itself), swept over its bar and clause budget.

If only selections that know the reference reach the goals, the gap is a reading signal (which of
the numbers in a sentence answers the question), not the choice of sentences.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from rag.answer import Candidate, answer_candidates, cited_answer, select_sentences
from rag.api import ReportQA
from rag.embed import document_input
from rag.evaluate import MARKER, answer_quality, key_terms, load_questions, numbers_in
from rag.query import Query, fold_key
from rag.results import Answer, Hit
from rag.textnorm import fold
from rag.tuning import fit_logistic

QUESTIONS = Path(__file__).resolve().parent / "questions.jsonl"
CLAUSE_END = re.compile(r"(?<=[，；;,])")
ELISION = "……"
FOLDS = 5
BARS = (0.2, 0.3, 0.4, 0.5)
CLAUSE_BUDGETS = (2, 4, 6)
MEASURES = ("states_numbers", "number_precision", "lead_correct")


def clauses(sentence: str) -> list[str]:
    """A sentence cut after each ，；,; (the delimiter stays with its clause)."""
    return [part for part in CLAUSE_END.split(sentence) if part]


@dataclass
class Clause:
    """One clause of a candidate sentence, with the sentence it belongs to and its place in it."""

    candidate: Candidate
    rank: int
    index: int
    text: str


def quote_clauses(picked: Iterable[Clause], priority: dict[int, float], hits: list[Hit]) -> Answer:
    """Quote clauses grouped by sentence (the sentence with the highest ``priority`` first, the rest in
    reading order), in reading order within a sentence, with an elision mark where clauses were left out."""
    groups: dict[int, list[Clause]] = {}
    for clause in picked:
        groups.setdefault(clause.rank, []).append(clause)
    if not groups:
        return Answer("", True, [])
    lead = max(groups, key=lambda rank: priority[rank])
    order = [lead] + sorted((r for r in groups if r != lead),
                            key=lambda r: (groups[r][0].candidate.position, groups[r][0].candidate.order))
    quoted = []
    for rank in order:
        text, last = "", None
        for clause in sorted(groups[rank], key=lambda c: c.index):
            text += (ELISION if last is not None and clause.index != last + 1 else "") + clause.text
            last = clause.index
        quoted.append(replace(groups[rank][0].candidate, quoted=text.rstrip("，,；;")))
    return cited_answer(quoted, hits)


def reference_terms(question, qa: ReportQA) -> tuple[set[str], set[str], set[str]]:
    """The reference's numbers, its key terms, and every number an answer may write (``answer_quality``)."""
    allowed = numbers_in(" ".join([question.question, question.answer, *question.evidence]))
    return numbers_in(question.answer), key_terms(question.answer, question.question, qa), allowed


def states_reference(text: str, wanted: set[str], terms: set[str]) -> bool:
    """The text writes a reference number, or a key term when the reference has no number."""
    if wanted:
        return bool(wanted & numbers_in(text))
    squeezed = fold(text).replace(" ", "")
    return any(term in squeezed for term in terms)


def oracle_clauses(pool: list[Clause], wanted: set[str], terms: set[str], allowed: set[str]) -> list[Clause]:
    """A perfect reader: clauses covering the reference numbers greedily, fewest stray numbers first
    (without numbers: the two clauses with a key term and the fewest stray numbers)."""
    def stray(clause: Clause) -> int:
        return len(numbers_in(clause.text) - allowed)
    if not wanted:
        return sorted((c for c in pool if states_reference(c.text, wanted, terms)), key=stray)[:2]
    picked: list[Clause] = []
    covered: set[str] = set()
    remaining = list(pool)
    while remaining:
        best = max(remaining, key=lambda c: len((numbers_in(c.text) & wanted) - covered) - 0.5 * stray(c))
        if not (numbers_in(best.text) & wanted) - covered:
            break
        picked.append(best)
        covered |= numbers_in(best.text) & wanted
        remaining.remove(best)
    return picked


def clause_features(query: Query, candidates: list[Candidate], vectors: dict[str, np.ndarray] | None,
                    query_vector: np.ndarray | None, depth: int = 12) -> tuple[list[Clause], np.ndarray]:
    """The clauses of the ``depth`` best candidates and what a reader could know about each."""
    asked_numbers = numbers_in(query.text)
    lead_score = max(candidates[0].score, 1e-6) if candidates else 1.0
    pool, rows = [], []
    for rank, candidate in enumerate(candidates[:depth]):
        parts = clauses(candidate.quoted)
        coverage = [query.coverage(fold_key(part)) for part in parts]
        for index, part in enumerate(parts):
            new_numbers = numbers_in(part) - asked_numbers
            row = [coverage[index], max(coverage[:index], default=0.0), max(coverage[index + 1:], default=0.0),
                   query.coverage(fold_key(candidate.quoted)), candidate.score / lead_score, min(rank, 10) / 10,
                   candidate.position / 2, float(bool(new_numbers)), float(query.asks_quantity),
                   float(bool(new_numbers) and query.asks_quantity), float(index == 0),
                   math.log1p(len(part)) / 5, min(len(new_numbers), 5) / 5,
                   float(bool(numbers_in(part) & asked_numbers)), len(parts) / 10]
            if vectors is not None and query_vector is not None:
                row.append(float(vectors[part] @ query_vector))
            pool.append(Clause(candidate, rank, index, part))
            rows.append(row)
    return pool, np.array(rows, dtype=float)


@dataclass
class Case:
    """One answerable question: its analysed query, hits, candidates, clauses and what the reference says."""

    question: object
    query: Query
    hits: list[Hit]
    replied: Answer
    candidates: list[Candidate]
    pool: list[Clause]
    features: np.ndarray
    labels: np.ndarray
    wanted: set[str]
    terms: set[str]
    allowed: set[str]


def cases_of(qa: ReportQA, split: str, embed_clauses: bool) -> list[Case]:
    """Search every answerable question of ``split`` as ``rag eval`` does and collect its clauses."""
    questions = [q for q in load_questions(QUESTIONS, split) if q.answerable]
    found = [qa.search(q.question, top_k=10) for q in questions]
    vectors = query_vectors = None
    if embed_clauses:
        texts = sorted({part for f in found if f.analysed is not None
                        for c in answer_candidates(f.analysed, f.hits, qa.settings.answer)[:12]
                        for part in clauses(c.quoted)})
        vectors = dict(zip(texts, qa.embedder.embed_documents([document_input(t) for t in texts]), strict=True))
        query_vectors = qa.embedder.embed_queries([q.question for q in questions])
    cases = []
    for i, (question, result) in enumerate(zip(questions, found, strict=True)):
        if result.analysed is None:
            continue
        candidates = answer_candidates(result.analysed, result.hits, qa.settings.answer)
        pool, features = clause_features(result.analysed, candidates, vectors,
                                         None if query_vectors is None else query_vectors[i])
        wanted, terms, allowed = reference_terms(question, qa)
        labels = np.array([float(states_reference(c.text, wanted, terms)) for c in pool])
        cases.append(Case(question, result.analysed, result.hits, qa.compose(result.analysed, result.hits),
                          candidates, pool, features, labels, wanted, terms, allowed))
    return cases


def measure(answers: list[tuple[Case, Answer]], qa: ReportQA) -> dict[str, float]:
    """Mean states / precision / lead over the questions, and the mean length of the answers given."""
    values: dict[str, list[float]] = {}
    lengths = []
    for case, answer in answers:
        for name, value in answer_quality(answer, case.question, qa).items():
            values.setdefault(name, []).append(value)
        if not answer.abstained:
            lengths.append(len(MARKER.sub("", answer.text)))
    out = {name: float(np.mean(values[name])) if values.get(name) else float("nan") for name in MEASURES}
    out["chars"] = float(np.mean(lengths)) if lengths else 0.0
    return out


def selector_probabilities(train: list[Case], judged: list[Case]) -> list[np.ndarray]:
    """Probability that each clause of ``judged`` states the reference, from a model fitted on ``train``."""
    x = np.vstack([c.features for c in train if len(c.pool)])
    y = np.concatenate([c.labels for c in train if len(c.pool)])
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    weights, bias = fit_logistic((x - mean) / scale, y, l2=1.0)
    return [1.0 / (1.0 + np.exp(-(((c.features - mean) / scale) @ weights + bias))) if len(c.pool) else np.zeros(0)
            for c in judged]


def cross_validated(cases: list[Case], seed: int = 0) -> list[np.ndarray]:
    """Grouped k-fold: each question's clauses are judged by a model fitted on the other folds' questions."""
    fold_of = np.random.default_rng(seed).permutation(len(cases)) % FOLDS
    out: list[np.ndarray] = [np.zeros(0)] * len(cases)
    for k in range(FOLDS):
        judged = [i for i in range(len(cases)) if fold_of[i] == k]
        probabilities = selector_probabilities([cases[i] for i in range(len(cases)) if fold_of[i] != k],
                                               [cases[i] for i in judged])
        for i, p in zip(judged, probabilities, strict=True):
            out[i] = p
    return out


def selected(case: Case, probabilities: np.ndarray, bar: float, budget: int) -> Answer:
    """The clauses at or above ``bar`` (at most ``budget``, at least the best one)."""
    if not len(case.pool):
        return Answer("", True, [])
    order = np.argsort(-probabilities)
    picked = [int(i) for i in order if probabilities[i] >= bar][:budget] or [int(order[0])]
    priority: dict[int, float] = {}
    for i in picked:
        priority[case.pool[i].rank] = max(priority.get(case.pool[i].rank, 0.0), float(probabilities[i]))
    return quote_clauses([case.pool[i] for i in picked], priority, case.hits)


def row(name: str, values: dict[str, float]) -> str:
    return (f"| {name} | {values['states_numbers']:.3f} | {values['number_precision']:.3f} | "
            f"{values['lead_correct']:.3f} | {values['chars']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="dev")
    parser.add_argument("--embed-clauses", action="store_true", help="add each clause's cosine with the question")
    args = parser.parse_args()
    qa = ReportQA()
    cases = cases_of(qa, args.split, args.embed_clauses)
    train = cases if args.split == "dev" else cases_of(qa, "dev", args.embed_clauses)
    settings = qa.settings.answer
    print(f"{len(cases)} answerable questions of {args.split}; candidates: every sentence of the top 3 passages\n")
    print("| selection | states the reference numbers | number precision | lead correct | chars |")
    print("| --- | --- | --- | --- | --- |")
    print(row("rag ask (refusals count as stating nothing)", measure([(c, c.replied) for c in cases], qa)))

    def sentences(case: Case, pick) -> Answer:
        chosen = pick(case)
        return cited_answer(chosen or case.candidates[:1], case.hits) if case.candidates else Answer("", True, [])

    def stating(case: Case, depth: int) -> list[Candidate]:
        return [c for c in case.candidates[:depth] if states_reference(c.quoted, case.wanted, case.terms)]

    rows = {
        "same sentences, never refusing": lambda c: sentences(c, lambda k: select_sentences(k.candidates, settings)),
        "best sentence only": lambda c: sentences(c, lambda k: k.candidates[:1]),
        "bound: every candidate sentence": lambda c: sentences(c, lambda k: k.candidates),
        "bound: the best 5 candidates that state the reference": lambda c: sentences(c, lambda k: stating(k, 5)),
        "bound: the best 10 candidates that state the reference": lambda c: sentences(c, lambda k: stating(k, 10)),
        "bound: perfect clause reader (knows the reference)": lambda c: quote_clauses(
            oracle_clauses(c.pool, c.wanted, c.terms, c.allowed) or c.pool[:1],
            {clause.rank: -clause.rank for clause in c.pool}, c.hits) if c.pool else Answer("", True, []),
    }
    for name, answer_of in rows.items():
        print(row(name, measure([(c, answer_of(c)) for c in cases], qa)))
    probabilities = cross_validated(cases) if args.split == "dev" else selector_probabilities(train, cases)
    how = "grouped 5-fold CV on dev" if args.split == "dev" else "fitted on dev"
    for bar in BARS:
        for budget in CLAUSE_BUDGETS:
            answers = [(c, selected(c, p, bar, budget)) for c, p in zip(cases, probabilities, strict=True)]
            print(row(f"clause selector ({how}), bar {bar}, at most {budget} clauses", measure(answers, qa)))


if __name__ == "__main__":
    main()
