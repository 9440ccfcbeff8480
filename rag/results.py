"""What the API returns: hits, search results, answers. Plain dataclasses with their JSON contract.

The JSON forms are what ``rag search --json`` / ``rag ask --json`` print, one object per question,
and what the HTTP API (``rag.server``) sends. Each form is written down once, as a ``TypedDict``
next to the ``to_json`` that builds it: mypy checks every ``to_json`` against its type (a key
added, renamed or dropped without the type is an error), and the server hands the same types to
FastAPI, which validates its responses against them and publishes them in the OpenAPI schema.
(``typing_extensions.TypedDict``: pydantic needs it, rather than ``typing``'s, before Python 3.12.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NotRequired

from typing_extensions import TypedDict

from .query import Query
from .records import StoredChunk, StoredDocument

CLOSEST_AFTER_REFUSAL = 3


class HitJSON(TypedDict):
    """One retrieved passage: its citation ID, report, canonical offsets (``start``/``end``), original
    ``lines`` and PDF ``page``, the passage ``text`` and its fused ``score``; ``also_in`` lists the same
    passage in near-duplicate reports; ``boilerplate`` marks legal or furniture text (disclaimers, contacts)."""

    rank: int
    citation: str
    source: str
    title: str
    start: int
    end: int
    text: str
    score: float
    label: str
    heading: str
    table_header: str
    lines: list[int]
    page: int | None
    also_in: list[str]
    boilerplate: bool


class SourceJSON(TypedDict):
    """A passage the answer cites: marker ``n`` in the answer is ``[n]``."""

    marker: int
    citation: str
    label: str


class SearchJSON(TypedDict):
    """Ranked passages for one question; ``error`` (question unusable) and ``warning`` only when set."""

    query: str
    hits: list[HitJSON]
    error: NotRequired[str]
    warning: NotRequired[str]
    standalone: NotRequired[str]


class AskJSON(SearchJSON):
    """A search plus the extractive ``answer`` with [n] markers, whether it ``abstained`` (answer is
    在报告中未找到相关内容), whether it carries a ``caution`` note, the answerability model's
    ``unanswerable_probability`` (null for BM25 only) and the cited ``sources``."""

    answer: str
    abstained: bool
    caution: bool
    unanswerable_probability: float | None
    sources: list[SourceJSON]


@dataclass
class Hit:
    """One retrieved passage with its citation and scores.

    ``sentence_similarities`` maps each of the passage's sentences that has a vector (whitespace
    removed) to its cosine with the question; empty when the search did not embed the question.
    ``boilerplate`` marks a passage that is mostly legal or furniture text (``rag.boilerplate``).
    """

    rank: int
    chunk: StoredChunk
    document: StoredDocument
    score: float
    dense_score: float | None = None
    bm25_score: float | None = None
    sentence_score: float | None = None
    coverage: float = 0.0
    also_in: list[str] = field(default_factory=list)
    boilerplate: bool = False
    sentence_similarities: dict[str, float] = field(default_factory=dict, repr=False)

    @property
    def citation(self) -> str:
        """Citation ID of the passage."""
        return self.chunk.citation

    def to_json(self) -> HitJSON:
        """The hit as in the JSON contract (plus a few optional extras)."""
        return {
            "rank": self.rank, "citation": self.chunk.citation, "source": self.chunk.source,
            "title": self.document.info.title or self.chunk.source, "start": self.chunk.start,
            "end": self.chunk.end, "text": self.chunk.text, "score": round(float(self.score), 6),
            "label": self.document.label, "heading": self.chunk.heading,
            "table_header": self.chunk.table_header, "lines": [self.chunk.line_start, self.chunk.line_end],
            "page": self.chunk.page, "also_in": self.also_in, "boilerplate": self.boilerplate,
        }


def has_dense_scores(hits: list[Hit]) -> bool:
    """True when the hits come from a search that embedded the question (hybrid or dense, not bm25)."""
    return any(h.dense_score is not None for h in hits)


@dataclass
class Answer:
    """An extractive answer and the hits it cites (marker n refers to ``sources[n-1]``)."""

    text: str
    abstained: bool
    sources: list[Hit]
    unanswerable_probability: float | None = None
    caution: bool = False


@dataclass
class SearchResult:
    """Hits for one question (``error`` is set instead when the question was unusable).

    ``query`` is the question as asked; ``analysed`` the ``Query`` every stage used (None on error);
    ``standalone`` the question actually searched when a follow-up was rewritten from the chat history.
    """

    query: str
    hits: list[Hit] = field(default_factory=list)
    error: str | None = None
    warning: str | None = None
    analysed: Query | None = field(default=None, repr=False)
    standalone: str | None = None

    def to_json(self) -> SearchJSON:
        """The JSON contract: ``{"query", "hits": [...]}`` plus ``error``/``warning``/``standalone`` when set."""
        payload: SearchJSON = {"query": self.query, "hits": [h.to_json() for h in self.hits]}
        if self.error:
            payload["error"] = self.error
        if self.warning:
            payload["warning"] = self.warning
        if self.standalone:
            payload["standalone"] = self.standalone
        return payload


@dataclass
class AskResult(SearchResult):
    """A search plus the extractive answer built from it."""

    answer: str = ""
    abstained: bool = False
    sources: list[Hit] = field(default_factory=list)
    caution: bool = False
    unanswerable_probability: float | None = None

    def to_json(self) -> AskJSON:
        """Search JSON plus ``answer``, ``abstained``, ``caution``, ``unanswerable_probability`` and the
        cited ``sources``."""
        return {**super().to_json(), "answer": self.answer, "abstained": self.abstained, "caution": self.caution,
                "unanswerable_probability": self.unanswerable_probability,
                "sources": [{"marker": n, "citation": h.citation, "label": h.document.label}
                            for n, h in enumerate(self.sources, start=1)]}

    @property
    def closest(self) -> list[Hit]:
        """After a refusal, the best passages found anyway, so a reader can check the refusal."""
        return self.hits[:CLOSEST_AFTER_REFUSAL] if self.abstained and not self.error else []
