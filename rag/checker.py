"""Check a generated answer sentence by sentence; citations are attached here, not taken on trust.

For every sentence of the model's answer:

1. every number (amounts, percentages, dates, counts; after width folding, thousands separators
   dropped) must occur in a cited passage, and there be *tied to the question's subject*: one of the
   subject's terms within ``SUBJECT_WINDOW`` characters of the number in the same sentence or table
   row (a table row is read with its column names, so a GPT-3 cell does not pass for GPT-4), and no
   *rival* claims it: a number of the same measure (万亿美元, %, 亿) in another clause of that sentence
   that stands next to a question term the checked sentence uses and the number's own clause lacks
   (麦肯锡's "人工智能整体将为全球经济带来高达25.6万亿美元……，而其中来自GenAI的贡献高达7.9万亿美元":
   "生成式AI贡献25.6万亿美元" fails, 贡献 belongs to 7.9; where both clauses hold such terms, neither
   number passes alone: the checker cannot tell GenAI is 生成式AI, and an unverified number is never shown);
   a year the sentence writes in the number's clause must stand in that passage sentence or row too
   ("预计2023年……4041亿元" is not supported by "2021年……为4041亿元"), and every question term the sentence
   attaches to its numbers must occur in the passage ("总投资额是12 FLOPS" is not supported by a passage about
   computing power that never mentions 投资);
2. the sentence must state something (a remark such as "根据段落中的信息。" claims nothing, however close
   it is to the passages) and be close to the passage in embedding space: its best cosine with a sentence or
   row of the cited passage at least ``min_similarity`` (fitted on dev, ``rag/data/fitted.json``).

A sentence's citations are the passages that pass both checks (the model's own ``[n]`` markers are
only a preference: the small local model often omits or misplaces them). A sentence no passage
supports is unverified; callers never show it as verified.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import fitted
from .chunking import sentence_spans
from .query import Query
from .results import Hit
from .tables import quote_row
from .textnorm import drop_thousands_separators, fold

SUBJECT_WINDOW = 40
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_YEAR = re.compile(r"(?<![\d.])(?:19|20)\d{2}(?![\d.])")
_MARKER = re.compile(r"\s*[\[【]\s*(?:编号|段落|来源)?\s*(\d{1,2})\s*[\]】]")  # [2], 【2】, [编号2]
_SENTENCE = re.compile(r"[^。！？；!?;\n]+[。！？；!?;]*")
# List numbering ("1. ", "2、", "（3）") at a line start or after a colon: not a figure to verify.
_ENUMERATOR = re.compile(r"(?:^|(?<=[：:\s]))(?:\d{1,2}[.、．)）](?!\d)|[(（]\d{1,2}[)）])\s*")
# Question words and generic words that say nothing about whose number it is.
_GENERIC = {"多少", "什么", "哪些", "哪个", "哪家", "哪年", "如何", "怎么", "怎样", "是否", "为什么", "报告", "根据",
            "主要", "目前", "相关", "情况", "分别", "介绍", "一下", "请问", "以及", "可以"}
_NAME_WITH_VERSION = re.compile(r"[A-Za-z\u4e00-\u9fff][A-Za-z]*[-\s]?\d+(?:\.\d+)*")
_LATIN_VERSIONED = re.compile(r"(?<![a-z])([a-z]+)[-\s]?\d+(?:\.\d+)*")
# A Latin-letter name with digits: its digits name a thing, they are not a figure to tie to the subject.
_NAME_TOKEN = re.compile(r"(?<![a-z0-9.])[a-z]{1,12}[-\s]?\d+(?:\.\d+)*[a-z]*(?![\d.%])")
# Colons do not break a clause: a table row is quoted "column:value", and the column names the value.
_CLAUSE_BREAK = re.compile(r"[，,；;。！？!?、()（）\t]")
# What a number counts: a percentage, a magnitude with its currency (万亿美元, 亿元, 亿), or a counting
# word (年, 倍, 家); anything else is a bare number, which has no rivals.
_DATE_PARTS = {"年", "月", "日"}
# A remark about the passages themselves ("根据段落中的信息。") is close to any passage in embedding space and
# claims nothing: words about the source and the answer, and function characters, are not content.
_ABOUT_THE_SOURCE = re.compile(r"根据|依据|按照|段落|文中|上文|原文|文本|材料|资料|信息|内容|描述|以上|上述|所述|如下|"
                               r"可知|可见|看出|提到|指出|表明|总结|综上|总之|回答|答案|问题")
_FUNCTION_CHARS = re.compile(r"[的中了在和与及等为是有所从对于此这那其之可以]")
_CONTENT = re.compile(r"[\u4e00-\u9fffA-Za-z0-9]")
_MEASURE = re.compile(r"\s*([%‰]|[十百千万亿兆]+(?:美元|元|人民币)?|美元|元|[年月日倍个家台次名款])")


def names_of(text: str) -> list[str]:
    """Model and product names written with digits ("M6", "A100", "GPT-4"), folded, without hyphens or spaces."""
    return list(dict.fromkeys(re.sub(r"[-\s]", "", m.group(0)) for m in _NAME_TOKEN.finditer(fold(text))))


def figures_of(text: str) -> list[str]:
    """The numbers of ``text`` that are figures: not only the digits of a name such as "M6" or "A100"."""
    outside_names = _NAME_TOKEN.sub(" ", drop_thousands_separators(fold(text)))
    return [n for n in numbers_of(text) if _number_positions(n, outside_names)]


def numbers_of(text: str) -> list[str]:
    """The numbers written in ``text`` (folded; "3,958" is 3958), in order, each once."""
    return list(dict.fromkeys(_NUMBER.findall(drop_thousands_separators(fold(text)))))


def split_sentences(answer: str) -> list[tuple[str, list[int]]]:
    """The answer's sentences without markers, each with the ``[n]`` markers the model put on it."""
    sentences = []
    for match in _SENTENCE.finditer(answer):
        raw = match.group(0)
        markers = [int(n) for n in _MARKER.findall(raw)]
        text = _ENUMERATOR.sub("", _MARKER.sub("", raw)).strip()
        if re.sub(r"[\W_]+", "", text):
            sentences.append((text, markers))
    return sentences


