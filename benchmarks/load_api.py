"""Bounded load test of the HTTP API (``rag serve``) over loopback: search, ask and chat completions at once.

    python benchmarks/load_api.py                                  # starts `rag serve` on ./corpus + ./index
    python benchmarks/load_api.py --corpus /tmp/c --index /tmp/i   # … on another corpus and index
    python benchmarks/load_api.py --url http://127.0.0.1:8000      # a running server (key: $RAG_API_KEY)
    python benchmarks/load_api.py --clients 40 --per-client 10 --build-after 0.3 --timeout 300 --json

Each client is a thread with its own connections, sending its requests one after another and
cycling through four kinds: ``POST /v1/search``, ``POST /v1/ask``, and ``POST /v1/chat/completions``
through the official ``openai`` client, plain and streamed (a streamed reply is timed to its last
chunk). Once ``--build-after`` of the requests are done, a forced rebuild is started with
``POST /v1/index`` and followed through ``GET /v1/index``: requests sent while it runs must not fail.

Reports errors (goal: 0), latency p50/p95/max overall and per kind, and the build's outcome with
the number of requests that overlapped it. Only loopback addresses are accepted; the number of
requests is fixed and the whole run stops after ``--timeout`` seconds whatever happens (unfinished
requests count as errors). Exit status 0 only with no error and, when one was started, a
successful build.
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
    "今天天气如何？",  # off-topic: answered with the not-found message, never an error
]
KINDS = ("search", "ask", "chat", "chat-stream")
LOOPBACK_NAMES = {"localhost"}
REQUEST_TIMEOUT = 120.0


@dataclass
class Sample:
    """One finished request."""

    kind: str
    started: float
    ended: float
    error: str | None = None


@dataclass
class BuildRun:
    """The rebuild started during the load."""

    started: float | None = None
    ended: float | None = None
    state: str = "not started"
    detail: str = ""


@dataclass
class Run:
    """Everything the clients and the build watcher record (appends are atomic under the GIL)."""

    samples: list[Sample] = field(default_factory=list)
    build: BuildRun = field(default_factory=BuildRun)
    done: threading.Event = field(default_factory=threading.Event)


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


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def start_server(args: argparse.Namespace, startup_timeout: float = 300.0):
    """Start ``rag serve`` in a child process on a free loopback port; returns (process, url).

    A separate process keeps the server's GIL apart from the client threads of this one.
    """
    import httpx

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "rag.cli"]
    for option, value in (("--corpus", args.corpus), ("--index", args.index), ("--model", args.model)):
        if value:
            command += [option, str(value)]
    command += ["serve", "--host", "127.0.0.1", "--port", str(port)]
    root = Path(__file__).resolve().parents[1]
    log = tempfile.TemporaryFile(mode="w+")  # not a pipe: a chatty server must never block on it
    process = subprocess.Popen(command, cwd=root, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise SystemExit(f"rag serve exited with {process.returncode}: {log.read()[-2000:]}")
        try:
            health = httpx.get(f"{url}/v1/health", timeout=2)
            if health.status_code == 200 and health.json().get("ready"):
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_server(process)
    raise SystemExit(f"rag serve was not ready on {url} within {startup_timeout:.0f} s")


def stop_server(process: subprocess.Popen) -> None:
    """Stop the child server (terminate, then kill if it lingers)."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def one_request(kind: str, question: str, http, chat) -> str | None:
    """Send one request of ``kind``; returns an error description, or None when the reply is right."""
    if kind == "search":
        response = http.post("/v1/search", json={"query": question})
        if response.status_code != 200 or "hits" not in response.json():
            return f"search {response.status_code}: {response.text[:200]}"
    elif kind == "ask":
        response = http.post("/v1/ask", json={"query": question})
        if response.status_code != 200 or "answer" not in response.json():
            return f"ask {response.status_code}: {response.text[:200]}"
    elif kind == "chat":
        completion = chat.chat.completions.create(model="report-qa", messages=[{"role": "user", "content": question}])
        if not completion.choices[0].message.content or "report_qa" not in (completion.model_extra or {}):
            return "chat: empty reply"
    else:
        stream = chat.chat.completions.create(model="report-qa", messages=[{"role": "user", "content": question}],
                                              stream=True)
        chunks = list(stream)
        if not chunks or chunks[-1].choices[0].finish_reason != "stop":
            return "chat-stream: no final chunk"
    return None


