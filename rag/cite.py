"""Citation lookup: from a citation ID, or a quoted phrase, back to the report text.

A citation ID names a report and a line range of the original file, ``SOURCE:L<a>-L<b>`` (with a
``.n`` suffix when several passages share a line range). IDs are stable across rebuilds of the
same corpus with the same settings. Any line range of an indexed report resolves, even one that
is not a passage boundary, so a user can widen a citation by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from typing_extensions import TypedDict

from .errors import NotFoundError, RagError
from .records import StoredChunk, StoredDocument
from .store import Store
from .textnorm import fold

CITATION = re.compile(r"^(?P<source>[^:\s][^:]*):L(?P<first>\d+)-L(?P<last>\d+)(?:\.(?P<n>\d+))?$")
CONTEXT_CHARS = 200


class CitationJSON(TypedDict):
    """A looked-up citation as ``rag cite --json`` prints it and ``GET /v1/citations/{id}`` returns it:
    the passage (``text``, canonical offsets, original ``lines``, PDF ``page``), its report and
    ``before``/``after`` context."""

    citation: str
    source: str
    title: str
    label: str
    institution: str
    date: str
    start: int
    end: int
    lines: list[int]
    page: int | None
    text: str
    before: str
    after: str
    also_in: list[str]


@dataclass
class CitationView:
    """A located passage with the text around it."""

    citation: str
    document: StoredDocument
    start: int
    end: int
    line_start: int
    line_end: int
    page: int | None
    chunk: StoredChunk | None

    @property
    def text(self) -> str:
        """The cited passage, exactly as in the canonical text."""
        return self.document.text[self.start:self.end]

    def before(self, chars: int = CONTEXT_CHARS) -> str:
        """Text just before the passage."""
        return self.document.text[max(0, self.start - chars):self.start]

    def after(self, chars: int = CONTEXT_CHARS) -> str:
        """Text just after the passage."""
        return self.document.text[self.end:self.end + chars]

    def to_json(self, context_chars: int = CONTEXT_CHARS) -> CitationJSON:
        """Machine-readable view (the ``CitationJSON`` contract)."""
        return {"citation": self.citation, "source": self.document.source,
                "title": self.document.info.title, "label": self.document.label,
                "institution": self.document.info.institution, "date": self.document.info.date,
                "start": self.start, "end": self.end, "lines": [self.line_start, self.line_end],
                "page": self.page, "text": self.text, "before": self.before(context_chars),
                "after": self.after(context_chars), "also_in": self.document.duplicates}


def _line_span(document: StoredDocument, chunks: list[StoredChunk], first: int, last: int) -> tuple[int, int]:
    """Canonical offsets covering raw lines first..last, via the passages' known line numbers."""
    inside = [c for c in chunks if c.line_end >= first and c.line_start <= last]
    if not inside:
        raise NotFoundError(f"行号超出范围 / line range L{first}-L{last} is outside {document.source}")
    return min(c.start for c in inside), max(c.end for c in inside)


def lookup(store: Store, citation: str) -> CitationView:
    """Resolve a citation ID to its passage; raise ``RagError`` for malformed or unknown IDs."""
    citation = citation.strip()
    chunk = store.chunk_by_citation(citation)
    if chunk is not None:
        document = store.documents[chunk.source]
        return CitationView(citation, document, chunk.start, chunk.end, chunk.line_start, chunk.line_end,
                            chunk.page, chunk)
    match = CITATION.match(citation)
    if not match:
        raise RagError(f"引用编号格式不正确：{citation!r}（应为 文件名:L起始行-L结束行，例如 "
                       f"004_e0d667138c034a95.txt:L12-L15） / malformed citation ID")
    source, first, last = match["source"], int(match["first"]), int(match["last"])
    if source not in store.documents:
        raise NotFoundError(f"未找到报告 {source} / unknown report in citation {citation!r}")
    document = store.documents[source]
    if first > last or first < 1:
        raise RagError(f"行号范围无效 / invalid line range in {citation!r}")
    start, end = _line_span(document, store.chunks_of(source), first, last)
    return CitationView(citation, document, start, end, first, last, None, None)


def find_phrase(store: Store, phrase: str, sources: list[str] | None = None) -> list[CitationView]:
    """Where a quoted phrase occurs (whitespace, width and case ignored), as passage views."""
    needle = re.sub(r"\s+", "", fold(phrase.strip().strip("\"'“”「」『』")))
    if len(needle) < 2:
        raise RagError("短语太短 / phrase too short to look up")
    views = []
    for source in sorted(store.documents):
        if sources and source not in sources:
            continue
        views += [lookup(store, chunk.citation) for chunk in store.chunks_of(source)
                  if needle in re.sub(r"\s+", "", fold(chunk.text))]
    return views

