"""Performance numbers behind ``rag bench``: build time, passage sizes, query latency, memory, cold start.

Every figure is measured here, on this machine, when the command runs; nothing is hard-coded.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from . import fitted
from .api import ReportQA
from .embed import EmbeddingCache, cache_namespace
from .evaluate import percentile
from .scoring import MODES

SAMPLE_QUESTIONS = ["GPT-3 的参数量是多少？", "哪些公司是通义大模型的合作伙伴？", "M6-OFA 是什么时候发布的？",
                    "受访公司的AI团队规模", "英伟达数据中心业务收入", "AI框架市场份额", "魔搭社区上架了多少模型",
                    "大模型API如何收费", "科大讯飞星火", "昇腾910的FP16算力"]


def measure_build(corpus_dir: Path, index_dir: Path, cold: bool, log: Callable[[str], None]) -> tuple[dict, ReportQA]:
    """Build a fresh index of ``corpus_dir`` in ``index_dir``; with ``cold`` also a fresh embedding cache."""
    cache = EmbeddingCache(index_dir.parent / "cache.sqlite") if cold else EmbeddingCache()
    qa = ReportQA(corpus_dir, index_dir, cache=cache)
    embedder = qa.embedder  # model loading is reported separately (cold start)
    began = time.perf_counter()
    report = qa.build(force=True, log=log)
    seconds = time.perf_counter() - began
    sizes = [len(qa.store.chunk(i).text) for i in range(len(qa.store))]
    return {"build_seconds": round(seconds, 1), "embedded": report.embedded, "reports": report.documents,
            "passages": len(sizes), "cold_cache": cold, "embedder": cache_namespace(embedder),
            "precision": getattr(embedder, "precision", "f32"),
            "passage_chars": {"min": min(sizes), "p25": percentile(sizes, 0.25),
                              "median": statistics.median(sizes), "p75": percentile(sizes, 0.75),
                              "max": max(sizes), "mean": round(statistics.fmean(sizes), 1)}}, qa


def measure_latency(qa: ReportQA, questions: list[str], repeats: int = 1) -> dict:
    """p50/p95 search latency per mode with the model loaded and query vectors not cached."""
    qa.search("预热", mode="hybrid")
    result = {}
    for mode in MODES:
        timings = []
        for _ in range(repeats):
            qa.encoder.clear()
            for question in questions:
                began = time.perf_counter()
                qa.search(question, mode=mode)
                timings.append((time.perf_counter() - began) * 1000)
        result[mode] = {"p50_ms": round(percentile(timings, 0.5), 1), "p95_ms": round(percentile(timings, 0.95), 1),
                        "n": len(timings)}
    return result


# The child reports its own peak (VmHWM of the process image after exec): a forked child's ru_maxrss
# starts from the parent's RSS at fork time, which in `rag bench` holds a loaded model.
_PEAK_REPORTER = ("import atexit, sys\n"
                  "def report():\n"
                  "    for line in open('/proc/self/status'):\n"
                  "        if line.startswith('VmHWM:'):\n"
                  "            sys.stderr.write('peak-rss-kb ' + line.split()[1] + '\\n')\n"
                  "atexit.register(report)\n"
                  "from rag.cli import main\n"
                  "sys.argv[0] = 'rag'\n"
                  "main()\n")


def measure_cold_start(corpus_dir: Path, index_dir: Path) -> tuple[float, float]:
    """Seconds from starting ``rag search --json`` in a new process to its first result line, and its peak RSS (MB)."""
    command = [sys.executable, "-c", _PEAK_REPORTER, "--corpus", str(corpus_dir), "--index", str(index_dir),
               "search", "GPT-3 的参数量是多少？", "--json"]
    began = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert process.stdout is not None
    first = process.stdout.readline()
    seconds = time.perf_counter() - began
    _, errors = process.communicate()
    json.loads(first)
    peaks = [int(line.split()[1]) for line in errors.splitlines() if line.startswith("peak-rss-kb ")]
    return round(seconds, 2), round(peaks[-1] / 1024, 1) if peaks else float("nan")


def bench_backend(corpus_dir: Path, cold: bool, questions: list[str], log: Callable[[str], None]) -> dict:
    """The numbers for the embedding backend selected by ``RAG_EMBED_BACKEND``, on a throw-away index."""
    with tempfile.TemporaryDirectory(prefix="rag-bench-") as tmp:
        index_dir = Path(tmp) / "index"
        build, qa = measure_build(corpus_dir, index_dir, cold, log)
        for warning in fitted.mismatches(qa.store.manifest):
            log(warning)
        latency = measure_latency(qa, questions, repeats=3)
        cold_start, search_rss = measure_cold_start(corpus_dir, index_dir)
        if qa.cache is not None:
            qa.cache.close()
    return {"build": build, "latency": latency, "cold_start_seconds": cold_start, "search_peak_rss_mb": search_rss}


def run_bench(corpus_dir: Path, index_dir: Path, cold: bool, questions: list[str] | None = None,
              log: Callable[[str], None] = lambda message: None, backends: tuple[str, ...] = ("auto", "torch")) -> dict:
    """All numbers of ``rag bench``: per embedding backend (the default one and torch fp32), side by side.

    ``index_dir`` is left alone: each backend builds its own throw-away index, so the comparison is
    measured in one run on the same machine state.
    """
    numbers: dict[str, object] = {"cpu_count": os.cpu_count()}
    saved = os.environ.get("RAG_EMBED_BACKEND")
    try:
        for backend in backends:
            os.environ["RAG_EMBED_BACKEND"] = backend
            log(f"bench: backend {backend}")
            numbers[backend] = bench_backend(corpus_dir, cold, questions or SAMPLE_QUESTIONS, log)
    finally:
        if saved is None:
            os.environ.pop("RAG_EMBED_BACKEND", None)
        else:
            os.environ["RAG_EMBED_BACKEND"] = saved
    numbers["peak_rss_mb_bench_process"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    numbers["table"] = comparison_table(numbers, backends)
    return numbers


def comparison_table(numbers: dict, backends: tuple[str, ...]) -> str:
    """Markdown table: each figure per backend, with the speed-up over the last (torch fp32) column."""
    def row(label: str, pick: Callable[[dict], float], lower_is_better: bool = True) -> str:
        values = [pick(numbers[b]) for b in backends]
        base = values[-1]
        ratio = f"{base / values[0]:.2f}×" if lower_is_better and values[0] else ""
        return f"| {label} | " + " | ".join(str(v) for v in values) + f" | {ratio} |"

    header = "| figure | " + " | ".join(f"{b} ({numbers[b]['build']['embedder']}, {numbers[b]['build']['precision']})"
                                        for b in backends) + " | torch ÷ this |"
    lines = [header, "|---" * (len(backends) + 2) + "|",
             row("index build (s)", lambda n: n["build"]["build_seconds"]),
             row("hybrid search p50 (ms)", lambda n: n["latency"]["hybrid"]["p50_ms"]),
             row("hybrid search p95 (ms)", lambda n: n["latency"]["hybrid"]["p95_ms"]),
             row("cold start to first result (s)", lambda n: n["cold_start_seconds"]),
             row("peak RSS of cold `rag search` (MB)", lambda n: n["search_peak_rss_mb"])]
    return "\n".join(lines)