def load_questions(path: Path) -> list[str]:
    """The ``question`` field of every line of a JSON-lines file."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row["question"].strip() for row in rows if str(row.get("question", "")).strip()]


def run_client(url: str, key: str | None, questions: list[str], number: int, clients: int, per_client: int,
               deadline: float, run: Run) -> None:
    """One client: ``per_client`` requests in turn, the kinds taken in rotation (offset by client);
    request i of client n asks question i·clients + n, so every question is asked once before any repeats."""
    import httpx
    import openai

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=REQUEST_TIMEOUT) as http, \
            openai.OpenAI(base_url=f"{url}/v1", api_key=key or "none", max_retries=0,  # a retry would hide an error
                          timeout=REQUEST_TIMEOUT) as chat:
        for i in range(per_client):
            kind = KINDS[(number + i) % len(KINDS)]
            question = questions[(i * clients + number) % len(questions)]
            started = time.monotonic()
            if started >= deadline:
                run.samples.append(Sample(kind, started, started, "deadline reached before the request"))
                continue
            try:
                error = one_request(kind, question, http, chat)
            except Exception as exc:  # noqa: BLE001 - every failure is an error to report
                error = f"{kind}: {type(exc).__name__}: {exc}"[:300]
            run.samples.append(Sample(kind, started, time.monotonic(), error))


def watch_build(url: str, key: str | None, after: int, deadline: float, run: Run) -> None:
    """Once ``after`` requests are done, force a rebuild and follow it until it ends."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    while len(run.samples) < after:
        if run.done.is_set() or time.monotonic() >= deadline:
            return
        time.sleep(0.05)
    build = run.build
    with httpx.Client(base_url=url, headers=headers, timeout=REQUEST_TIMEOUT) as http:
        build.started = time.monotonic()
        response = http.post("/v1/index", json={"force": True})
        if response.status_code != 202:
            build.state, build.ended = "refused", time.monotonic()
            build.detail = f"POST /v1/index {response.status_code}: {response.text[:200]}"
            return
        build.state = "running"
        while time.monotonic() < deadline:
            status = http.get("/v1/index").json()
            if status["build"]["state"] != "running":
                build.ended = time.monotonic()
                build.state = status["build"]["state"]
                result = status["build"].get("result") or {}
                build.detail = status["build"].get("error") or (
                    f"{result.get('documents')} reports, {result.get('chunks')} passages, "
                    f"{result.get('seconds')} s in the server")
                return
            time.sleep(0.2)
        build.state = "unfinished at the deadline"


