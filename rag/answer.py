"""Extractive answers: the best-matching sentences of the retrieved passages, each cited.

No generative model is involved: every sentence of an answer is copied from a passage and
followed by the marker of that passage ([1], [2] …). Sentences are chosen by the share of the
question's terms they contain plus ``similarity_weight`` times their cosine with the question (the
sentence vectors the index already holds, which arrive with the hits), so a sentence that says the
same thing in other words still wins over one that only repeats the question's words. A table row
is copied cell by cell, each cell after its column name (``参数量（GPT-1：1.2亿；…）``), because a bare
row of numbers does not say which number belongs to what. When the retrieved passages do not look
relevant the answer abstains with ``NOT_FOUND``; when they might only talk around the question it
comes with ``CAUTION``. ``compose_answer`` is a pure function of (query, hits, settings).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import fitted
from .answerability import AnswerabilityModel, features
from .boilerplate import notices_of, share_beyond_issuer
from .chunking import sentence_spans
from .query import Query, fold_key
from .results import Answer, Hit, has_dense_scores
from .tables import quote_row
from .textnorm import fold, squeeze

NOT_FOUND = "在报告中未找到相关内容"
# A sentence must say this many characters beyond the question's own words ("行业评级：看好" says 看好).
MIN_NEW_CHARS = 2
CAUTION = "提示：报告中可能没有直接回答这个问题的内容，以下摘录仅供参考，请核对引文。"
# A refusal can be wrong (about 4% of answerable dev questions are refused); the passages that came
# closest are listed under it so the reader can judge for themselves.
CLOSEST_TITLE = "最接近的段落（未必回答了这个问题，供核对）："
# A survey's question ("Q：据您了解，……是多少元？") or any sentence asking something is not an answer.
QUESTION_LINE = re.compile(r"^\s*(?:Q\d*|问(?:题)?\d*)\s*[:：.、]|[？?]\s*$")


@dataclass
class AbstentionSettings:
    """When to say nothing was found.

    With dense scores (hybrid and dense search) the answerability model decides (see
    ``rag.answerability``); without them (BM25 only) the best hit must cover enough of the question.
    Below the model's refusal bar but at or above ``caution`` the answer is given with ``CAUTION``:
    the answerability model cannot tell a near-miss from a real answer well enough to refuse more
    often without refusing real answers (see the trade-off in the eval report), but it can warn.
    ``caution`` is the highest bar that refuses or flags at least 80% of the dev split's unanswerable
    questions (fitted by ``python eval/tune.py abstention``).
    """

    model: AnswerabilityModel = field(default_factory=AnswerabilityModel)
    min_coverage: float = 0.6
    caution: float = field(default_factory=lambda: fitted.values("answerability")["caution"])


@dataclass
class AnswerSettings:
    """How an answer is composed: when to abstain, how many sentences, how much their cosine counts.

    ``sentences`` (at most), ``similarity_weight`` and ``follow_ratio`` (a sentence after the first is
    quoted only when its score reaches this share of the first one's: a clear answer comes alone) are
    fitted values (``python eval/tune.py answers``).
    """

    abstention: AbstentionSettings = field(default_factory=AbstentionSettings)
    sentences: int = field(default_factory=lambda: fitted.values("answer")["sentences"])
    similarity_weight: float = field(default_factory=lambda: fitted.values("answer")["similarity_weight"])
    follow_ratio: float = field(default_factory=lambda: fitted.values("answer").get("follow_ratio", 0.0))


def unanswerable_probability(query: Query, hits: list[Hit], settings: AbstentionSettings) -> float | None:
    """The answerability model's probability that the hits do not answer ``query`` (None without dense scores)."""
    if not has_dense_scores(hits):
        return None
    return settings.model.probability(features(query, hits))


def refuses(probability: float | None, hits: list[Hit], settings: AbstentionSettings) -> bool:
    """The decision for a probability from ``unanswerable_probability`` (coverage rule when it is None)."""
    if not hits:
        return True
    if probability is None:
        return max(h.coverage for h in hits) < settings.min_coverage
    return probability >= settings.model.threshold


@dataclass
class AnswerUnit:
    """A sentence or table row of a passage: its text, how it is quoted, the text it is scored as, and
    where it lies in the passage (``start``/``end``, character offsets)."""

    text: str
    quoted: str
    scored_as: str
    start: int
    end: int


def _answer_units(hit: Hit, query: Query) -> list[AnswerUnit]:
    """Sentences, or table rows scored with their header and quoted with their column names."""
    text = hit.chunk.text
    if hit.chunk.kind != "table":
        return [AnswerUnit(text[a:b], text[a:b], text[a:b], a, b) for a, b in sentence_spans(text)]
    context_lines = [line for line in hit.chunk.table_header.split("\n") if line.strip()]
    header = context_lines[-1] if context_lines else ""
    context = {line.strip() for line in context_lines}
    units, position = [], 0
    for line in text.split("\n"):
        start, position = position, position + len(line) + 1
        if line.strip() and line.strip() not in context:
            quoted = quote_row(header, line, asked=lambda name: query.names(name))
            units.append(AnswerUnit(line.strip(), quoted, f"{header}\t{line}", start, start + len(line)))
    return units


def says_nothing_new(unit: AnswerUnit, query: Query) -> bool:
    """A survey's question line, or a line that only repeats the question's words, answers nothing."""
    return bool(QUESTION_LINE.search(unit.text)) or len(_leftover(unit.text, query.terms)) < MIN_NEW_CHARS


def _leftover(sentence: str, terms: tuple[str, ...]) -> str:
    """What a sentence says beyond the question's own terms (folded, punctuation and spaces dropped)."""
    rest = fold(sentence)
    for term in sorted(terms, key=len, reverse=True):
        rest = rest.replace(term, "")
    return re.sub(r"[\W_]+", "", rest)


@dataclass(frozen=True)
class Candidate:
    """A sentence or table row an answer may quote: its score, the passage it comes from (``position``
    among the hits), its order within that passage, and the text quoted."""

    score: float
    position: int
    order: int
    quoted: str


def answer_candidates(query: Query, hits: list[Hit], settings: AnswerSettings,
                      max_passages: int = 3) -> list[Candidate]:
    """Every sentence of the top ``max_passages`` hits that could answer ``query``, best first."""
    units = []
    seen: set[str] = set()
    for position, hit in enumerate(hits[:max_passages]):
        notices = notices_of(hit.document)
        for order, unit in enumerate(_answer_units(hit, query)):
            key = squeeze(unit.text)
            # Two tables can differ only in columns the question does not name: same quote, quoted once.
            quoted_key = squeeze(unit.quoted)
            if says_nothing_new(unit, query) or key in seen or quoted_key in seen:
                continue  # overlapping passages share sentences; quote each once, from the better hit
            seen.update((key, quoted_key))
            notice = notices.covers(hit.chunk.start + unit.start, hit.chunk.start + unit.end)
            share = share_beyond_issuer(query, fold_key(unit.scored_as), hit.document)
            units.append((position, order, hit, unit, key, notice, share))
    # Legal notices, contact blocks and source lines are not what was asked, unless the question is
    # about them or such a line matches it better than any other sentence does (boilerplate loses ties).
    best_plain = max((share for *_, notice, share in units if not notice), default=0.0)
    candidates = []
    for position, order, hit, unit, key, notice, share in units:
        if notice and not query.about_boilerplate and share <= best_plain:
            continue
        score = (query.coverage(fold_key(unit.scored_as))
                 + settings.similarity_weight * hit.sentence_similarities.get(key, 0.0)
                 - 0.1 * position - 0.001 * order)
        candidates.append(Candidate(score, position, order, unit.quoted))
    return sorted(candidates, key=lambda c: (c.score, c.position, c.order, c.quoted), reverse=True)


def cited_answer(chosen: list[Candidate], hits: list[Hit], probability: float | None = None,
                 caution: bool = False) -> Answer:
    """An answer quoting ``chosen`` in the order given, each followed by its passage's marker."""
    used: list[int] = []
    parts = []
    for candidate in chosen:
        if candidate.position not in used:
            used.append(candidate.position)
        parts.append(f"{candidate.quoted}[{used.index(candidate.position) + 1}]")
    return Answer("".join(parts), False, [hits[p] for p in used], probability, caution=caution)


def compose_answer(query: Query, hits: list[Hit], settings: AnswerSettings | None = None,
                   max_passages: int = 3) -> Answer:
    """Pick the sentences of the top passages that answer the question best, with markers."""
    settings = settings or AnswerSettings()
    probability = unanswerable_probability(query, hits, settings.abstention)
    if refuses(probability, hits, settings.abstention):
        return Answer(NOT_FOUND, True, [], probability)
    candidates = answer_candidates(query, hits, settings, max_passages)
    if not candidates:
        return Answer(NOT_FOUND, True, [], probability)
    caution = probability is not None and probability >= settings.abstention.caution
    return cited_answer(select_sentences(candidates, settings), hits, probability, caution)


def select_sentences(candidates: list[Candidate], settings: AnswerSettings) -> list[Candidate]:
    """The sentences an answer quotes from ``candidates`` (best first, as ``answer_candidates`` ranks them):
    at most ``settings.sentences``, the followers only when they score ``follow_ratio`` of the best."""
    chosen = candidates[:settings.sentences]
    chosen = [c for c in chosen if c.score > 0] or chosen[:1]
    chosen = chosen[:1] + [c for c in chosen[1:] if c.score >= settings.follow_ratio * chosen[0].score]
    # The best sentence leads (it states what was asked); the others follow in reading order.
    return chosen[:1] + sorted(chosen[1:], key=lambda c: (c.position, c.order))