def subject_terms(query: Query) -> list[str]:
    """The terms that name what the question is about: its weightiest terms and any versioned name.

    Terms within 60% of the heaviest IDF weight, without question words, plus names such as
    ``gpt-4`` or ``源1.0`` (folded, spaces removed) that the tokenizer splits.
    """
    weights = {t: w for t, w in query.weights.items() if t not in _GENERIC and (len(t) >= 2 or t.isascii())}
    terms: list[str] = []
    if weights:
        top = max(weights.values())
        terms = [t for t, w in weights.items() if w >= 0.6 * top]
    for name in _NAME_WITH_VERSION.findall(query.folded):
        key = name.replace(" ", "")
        if key not in terms:
            terms.append(key)
    return terms


@dataclass
class Unit:
    """A sentence or a table row (read with its column names) of a passage, folded for matching."""

    hit_index: int
    text: str
    folded: str


def passage_units(hit: Hit, hit_index: int) -> list[Unit]:
    """The sentences of a passage, or the rows of a table passage each quoted with its header."""
    text = hit.chunk.text
    if hit.chunk.kind == "table":
        lines = [line for line in hit.chunk.table_header.split("\n") if line.strip()]
        header = lines[-1] if lines else ""
        context = {line.strip() for line in lines}
        rows = [row for row in text.split("\n") if row.strip() and row.strip() not in context]
        caption = " ".join(lines[:-1])
        return [Unit(hit_index, quoted, fold(f"{caption} {quoted}").replace(" ", ""))
                for quoted in (quote_row(header, row) for row in rows)]
    return [Unit(hit_index, text[a:b], fold(text[a:b]).replace(" ", "")) for a, b in sentence_spans(text)]


