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
from .embed import EmbeddingCache
from .evaluate import percentile
from .scoring import MODES

SAMPLE_QUESTIONS = ["GPT-3 的参数量是多少？", "哪些公司是通义大模型的合作伙伴？", "M6-OFA 是什么时候发布的？",
                    "受访公司的AI团队规模", "英伟达数据中心业务收入", "AI框架市场份额", "魔搭社区上架了多少模型",
                    "大模型API如何收费", "科大讯飞星火", "昇腾910的FP16算力"]


def measure_build(corpus_dir: Path, cold: bool, log: Callable[[str], None]) -> dict:
    """Build a fresh index of ``corpus_dir``; with ``cold`` also a fresh embedding cache."""
    with tempfile.TemporaryDirectory(prefix="rag-bench-") as tmp:
        cache = EmbeddingCache(Path(tmp) / "cache.sqlite") if cold else EmbeddingCache()
        qa = ReportQA(corpus_dir, Path(tmp) / "index", cache=cache)
        _ = qa.embedder  # model loading is reported separately (cold start)
        began = time.perf_counter()
        report = qa.build(force=True, log=log)
        seconds = time.perf_counter() - began
        sizes = [len(qa.store.chunk(i).text) for i in range(len(qa.store))]
        cache.close()
    return {"build_seconds": round(seconds, 1), "embedded": report.embedded, "reports": report.documents,
            "passages": len(sizes), "cold_cache": cold,
            "passage_chars": {"min": min(sizes), "p25": percentile(sizes, 0.25),
                              "median": statistics.median(sizes), "p75": percentile(sizes, 0.75),
                              "max": max(sizes), "mean": round(statistics.fmean(sizes), 1)}}


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


def measure_cold_start(corpus_dir: Path, index_dir: Path) -> float:
    """Seconds from starting ``rag search --json`` in a new process to its first result line."""
    command = [sys.executable, "-m", "rag.cli", "--corpus", str(corpus_dir), "--index", str(index_dir),
               "search", "GPT-3 的参数量是多少？", "--json"]
    began = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert process.stdout is not None
    first = process.stdout.readline()
    seconds = time.perf_counter() - began
    process.wait()
    json.loads(first)
    return round(seconds, 2)


def run_bench(corpus_dir: Path, index_dir: Path, cold: bool, questions: list[str] | None = None,
              log: Callable[[str], None] = lambda message: None) -> dict:
    """All numbers of ``rag bench`` as one mapping."""
    numbers: dict[str, object] = {"build": measure_build(corpus_dir, cold, log)}
    qa = ReportQA(corpus_dir, index_dir)
    qa.build(log=log)
    for warning in fitted.mismatches(qa.store.manifest):
        log(warning)
    numbers["latency"] = measure_latency(qa, questions or SAMPLE_QUESTIONS, repeats=3)
    numbers["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    numbers["cold_start_seconds"] = measure_cold_start(corpus_dir, index_dir)
    numbers["cpu_count"] = os.cpu_count()
    return numbers
