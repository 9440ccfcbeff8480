"""``rag eval`` numbers through the embedded store and through the Milvus store, side by side.

    python eval/compare_stores.py --store milvus:///abs/path/seeds.db [--index index] \
        [--milvus-index index-milvus] [--splits dev,test,holdout] [--configs bm25,dense,default] [--json]

Both indexes must be built over the same corpus with the same model (``rag index`` and
``rag --store … index``). For every split and configuration it prints every metric ``rag eval``
computes (retrieval, abstention, answers) for both stores and their difference, flags a difference
larger than ``--tolerance`` (default 0.01), and then lists the questions whose top-10 citations are
not identical, with the rank where the lists part and both stores' scores there, so a difference can
be traced to its cause. Both stores share one model and question-vector cache, so latency is not
compared here (``benchmarks/milvus_store.py`` measures the stores' speed). The ``recipe`` baseline
is left out: it always lives in the embedded store.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from rag.api import ReportQA  # noqa: E402
from rag.embed import Embedder, QueryEncoder  # noqa: E402
from rag.evaluate import Configuration, evaluate_configuration, load_questions, select_split  # noqa: E402

MODES = {"bm25": "bm25", "dense": "dense", "default": "hybrid"}
CHARACTER_METRICS = {"answer_chars", "top-5 chars"}


class KeptEncoder(QueryEncoder):
    """A question-vector cache that ``evaluate_configuration`` cannot empty (it clears it to time embedding)."""

    def __init__(self, embedder: Embedder):
        super().__init__(embedder, cache_size=4096)

    def clear(self) -> None:
        """Keep the vectors: the comparison is about retrieval, not embedding time."""


def compare(faiss_qa: ReportQA, milvus_qa: ReportQA, questions_file: Path, split: str, name: str,
            tolerance: float) -> dict:
    """One split and configuration through both stores: metrics, their differences, differing top-10 lists."""
    questions = select_split(load_questions(questions_file), split, questions_file)
    mode = MODES[name]
    results = {store: evaluate_configuration(Configuration(name, mode, qa), questions)
               for store, qa in (("faiss", faiss_qa), ("milvus", milvus_qa))}
    metrics = {}
    for metric, value in results["faiss"].metrics.items():
        other = results["milvus"].metrics.get(metric)
        if metric == "n" or other is None or value is None:
            continue
        # Rates and scores in [0, 1] are held to the tolerance; lengths in characters are only shown.
        metrics[metric] = {"faiss": value, "milvus": other, "diff": other - value,
                           "over_tolerance": metric not in CHARACTER_METRICS and abs(other - value) > tolerance + 1e-12}
    metrics["top-5 chars"] = {"faiss": results["faiss"].passage_chars, "milvus": results["milvus"].passage_chars,
                              "diff": results["milvus"].passage_chars - results["faiss"].passage_chars,
                              "over_tolerance": False}
    differing = []
    for question in questions:
        expected = faiss_qa.search(question.question, top_k=10, mode=mode).hits
        got = milvus_qa.search(question.question, top_k=10, mode=mode).hits
        if [h.citation for h in expected] == [h.citation for h in got]:
            continue
        rank = next(i for i in range(max(len(expected), len(got)))
                    if i >= len(expected) or i >= len(got) or expected[i].citation != got[i].citation)
        differing.append({"id": question.id, "question": question.question, "rank": rank + 1,
                          "faiss": [expected[rank].citation, round(expected[rank].score, 6)] if rank < len(expected)
                          else None,
                          "milvus": [got[rank].citation, round(got[rank].score, 6)] if rank < len(got) else None})
    return {"split": split, "config": name, "questions": len(questions), "metrics": metrics,
            "identical_top10": len(questions) - len(differing), "differing": differing}


def render(comparison: dict) -> str:
    """One comparison as Markdown."""
    lines = [f"## {comparison['split']} · {comparison['config']} ({comparison['questions']} questions)", "",
             "| metric | faiss | milvus | milvus − faiss |", "| --- | --- | --- | --- |"]
    for metric, row in comparison["metrics"].items():
        flag = " **over tolerance**" if row["over_tolerance"] else ""
        lines.append(f"| {metric} | {row['faiss']:.3f} | {row['milvus']:.3f} | {row['diff']:+.3f}{flag} |")
    lines += ["", f"Identical top-10 citation lists: {comparison['identical_top10']}/{comparison['questions']}."]
    for item in comparison["differing"]:
        lines.append(f"- {item['id']} {item['question']}: first differs at rank {item['rank']}: "
                     f"faiss {item['faiss']} vs milvus {item['milvus']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse arguments, compare every split and configuration, print Markdown (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", required=True, help="the Milvus store: milvus:///abs/file.db or milvus://host:port")
    parser.add_argument("--corpus", type=Path, default=HERE / "corpus")
    parser.add_argument("--index", type=Path, default=HERE / "index", help="the embedded store's index folder")
    parser.add_argument("--milvus-index", type=Path, default=HERE / "index-milvus",
                        help="folder of the Milvus build's writer lock")
    parser.add_argument("--model", default=None)
    parser.add_argument("--questions", type=Path, default=HERE / "eval" / "questions.jsonl")
    parser.add_argument("--splits", default="dev,test,holdout")
    parser.add_argument("--configs", default="default,bm25,dense")
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    faiss_qa = ReportQA(args.corpus, args.index, model=args.model, store_location="faiss")
    milvus_qa = ReportQA(args.corpus, args.milvus_index, model=args.model, store_location=args.store)
    # One model and one question-vector cache for both stores: each question is embedded once (on a
    # shared 2-core machine embedding is most of the time), and both stores search with the very same
    # vectors. Latency is then not comparable between the stores (benchmarks/milvus_store.py measures it).
    shared = KeptEncoder(faiss_qa.embedder)
    for qa in (faiss_qa, milvus_qa):
        qa._embedder, qa._encoder = faiss_qa.embedder, shared
    for qa in (faiss_qa, milvus_qa):
        if not qa.build().skipped:
            print(f"built {qa.store_location} first", file=sys.stderr)
    comparisons = []
    for name in args.configs.split(","):
        for split in args.splits.split(","):
            print(f"comparing {split} · {name}", file=sys.stderr, flush=True)
            comparisons.append(compare(faiss_qa, milvus_qa, args.questions, split, name, args.tolerance))
            if not args.json:
                print(render(comparisons[-1]), flush=True)
    if args.json:
        print(json.dumps(comparisons, ensure_ascii=False, indent=2))
    over = [(c["split"], c["config"], metric) for c in comparisons
            for metric, row in c["metrics"].items() if row["over_tolerance"]]
    print(f"metrics over ±{args.tolerance}: {over or 'none'}", file=sys.stderr)
    sys.exit(1 if over else 0)


if __name__ == "__main__":
    main()
