"""Write and search speed of the Milvus store (Milvus Lite file, Milvus server) beside the embedded store.

    python benchmarks/milvus_store.py                                   # 10k passages, all three stores
    python benchmarks/milvus_store.py --passages 2000 --stores faiss,lite --json

The corpus is generated, because embedding many passages with EmbeddingGemma here takes hours:
every passage joins 3–6 random sentences of the seed reports, reports have 330 passages (about the
seeds' size), and every vector (passage and sentence/table-row units) is a random unit vector of
EmbeddingGemma's 768 dimensions. The output says so. Retrieval quality through Milvus is measured by
``rag eval --store …`` on the real seeds, not here.

For each store, on the same generated corpus in the same run, it prints: the first build (every row
written; rows/s counts passage, BM25 and unit rows for Milvus, passages and units for the embedded
store), adding one report to that index (Milvus writes only that report, the embedded store writes
a new version of everything), adding it when it also brings a new corpus word (jieba then cuts every
passage differently: Milvus re-tokenizes and rewrites every BM25 row), opening the index in a new process
(seconds, and resident memory it adds: the records a reader keeps, and Milvus Lite's engine for a
Lite file), and the median time of each store call
retrieval makes (dense, unit and BM25 top-60; dense and BM25 scores of 20 named passages) over 20
questions.
The server is ``milvus-lite server`` on a free loopback port, started here and stopped by PID.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from rag.chunking import Chunk  # noqa: E402
from rag.metadata import ReportInfo  # noqa: E402
from rag.records import StoredDocument  # noqa: E402
from rag.store import ReportRecords, open_store, store_writer  # noqa: E402
from rag.tokenize import TOKENIZER_VERSION, tokenizer_for  # noqa: E402

PASSAGES_PER_REPORT = 330
DIMENSION = 768
QUERIES = 20
NEW_WORD = "甲乙丙科技"  # a corpus word the generated reports contain, added to the tokenizer by one build


def seed_sentences() -> list[str]:
    """Every sentence of the seed reports (split at Chinese full stops and line ends)."""
    sentences = []
    for path in sorted((HERE / "corpus").glob("*.txt")):
        for line in path.read_text(encoding="utf-8").splitlines():
            sentences += [part.strip() + "。" for part in line.split("。") if len(part.strip()) >= 8]
    return sentences


def _unit(rng: np.random.Generator, rows: int) -> np.ndarray:
    matrix = rng.standard_normal((rows, DIMENSION)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def generate(passages: int, units_per_passage: int, seed: int) -> list[ReportRecords]:
    """Reports of recombined seed sentences with random unit vectors (see the module docstring)."""
    sentences = seed_sentences()
    pick = random.Random(seed)
    rng = np.random.default_rng(seed)
    reports = []
    for number in range(0, passages, PASSAGES_PER_REPORT):
        reports.append(_report(f"gen_{number // PASSAGES_PER_REPORT:05d}.txt",
                               min(PASSAGES_PER_REPORT, passages - number), units_per_passage, sentences, pick, rng))
    return reports


def _report(source: str, count: int, units_per_passage: int, sentences: list[str], pick: random.Random,
            rng: np.random.Generator) -> ReportRecords:
    texts = ["".join(pick.choice(sentences) for _ in range(pick.randint(3, 6))) for _ in range(count)]
    text = "\n".join(texts)
    chunks = []
    offset = 0
    for line, passage in enumerate(texts, start=1):
        chunks.append((f"{source}:L{line}-L{line}", Chunk(source, offset, offset + len(passage), passage), line, line,
                       None))
        offset += len(passage) + 1
    document = StoredDocument(source, hashlib.sha256(text.encode()).hexdigest(), text, ReportInfo(title=source), [],
                              [0, *[c[1].end + 1 for c in chunks[:-1]]])
    owners = [position for position in range(count) for _ in range(units_per_passage)]
    return ReportRecords(document, chunks, _unit(rng, count), _unit(rng, len(owners)) if owners else None, owners)


def _size_mb(path: Path) -> float | None:
    if not path.exists():
        return None
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def _open_in_new_process(location: str, index_dir: Path) -> dict:
    """Seconds and resident memory to open the store, in a fresh process as a search process would
    (this one's Milvus Lite client is released first: a Lite file has one opener)."""
    if location.startswith("milvus://"):
        from rag.milvus_store import release_client

        release_client(location)
    output = subprocess.run([sys.executable, __file__, "--child-open", location, "--work", str(index_dir)],
                            capture_output=True, text=True, check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def child_open(location: str, index_dir: Path) -> None:
    """Open the store and print the time and the resident memory it added (Milvus Lite's engine included)."""
    import bm25s  # noqa: F401  (libraries are loaded before measuring: their code is not the index)
    import faiss  # noqa: F401
    import pymilvus  # noqa: F401

    before = _rss_mb()
    began = time.perf_counter()
    store = open_store(index_dir, location)
    opened = time.perf_counter() - began
    store.chunk(0)
    print(json.dumps({"open_s": opened, "rss_mb": _rss_mb() - before}))


def _rss_mb() -> float:
    """Resident memory of this process now (Milvus Lite runs inside it)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _median_ms(call: Callable[[int], object]) -> float:
    times = []
    for number in range(QUERIES):
        began = time.perf_counter()
        call(number)
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def measure(name: str, location: str, index_dir: Path, reports: list[ReportRecords], extra: ReportRecords,
            questions: list[tuple[np.ndarray, list[str]]], log: Callable[[str], None]) -> dict:
    """Build, add one report, open and search one store; every figure in seconds or milliseconds."""
    tokenizer = tokenizer_for([])
    manifest = {"model": "synthetic-random-unit-vectors", "dimension": DIMENSION,
                "tokenizer_version": TOKENIZER_VERSION, "user_words": []}
    passages = sum(len(r.chunks) for r in reports)
    units = sum(len(r.unit_owner) for r in reports)
    rows = passages * (2 if name != "faiss" else 1) + units

    log(f"{name}: building {passages} passages, {units} units")
    writer = store_writer(index_dir, DIMENSION, tokenizer, location)
    for report in reports:
        writer.add_report(report)
    began = time.perf_counter()
    writer.commit({**manifest, "built_at": time.time()})
    build = time.perf_counter() - began

    log(f"{name}: adding one report")
    writer = store_writer(index_dir, DIMENSION, tokenizer, location)
    for report in [*reports, extra]:
        writer.add_report(report)
    began = time.perf_counter()
    writer.commit({**manifest, "built_at": time.time()})
    add_one = time.perf_counter() - began

    log(f"{name}: adding one report with a new corpus word (every passage's BM25 tokens change)")
    worded = tokenizer_for([NEW_WORD])
    writer = store_writer(index_dir, DIMENSION, worded, location)
    for report in [*reports, extra]:
        writer.add_report(report)
    began = time.perf_counter()
    writer.commit({**manifest, "user_words": [NEW_WORD], "built_at": time.time()})
    add_new_word = time.perf_counter() - began

    opening = _open_in_new_process(location, index_dir)
    store = open_store(index_dir, location)
    candidates = [list(range(number, len(store), max(1, len(store) // 20)))[:20] for number in range(QUERIES)]
    log(f"{name}: searching")
    result = {
        "store": name, "passages": passages, "units": units, "rows_written": rows,
        "build_s": build, "rows_per_s": rows / build, "add_one_report_s": add_one,
        "add_one_report_rows": len(extra.chunks) * (2 if name != "faiss" else 1) + len(extra.unit_owner),
        "add_one_report_new_word_s": add_new_word, "open_s": opening["open_s"], "open_rss_mb": opening["rss_mb"],
        "dense_top60_ms": _median_ms(lambda n: store.dense_top_k(questions[n][0], 60)),
        "unit_top60_ms": _median_ms(lambda n: store.unit_top_k(questions[n][0], 60)),
        "bm25_top60_ms": _median_ms(lambda n: store.bm25_top_k(questions[n][1], 60)),
        "dense_scores20_ms": _median_ms(lambda n: store.dense_scores(questions[n][0], candidates[n])),
        "bm25_scores20_ms": _median_ms(lambda n: store.bm25_scores(questions[n][1], candidates[n])),
    }
    return result


def table(results: list[dict]) -> str:
    """The results side by side, one row per store."""
    columns = ["store", "passages", "units", "rows_written", "build_s", "rows_per_s", "add_one_report_s",
               "add_one_report_new_word_s", "open_s", "open_rss_mb", "dense_top60_ms", "unit_top60_ms",
               "bm25_top60_ms", "dense_scores20_ms", "bm25_scores20_ms", "size_mb"]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for result in results:
        cells = []
        for column in columns:
            value = result.get(column)
            if value is None:
                cells.append("—")
            elif isinstance(value, float):
                cells.append(f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2f}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, run every store on the same generated corpus, print the table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, default=10_000)
    parser.add_argument("--units-per-passage", type=int, default=7,
                        help="sentence/table-row vectors per passage (the seeds: 2,185 for 317 passages, 6.9)")
    parser.add_argument("--stores", default="faiss,lite,server")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child-open", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_open:
        child_open(args.child_open, args.work)
        return

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    work = args.work or Path(tempfile.mkdtemp(prefix="milvus-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    log(f"generated corpus: {args.passages} passages of recombined seed sentences, random unit vectors "
        f"({DIMENSION} dims, {args.units_per_passage} unit vectors per passage); work folder {work}")
    reports = generate(args.passages, args.units_per_passage, args.seed)
    extra = generate(PASSAGES_PER_REPORT, args.units_per_passage, args.seed + 1)[0]
    extra.document.source = "gen_extra.txt"
    extra.chunks = [(citation.replace(c.source, "gen_extra.txt"), Chunk("gen_extra.txt", c.start, c.end, c.text),
                     *rest) for citation, c, *rest in extra.chunks]
    tokenizer = tokenizer_for([])
    sentences = seed_sentences()
    pick = random.Random(args.seed + 2)
    rng = np.random.default_rng(args.seed + 2)
    questions = [(vector, tokenizer.tokens(pick.choice(sentences)[:20])) for vector in _unit(rng, QUERIES)]

    results = []
    try:
        for name in args.stores.split(","):
            folder = work / name
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            if name == "faiss":
                result = measure(name, "faiss", folder / "index", reports, extra, questions, log)
                result["size_mb"] = _size_mb(folder / "index")
            elif name == "lite":
                result = measure(name, f"milvus://{folder / 'store.db'}", folder / "index", reports, extra, questions,
                                 log)
                result["size_mb"] = _size_mb(folder / "store.db")
            elif name == "server":
                from rag.milvus_store import lite_server

                with lite_server(folder / "data", folder / "server.log") as location:
                    result = measure(name, location, folder / "index", reports, extra, questions, log)
                result["size_mb"] = _size_mb(folder / "data")
            else:
                raise SystemExit(f"unknown store {name!r} (faiss, lite, server)")
            results.append(result)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    note = (f"Generated corpus (recombined seed sentences, random unit vectors), {os.cpu_count()} CPU cores; "
            "faiss = the embedded store (baseline), lite = Milvus Lite file, server = milvus-lite server on loopback.")
    if args.json:
        print(json.dumps({"note": note, "results": results}, ensure_ascii=False, indent=2))
    else:
        print(note)
        print(table(results))


if __name__ == "__main__":
    main()
