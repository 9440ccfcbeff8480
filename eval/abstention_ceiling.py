"""How far can abstention go with the signals we have? A diagnostic: it selects and changes nothing.

    python eval/abstention_ceiling.py

The answerability model (``rag.answerability``) is fitted on dev and judged on test and holdout. This
script asks a different question: if the same logistic model were fitted on *every* labelled question
at once (dev, test and holdout, in-sample, the most optimistic fit there is), what share of the
unanswerable questions could it refuse while refusing at most 5% of the answerable ones? If even that
is far below the goal, the gap is in the signals, not in the fitting or the amount of dev data, and
closing it needs a different kind of signal (a reader or NLI model that checks whether the passage
states the asked fact). The same fit also gives the reach of refusing *or cautioning* (#16: refused or
cautioned on ≥ 85% of the unanswerable, cautions on ≤ 10% and refusals on ≤ 5% of the answerable):
the share of unanswerable questions at or above the lowest bar that flags at most 15% of the answerable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rag.answerability import FEATURES
from rag.api import ReportQA
from rag.evaluate import load_questions
from rag.tuning import answerability_matrix, fit_logistic, refusal_bar

QUESTIONS = Path(__file__).resolve().parent / "questions.jsonl"
FALSE_ABSTAIN_LIMIT = 0.05
CAUTION_LIMIT = 0.10


def refusal_at_limit(probability: np.ndarray, unanswerable: np.ndarray,
                     limit: float = FALSE_ABSTAIN_LIMIT) -> tuple[float, float]:
    """Share of unanswerable (and of answerable) questions at or above the lowest bar that takes in at most
    ``limit`` of the answerable ones."""
    bar = refusal_bar(probability[~unanswerable], limit) + 1e-9
    return float(np.mean(probability[unanswerable] >= bar)), float(np.mean(probability[~unanswerable] >= bar))


def main() -> None:
    """Fit on all splits in-sample and print the refusal rate at the false-abstention limit."""
    questions = load_questions(QUESTIONS)
    x, labels = answerability_matrix(ReportQA(), questions)
    unanswerable = labels == 1.0
    standardised = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-9)
    print(f"{len(questions)} questions ({int(unanswerable.sum())} unanswerable), features: {', '.join(FEATURES)}")
    print("l2 | refused (unanswerable) | refused (answerable) | refused or cautioned (unanswerable) | "
          "flagged (answerable)   [in-sample, all splits]")
    for l2 in (0.01, 0.1, 1.0, 10.0):
        weights, bias = fit_logistic(standardised, unanswerable.astype(float), l2=l2)
        probability = 1.0 / (1.0 + np.exp(-(standardised @ weights + bias)))
        refused, false_refused = refusal_at_limit(probability, unanswerable)
        flagged, false_flagged = refusal_at_limit(probability, unanswerable, FALSE_ABSTAIN_LIMIT + CAUTION_LIMIT)
        print(f"{l2:g} | {refused:.3f} | {false_refused:.3f} | {flagged:.3f} | {false_flagged:.3f}")


if __name__ == "__main__":
    main()