def _number_positions(number: str, folded: str) -> list[int]:
    """Where ``number`` stands on its own in ``folded`` (not inside a longer number)."""
    pattern = re.compile(rf"(?<![\d.]){re.escape(number)}(?!\d|\.\d)")
    return [m.start() for m in pattern.finditer(drop_thousands_separators(folded))]


def _versioned(text: str) -> list[tuple[int, str, str]]:
    """(start, name, family) of every versioned Latin name in folded ``text``: ``gpt-3`` is family ``gpt``."""
    return [(m.start(), re.sub(r"[-\s]", "", m.group(0)), m.group(1)) for m in _LATIN_VERSIONED.finditer(text)]


def _other_version_owns(position: int, mentions: list[tuple[int, str, str]], subjects: Sequence[str]) -> bool:
    """True when the versioned name nearest before ``position`` belongs to the subject's family but is
    not the subject (a GPT-3 cell or clause given for GPT-4)."""
    named = {re.sub(r"[-\s]", "", term) for term in subjects}
    families = {family for _, name, family in _versioned(" ".join(subjects)) if name in named}
    before = [(start, name) for start, name, family in mentions if family in families and start <= position]
    return bool(before) and max(before)[1] not in named


def _clause(text: str, position: int) -> tuple[int, int]:
    """The clause of ``text`` around ``position``: between the nearest clause breaks (，；。、 …)."""
    start = max((m.end() for m in _CLAUSE_BREAK.finditer(text, 0, position)), default=0)
    following = _CLAUSE_BREAK.search(text, position)
    return start, following.start() if following else len(text)


def _measure(text: str, end: int) -> str:
    """What the number ending at ``end`` counts ("万亿", "%", "年"), or "" for a bare number."""
    match = _MEASURE.match(text, end)
    return match.group(1) if match else ""


def _rival_claims(number: str, position: int, text: str, claimed: Collection[str], stated: Collection[str]) -> bool:
    """True when another number of the same measure, in another clause of ``text`` and not itself stated by
    the checked sentence, stands next to a term the sentence attaches to its numbers (``claimed``) that the
    clause of ``number`` lacks: the passage then says that term of the rival, not of ``number``."""
    measure = _measure(text, position + len(number))
    if not measure or not claimed:
        return False
    own_clause = _clause(text, position)
    own_text = text[own_clause[0]:own_clause[1]]
    missing = [term for term in claimed if term not in own_text]
    if not missing:
        return False
    for match in _NUMBER.finditer(text):
        if match.group(0) in stated or match.group(0) == number or _measure(text, match.end()) != measure:
            continue
        rival_clause = _clause(text, match.start())
        if rival_clause != own_clause and any(term in text[rival_clause[0]:rival_clause[1]] for term in missing):
            return True
    return False


def _same_measure(written: str, found: str) -> bool:
    """True when a number written with ``written`` (in the checked sentence) may be the one found with ``found``.

    "3倍" is not the "3" of "3 FLOPS", and "192,492亿美元" not "$192,492 million"; a magnitude may drop its
    currency ("25.6万亿" for 25.6万亿美元), and a year may stand bare in a table cell.
    """
    if not written or written == found:
        return True
    if not found:
        return written in _DATE_PARTS
    return written.startswith(found) or found.startswith(written)


