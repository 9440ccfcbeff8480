"""Helpers the tuning scripts share: logistic fits, the refusal bar, feature matrices, provenance.

``eval/tune.py`` fits values on the dev split and writes them with ``rag.fitted.write_section``;
``eval/abstention_ceiling.py`` reuses the same fits as a diagnostic.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .answerability import FEATURES, features
from .api import ReportQA
from .evaluate import Question


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, steps: int = 5000,
                 rate: float = 0.1) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by gradient descent on standardised inputs."""
    weights, bias = np.zeros(x.shape[1]), 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ weights + bias)))
        weights -= rate * (x.T @ (p - y) + l2 * weights) / len(y)
        bias -= rate * float(np.mean(p - y))
    return weights, bias


def refusal_bar(answerable_probabilities: np.ndarray, budget: float) -> float:
    """The probability at which refusing stays within ``budget`` of the answerable questions: the
    answerable question just past the budget (refuse strictly above it)."""
    ordered = np.sort(answerable_probabilities)[::-1]
    return float(ordered[int(np.floor(budget * len(ordered)))])


def answerability_matrix(qa: ReportQA, questions: Sequence[Question]) -> tuple[np.ndarray, np.ndarray]:
    """The answerability features of each question's hits (rows in ``FEATURES`` order), and 1 for unanswerable."""
    rows, labels = [], []
    for question in questions:
        found = qa.search(question.question, top_k=10)
        assert found.analysed is not None, question.id
        values = features(found.analysed, found.hits)
        rows.append([values[name] for name in FEATURES])
        labels.append(0.0 if question.answerable else 1.0)
    return np.array(rows), np.array(labels)


def provenance(command: str, questions_file: Path, split: str, qa: ReportQA, metrics: dict) -> dict:
    """What a fitted value was fitted on: enough to tell later whether it still applies."""
    manifest = qa.store.manifest
    return {"command": command, "date": datetime.date.today().isoformat(), "questions": str(questions_file),
            "questions_sha256": hashlib.sha256(questions_file.read_bytes()).hexdigest(), "split": split,
            "model": manifest.get("model"), "chunker": manifest.get("chunker"),
            "chunker_version": manifest.get("chunker_version"),
            "tokenizer_version": manifest.get("tokenizer_version"),
            "metrics": {k: round(float(v), 4) for k, v in metrics.items()}}
