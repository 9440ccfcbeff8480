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


class GeneratedSentenceJSON(TypedDict):
    """One sentence of a generated answer: its ``citations`` (IDs of the passages the checker found
    supporting it; ``markers`` index ``generated.sources``) and whether it was ``verified``."""

    text: str
    markers: list[int]
    citations: list[str]
    verified: bool
    reason: str


class GeneratedJSON(TypedDict):
    """A generated answer after checking. ``shown`` is false when the extractive answer is shown
    instead (``notice`` says why, in one line); ``text`` is what the user sees of the generated answer
    (verified sentences with markers, or those marked 未能核实); ``raw`` is the model's own output."""

    shown: bool
    text: str
    notice: str | None
    model: str
    sentences: list[GeneratedSentenceJSON]
    sources: list[SourceJSON]
    raw: str
    fabricated_numbers: list[str]
    first_token_seconds: float | None
    total_seconds: float | None


class AskJSON(SearchJSON):
    """A search plus the extractive ``answer`` with [n] markers, whether it ``abstained`` (answer is
    在报告中未找到相关内容), whether it carries a ``caution`` note, the answerability model's
    ``unanswerable_probability`` (null for BM25 only) and the cited ``sources``."""

    answer: str
    abstained: bool
    caution: bool
    unanswerable_probability: float | None
    sources: list[SourceJSON]
    generated: NotRequired[GeneratedJSON]


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
class GeneratedSentence:
    """One sentence of a generated answer; ``markers`` index ``GeneratedAnswer.sources`` (1-based)."""

    text: str
    markers: list[int]
    verified: bool
    reason: str = ""


@dataclass
class GeneratedAnswer:
    """A generated answer after the checker (``rag.checker``) and what reaches the user.

    ``shown`` is false when nothing could be verified or the LLM failed: the extractive answer is
    shown with ``notice``. Only verified sentences, each with its citations, are ever in ``text``;
    sentences that fail the checker are dropped (kept in ``sentences`` with the reason, for audit).
    """

    shown: bool
    sentences: list[GeneratedSentence] = field(default_factory=list)
    sources: list[Hit] = field(default_factory=list)
    notice: str | None = None
    model: str = ""
    raw: str = ""
    fabricated_numbers: list[str] = field(default_factory=list)
    first_token_seconds: float | None = None
    total_seconds: float | None = None

    @property
    def displayed(self) -> list[GeneratedSentence]:
        """The sentences a user sees: the verified ones (none at all when the answer is not shown)."""
        return [s for s in self.sentences if s.verified and s.markers] if self.shown else []

    @property
    def text(self) -> str:
        """The displayed sentences, each followed by its markers."""
        return "".join(s.text + "".join(f"[{m}]" for m in s.markers) for s in self.displayed)

    def to_json(self) -> GeneratedJSON:
        """The ``generated`` object of the JSON contract."""
        return {
            "shown": self.shown, "text": self.text, "notice": self.notice, "model": self.model,
            "sentences": [{"text": s.text, "markers": s.markers,
                           "citations": [self.sources[m - 1].citation for m in s.markers],
                           "verified": s.verified, "reason": s.reason} for s in self.sentences],
            "sources": [{"marker": n, "citation": h.citation, "label": h.document.label}
                        for n, h in enumerate(self.sources, start=1)],
            "raw": self.raw, "fabricated_numbers": self.fabricated_numbers,
            "first_token_seconds": self.first_token_seconds, "total_seconds": self.total_seconds,
        }


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
    generated: GeneratedAnswer | None = None

    def to_json(self) -> AskJSON:
        """Search JSON plus ``answer``, ``abstained``, ``caution``, ``unanswerable_probability``, the
        cited ``sources`` and, when a generated answer was asked for, ``generated``."""
        payload: AskJSON = {
            **super().to_json(), "answer": self.answer, "abstained": self.abstained, "caution": self.caution,
            "unanswerable_probability": self.unanswerable_probability,
            "sources": [{"marker": n, "citation": h.citation, "label": h.document.label}
                        for n, h in enumerate(self.sources, start=1)]}
        if self.generated is not None:
            payload["generated"] = self.generated.to_json()
        return payload

    @property
    def closest(self) -> list[Hit]:
        """After a refusal, the best passages found anyway, so a reader can check the refusal."""
        return self.hits[:CLOSEST_AFTER_REFUSAL] if self.abstained and not self.error else []
