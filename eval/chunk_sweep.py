"""Sweep chunk size and overlap on the dev split (never the test split); prints Hit@5 / MRR@10.

    python eval/chunk_sweep.py

Each setting builds its own index under ``index/sweep/`` (embeddings are cached by content, so
only passages that differ between settings are embedded).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rag.api import ReportQA, Settings
from rag.evaluate import Configuration, evaluate_configuration, load_questions

GRID = [(250, 60), (350, 80), (450, 100), (350, 0)]


def main() -> None:
    """Print one line per chunker setting."""
    questions = load_questions(Path("eval/questions.jsonl"), "dev")
    print("target overlap passages | hit@1 hit@5 mrr@10 top5-chars")
    for target, overlap in GRID:
        settings = Settings()
        settings.chunker = replace(settings.chunker, target_chars=target, overlap_chars=overlap)
        qa = ReportQA(index_dir=Path("index") / "sweep" / f"t{target}-o{overlap}", settings=settings)
        qa.build()
        result = evaluate_configuration(Configuration("default", "hybrid", qa), questions)
        m = result.metrics
        print(f"{target:6} {overlap:7} {len(qa.index.chunks):8} | {m['hit@1']:.3f} {m['hit@5']:.3f} "
              f"{m['mrr@10']:.3f} {result.passage_chars:.0f}")


if __name__ == "__main__":
    main()