@dataclass(frozen=True)
class Claim:
    """What the checked sentence says around its numbers: the question's terms it uses, its numbers (which
    are no rivals of each other) and the measures each number is written with ("倍", "万亿美元", "%")."""

    terms: tuple[str, ...] = ()
    numbers: frozenset[str] = frozenset()
    measures: Mapping[str, frozenset[str]] = field(default_factory=dict)
    years: Mapping[str, frozenset[str]] = field(default_factory=dict)  # per number: years in its clause

    @classmethod
    def of(cls, sentence: str, query: Query, numbers: Collection[str]) -> Claim:
        """The claim of ``sentence`` (its ``numbers`` already chosen by the caller)."""
        folded = drop_thousands_separators(fold(sentence).replace(" ", ""))
        # Number-only terms ("2" of GPT-2) would be found inside other numbers; numbers are checked as numbers.
        terms = tuple(t.replace(" ", "") for t in query.weights
                      if t.replace(" ", "") in folded and re.search(r"[^\d.\s]", t))
        measures = {n: frozenset(_measure(folded, p + len(n)) for p in _number_positions(n, folded)) for n in numbers}
        years = {}
        for number in numbers:
            clauses = [folded[slice(*_clause(folded, p))] for p in _number_positions(number, folded)]
            years[number] = frozenset(y for clause in clauses for y in _YEAR.findall(clause) if y != number)
        return cls(terms, frozenset(numbers), measures, years)

    def content_terms(self) -> list[str]:
        """The question's terms the sentence uses that say what its numbers are (not question or generic words)."""
        return [t for t in self.terms if len(t) >= 2 and t not in _GENERIC]


def number_supported(number: str, units: Sequence[Unit], subjects: Sequence[str],
                     claim: Claim | None = None) -> tuple[bool, bool]:
    """(occurs in one of ``units``, occurs there tied to the subject).

    Tied: written there with the measure the ``claim`` gives it (``_same_measure``); a subject term within
    ``SUBJECT_WINDOW`` characters; when the question names a versioned name (``gpt-4``), the nearest name of
    that family before the number is that name, not a sibling; and no rival number of the same measure in
    another clause stands next to one of the claim's terms (the question's terms the checked sentence uses)
    that the number's own clause lacks (the claim's other numbers are no rivals).
    """
    claim = claim or Claim()
    written = claim.measures.get(number, frozenset())
    occurs = False
    for unit in units:
        cleaned = drop_thousands_separators(unit.folded)
        mentions = _versioned(cleaned)
        for position in _number_positions(number, unit.folded):
            occurs = True
            if not subjects:
                return True, True
            found = _measure(cleaned, position + len(number))
            if written and not any(_same_measure(w, found) for w in written):
                continue
            if not claim.years.get(number, frozenset()) <= set(_YEAR.findall(cleaned)):
                continue  # the sentence dates the number with a year this sentence or row does not give it
            window = cleaned[max(0, position - SUBJECT_WINDOW):position + len(number) + SUBJECT_WINDOW]
            if (any(term in window for term in subjects) and not _other_version_owns(position, mentions, subjects)
                    and not _rival_claims(number, position, cleaned, claim.terms, claim.numbers)):
                return True, True
    return occurs, False


def _names_it(name: str, units: Sequence[Unit]) -> bool:
    return any(name in unit.folded.replace("-", "") for unit in units)


@dataclass
class SentenceCheck:
    """The verdict on one generated sentence: the passages (hit indexes) that support it, and why not."""

    text: str
    model_markers: list[int]
    supporting: list[int] = field(default_factory=list)
    verified: bool = False
    similarity: float = 0.0
    reason: str = ""
    numbers: list[str] = field(default_factory=list)
    unsupported_numbers: list[str] = field(default_factory=list)


@dataclass
class CheckerSettings:
    """The embedding bar a sentence must reach against its passage (fitted on dev)."""

    min_similarity: float = field(default_factory=lambda: fitted.values("generated")["min_similarity"])


Encode = Callable[[list[str]], np.ndarray]


def says_something(sentence: str) -> bool:
    """Whether ``sentence`` states anything beyond a remark about the passages or the answer (at least two
    characters of content once source words, generic words and function characters are set aside)."""
    rest = _ABOUT_THE_SOURCE.sub("", _MARKER.sub("", sentence))
    for word in _GENERIC:
        rest = rest.replace(word, "")
    rest = _FUNCTION_CHARS.sub("", rest)
    return len(_CONTENT.findall(rest)) >= 2


