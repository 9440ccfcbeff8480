"""Gradio chat UI over ``rag.api.ReportQA``: ask in Chinese, read cited answers, look citations up.

    rag ui                      # http://127.0.0.1:7860, loopback only
    python ui.py --port 8000    # the same

Layout (all text in Chinese):

* a status banner with a 建立索引 button, shown only while the index is missing or being built;
* 问答 tab: the chat (each answer carries its [n] markers and, below it, the numbered sources
  with report label, citation ID, lines/page, the passage with the question's words highlighted,
  an expandable 上下文 and 亦见 for near-duplicate reports), plus a report filter and a top-k
  slider that apply to the next question and re-answer the last one when changed;
* 引用查询 tab: a citation ID (``qa.cite``) or a quoted phrase (``qa.find``) shown in context;
* 添加报告 tab: upload a .txt/.md/.pdf report, which is validated, copied into the corpus and
  indexed incrementally by ``qa.add_report``; a report of the same name is replaced only when
  替换同名报告 is ticked.

This module only formats and wires: every retrieval, answer, citation and ingest decision is
made by ``ReportQA``. The one piece of state it keeps is per browser session (``gr.State``: the
last question, for re-answering when the filters change) plus a flag telling questions that a
build started from this UI is running. ``ask`` is also a JSON endpoint (``api_name="ask"``) for
``gradio_client``; ``add_report`` and ``lookup`` are callable too.
"""

from __future__ import annotations

import hmac
import html
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gradio as gr  # noqa: E402

from .api import MAX_UPLOAD_BYTES, ReportExists, ReportQA, safe_file_name  # noqa: E402
from .errors import RagError  # noqa: E402
from .llm import LLMConfig  # noqa: E402
from .present import answer_html, answer_text, escape, generated_html, lookup_html, notice_html  # noqa: E402
from .results import AskResult  # noqa: E402

log = logging.getLogger(__name__)

TITLE = "报告问答"
EXAMPLES = ["GPT-3 的参数量是多少？", "哪些公司是通义大模型的合作伙伴？", "M6-OFA 是什么时候发布的？"]
DEFAULT_TOP_K = 5
MAX_TOP_K = 20
DEFAULT_CONCURRENCY = 16   # events of one kind running at once; more wait in the queue
QUEUE_MAX_SIZE = 512       # events waiting at most; beyond that a user is told the queue is full

CSS = """
.rag-answer, .rag-lookup { line-height: 1.7; }
.rag-answer-text { font-size: 1.02em; white-space: pre-wrap; tab-size: 4; }
.rag-marker { color: var(--color-accent); font-weight: 600; }
.rag-note { font-size: .85em; color: var(--body-text-color-subdued); margin-top: .3em; }
.rag-caution { color: inherit; background: rgba(250, 140, 22, .12); border-left: 3px solid #fa8c16;
               padding: .2em .5em; }
.rag-sources { margin-top: .7em; padding-top: .4em; border-top: 1px solid var(--border-color-primary); }
.rag-sources-title { font-weight: 600; margin-bottom: .2em; }
.rag-source { margin: .5em 0; padding: .45em .7em; border-left: 3px solid var(--color-accent);
  background: var(--background-fill-secondary); border-radius: 4px; }
.rag-source-head { font-weight: 600; }
.rag-loc { font-size: .85em; color: var(--body-text-color-subdued); word-break: break-all; }
.rag-loc code { font-size: .95em; }
.rag-passage { white-space: pre-wrap; tab-size: 4; margin: .35em 0; font-size: .95em; }
.rag-answer mark, .rag-lookup mark { background: #ffe58f; color: inherit; padding: 0 1px; border-radius: 2px; }
.rag-cited { background: rgba(255, 229, 143, .28); border-bottom: 2px solid #d4b106; color: var(--body-text-color); }
details.rag-context summary { cursor: pointer; color: var(--color-accent); font-size: .9em; }
.rag-context-body { white-space: pre-wrap; tab-size: 4; font-size: .9em; color: var(--body-text-color-subdued);
  max-height: 24em; overflow-y: auto; padding: .3em 0; }
.rag-also { font-size: .85em; color: var(--body-text-color-subdued); }
.rag-error { color: var(--error-text-color); font-weight: 600; }
.rag-empty { color: var(--body-text-color-subdued); }
#rag-reports ul[role="listbox"] { background: var(--background-fill-primary); }
.rag-lookup .rag-context-body { max-height: none; }
.rag-lookup .rag-cited { background: rgba(255, 229, 143, .55); }
#rag-status { border: 1px solid #d4b106; background: rgba(255, 229, 143, .25); border-radius: 6px; padding: .4em .8em; }
"""

