"""Sweep fusion settings on the dev split (never the test split) and print Hit@5 / MRR@10.

    python eval/tune.py [--split dev]

Uses the already-built default index (run ``rag index`` first). Query vectors are cached inside
the retriever, so each extra setting costs only BM25 and fusion.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from rag.api import ReportQA
from rag.evaluate import Configuration, evaluate_configuration, load_questions


def main() -> None:
    """Print one line per fusion setting."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", default="dev", choices=["dev"])
    parser.add_argument("--questions", type=Path, default=Path("eval/questions.jsonl"))
    args = parser.parse_args()
    questions = load_questions(args.questions, args.split)
    qa = ReportQA()
    base = qa.settings.fusion
    print("method dense sentence bm25 coverage rrf_k | hit@1 hit@5 mrr@10")
    grid = [("rrf", 1, 0, 1, 0, 60), ("rrf", 1, 0.5, 1, 0, 60), ("rrf", 1, 1, 1, 0, 60),
            ("score", 1, 0, 0.2, 0, 60), ("score", 1, 0, 0.3, 0.1, 60), ("score", 1, 0.5, 0.2, 0.1, 60),
            ("score", 1, 0.5, 0.3, 0.1, 60), ("score", 1, 0.5, 0.3, 0.2, 60), ("score", 1, 1, 0.3, 0.2, 60),
            ("score", 1, 0.5, 0.5, 0.1, 60)]
    for method, dense, sentence, bm25, cover, rrf_k in grid:
        qa.settings.fusion = replace(base, method=method, dense_weight=dense, sentence_weight=sentence,
                                     bm25_weight=bm25, coverage_weight=cover, rrf_k=rrf_k)
        qa.retriever.fusion = qa.settings.fusion
        result = evaluate_configuration(Configuration("default", "hybrid", qa), questions)
        m = result.metrics
        print(f"{method:6} {dense:5} {sentence:8} {bm25:4} {cover:8} {rrf_k:5} | "
              f"{m['hit@1']:.3f} {m['hit@5']:.3f} {m['mrr@10']:.3f}")


if __name__ == "__main__":
    main()
