"""Tune on the dev split only (never the test split): fusion weights, chunk size and overlap, abstention.

    python eval/tune.py fusion       # uses the built default index (run `rag index` first)
    python eval/tune.py chunks       # builds one index per setting under index/sweep/
    python eval/tune.py abstention   # fits the answerability model; prints defaults for rag/answerability.py

Query vectors are cached inside the retriever and passage embeddings by content, so each extra
setting costs little beyond what actually changes.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from rag.answerability import FEATURES, AnswerabilityModel, features
from rag.api import ReportQA, Settings
from rag.evaluate import Configuration, evaluate_configuration, load_questions

FUSION_GRID = [("rrf", 1, 0, 1, 0), ("rrf", 1, 0.5, 1, 0), ("rrf", 1, 1, 1, 0),
               ("score", 1, 0, 0.2, 0), ("score", 1, 0, 0.3, 0.1), ("score", 1, 0.5, 0.2, 0.1),
               ("score", 1, 0.5, 0.3, 0.1), ("score", 1, 0.5, 0.3, 0.2), ("score", 1, 1, 0.3, 0.2),
               ("score", 1, 0.5, 0.5, 0.1)]
CHUNK_GRID = [(250, 60), (350, 80), (450, 100), (350, 0)]


def _report(label: str, qa: ReportQA, questions) -> None:
    result = evaluate_configuration(Configuration("default", "hybrid", qa), questions)
    m = result.metrics
    print(f"{label} | {m['hit@1']:.3f} {m['hit@5']:.3f} {m['mrr@10']:.3f} {result.passage_chars:.0f}")


def tune_fusion(questions) -> None:
    """One line per fusion setting, on the default index."""
    qa = ReportQA()
    print("method dense sentence bm25 coverage | hit@1 hit@5 mrr@10 top5-chars")
    for method, dense, sentence, bm25, cover in FUSION_GRID:
        qa.settings.fusion = replace(qa.settings.fusion, method=method, dense_weight=dense,
                                     sentence_weight=sentence, bm25_weight=bm25, coverage_weight=cover)
        qa.retriever.fusion = qa.settings.fusion
        _report(f"{method:6} {dense:5} {sentence:8} {bm25:4} {cover:8}", qa, questions)


def tune_chunks(questions) -> None:
    """One line per chunker setting, each on its own index."""
    print("target overlap | hit@1 hit@5 mrr@10 top5-chars")
    for target, overlap in CHUNK_GRID:
        settings = Settings()
        settings.chunker = replace(settings.chunker, target_chars=target, overlap_chars=overlap)
        qa = ReportQA(index_dir=Path("index") / "sweep" / f"t{target}-o{overlap}", settings=settings)
        qa.build()
        _report(f"{target:6} {overlap:7}", qa, questions)


# Leave a margin under the 5% false-abstention goal: the bar is set on dev, unseen questions drift.
FALSE_ABSTAIN_BUDGET = 0.04


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, steps: int = 5000,
                 rate: float = 0.1) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by gradient descent on standardised inputs."""
    weights, bias = np.zeros(x.shape[1]), 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ weights + bias)))
        weights -= rate * (x.T @ (p - y) + l2 * weights) / len(y)
        bias -= rate * float(np.mean(p - y))
    return weights, bias


def tune_abstention(questions) -> None:
    """Fit the answerability model on dev; print its defaults and the trade-off curve."""
    qa = ReportQA()
    rows, labels = [], []
    for question in questions:
        hits = qa.search(question.question, top_k=10).hits
        found = features(question.question, hits, qa.retriever.idf)
        rows.append([found[name] for name in FEATURES])
        labels.append(0.0 if question.answerable else 1.0)
    x, y = np.array(rows), np.array(labels)
    means, scales = x.mean(axis=0), x.std(axis=0) + 1e-9
    weights, bias = fit_logistic((x - means) / scales, y)
    model = AnswerabilityModel(weights=dict(zip(FEATURES, np.round(weights, 3).tolist(), strict=True)),
                               means=dict(zip(FEATURES, np.round(means, 4).tolist(), strict=True)),
                               scales=dict(zip(FEATURES, np.round(scales, 4).tolist(), strict=True)),
                               bias=round(bias, 3))
    probability = np.array([model.probability(dict(zip(FEATURES, row, strict=True))) for row in x])
    print("bar | abstain false-abstain")
    for bar in np.arange(0.10, 0.91, 0.05):
        print(f"{bar:.2f} | {np.mean(probability[y == 1] >= bar):.3f} {np.mean(probability[y == 0] >= bar):.3f}")
    answerable = np.sort(probability[y == 0])[::-1]
    allowed = int(np.floor(FALSE_ABSTAIN_BUDGET * len(answerable)))
    model.threshold = round(float(answerable[allowed]) + 1e-3, 3)
    print(f"\nthreshold (false abstentions <= {FALSE_ABSTAIN_BUDGET:.0%} on dev): {model.threshold}")
    print(model)


def main() -> None:
    """Parse arguments and run one sweep."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["fusion", "chunks", "abstention"])
    parser.add_argument("--questions", type=Path, default=Path("eval/questions.jsonl"))
    args = parser.parse_args()
    questions = load_questions(args.questions, "dev")
    {"fusion": tune_fusion, "chunks": tune_chunks, "abstention": tune_abstention}[args.what](questions)


if __name__ == "__main__":
    main()
