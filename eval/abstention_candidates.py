"""Would a new answerability signal help? A diagnostic on dev: it selects and changes nothing.

    python eval/abstention_candidates.py

Each candidate signal is added in turn to the answerability model's features (``rag.answerability``);
the model is fitted on dev and judged two ways: in-sample, and by leave-one-out (each question scored by
a model fitted without it, the honest estimate for unseen questions). Printed per candidate: ROC AUC, and
the share of unanswerable questions refused when at most 5% / 10% of the answerable ones are (the 10%
column is what the caution bar can reach). A candidate worth adding raises the leave-one-out columns.

Candidates (each from the top five passages, as the model's own features are):
* ``missing`` — IDF-weighted share of the question's terms found in none of them;
* ``rare_missing`` — the question's rarest term is in none of them;
* ``missing_first`` — the same share as ``missing``, for the first passage alone;
* ``slot_support`` — for a question that asks for an amount, year or share (多少元, 哪一年, 占比 …),
  the best term share near a number written with that unit; 1 when the question asks no such slot;
* ``similarity_margin`` — best sentence cosine minus the fifth best.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rag.answerability import FEATURES, NUMBER, TOP_PASSAGES, features
from rag.api import ReportQA
from rag.evaluate import load_questions
from rag.query import Query, fold_key
from rag.results import Hit
from rag.tuning import fit_logistic, refusal_bar

QUESTIONS = Path(__file__).resolve().parent / "questions.jsonl"
ASKED_SLOT = re.compile(r"多少(亿元|万元|美元|元|亿|万|人|家|个|倍|年|天|小时|GB|TB|张|台|次|位|%)|"
                        r"(哪一?年|何时|什么时候|哪天|几月)|(比例|占比|百分|增速|增长率|份额)")
SLOT_WINDOW_BEFORE, SLOT_WINDOW_AFTER = 80, 20


def _slot_units(question: str) -> list[str] | None:
    match = ASKED_SLOT.search(question)
    if match is None:
        return None
    if match.group(1):
        return [match.group(1)[-1]]
    return ["年", "月", "日"] if match.group(2) else ["%"]


def _term_share_missing(query: Query, text: str) -> float:
    total = sum(query.weights.values())
    return sum(w for t, w in query.weights.items() if t not in text) / total if total else 0.0


def _slot_support(query: Query, top: list[Hit]) -> float:
    units = _slot_units(query.folded)
    if units is None:
        return 1.0
    best = 0.0
    for hit in top:
        text = fold_key(hit.chunk.text)
        for match in NUMBER.finditer(text):
            if any(unit in text[match.end():match.end() + 3] for unit in units):
                window = text[max(0, match.start() - SLOT_WINDOW_BEFORE):match.end() + SLOT_WINDOW_AFTER]
                best = max(best, query.weighted_share(window))
    return best


def _similarity_margin(top: list[Hit]) -> float:
    cosines = sorted((c for h in top for c in h.sentence_similarities.values()), reverse=True)
    return cosines[0] - cosines[min(4, len(cosines) - 1)] if cosines else 0.0


CANDIDATES: dict[str, Callable[[Query, list[Hit]], float]] = {
    "missing": lambda q, top: _term_share_missing(q, "".join(fold_key(h.chunk.text) for h in top)),
    "rare_missing": lambda q, top: float(bool(q.weights) and max(q.weights, key=q.weights.__getitem__)
                                         not in "".join(fold_key(h.chunk.text) for h in top)),
    "missing_first": lambda q, top: _term_share_missing(q, fold_key(top[0].chunk.text)) if top else 1.0,
    "slot_support": _slot_support,
    "similarity_margin": lambda q, top: _similarity_margin(top),
}


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    return float(np.mean((positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])))


def _judge(probability: np.ndarray, unanswerable: np.ndarray) -> str:
    reach = [float(np.mean(probability[unanswerable] > refusal_bar(probability[~unanswerable], budget)))
             for budget in (0.05, 0.10)]
    return f"{_auc(probability[unanswerable], probability[~unanswerable]):.3f} {reach[0]:.3f} {reach[1]:.3f}"


def _fit_predict(train: np.ndarray, labels: np.ndarray, test: np.ndarray) -> np.ndarray:
    means, scales = train.mean(axis=0), train.std(axis=0) + 1e-9
    weights, bias = fit_logistic((train - means) / scales, labels, steps=2000)
    return 1.0 / (1.0 + np.exp(-(((test - means) / scales) @ weights + bias)))


def main() -> None:
    """Search every dev question once, then print each candidate's in-sample and leave-one-out columns."""
    qa = ReportQA()
    rows, labels = [], []
    for question in load_questions(QUESTIONS, "dev"):
        found = qa.search(question.question, top_k=10)
        assert found.analysed is not None, question.id
        top = found.hits[:TOP_PASSAGES]
        values = features(found.analysed, found.hits)
        values.update({name: signal(found.analysed, top) for name, signal in CANDIDATES.items()})
        rows.append(values)
        labels.append(0.0 if question.answerable else 1.0)
    y = np.array(labels)
    unanswerable = y == 1.0
    print(f"dev: {len(y)} questions, {int(y.sum())} unanswerable")
    print("features | in-sample: AUC, refused at 5% / 10% false | leave-one-out: AUC, refused at 5% / 10% false")
    for extra in [None, *CANDIDATES, "all"]:
        names = list(FEATURES) + (list(CANDIDATES) if extra == "all" else [extra] if extra else [])
        x = np.array([[row[name] for name in names] for row in rows])
        in_sample = _fit_predict(x, y, x)
        held_out = np.array([_fit_predict(np.delete(x, i, axis=0), np.delete(y, i), x[i:i + 1])[0]
                             for i in range(len(y))])
        print(f"{extra or 'current'} | {_judge(in_sample, unanswerable)} | {_judge(held_out, unanswerable)}")


if __name__ == "__main__":
    main()