def check_sentences(query: Query, hits: list[Hit], answer: str, encode: Encode,
                    settings: CheckerSettings | None = None) -> list[SentenceCheck]:
    """Check every sentence of ``answer`` against ``hits`` (see the module docstring).

    ``encode`` maps texts to L2-normalised vectors (the embedding model's document side).
    """
    settings = settings or CheckerSettings()
    sentences = split_sentences(answer)
    if not sentences:
        return []
    units = [unit for index, hit in enumerate(hits) for unit in passage_units(hit, index)]
    units_by_hit: dict[int, list[Unit]] = {}
    for unit in units:
        units_by_hit.setdefault(unit.hit_index, []).append(unit)
    subjects = subject_terms(query)
    passage_text = {index: drop_thousands_separators(fold(f"{hit.chunk.heading} {hit.chunk.table_header} "
                                                          f"{hit.chunk.text}").replace(" ", ""))
                    for index, hit in enumerate(hits)}
    question_numbers = set(numbers_of(query.text))
    question_names = set(names_of(query.text))
    vectors = encode([s for s, _ in sentences] + [u.text for u in units]) if units else None
    checks = []
    for position, (text, markers) in enumerate(sentences):
        check = SentenceCheck(text=text, model_markers=markers)
        check.numbers = [n for n in figures_of(text) if n not in question_numbers]
        names = [name for name in names_of(text) if name not in question_names]  # the question's own are its subject
        claim = Claim.of(text, query, check.numbers)
        if vectors is None or not says_something(text):
            check.reason = "no passages" if vectors is None else "states nothing (a remark about the passages)"
            checks.append(check)
            continue
        sentence_vector = vectors[position]
        unit_vectors = vectors[len(sentences):]
        similarities = unit_vectors @ sentence_vector
        best_by_hit: dict[int, float] = {}
        for unit, similarity in zip(units, similarities, strict=True):
            best_by_hit[unit.hit_index] = max(best_by_hit.get(unit.hit_index, -1.0), float(similarity))
        # Per passage: the sentence's numbers not tied to the subject there (checked once per passage); a
        # passage that lacks a question term the sentence attaches to its numbers ties none of them.
        terms = claim.content_terms()
        untied = {index: (list(check.numbers) if not all(t in passage_text[index] for t in terms) else
                          [n for n in check.numbers if not number_supported(n, hit_units, subjects, claim)[1]])
                  for index, hit_units in units_by_hit.items()}
        supporting = []
        missing: set[str] = set()
        tied_somewhere = False  # some passage holds every number next to the subject
        for index in sorted(best_by_hit, key=lambda i: (-(i + 1 in markers), -best_by_hit[i])):
            unsupported = untied[index] + [name for name in names if not _names_it(name, units_by_hit[index])]
            if unsupported:
                missing.update(unsupported)
                continue
            tied_somewhere = True
            if best_by_hit[index] >= settings.min_similarity:
                supporting.append(index)
        check.similarity = max(best_by_hit.values(), default=0.0)
        check.unsupported_numbers = [n for n in check.numbers if all(n in untied[i] for i in best_by_hit)]
        if supporting:
            check.supporting = supporting[:2]
            check.verified = True
        elif check.unsupported_numbers:
            check.reason = "numbers not in the cited passages next to the subject: " + ", ".join(
                check.unsupported_numbers)
        elif missing and not tied_somewhere:
            check.reason = "no single passage holds all its numbers next to the subject"
        else:
            check.reason = f"not close enough to any passage (cosine {check.similarity:.2f})"
        checks.append(check)
    return checks


def fabricated_numbers(answer: str, hits: list[Hit], query: Query) -> list[str]:
    """Numbers in the raw answer that occur in none of the passages (nor in the question)."""
    question_numbers = set(numbers_of(query.text))
    units = [unit for index, hit in enumerate(hits) for unit in passage_units(hit, index)]
    return [n for n in numbers_of(_MARKER.sub("", answer))
            if n not in question_numbers and not number_supported(n, units, [])[0]]