_FONTS = ["Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Micro Hei", "PingFang SC", "Microsoft YaHei",
          "system-ui", "sans-serif"]


def _theme() -> gr.themes.Base:
    # System fonts only: nothing is fetched from a font CDN, and CJK glyphs come from the OS.
    return gr.themes.Soft(primary_hue="blue", font=_FONTS, font_mono=["DejaVu Sans Mono", "monospace"])


# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# Widgets' data
# ---------------------------------------------------------------------------------------------

def report_choices(qa: ReportQA) -> list[tuple[str, str]]:
    """Filter choices (label shown, file name as value); empty while there is no index."""
    try:
        reports = qa.reports()
    except RagError:
        return []
    return [(f"{label}（{source}）", source) for source, label in reports.items()]


def reports_table(qa: ReportQA) -> str:
    """Markdown list of the indexed reports."""
    choices = report_choices(qa)
    if not choices:
        return "（尚无已索引的报告）"
    return "\n".join(f"- {html.escape(label)}" for label, _ in choices)


# ---------------------------------------------------------------------------------------------
# Wiring
# ---------------------------------------------------------------------------------------------

def _progress_adapter(progress: gr.Progress, desc: str) -> Callable[[int, int], None]:
    def update(done: int, total: int) -> None:
        progress((done, total), desc=desc, unit="段")
    return update


def _sources_arg(reports: list[str] | str | None) -> list[str] | None:
    if not reports:
        return None
    if isinstance(reports, str):
        reports = [reports]
    return [r for r in reports if r] or None


def _top_k_arg(top_k) -> int:
    try:
        return max(1, min(int(top_k), MAX_TOP_K))
    except (TypeError, ValueError):
        return DEFAULT_TOP_K


def generated_events(render: Callable[[Callable[[str], None]], str]) -> Iterator[tuple[str, str]]:
    """Run ``render(on_text)`` in a worker thread and yield what the chat shows while it runs:
    ``("text", draft so far)`` as the model writes (only the newest when the chat lags behind), then
    one ``("done", html)`` with the checked answer, also when ``render`` fails."""
    events: queue.Queue[tuple[str, str]] = queue.Queue()

    def work() -> None:
        html = notice_html("内部错误，请重试")
        try:
            html = render(lambda text: events.put(("text", text)))
        except Exception:  # never let one question break the session
            log.exception("generated answer failed")
        finally:
            events.put(("done", html))

    threading.Thread(target=work, daemon=True).start()
    while True:
        kind, content = events.get()
        while kind == "text" and not events.empty():
            kind, content = events.get()
        yield kind, content
        if kind == "done":
            return


