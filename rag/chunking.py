"""Chunking: cut canonical text into citable passages on sentence and jieba word boundaries.

Every chunk is a contiguous span: ``document.text[chunk.start:chunk.end] == chunk.text``. Context
that is not contiguous with the span (the section heading above it, a table's title and header
row for the second and later parts of a long table) travels beside it in ``heading`` and
``table_header``; it is used for embedding and display, never spliced into the quoted text.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from .textnorm import SENTENCE_END, squeeze
from .tokenize import Tokenizer, tokenizer_for

_HEADING = re.compile(
    r"^(#{1,6}\s+\S|[一二三四五六七八九十]+\s*[、.．]\s*\S|[（(][一二三四五六七八九十\d]+[）)]\s*\S|"
    r"\d+(\.\d+){0,3}\s*[、.．]\s*[\u4e00-\u9fffA-Za-z]|\d+(\.\d+){1,3}\s+[\u4e00-\u9fffA-Za-z]|第[一二三四五六七八九十\d]+[章节部分篇])"
)
# Bump when the cutting rules or the embedded text change, so old indexes are rebuilt, not reported up to date.
CHUNKER_VERSION = 4
_CLOSERS = "”’」』）)】》\"'"
_SOFT_BREAKS = "，、,：:"


@dataclass(frozen=True)
class ChunkerSettings:
    """How passages are cut and shown to the model; recorded in the manifest (a change rebuilds).

    ``strategy="fixed"`` is the typical-recipe baseline: windows of ``target_chars`` characters with
    ``overlap_chars`` overlap, no sentence or table handling, embedded without context.
    """

    strategy: str = "sentence"
    embed_context: bool = True
    sentence_vectors: bool = True
    target_chars: int = 350
    overlap_chars: int = 80
    min_chars: int = 40
    max_heading_chars: int = 40
    table_rows_per_unit: int = 1

    def as_dict(self) -> dict:
        """Plain mapping for the manifest."""
        return asdict(self)


@dataclass
class Chunk:
    """A passage of one report: exact span, the heading above it and any table header."""

    source: str
    start: int
    end: int
    text: str
    heading: str = ""
    table_header: str = ""
    kind: str = "text"


@dataclass
class _Unit:
    start: int
    end: int
    heading: str
    opens_section: bool = False


def missing_context(context: str, text: str) -> str:
    """``context`` when the passage does not already contain it (whitespace ignored), else ""."""
    return context if context and squeeze(context) not in squeeze(text) else ""


def is_heading(line: str, max_chars: int = 40) -> bool:
    """True when a line looks like a section heading (numbered, markdown, 第…章)."""
    stripped = line.strip()
    if not stripped or len(stripped) > max_chars or "\t" in stripped:
        return False
    if stripped[-1] in SENTENCE_END + "，," or any(mark in stripped[:-1] for mark in "：:；;。"):
        return False
    return bool(_HEADING.match(stripped))


# Captions and source lines stand alone too but describe a figure, not the section below them.
_NOT_TITLES = ("图表", "图：", "图:", "表：", "表:", "来源", "资料来源", "数据来源", "注：", "注:")


def is_slide_title(lines: list[str], index: int, max_chars: int = 40) -> bool:
    """True for a slide-style section title: a short unpunctuated line standing alone between
    blank lines, followed by a bullet or a full paragraph (how PDF decks extract their titles)."""
    line = lines[index].strip()
    if not line or len(line) > max_chars or "\t" in line or line.startswith(_NOT_TITLES):
        return False
    if line[-1] in SENTENCE_END + "，,：:；;" or (index > 0 and lines[index - 1].strip()):
        return False
    following = index + 1
    while following < len(lines) and not lines[following].strip():
        following += 1
    if following == index + 1 or following == len(lines):
        return False
    body = lines[following].strip()
    return "\t" not in body and (body.startswith("- ") or len(body) >= 80)


def line_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every line of ``text``, newline excluded."""
    spans, position = [], 0
    for line in text.split("\n"):
        spans.append((position, position + len(line)))
        position += len(line) + 1
    return spans


