"""Bounded load test of the Gradio UI's ``ask`` endpoint over loopback.

    python benchmarks/load_ui.py                          # starts `rag ui` on ./corpus + ./index
    python benchmarks/load_ui.py --url http://127.0.0.1:7860/
    python benchmarks/load_ui.py --users 20 --per-user 10 --timeout 300 --json
    python benchmarks/load_ui.py --both                   # unique questions, then the 16 repeated ones

Each simulated user is its own ``gradio_client.Client`` (its own session) and asks its questions
one after another; all users run at once. Reports errors (goal: 0), latency p50/p95/max and the
total wall time. Only loopback addresses are accepted, and the whole run stops after
``--timeout`` seconds whatever happens (unfinished questions count as errors).

By default every request asks a different question (one of the 16 below with its own wording
around it, see ``unique_questions``), so each needs its own query embedding, as with real users.
``--repeat-questions`` asks the same 16 over and over (the old behaviour): after the first round
the server takes their vectors from its query cache, which measures the cache, not the model.
Against a long-running server (``--url``) the server remembers the last run's questions too:
give each run its own ``--seed``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

QUESTIONS = [
    "GPT-3 的参数量是多少？",
    "哪些公司是通义大模型的合作伙伴？",
    "M6-OFA 是什么时候发布的？",
    "微软365 Copilot主要是由哪个模型驱动的？",
    "信通院对华为盘古大模型的测评结果怎么样？",
    "GitHub Copilot底层用的是什么模型？",
    "新版Bing搜索引擎底层运行的是什么模型？",
    "国内大模型玩家之间形成了哪四种合作模式？",
    "人工智能框架技术的发展经历了哪几个阶段？",
    "百度Ernie 3.0是在什么预训练框架基础上训练出来的？",
    "英伟达H200单卡售价大概多少美元？",
    "谷歌TPU推出年份",
    "受访人士中有多少人认为大模型应用场景会继续扩展？",
    "科大讯飞和商汤分别是在什么时候、在哪个交易所上市的？",
    "文心一言是哪家公司的？",
    "今天天气如何？",  # off-topic: must still be answered (with the not-found message), not fail
]
# Wording around a question that keeps its meaning but changes the string (and so its embedding).
PREFIXES = ["", "请问", "我想知道", "麻烦查一下：", "根据报告，", "想了解一下", "能否说明", "帮我确认一下，"]
SUFFIXES = ["", "请给出出处。", "谢谢。", "请简要回答。", "报告里怎么说？"]
LOOPBACK_NAMES = {"localhost"}


def unique_questions(count: int, seed: int = 0) -> list[str]:
    """``count`` different questions: each of ``QUESTIONS`` with its own prefix and suffix.

    The bare questions are never among them (a warm-up asks those); past the
    ``len(PREFIXES) * len(SUFFIXES) - 1`` wordings of a question a number is added. ``seed``
    shifts the whole list, so a second run against the same server asks new questions.
    """
    wordings = len(PREFIXES) * len(SUFFIXES)
    questions: list[str] = []
    for n in range(seed * count, seed * count + count):
        base = QUESTIONS[n % len(QUESTIONS)]
        variant = n // len(QUESTIONS) + 1  # variant 0 would be the bare question
        prefix, suffix = PREFIXES[variant % len(PREFIXES)], SUFFIXES[(variant // len(PREFIXES)) % len(SUFFIXES)]
        tag = f"（第{variant // wordings}轮）" if variant >= wordings else ""
        questions.append(f"{prefix}{base}{suffix}{tag}")
    assert len(set(questions)) == len(questions)
    return questions


def user_questions(users: int, per_user: int, repeat: bool, seed: int = 0) -> list[list[str]]:
    """The questions each user asks, in order: all different, or the 16 repeated (``repeat``)."""
    total = users * per_user
    pool = [QUESTIONS[n % len(QUESTIONS)] for n in range(total)] if repeat else unique_questions(total, seed)
    return [pool[n * per_user:(n + 1) * per_user] for n in range(users)]


@dataclass
class Outcome:
    """What one simulated user saw."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    abstained: int = 0