def build_app(qa: ReportQA, concurrency: int = DEFAULT_CONCURRENCY) -> gr.Blocks:
    """The Gradio app for ``qa`` (queue configured; launch it with ``launch`` or ``Blocks.launch``)."""
    def status_markdown() -> str | None:
        return qa.index_status()

    llm_config = LLMConfig.from_env()

    def ask_result(question: str, reports, top_k, asked: list[str] | None = None, generate: bool = False,
                   on_text: Callable[[str], None] | None = None) -> AskResult:
        """The API's answer (``asked``: the chat's earlier questions), or an error result while the index
        is unusable. ``generate``: also the checked LLM answer (``on_text`` sees it stream)."""
        status = status_markdown()
        if status:
            return AskResult(query=question if isinstance(question, str) else "", error=status, answer=status,
                             abstained=True)
        try:
            return qa.ask(question, top_k=_top_k_arg(top_k), sources=_sources_arg(reports), history=asked,
                          generate=generate and llm_config is not None, llm=llm_config, on_text=on_text)
        except RagError as exc:
            return AskResult(query=question if isinstance(question, str) else "", error=str(exc), answer=str(exc),
                             abstained=True)

    def render_answer(question: str, reports, top_k, asked: list[str] | None = None) -> str:
        try:
            return answer_html(qa, ask_result(question, reports, top_k, asked))
        except Exception as exc:  # never let one question break the session
            log.exception("answering %r failed", question)
            return notice_html(f"内部错误，请重试 / internal error: {exc}")

    # -- event handlers -------------------------------------------------------------------------

    def on_submit(message: str, history: list, state: dict):
        # Show the question at once and lock the input until its answer is in (one question at a time).
        question = (message or "").strip()
        if not question or state.get("pending"):
            if not question:
                gr.Warning("请输入问题 / please type a question")
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        history = [*history, {"role": "user", "content": escape(question)}]
        return (gr.update(value="", interactive=False), gr.update(interactive=False), history,
                {**state, "pending": question})

    def render_generated(question: str, reports, top_k, asked: list[str], on_text: Callable[[str], None]) -> str:
        """The checked generated answer (or the notice and the extractive answer) as HTML."""
        try:
            result = ask_result(question, reports, top_k, asked, generate=True, on_text=on_text)
            return generated_html(qa, result)
        except Exception as exc:  # never let one question break the session
            log.exception("answering %r failed", question)
            return notice_html(f"内部错误，请重试 / internal error: {exc}")

    def on_answer(history: list, state: dict, reports, top_k, generate: bool = False):
        unlock = (gr.update(interactive=True), gr.update(interactive=True))
        question = state.get("pending")
        if not question:
            yield gr.skip(), gr.skip(), *unlock
            return
        asked = state.get("asked", [])
        done = {"last_question": question, "pending": None, "asked": [*asked, question]}
        if not (generate and llm_config is not None):
            history = [*history, {"role": "assistant", "content": render_answer(question, reports, top_k, asked)}]
            yield history, done, *unlock
            return
        # Stream the model's raw text while it is generated, then replace it with the checked version.
        render = partial(render_generated, question, reports, top_k, asked)
        for kind, content in generated_events(render):
            if kind == "done":
                yield [*history, {"role": "assistant", "content": content}], done, *unlock
                return
            pending_html = f"<div class=\"rag-note\">生成中（尚未核实）…</div><div>{escape(content)}</div>"
            yield [*history, {"role": "assistant", "content": pending_html}], gr.skip(), gr.skip(), gr.skip()

    def on_example(event: gr.SelectData, history: list, state: dict, reports, top_k):
        value = event.value if isinstance(event.value, dict) else {"text": str(event.value)}
        question = (value.get("text") or "").strip()
        if not question or state.get("pending"):
            return gr.skip(), gr.skip()
        asked = state.get("asked", [])
        history = [*history, {"role": "user", "content": escape(question)},
                   {"role": "assistant", "content": render_answer(question, reports, top_k, asked)}]
        return history, {"last_question": question, "pending": None, "asked": [*asked, question]}

    def on_filters_changed(history: list, state: dict, reports, top_k):
        # Re-answer the last question under the new filters (replacing its answer), if it is the last turn.
        question = state.get("last_question")
        if not question or state.get("pending") or not history or history[-1].get("role") != "assistant":
            return gr.skip()
        note = "<div class=\"rag-note\">（已按新的筛选条件重新回答）</div>"
        earlier = state.get("asked", [])[:-1]
        answer = render_answer(question, reports, top_k, earlier) + note
        return [*history[:-1], {"role": "assistant", "content": answer}]

    def on_clear():
        return [], {"last_question": None, "pending": None, "asked": []}

    def on_lookup(text: str) -> str:
        try:
            return lookup_html(qa, text)
        except Exception as exc:
            log.exception("lookup %r failed", text)
            return notice_html(f"内部错误 / internal error: {exc}")

    def refresh(selected=None):
        choices = report_choices(qa)
        valid = {value for _, value in choices}
        keep = [s for s in (selected or []) if s in valid]
        status = status_markdown()
        return (gr.update(choices=choices, value=keep),
                gr.update(value=f"⚠ {status}" if status else "", visible=bool(status)),
                gr.update(visible=bool(status) and not qa.building),
                reports_table(qa))

    def on_add_report(file_path: str | None, selected, replace: bool = False,
                      progress=gr.Progress()):  # noqa: B008 (gradio's idiom)
        if not file_path:
            return ("请选择要上传的报告文件。", *refresh(selected))
        path = Path(file_path)  # gradio keeps the uploaded file's own (sanitised) name
        try:
            stored = safe_file_name(path.name)
            report = qa.add_report(path, name=path.name, replace=bool(replace),
                                   progress=_progress_adapter(progress, "正在为新报告建立索引"))
        except ReportExists as exc:
            title = "未做更改" if exc.identical else "未添加"
            return (f"**{title}**：{html.escape(str(exc))}", *refresh(selected))
        except RagError as exc:
            return (f"**添加失败**：{html.escape(str(exc))}", *refresh(selected))
        except Exception as exc:  # a broken file must not break the app or the index
            log.exception("adding %s failed", path.name)
            return (f"**添加失败**（内部错误）：{html.escape(str(exc))}", *refresh(selected))
        lines = [f"已添加 **{html.escape(stored)}** 并更新索引："
                 f"共 {report.documents} 份报告、{report.chunks} 个段落"
                 f"（新嵌入 {report.embedded}，复用 {report.reused}，用时 {report.seconds:.1f} 秒）。"]
        lines += [f"- ⚠ 跳过：{html.escape(f.reason)}" for f in report.failures]
        for source, others in report.duplicates.items():
            if source == stored or stored in others:
                lines.append(f"- 近似重复：{html.escape(source)} ≈ {html.escape('、'.join(others))}")
        return ("\n".join(lines), *refresh(selected))

    def on_build(selected, progress=gr.Progress()):  # noqa: B008 (gradio's idiom)
        try:
            report = qa.build(progress=_progress_adapter(progress, "正在建立索引"))
            message = f"索引完成：{report.documents} 份报告、{report.chunks} 个段落。"
        except RagError as exc:
            message = f"建立索引失败：{exc}"
        except Exception as exc:
            log.exception("building the index failed")
            message = f"建立索引失败（内部错误）：{exc}"
        gr.Info(message)
        return refresh(selected)

    def api_ask(question: str, top_k: int = DEFAULT_TOP_K, reports: list[str] | None = None,
                history: list[str] | None = None) -> dict:
        """Answer a question (``history``: the chat's earlier questions, oldest first). Returns the
        ``rag ask --json`` object (``answer`` with [n] markers, ``sources``, ``hits``,
        ``error``/``warning``/``standalone`` when set) plus ``text``, the plain-text rendering."""
        # JSON clients may send a number ("2023"); anything else that is not text gets an error result.
        if isinstance(question, (int, float)) and not isinstance(question, bool):
            question = str(question)
        result = ask_result(question, reports, top_k, history)
        return {**result.to_json(), "text": answer_text(result)}

    # -- layout ---------------------------------------------------------------------------------

    initial_status = status_markdown()
    with gr.Blocks(title=TITLE, analytics_enabled=False, fill_width=False) as app:
        state = gr.State({"last_question": None, "pending": None, "asked": []})
        gr.Markdown(f"## {TITLE}\n用中文提问，答案中的句子均摘自报告原文，并以 [1] [2] 标注出处。")
        with gr.Row():
            status_md = gr.Markdown(f"⚠ {initial_status}" if initial_status else "", visible=bool(initial_status),
                                    elem_id="rag-status")
            build_btn = gr.Button("建立索引", variant="primary", visible=bool(initial_status), scale=0,
                                  min_width=120)
        with gr.Tabs():
            with gr.Tab("问答", id="chat"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=4, min_width=420):
                        chatbot = gr.Chatbot(
                            label="对话", show_label=False, elem_id="rag-chat", height="68vh", min_height=480,
                            layout="panel",
                            placeholder="**请输入问题**，或点击下方示例。答案只引用报告原文，每句后标注来源编号。",
                            examples=[{"text": q} for q in EXAMPLES], latex_delimiters=[],
                            buttons=["copy"], feedback_options=None, group_consecutive_messages=False)
                        with gr.Row():
                            question = gr.Textbox(show_label=False, elem_id="rag-question", scale=5, lines=1,
                                                  max_lines=4, autofocus=True,
                                                  placeholder="输入问题，例如：GPT-3 的参数量是多少？")
                            send = gr.Button("提问", variant="primary", elem_id="rag-send", scale=1, min_width=90)
                        with gr.Row():
                            gr.Examples(examples=[[q] for q in EXAMPLES], inputs=[question], label="示例问题")
                            clear = gr.Button("清空对话", variant="secondary", scale=0, min_width=110)
                    with gr.Column(scale=1, min_width=300):
                        report_filter = gr.Dropdown(
                            choices=report_choices(qa), value=[], multiselect=True, label="限定报告",
                            info="不选则检索全部报告", elem_id="rag-reports")
                        top_k = gr.Slider(1, MAX_TOP_K, value=DEFAULT_TOP_K, step=1, label="检索段落数（top-k）",
                                          elem_id="rag-topk")
                        generate_box = gr.Checkbox(False, label="生成式回答（大模型，逐句核实）",
                                                   elem_id="rag-generate",
                                                   visible=llm_config is not None,
                                                   info="未通过核实的句子不会显示；失败时显示抽取式答案")
                        gr.Markdown("修改筛选条件后，下一个问题即按新条件检索；已有回答会按新条件重新回答最后一个问题。\n\n"
                                    "点开来源下的 **上下文** 可查看引文前后的原文；引用编号可在“引用查询”页查看。",
                                    elem_classes=["rag-note"])
            with gr.Tab("引用查询", id="lookup"):
                with gr.Row():
                    lookup_input = gr.Textbox(label="引用编号或短语", elem_id="rag-lookup-input", scale=5,
                                              placeholder="004_e0d667138c034a95.txt:L66-L81 或 “通义千问”")
                    lookup_btn = gr.Button("查询", variant="primary", elem_id="rag-lookup-btn", scale=1, min_width=90)
                lookup_hint = notice_html("输入答案来源中的引用编号，或用引号括起要查找的原文短语。", error=False)
                lookup_out = gr.HTML(lookup_hint, elem_id="rag-lookup-out")
            with gr.Tab("添加报告", id="upload"):
                gr.Markdown(f"上传 **.txt / .md / .pdf** 报告（不超过 {MAX_UPLOAD_BYTES // (1024 * 1024)} MB）。"
                            "文件经检查后复制到语料目录，并增量更新索引；完成后即可检索，无需重启。")
                upload = gr.File(label="报告文件", file_count="single", type="filepath", elem_id="rag-upload")
                replace_box = gr.Checkbox(False, label="替换同名报告", elem_id="rag-upload-replace",
                                          info="默认不覆盖已有报告；勾选后才替换，旧版本在新索引完成前"
                                               "暂存于语料目录的 .replaced/ 中")
                upload_status = gr.Markdown(elem_id="rag-upload-status")
                with gr.Accordion("已索引的报告", open=True):
                    report_list = gr.Markdown(reports_table(qa))

        refresh_outputs = [report_filter, status_md, build_btn, report_list]
        for trigger in (question.submit, send.click):
            trigger(on_submit, [question, chatbot, state], [question, send, chatbot, state], queue=False,
                    api_visibility="private").then(
                on_answer, [chatbot, state, report_filter, top_k, generate_box], [chatbot, state, question, send],
                api_visibility="private")
        chatbot.example_select(on_example, [chatbot, state, report_filter, top_k], [chatbot, state],
                               api_visibility="private")
        report_filter.input(on_filters_changed, [chatbot, state, report_filter, top_k], [chatbot],
                            api_visibility="private")
        top_k.release(on_filters_changed, [chatbot, state, report_filter, top_k], [chatbot],
                      api_visibility="private")
        report_filter.focus(refresh, [report_filter], refresh_outputs, api_visibility="private", queue=False)
        clear.click(on_clear, None, [chatbot, state], queue=False, api_visibility="private")
        chatbot.clear(on_clear, None, [chatbot, state], queue=False, api_visibility="private")
        lookup_btn.click(on_lookup, [lookup_input], [lookup_out], api_name="lookup")
        lookup_input.submit(on_lookup, [lookup_input], [lookup_out], api_visibility="private")
        upload.upload(on_add_report, [upload, report_filter, replace_box], [upload_status, *refresh_outputs],
                      api_name="add_report", concurrency_limit=1, concurrency_id="index", show_progress_on=upload)
        build_btn.click(on_build, [report_filter], refresh_outputs, concurrency_limit=1, concurrency_id="index",
                        show_progress_on=status_md, api_visibility="private")
        app.load(refresh, [report_filter], refresh_outputs, api_visibility="private", queue=False)
        gr.api(api_ask, api_name="ask")
    app.queue(default_concurrency_limit=concurrency, max_size=QUEUE_MAX_SIZE)
    return app


