"""Tune on the dev split only (never the test split): fusion weights, or chunk size and overlap.

    python eval/tune.py fusion     # uses the built default index (run `rag index` first)
    python eval/tune.py chunks     # builds one index per setting under index/sweep/

Query vectors are cached inside the retriever and passage embeddings by content, so each extra
setting costs little beyond what actually changes.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

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


def main() -> None:
    """Parse arguments and run one sweep."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["fusion", "chunks"])
    parser.add_argument("--questions", type=Path, default=Path("eval/questions.jsonl"))
    args = parser.parse_args()
    questions = load_questions(args.questions, "dev")
    (tune_fusion if args.what == "fusion" else tune_chunks)(questions)


if __name__ == "__main__":
    main()