def summarise(args: argparse.Namespace, url: str, run: Run, total: float) -> dict:
    """The run's numbers (seconds → milliseconds for latencies)."""
    expected = args.clients * args.per_client
    good = [s for s in run.samples if s.error is None]
    errors = [s.error for s in run.samples if s.error]
    missing = max(0, expected - len(run.samples))
    error_count = len(errors) + missing
    if missing:
        errors.append(f"{missing} requests unfinished when the run was stopped")

    def latency(samples: list[Sample]) -> dict:
        values = [(s.ended - s.started) * 1000 for s in samples]
        return {"count": len(values), "p50_ms": round(percentile(values, 50)), "p95_ms": round(percentile(values, 95)),
                "max_ms": round(max(values)) if values else None}

    build = run.build
    overlapping = []
    if build.started is not None:
        end = build.ended or float("inf")
        overlapping = [s for s in run.samples if s.started < end and s.ended > build.started]
    return {
        "url": url, "clients": args.clients, "per_client": args.per_client, "requests": expected,
        "distinct_questions": len(set(args.question_list)),
        "succeeded": len(good), "errors": error_count,
        "total_s": round(total, 2), "throughput_rps": round(len(good) / total, 2) if total else None,
        "latency": {"all": latency(good), **{kind: latency([s for s in good if s.kind == kind]) for kind in KINDS}},
        "mean_ms": round(statistics.fmean((s.ended - s.started) * 1000 for s in good)) if good else None,
        "build": {"state": build.state, "detail": build.detail,
                  "seconds": round(build.ended - build.started, 2) if build.started and build.ended else None,
                  "requests_overlapping": len(overlapping),
                  "errors_overlapping": sum(1 for s in overlapping if s.error)},
        "first_errors": errors[:5],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a running server (loopback only); default: start `rag serve` in a child process")
    parser.add_argument("--api-key", default=os.environ.get("RAG_API_KEY"), help="Bearer key (default $RAG_API_KEY)")
    parser.add_argument("--corpus", type=Path, default=None, help="corpus folder when starting the server")
    parser.add_argument("--index", type=Path, default=None, help="index folder when starting the server")
    parser.add_argument("--model", default=None, help="embedding model when starting the server")
    parser.add_argument("--questions", type=Path, default=None,
                        help="JSON lines with a \"question\" field (e.g. eval/questions.jsonl), asked in order "
                             "across clients; default: 16 built-in questions (repeats come from the query cache)")
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--per-client", type=int, default=10)
    parser.add_argument("--build-after", type=float, default=0.3,
                        help="start a forced rebuild once this fraction of the requests is done (negative: none)")
    parser.add_argument("--timeout", type=float, default=300.0, help="hard limit for the whole run, seconds")
    parser.add_argument("--warmup", action="store_true", help="send every question once before the timed run")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    if args.url and not is_loopback(args.url):
        parser.error("--url must point at a loopback address (127.0.0.1, ::1 or localhost)")
    if not (1 <= args.clients <= 200 and 1 <= args.per_client <= 1000):
        parser.error("--clients must be 1..200 and --per-client 1..1000")
    args.question_list = load_questions(args.questions) if args.questions else QUESTIONS
    if not args.question_list:
        parser.error(f"no questions in {args.questions}")

    server: subprocess.Popen | None = None

    def give_up() -> None:  # the run, or its shutdown, hangs: stop everything
        if server is not None:
            server.kill()
        os._exit(3)

    hard_stop = threading.Timer(args.timeout + 360, give_up)  # startup, run and shutdown included
    hard_stop.daemon = True
    hard_stop.start()
    if args.url:
        url = args.url.rstrip("/")
    else:
        server, url = start_server(args)
    try:
        return _run(args, url)
    finally:
        if server is not None:
            stop_server(server)
        hard_stop.cancel()


def _run(args: argparse.Namespace, url: str) -> int:
    """The timed run against ``url``; prints the summary, returns 0 when nothing failed."""
    deadline = time.monotonic() + args.timeout
    if args.warmup:
        warm = Run()
        run_client(url, args.api_key, args.question_list, 0, 1, len(args.question_list), deadline, warm)
        if any(s.error for s in warm.samples):
            print("warm-up errors:", *[s.error for s in warm.samples if s.error][:3], sep="\n  ")
    run = Run()
    expected = args.clients * args.per_client
    started = time.monotonic()
    threads = [threading.Thread(target=run_client,
                                args=(url, args.api_key, args.question_list, n, args.clients, args.per_client,
                                      deadline, run),
                                daemon=True) for n in range(args.clients)]
    watcher = None
    if args.build_after >= 0:
        watcher = threading.Thread(target=watch_build,
                                   args=(url, args.api_key, int(expected * args.build_after), deadline, run),
                                   daemon=True)
        watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()) + 5)
    total = time.monotonic() - started
    run.done.set()
    if watcher is not None:
        watcher.join(timeout=max(0.0, deadline - time.monotonic()) + 5)

    summary = summarise(args, url, run, total)
    build_ok = args.build_after < 0 or summary["build"]["state"] == "succeeded"
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print(f"{args.clients} clients × {args.per_client} requests = {expected} → {url}"
              f"{' (after warm-up)' if args.warmup else ''}; kinds in rotation: {', '.join(KINDS)}; "
              f"{summary['distinct_questions']} distinct questions")
        print(f"succeeded {summary['succeeded']}, errors {summary['errors']} (goal 0); "
              f"total {summary['total_s']} s, {summary['throughput_rps']} requests/s")
        for kind, numbers in summary["latency"].items():
            print(f"  {kind:<12} n={numbers['count']:<4} p50 {numbers['p50_ms']} ms, p95 {numbers['p95_ms']} ms, "
                  f"max {numbers['max_ms']} ms")
        build = summary["build"]
        print(f"rebuild during the load: {build['state']} ({build['detail']}), {build['seconds']} s; "
              f"{build['requests_overlapping']} requests overlapped it, {build['errors_overlapping']} failed")
        for error in summary["first_errors"]:
            print("  error:", error)
    sys.stdout.flush()
    return 0 if summary["errors"] == 0 and build_ok else 1


if __name__ == "__main__":
    sys.exit(main())