def launch(qa: ReportQA, host: str = "127.0.0.1", port: int = 7860, *, block: bool = True,
           concurrency: int = DEFAULT_CONCURRENCY) -> gr.Blocks:
    """Serve the UI on ``host:port`` (loopback by default, never shared, no analytics).

    The model and index are loaded before the server starts, so the first question is fast.
    With ``block=False`` the server runs in a background thread and the app is returned
    (stop it with ``app.close()``).
    """
    status = qa.index_status()
    if status:
        print(f"注意 / note: {status}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"警告 / warning: listening on {host}, reachable from other machines; there is no login.")
    app = build_app(qa, concurrency=concurrency)
    app.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=not block,
               quiet=not block, **_serving_options())
    return app


def _serving_options() -> dict:
    # The same for `rag ui` and `rag serve`: no tracebacks shown, no run history, monitoring, MCP,
    # server-side rendering or PWA; the upload limit leaves room over the API's own 20 MB check.
    return {"show_error": False, "footer_links": ["api"], "run_history": False, "enable_monitoring": False,
            "mcp_server": False, "ssr_mode": False, "pwa": False, "max_file_size": 2 * MAX_UPLOAD_BYTES,
            "theme": _theme(), "css": CSS}


def mount(parent, qa: ReportQA, path: str, *, password: str | None = None,
          concurrency: int = DEFAULT_CONCURRENCY) -> gr.Blocks:
    """Mount the UI for ``qa`` at ``path`` of a FastAPI app (``rag serve``: one process, one model and index).

    With ``password`` the UI asks for it on a login page (any user name), the way a browser can
    present the API key. Returns the mounted ``Blocks`` (``close()`` it to end its event streams
    before the server stops).
    """
    def check(_user: str, given: str) -> bool:
        return password is not None and hmac.compare_digest(given.encode(), password.encode())

    blocks = build_app(qa, concurrency=concurrency)
    gr.mount_gradio_app(parent, blocks, path=path, auth=check if password else None, **_serving_options())
    return blocks
