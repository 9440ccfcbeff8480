"""Compare `rag eval --json` results of two embedding runtimes (OpenVINO vs torch fp32).

Usage: python eval/compare_runtimes.py TORCH.json OPENVINO.json [more pairs ...]
Each file is the JSON printed by `rag eval --json` for one split and one backend
(RAG_EMBED_BACKEND=torch / openvino, each with its own RAG_EMBED_CACHE). Prints, per configuration,
every ranking metric of both runs with the difference (goal: within ±0.005) and the share of
questions whose answerability decision (abstain or answer) is the same (goal: at least 98%).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RANKING = ("hit@1", "hit@3", "hit@5", "hit@10", "mrr@10", "ndcg@10")
TOLERANCE, AGREEMENT = 0.005, 0.98


def compare(torch_file: Path, openvino_file: Path) -> bool:
    """Print one comparison table; True when every goal holds."""
    base, fast = json.loads(torch_file.read_text()), json.loads(openvino_file.read_text())
    print(f"\n## {torch_file.name} (torch) vs {openvino_file.name} (OpenVINO)\n")
    print("| configuration | metric | torch | OpenVINO | Δ | ok |\n|---|---|---|---|---|---|")
    ok = True
    for name in base:
        if name not in fast:
            continue
        for metric in RANKING:
            if metric not in base[name]["metrics"]:
                continue
            a, b = base[name]["metrics"][metric], fast[name]["metrics"][metric]
            good = abs(b - a) <= TOLERANCE + 1e-12
            ok &= good
            print(f"| {name} | {metric} | {a:.4f} | {b:.4f} | {b - a:+.4f} | {'yes' if good else 'NO'} |")
        decisions_a, decisions_b = base[name].get("abstained", {}), fast[name].get("abstained", {})
        shared = [q for q in decisions_a if q in decisions_b]
        if shared:
            same = sum(decisions_a[q] == decisions_b[q] for q in shared) / len(shared)
            good = same >= AGREEMENT
            ok &= good
            print(f"| {name} | same answerability decision | | | {same:.1%} of {len(shared)} | "
                  f"{'yes' if good else 'NO'} |")
    return ok


def main() -> None:
    """Compare each (torch, OpenVINO) pair of files given on the command line."""
    files = [Path(a) for a in sys.argv[1:]]
    if not files or len(files) % 2:
        sys.exit(__doc__)
    results = [compare(files[i], files[i + 1]) for i in range(0, len(files), 2)]
    print("\nall goals met" if all(results) else "\nsome goals NOT met")


if __name__ == "__main__":
    main()
