"""What a search costs besides the question's embedding, optionally side by side with another checkout.

    python benchmarks/query_path.py                                   # this checkout, dev questions
    python benchmarks/query_path.py --baseline-tree /path/to/older/checkout --rounds 3

Issue #15 asks that nothing but the query embedding and the store's top-k calls cost more than a few
milliseconds. Each question's vector is computed once first (the query encoder's cache), then every
question is searched (hybrid, top 10) with its vector cached: that time is the rest of the query path
(analysis, BM25, FAISS, fusion, second stage, boilerplate ordering, hits). The embedding alone is timed
separately (cache cleared). With ``--baseline-tree`` the same script runs in the other checkout on the
same index, alternating A B A B in fresh processes, so drifting machine load hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


def measure(index_dir: Path, questions_file: Path, split: str, model: str | None = None) -> dict[str, float]:
    """Median and 95th percentile of the query path without the embedding, and the embedding alone (ms)."""
    from rag.api import ReportQA
    from rag.evaluate import load_questions, percentile

    questions = [q.question for q in load_questions(questions_file, split)]
    qa = ReportQA(index_dir=index_dir, model=model)
    qa.search("预热 warm-up", top_k=10)
    embedding = []
    for question in questions:
        began = time.perf_counter()
        qa.encoder.encode(question)  # fills the cache for the timed searches
        embedding.append((time.perf_counter() - began) * 1000)
    rest = []
    for question in questions:
        began = time.perf_counter()
        qa.search(question, top_k=10)
        rest.append((time.perf_counter() - began) * 1000)
    return {"questions": len(questions), "rest_p50": statistics.median(rest), "rest_p95": percentile(rest, 0.95),
            "embedding_p50": statistics.median(embedding)}


def run_in(tree: Path, args: argparse.Namespace) -> dict[str, float]:
    """One measurement in a fresh process running ``tree``'s code (this script, the same index and questions)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--json", "--index",
               str(args.index.resolve()), "--questions", str(args.questions.resolve()), "--split", args.split]
    if args.model:
        command += ["--model", args.model]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    """Print the table (or, with ``--json``, one measurement of this checkout as JSON)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=ROOT / "index")
    parser.add_argument("--questions", type=Path, default=ROOT / "eval" / "questions.jsonl")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--model", help="the index's embedding model when it is not the bundled one")
    parser.add_argument("--baseline-tree", type=Path, help="another checkout to measure side by side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.json:
        import rag  # the checkout on PYTHONPATH, when run for another tree

        measured = measure(args.index, args.questions, args.split, args.model)
        print(json.dumps({**measured, "code": str(Path(rag.__file__).parent)}))
        return
    trees = {"this checkout": ROOT}
    if args.baseline_tree:
        trees["baseline"] = args.baseline_tree.resolve()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            results[name].append(run_in(tree, args))
    print(f"query path without the embedding, hybrid top 10, {results['this checkout'][0]['questions']:.0f} "
          f"{args.split} questions, median of {args.rounds} fresh processes (ms)\n")
    print("| checkout | rest p50 | rest p95 | embedding alone p50 |\n|---|---|---|---|")
    for name, runs in results.items():
        print(f"| {name} | " + " | ".join(f"{statistics.median(r[key] for r in runs):.1f}"
                                          for key in ("rest_p50", "rest_p95", "embedding_p50")) + " |")
    print("\n" + "\n".join(f"{name}: code from {runs[0]['code']}" for name, runs in results.items()))


if __name__ == "__main__":
    main()