def _sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Sentence spans within one line (sentence-final punctuation plus any closing quotes)."""
    spans: list[tuple[int, int]] = []
    begin = index = start
    while index < end:
        if text[index] in SENTENCE_END:
            stop = index + 1
            while stop < end and text[stop] in _CLOSERS:
                stop += 1
            spans.append((begin, stop))
            begin = index = stop
            continue
        index += 1
    if begin < end:
        spans.append((begin, end))
    return [(a, b) for a, b in spans if text[a:b].strip()]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every sentence of ``text``: split at sentence-final punctuation and lines."""
    spans: list[tuple[int, int]] = []
    for start, end in line_spans(text):
        spans.extend(_strip_span(text, a, b) for a, b in _sentences(text, start, end))
    return [(a, b) for a, b in spans if b > a]


def _split_long(text: str, start: int, end: int, limit: int, tokenizer: Tokenizer) -> list[tuple[int, int]]:
    """Cut a span longer than ``limit`` at jieba word ends, preferring ends after a comma."""
    if end - start <= limit:
        return [(start, end)]
    word_ends = [start + e for _, e in tokenizer.word_spans(text[start:end])]
    pieces, begin = [], start
    while end - begin > limit:
        candidates = [e for e in word_ends if begin < e <= begin + limit]
        soft = [e for e in candidates if text[e - 1] in _SOFT_BREAKS and e - begin >= limit // 3]
        cut = (soft or candidates or [begin + limit])[-1]
        pieces.append((begin, cut))
        begin = cut
    pieces.append((begin, end))
    return pieces


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


class Chunker:
    """Turns a document's canonical text into chunks according to ``ChunkerSettings``."""

    def __init__(self, settings: ChunkerSettings | None = None, tokenizer: Tokenizer | None = None):
        self.settings = settings or ChunkerSettings()
        # Long sentences are cut at word ends as the index's own dictionary sees them.
        self.tokenizer = tokenizer or tokenizer_for()

    def chunk(self, source: str, text: str) -> list[Chunk]:
        """All chunks of one document, in reading order."""
        if self.settings.strategy == "fixed":
            return self._fixed(source, text)
        lines = line_spans(text)
        line_texts = [text[a:b] for a, b in lines]
        chunks: list[Chunk] = []
        units: list[_Unit] = []
        heading = ""
        index = 0
        while index < len(lines):
            start, end = lines[index]
            line = text[start:end]
            if "\t" in line.strip() and index + 1 < len(lines) and "\t" in text[slice(*lines[index + 1])]:
                stop = index
                while stop < len(lines) and "\t" in text[slice(*lines[stop])].strip():
                    stop += 1
                chunks.extend(self._pack(source, text, units))
                units = []
                title = self._table_title(text, lines, index)
                chunks.extend(self._table_chunks(source, text, lines[index:stop], title, heading))
                index = stop
                continue
            if is_heading(line, self.settings.max_heading_chars) or \
                    is_slide_title(line_texts, index, self.settings.max_heading_chars):
                heading = line.strip().lstrip("#").strip()
                units.append(_Unit(start, end, heading, opens_section=True))
            else:
                for a, b in _sentences(text, start, end):
                    for piece in _split_long(text, a, b, self.settings.target_chars, self.tokenizer):
                        units.append(_Unit(*piece, heading=heading))
            index += 1
        chunks.extend(self._pack(source, text, units))
        return self._absorb_fragments(text, chunks)

    def _absorb_fragments(self, text: str, chunks: list[Chunk]) -> list[Chunk]:
        """Fold a fragment left between two tables ("A", "THANKS") into the passage that follows it.

        The span of the receiving passage grows to start at the fragment, so offsets stay exact
        and no text is lost; a fragment at the very end joins the text passage before it.
        """
        kept: list[Chunk] = []
        for position, chunk in enumerate(chunks):
            following = chunks[position + 1] if position + 1 < len(chunks) else None
            if len(chunk.text) >= self.settings.min_chars or (following is None and not kept):
                kept.append(chunk)
            elif following is not None and following.start <= chunk.start and following.end >= chunk.end:
                continue  # a table's title line, already quoted by the table's first passage
            elif following is not None and following.start >= chunk.end:
                following.start = chunk.start
                following.text = text[following.start:following.end]
            elif kept and kept[-1].end <= chunk.start and kept[-1].kind == "text":
                kept[-1].end = chunk.end
                kept[-1].text = text[kept[-1].start:kept[-1].end]
            else:
                kept.append(chunk)
        return kept

    def _fixed(self, source: str, text: str) -> list[Chunk]:
        step = max(1, self.settings.target_chars - self.settings.overlap_chars)
        chunks = []
        for begin in range(0, len(text), step):
            start, end = _strip_span(text, begin, min(len(text), begin + self.settings.target_chars))
            if end > start:
                chunks.append(Chunk(source, start, end, text[start:end]))
            if begin + self.settings.target_chars >= len(text):
                break
        return chunks

    def _pack(self, source: str, text: str, units: list[_Unit]) -> list[Chunk]:
        target, overlap = self.settings.target_chars, self.settings.overlap_chars
        chunks: list[Chunk] = []
        current: list[_Unit] = []

        def size(group: list[_Unit]) -> int:
            return group[-1].end - group[0].start if group else 0

        def flush() -> None:
            if current:
                start, end = _strip_span(text, current[0].start, current[-1].end)
                if end > start:
                    chunks.append(Chunk(source, start, end, text[start:end], heading=current[-1].heading))

        for unit in units:
            if unit.opens_section and current and size(current) >= 30:
                flush()
                current = []
            elif current and unit.end - current[0].start > target:
                flush()
                carried: list[_Unit] = []
                for previous in reversed(current[1:]):
                    if previous.heading != unit.heading or unit.end - previous.start > target \
                            or current[-1].end - previous.start > overlap:
                        break
                    carried.insert(0, previous)
                current = carried
            current.append(unit)
        flush()
        return self._merge_small(text, chunks)

    def _merge_small(self, text: str, chunks: list[Chunk]) -> list[Chunk]:
        """Fold passages too short to stand alone (page numbers, lone headings) into a neighbour."""
        merged: list[Chunk] = []
        pending: Chunk | None = None
        for chunk in chunks:
            if pending is not None:
                chunk.start = pending.start
                chunk.text = text[chunk.start:chunk.end]
                pending = None
            if len(chunk.text) < self.settings.min_chars:
                pending = chunk
                continue
            merged.append(chunk)
        if pending is not None:
            if merged:
                merged[-1].end = pending.end
                merged[-1].text = text[merged[-1].start:merged[-1].end]
            else:
                merged.append(pending)
        return merged

    @staticmethod
    def _table_title(text: str, lines: list[tuple[int, int]], first_row: int) -> tuple[int, int] | None:
        for back in (1, 2):
            if first_row - back < 0:
                return None
            start, end = lines[first_row - back]
            line = text[start:end].strip()
            if line:
                return (start, end) if len(line) <= 60 and "\t" not in line else None
        return None

    def _table_chunks(self, source: str, text: str, rows: list[tuple[int, int]],
                      title: tuple[int, int] | None, heading: str) -> list[Chunk]:
        header_span = rows[0]
        header = text[slice(*header_span)].strip()
        context = "\n".join(p for p in (text[slice(*title)].strip() if title else "", header) if p)
        chunks: list[Chunk] = []
        group_start = title[0] if title else header_span[0]
        group_end = header_span[1]
        for row_start, row_end in rows[1:]:
            if row_end - group_start > self.settings.target_chars and group_end > header_span[1]:
                chunks.append(self._table_chunk(source, text, group_start, group_end, heading, context))
                group_start = row_start
            group_end = row_end
        chunks.append(self._table_chunk(source, text, group_start, group_end, heading, context))
        return chunks

    @staticmethod
    def _table_chunk(source: str, text: str, start: int, end: int, heading: str, context: str) -> Chunk:
        start, end = _strip_span(text, start, end)
        return Chunk(source, start, end, text[start:end], heading=heading, table_header=context,
                     kind="table")
