"""Presentation: results as plain text (the CLI) and as HTML (the UI), from one place.

Pure formatting of what the API returns; the few functions that show a passage's surroundings or
its near-copies take the ``ReportQA`` to look those up.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .answer import CAUTION, CLOSEST_TITLE
from .chunking import missing_context
from .cite import CITATION, CitationView
from .errors import RagError
from .results import AskResult, Hit, SearchResult
from .textnorm import fold

if TYPE_CHECKING:
    from .api import ReportQA

EXCERPT_CHARS = 80
CONTEXT_CHARS = 200        # context each side of a cited passage in the chat
LOOKUP_CONTEXT_CHARS = 400  # … and in the 引用查询 tab
MAX_PHRASE_HITS = 20
STANDALONE_LABEL = "按上文理解为："


# ---------------------------------------------------------------------------------------------
# Plain text
# ---------------------------------------------------------------------------------------------

def format_sources(sources: list[Hit]) -> list[str]:
    """Numbered source lines: ``[1] 浙商证券《…》2023-03-25 — 001_….txt:L10-L14``."""
    return [f"[{n}] {hit.document.label} — {hit.citation}" for n, hit in enumerate(sources, start=1)]


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """The start of a passage on one line (whitespace collapsed), cut at ``limit`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit] + "…"


def answer_text(result: AskResult) -> str:
    """Answer and numbered sources as plain text (what ``rag ask`` prints)."""
    if result.error:
        return result.error
    lines = [CAUTION, result.answer] if result.caution else [result.answer]
    if result.standalone:
        lines += ["", f"{STANDALONE_LABEL}{result.standalone}"]
    if result.sources:
        lines += ["", "来源："] + format_sources(result.sources)
    if result.closest:
        lines += ["", CLOSEST_TITLE] + [f"{line}\n    {excerpt(hit.chunk.text)}"
                                        for line, hit in zip(format_sources(result.closest), result.closest,
                                                             strict=True)]
    return "\n".join(lines)


def answer_markdown(result: AskResult) -> str:
    """``answer_text`` for chat front-ends that render Markdown (the OpenAI-compatible endpoint).

    The same caution, answer, numbered sources and closest passages, as paragraphs and list items:
    Markdown joins single line breaks, which would run the numbered sources into one line.
    """
    if result.error:
        return result.error
    parts = [CAUTION, result.answer] if result.caution else [result.answer]
    if result.sources:
        parts.append("来源：\n\n" + "\n".join(f"- {line}" for line in format_sources(result.sources)))
    if result.closest:
        parts.append(CLOSEST_TITLE + "\n\n" + "\n".join(
            f"- {line}\n  {excerpt(hit.chunk.text)}"
            for line, hit in zip(format_sources(result.closest), result.closest, strict=True)))
    return "\n\n".join(parts)


def hits_text(result: SearchResult) -> str:
    """Ranked passages as plain text (what ``rag search`` prints)."""
    if result.error:
        return result.error
    if not result.hits:
        return "没有结果 / no results"
    blocks = []
    for hit in result.hits:
        lines = [f"[{hit.rank}] {hit.document.label}  {hit.citation}  score={hit.score:.4f}"]
        header = missing_context(hit.chunk.table_header, hit.chunk.text)
        if header:
            lines.append("    表头: " + header.replace("\n", " / ").replace("\t", " | "))
        lines.append("    " + hit.chunk.text.replace("\n", "\n    "))
        if hit.also_in:
            lines.append("    亦见 / also in: " + ", ".join(hit.also_in))
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def citation_text(view: CitationView, context_chars: int) -> str:
    """A looked-up citation with its report, location and context (what ``rag cite`` prints)."""
    info = view.document.info
    lines = [f"报告 / report: {view.document.label}"]
    if info.analysts:
        lines.append(f"分析师 / analysts: {'、'.join(info.analysts)}")
    location = f"{view.document.source}, 行 L{view.line_start}-L{view.line_end}"
    if view.page:
        location += f", 第 {view.page} 页"
    lines.append(f"位置 / location: {location}")
    if view.document.duplicates:
        lines.append(f"近似重复 / also in: {', '.join(view.document.duplicates)}")
    lines += ["—— 上文 / before ——", view.before(context_chars), "—— 引文 / passage ——", view.text,
              "—— 下文 / after ——", view.after(context_chars)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------

_BLANK_RUN = re.compile(r"\n[ \t\u3000]*(?:\n[ \t\u3000]*)+\n")


def escape(text: str) -> str:
    """HTML-escaped text with line breaks as <br>, so a whole message stays one HTML block.

    Runs of blank lines (figure placeholders in extracted reports) are shown as one blank line.
    """
    return html.escape(_BLANK_RUN.sub("\n\n", text), quote=False).replace("\n", "<br>")


def highlight(text: str, terms: Iterable[str]) -> str:
    """``text`` as HTML, with every occurrence of a term wrapped in <mark>.

    Matching uses the same folding as retrieval (width, case, NFKC) and ignores whitespace, so
    ``gpt-3`` marks "GPT-3" and "ＧＰＴ－３"; everything else is HTML-escaped.
    """
    needles = sorted({"".join(fold(t).split()) for t in terms if t and t.strip()}, key=len, reverse=True)
    if not text or not needles:
        return escape(text)
    folded: list[str] = []
    owner: list[int] = []
    for position, ch in enumerate(text):
        if ch.isspace():
            continue
        for piece in fold(ch):
            folded.append(piece)
            owner.append(position)
    haystack = "".join(folded)
    spans = []
    for needle in needles:
        start = haystack.find(needle)
        while start >= 0:
            spans.append((owner[start], owner[start + len(needle) - 1] + 1))
            start = haystack.find(needle, start + 1)
    if not spans:
        return escape(text)
    spans.sort()
    merged = [list(spans[0])]
    for start, end in spans[1:]:
        if start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    parts, cursor = [], 0
    for start, end in merged:
        parts.append(escape(text[cursor:start]))
        parts.append(f"<mark>{escape(text[start:end])}</mark>")
        cursor = end
    parts.append(escape(text[cursor:]))
    return "".join(parts)


def _location(citation: str, line_start: int, line_end: int, page: int | None) -> str:
    lines = f"第 {line_start} 行" if line_start == line_end else f"第 {line_start}–{line_end} 行"
    parts = [f"引用编号 <code>{html.escape(citation)}</code>", lines]
    if page:
        parts.append(f"第 {page} 页")
    return " · ".join(parts)


def _context_html(view: CitationView, terms: list[str], chars: int) -> str:
    before, after = view.before(chars), view.after(chars)
    lead = "…" if view.start - len(before) > 0 else ""
    tail = "…" if view.end + len(after) < len(view.document.text) else ""
    return (f"{lead}{escape(before)}<span class=\"rag-cited\">{highlight(view.text, terms)}</span>"
            f"{escape(after)}{tail}")


def _also_in_html(qa: ReportQA, citations: list[str]) -> str:
    if not citations:
        return ""
    items = []
    for citation in citations:
        try:
            label = qa.cite(citation).document.label
            items.append(f"<code>{html.escape(citation)}</code>（{html.escape(label)}）")
        except RagError:
            items.append(f"<code>{html.escape(citation)}</code>")
    return f"<div class=\"rag-also\">亦见：{'；'.join(items)}</div>"


def source_html(qa: ReportQA, number: int, hit: Hit, terms: list[str]) -> str:
    """One numbered source: label, location, highlighted passage, 上下文 and 亦见."""
    chunk = hit.chunk
    parts = [
        "<div class=\"rag-source\">",
        f"<div class=\"rag-source-head\"><span class=\"rag-marker\">[{number}]</span> "
        f"{html.escape(hit.document.label)}</div>",
        f"<div class=\"rag-loc\">{_location(hit.citation, chunk.line_start, chunk.line_end, chunk.page)}</div>",
        f"<div class=\"rag-passage\">{highlight(chunk.text, terms)}</div>",
    ]
    try:
        view = qa.cite(hit.citation)
        parts.append("<details class=\"rag-context\"><summary>上下文</summary>"
                     f"<div class=\"rag-context-body\">{_context_html(view, terms, CONTEXT_CHARS)}</div></details>")
    except RagError as exc:  # the index changed under us; the passage itself is still shown
        parts.append(f"<div class=\"rag-note\">{html.escape(str(exc))}</div>")
    parts.append(_also_in_html(qa, hit.also_in))
    parts.append("</div>")
    return "".join(parts)


def _marked_answer(answer: str) -> str:
    escaped = escape(answer)
    return re.sub(r"\[(\d+)\]", r'<span class="rag-marker">[\1]</span>', escaped)


def answer_html(qa: ReportQA, result: AskResult) -> str:
    """An ``AskResult`` as one chat message: the answer with markers, then the numbered sources."""
    if result.error:
        return f"<div class=\"rag-answer\"><div class=\"rag-error\">{escape(result.error)}</div></div>"
    parts = ["<div class=\"rag-answer\">"]
    if result.caution:
        parts.append(f"<div class=\"rag-note rag-caution\">{escape(CAUTION)}</div>")
    parts.append(f"<div class=\"rag-answer-text\">{_marked_answer(result.answer)}</div>")
    if result.standalone:
        parts.append(f"<div class=\"rag-note rag-standalone\">{escape(STANDALONE_LABEL + result.standalone)}</div>")
    if result.warning:
        parts.append(f"<div class=\"rag-note\">{escape(result.warning)}</div>")
    if result.abstained:
        parts.append("<div class=\"rag-note\">可以换个问法、增加检索段落数，或取消报告筛选后再试。</div>")
    for title, hits in (("来源", result.sources), (CLOSEST_TITLE.rstrip("："), result.closest)):
        if hits:
            terms = result.analysed.highlight_terms() if result.analysed else []
            parts.append(f"<div class=\"rag-sources\"><div class=\"rag-sources-title\">{escape(title)}</div>")
            parts.extend(source_html(qa, n, hit, terms) for n, hit in enumerate(hits, start=1))
            parts.append("</div>")
    parts.append("</div>")
    return "".join(parts)


def generated_html(qa: ReportQA, result: AskResult) -> str:
    """A generated answer after checking, with its numbered sources; else its notice over the extractive answer.

    Only the checker's verified sentences are shown, each with the markers the checker attached.
    """
    import dataclasses

    generated = result.generated
    if generated is None or not generated.shown or result.error:
        notice = f"<div class=\"rag-note\">{escape(generated.notice)}</div>" if generated and generated.notice else ""
        return notice + answer_html(qa, result)
    shown = dataclasses.replace(result, answer=generated.text, sources=generated.sources, caution=False,
                                abstained=False)
    label = "<div class=\"rag-note\">生成式回答：每句均已对照所引段落核实（数字、主语、语义）。</div>"
    return label + answer_html(qa, shown)


def notice_html(message: str, error: bool = True) -> str:
    """A short message in the answer/lookup style."""
    css = "rag-error" if error else "rag-empty"
    return f"<div class=\"rag-answer\"><div class=\"{css}\">{escape(message)}</div></div>"


def view_html(view: CitationView, terms: list[str] | None = None, chars: int = LOOKUP_CONTEXT_CHARS,
              open_context: bool = True) -> str:
    """A looked-up passage: report, location, near-duplicates, the passage, and its context."""
    terms = terms or []
    info = view.document.info
    parts = ["<div class=\"rag-source\">",
             f"<div class=\"rag-source-head\">{html.escape(view.document.label)}</div>",
             f"<div class=\"rag-loc\">{_location(view.citation, view.line_start, view.line_end, view.page)}</div>"]
    if info.analysts:
        parts.append(f"<div class=\"rag-loc\">分析师：{html.escape('、'.join(info.analysts))}</div>")
    if view.document.duplicates:
        parts.append(f"<div class=\"rag-also\">近似重复报告：{html.escape('、'.join(view.document.duplicates))}</div>")
    parts.append(f"<div class=\"rag-passage\">{highlight(view.text, terms)}</div>")
    parts.append(f"<details class=\"rag-context\"{' open' if open_context else ''}><summary>上下文</summary>"
                 f"<div class=\"rag-context-body\">{_context_html(view, terms, chars)}</div></details>")
    parts.append("</div>")
    return "".join(parts)


def lookup_html(qa: ReportQA, text: str) -> str:
    """Resolve a citation ID (``qa.cite``) or a phrase (``qa.find``) into HTML; errors become messages."""
    query = (text or "").strip()
    if not query:
        return notice_html("请输入引用编号（如 004_e0d667138c034a95.txt:L66-L81）或要查找的短语。", error=False)
    status = qa.index_status()
    if status:
        return notice_html(status)
    try:
        if CITATION.match(query):
            view = qa.cite(query)
            return f"<div class=\"rag-lookup\">{view_html(view)}</div>"
        phrase = query.strip("\"'“”「」『』 ")
        views = qa.find(query)
    except RagError as exc:
        return notice_html(f"查询失败：{exc}")
    if not views:
        return notice_html(f"未找到短语“{phrase}” / phrase not found.")
    shown = views[:MAX_PHRASE_HITS]
    more = f"，仅显示前 {MAX_PHRASE_HITS} 处" if len(views) > len(shown) else ""
    parts = [f"<div class=\"rag-lookup\"><div class=\"rag-sources-title\">找到 {len(views)} 处{more}</div>"]
    parts.extend(view_html(view, [phrase], chars=CONTEXT_CHARS, open_context=False) for view in shown)
    parts.append("</div>")
    return "".join(parts)
