"""What an index stores about a report and its passages, and the texts derived from a passage.

``StoredDocument`` and ``StoredChunk`` are the records every store keeps and returns; the helpers
below say what is embedded for a passage (``embedding_text``), which of its sentences get vectors
of their own (``unit_sentences``/``sentence_units``) and what BM25 indexes (``lexical_text``). The
build and the retrieval both call them, so the two can never disagree about a sentence key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .chunking import Chunk, missing_context, sentence_spans
from .embed import document_input
from .metadata import ReportInfo

MIN_UNIT_CHARS = 8


@dataclass
class StoredChunk:
    """A chunk as stored in the index, with its citation and location in the original file."""

    id: int
    citation: str
    source: str
    start: int
    end: int
    text: str
    heading: str
    table_header: str
    kind: str
    line_start: int
    line_end: int
    page: int | None


@dataclass
class StoredDocument:
    """A report as stored in the index."""

    source: str
    sha256: str
    text: str
    info: ReportInfo
    duplicates: list[str] = field(default_factory=list)
    line_starts: list[int] = field(default_factory=list, repr=False)
    # The report's boilerplate lines as [start, end) character spans of ``text``, found at ingest
    # (``rag.boilerplate``) and stored with the report, so no search recomputes them.
    boilerplate: list[tuple[int, int]] = field(default_factory=list, repr=False)

    @property
    def label(self) -> str:
        """Human label: institution, title and date."""
        return self.info.label(self.source)


def embedding_text(chunk: Chunk | StoredChunk, info: ReportInfo, with_context: bool = True) -> str:
    """What the model sees for a chunk: report title, heading and table header as context."""
    if not with_context:
        return document_input(chunk.text)
    context = "\n".join(part for part in (missing_context(chunk.heading, chunk.text),
                                          missing_context(chunk.table_header, chunk.text)) if part)
    return document_input(chunk.text, title=info.title, context=context)


def unit_sentences(chunk: Chunk | StoredChunk) -> list[str]:
    """The sentences (table rows) of a chunk that get a vector of their own, in order."""
    header = chunk.table_header.split("\n")[-1] if chunk.kind == "table" else ""
    sentences = (chunk.text[start:end] for start, end in sentence_spans(chunk.text))
    return [s for s in sentences if len(s) >= MIN_UNIT_CHARS and s != header]


def sentence_units(chunk: Chunk | StoredChunk, info: ReportInfo) -> list[str]:
    """Embedding inputs for the sentences (table rows) of a chunk: matched small, cited whole."""
    # A row means nothing without its column names, so every row carries the title and header row.
    context = chunk.table_header if chunk.kind == "table" else ""
    return [document_input(sentence, title=info.title, context=context) for sentence in unit_sentences(chunk)]


def lexical_text(chunk: Chunk | StoredChunk) -> str:
    """What BM25 indexes for a chunk: its text plus a table's header row."""
    header = missing_context(chunk.table_header, chunk.text)
    return f"{header}\n{chunk.text}" if header else chunk.text
