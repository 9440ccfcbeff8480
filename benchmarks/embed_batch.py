"""Which document batch size embeds the seed corpus fastest on this machine (OpenVINO backend)?

    python benchmarks/embed_batch.py --index ./index                 # batch sizes 1 2 4 8 16 32
    python benchmarks/embed_batch.py --index ./index --sizes 4,8,16 --rounds 3 --limit 400

The texts are what an index build embeds: every passage of the index (with EmbeddingGemma's
document prompt) and its sentences, longest first as ``embed_with_cache`` hands them over. Each
round times every batch size once, in rotating order, so drifting machine load spreads over all
sizes; the table gives the median texts per second over the rounds and the padded share of the
tokens. ``rag.embed_openvino.BATCH_SIZE`` is set from this table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rag.embed import document_input, load_embedder  # noqa: E402
from rag.embed_openvino import OpenVINOEmbedder  # noqa: E402
from rag.store import open_store  # noqa: E402


def seed_texts(index_dir: Path, limit: int) -> list[str]:
    """Passages and their sentences from the index, longest first, at most ``limit`` (evenly spread)."""
    store = open_store(index_dir)
    texts = []
    for i in range(len(store)):
        passage = store.chunk(i).text
        texts.append(document_input(passage))
        texts.extend(document_input(s + "。") for s in passage.split("。") if len(s) >= 8)
    texts.sort(key=len, reverse=True)
    step = max(1, len(texts) // limit)
    return texts[::step][:limit]


def padded_share(embedder: OpenVINOEmbedder, texts: list[str], batch_size: int) -> float:
    """Share of the computed token positions that are padding, for length-sorted batches of ``batch_size``."""
    lengths = sorted((len(e.ids) for e in embedder.tokenizer.encode_batch(texts)), reverse=True)
    computed = sum(max(lengths[b:b + batch_size]) * len(lengths[b:b + batch_size])
                   for b in range(0, len(lengths), batch_size))
    return 1 - sum(lengths) / computed


def main() -> None:
    """Print a markdown table: batch size, texts/s (median over rounds), padded share."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=Path("index"))
    parser.add_argument("--sizes", default="1,2,4,8,16,32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=400, help="texts per round and size")
    args = parser.parse_args()
    os.environ.setdefault("RAG_EMBED_BACKEND", "openvino")
    embedder = load_embedder()
    if not isinstance(embedder, OpenVINOEmbedder):
        sys.exit("OpenVINO backend not available (run `python -m rag.ov_export`)")
    texts = seed_texts(args.index, args.limit)
    sizes = [int(s) for s in args.sizes.split(",")]
    rates: dict[int, list[float]] = {size: [] for size in sizes}
    embedder.embed_documents(texts[:8])  # warm-up
    for round_number in range(args.rounds):
        order = sizes[round_number % len(sizes):] + sizes[:round_number % len(sizes)]
        for size in order:
            embedder.batch_size = size
            began = time.perf_counter()
            embedder.embed_documents(texts)
            rates[size].append(len(texts) / (time.perf_counter() - began))
            print(f"round {round_number + 1}: batch {size}: {rates[size][-1]:.1f} texts/s", file=sys.stderr)
    print(f"\n{len(texts)} texts, median chars {statistics.median(len(t) for t in texts):.0f}, "
          f"{args.rounds} rounds, {embedder.precision}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| batch size | texts/s (median) | min–max | padded tokens |\n|---|---|---|---|")
    for size in sizes:
        print(f"| {size} | {statistics.median(rates[size]):.1f} | {min(rates[size]):.1f}–{max(rates[size]):.1f} | "
              f"{padded_share(embedder, texts, size):.1%} |")


if __name__ == "__main__":
    main()