def is_loopback(url: str) -> bool:
    """True for http(s) URLs whose host is a loopback address."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return False
    if parsed.hostname in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(parsed.hostname).is_loopback
    except ValueError:
        return False


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(corpus: Path | None, index: Path | None, startup_timeout: float = 180.0):
    """Start ``rag ui`` in a child process on a free loopback port; returns (process, url).

    A separate process keeps the server's GIL apart from the 20 client threads of this one.
    """
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "rag.cli"]
    if corpus:
        command += ["--corpus", str(corpus)]
    if index:
        command += ["--index", str(index)]
    command += ["ui", "--host", "127.0.0.1", "--port", str(port)]
    root = Path(__file__).resolve().parents[1]
    log = tempfile.TemporaryFile(mode="w+")  # not a pipe: a chatty server must never block on it
    process = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=log, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            detail = log.read()[-2000:]
            raise SystemExit(f"rag ui exited with {process.returncode}: {detail}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_app(process)
    raise SystemExit(f"rag ui did not answer on {url} within {startup_timeout:.0f} s")


def stop_app(process: subprocess.Popen) -> None:
    """Stop the child server (terminate, then kill if it lingers)."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def run_user(url: str, number: int, questions: list[str], deadline: float, outcome: Outcome) -> None:
    """One user: a client of its own asking ``questions`` in turn."""
    from gradio_client import Client

    try:
        client = Client(url, verbose=False)
    except Exception as exc:  # noqa: BLE001 - every failure is an error to report
        outcome.errors.append(f"user {number}: cannot connect: {exc}")
        return
    for i, question in enumerate(questions):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            outcome.errors.append(f"user {number}: deadline reached before question {i + 1}")
            continue
        started = time.perf_counter()
        try:
            job = client.submit(question, 5, None, api_name="/ask")
            result = job.result(timeout=remaining)
        except Exception as exc:  # noqa: BLE001
            outcome.errors.append(f"user {number} q{i + 1}: {type(exc).__name__}: {exc}"[:300])
            continue
        elapsed = time.perf_counter() - started
        if not isinstance(result, dict) or "answer" not in result:
            outcome.errors.append(f"user {number} q{i + 1}: unexpected result {str(result)[:200]}")
        elif result.get("error"):
            outcome.errors.append(f"user {number} q{i + 1}: {result['error']}")
        else:
            outcome.latencies.append(elapsed)
            outcome.abstained += bool(result.get("abstained"))


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="running app (loopback only); default: start `rag ui` in a child process")
    parser.add_argument("--corpus", type=Path, default=None, help="corpus folder when starting the app")
    parser.add_argument("--index", type=Path, default=None, help="index folder when starting the app")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--per-user", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=300.0, help="hard limit for the whole run, seconds")
    parser.add_argument("--warmup", action="store_true",
                        help="ask every question once before the timed run (measures steady state, not cold start)")
    parser.add_argument("--repeat-questions", action="store_true",
                        help="ask the same 16 questions over and over (their vectors then come from the query cache)")
    parser.add_argument("--both", action="store_true",
                        help="run with unique questions, then with repeated ones, and report both")
    parser.add_argument("--seed", type=int, default=0,
                        help="shift the unique questions (use a new one for each run against the same --url)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)

    if args.url and not is_loopback(args.url):
        parser.error("--url must point at a loopback address (127.0.0.1, ::1 or localhost)")
    server: subprocess.Popen | None = None

    def give_up() -> None:  # the run, or its shutdown, hangs: stop everything
        if server is not None:
            server.kill()
        os._exit(3)

    hard_stop = threading.Timer(args.timeout + 240, give_up)  # startup, run and shutdown included
    hard_stop.daemon = True
    hard_stop.start()
    if args.url:
        url = args.url
    else:
        server, url = start_app(args.corpus, args.index)
    try:
        modes = [False, True] if args.both else [args.repeat_questions]
        summaries = [_run(args, url, repeat) for repeat in modes]
        if args.json:
            print(json.dumps(summaries if args.both else summaries[0], ensure_ascii=False))
        sys.stdout.flush()
        return 0 if all(summary["errors"] == 0 for summary in summaries) else 1
    finally:
        if server is not None:
            # Clients still streaming (after a timeout) see the server go away and print tracebacks: expected.
            threading.excepthook = lambda _: None
            sys.stderr = open(os.devnull, "w")  # kept open until the process exits
            stop_app(server)
        hard_stop.cancel()


def _run(args: argparse.Namespace, url: str, repeat: bool) -> dict:
    """One timed run against ``url``; prints the summary unless ``--json``, and returns it."""
    deadline = time.monotonic() + args.timeout
    if args.warmup:
        warm = Outcome()
        run_user(url, 0, QUESTIONS, deadline, warm)  # the bare questions, once each
        if warm.errors:
            print("warm-up errors:", *warm.errors[:3], sep="\n  ")
    asked = user_questions(args.users, args.per_user, repeat, args.seed)
    outcomes = [Outcome() for _ in range(args.users)]
    started = time.perf_counter()
    threads = [threading.Thread(target=run_user, args=(url, n, asked[n], deadline, outcomes[n]), daemon=True)
               for n in range(args.users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()) + 5)
    total = time.perf_counter() - started
    unfinished = sum(thread.is_alive() for thread in threads)

    latencies = [x for o in outcomes for x in o.latencies]
    errors = [e for o in outcomes for e in o.errors]
    expected = args.users * args.per_user
    missing = max(0, expected - len(latencies) - len(errors))
    error_count = len(errors) + missing
    if missing:
        errors.append(f"{missing} questions unanswered when the run was stopped")
    summary = {
        "url": url, "questions": "repeated" if repeat else "unique",
        "distinct_questions": len({q for user in asked for q in user}),
        "warmup": args.warmup, "users": args.users, "per_user": args.per_user, "requests": expected,
        "answered": len(latencies), "errors": error_count,
        "abstained": sum(o.abstained for o in outcomes),
        "p50_s": round(percentile(latencies, 50), 3), "p95_s": round(percentile(latencies, 95), 3),
        "max_s": round(max(latencies), 3) if latencies else None,
        "mean_s": round(statistics.fmean(latencies), 3) if latencies else None,
        "total_s": round(total, 2), "throughput_qps": round(len(latencies) / total, 2) if total else None,
        "unfinished_users": unfinished, "first_errors": errors[:5],
    }
    if not args.json:
        kind = ("the 16 questions asked again and again: after the first round their vectors come from the "
                "server's query cache" if repeat else "every question different: each one is embedded")
        print(f"{summary['users']} users × {summary['per_user']} questions = {expected} requests → {url}"
              f"{' (after warm-up)' if args.warmup else ' (no warm-up)'}; {kind}")
        print(f"answered {summary['answered']}, errors {summary['errors']} (goal 0), "
              f"not-found answers {summary['abstained']}")
        print(f"latency p50 {summary['p50_s']} s, p95 {summary['p95_s']} s, max {summary['max_s']} s; "
              f"total {summary['total_s']} s, {summary['throughput_qps']} answers/s")
        for error in summary["first_errors"]:
            print("  error:", error)
    return summary


if __name__ == "__main__":
    sys.exit(main())
