"""A question analysed once: cleaned text, folded form, terms with their weights, aliases, asked quantity.

``analyse`` builds a ``Query`` from the raw text and the loaded store; retrieval, the second
stage, answerability, answer composition and highlighting all read it and derive nothing from the
raw string again.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

from .boilerplate import asks_about_boilerplate
from .errors import RagError
from .textnorm import fold

MAX_QUERY_CHARS = 2000
ASKS_QUANTITY = re.compile(r"多少|几|多大|多长|多高|多快|多久|比例|占比|百分|分数|得分|多强")


@dataclass(frozen=True)
class Query:
    """One question as every stage sees it.

    ``terms`` are the distinct matching tokens the question writes (no stopwords, no synthetic
    joins); ``weights`` maps each of them, spaces removed, to its inverse passage frequency in the
    index; ``lexical_tokens`` is what BM25 searches: the question's tokens plus those of the English
    names the reports give its Chinese ones (``aliases``). ``about_boilerplate`` says the question
    asks about notice text itself (rating definitions, analysts, sources), which then competes as usual.
    """

    text: str
    folded: str
    terms: tuple[str, ...]
    weights: dict[str, float] = field(hash=False)
    lexical_tokens: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    asks_quantity: bool = False
    about_boilerplate: bool = False
    warning: str | None = None
    raw: str = ""

    def coverage(self, folded_text: str) -> float:
        """Share of the query terms (weighted by length) found in folded, space-free text."""
        if not self.terms:
            return 0.0
        total = sum(len(t) for t in self.terms)
        return sum(len(t) for t in self.terms if t.replace(" ", "") in folded_text) / total

    def weighted_share(self, folded_text: str, leave_out: Iterable[str] = ()) -> float:
        """Share of the terms' total IDF weight found in folded, space-free text; 0 without terms. Terms
        that are part of a ``leave_out`` string (a name every passage carries, say) count on neither side."""
        left_out = tuple(leave_out)
        weights = ({term: w for term, w in self.weights.items() if not any(term in name for name in left_out)}
                   if left_out else self.weights)
        total = sum(weights.values())
        return sum(w for term, w in weights.items() if term in folded_text) / total if total else 0.0

    def names(self, label: str) -> bool:
        """True when the question writes ``label`` (a table column name, say) in full, spaces and case aside."""
        key = fold_key(label)
        return len(key) >= 2 and key in self.folded

    def highlight_terms(self) -> list[str]:
        """The terms worth marking in a passage: without one-character words unless that is all."""
        longer = [t for t in self.terms if len(t) >= 2]
        return longer or list(self.terms)


def clean_question(question: str) -> tuple[str, str | None]:
    """Drop control characters and trim; returns (text, truncation warning). Raises for empty questions."""
    if question is not None and not isinstance(question, str):
        raise RagError(f"问题必须是文本，收到的是 {type(question).__name__} / the question must be a string")
    cleaned = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in question or "")
    cleaned = re.sub(r"\s+", " ", cleaned).strip()
    if not cleaned:
        raise RagError("问题为空，请输入问题 / empty question")
    warning = None
    if len(cleaned) > MAX_QUERY_CHARS:
        warning = f"问题过长，只使用前 {MAX_QUERY_CHARS} 个字符 / question truncated to {MAX_QUERY_CHARS} characters"
        cleaned = cleaned[:MAX_QUERY_CHARS]
    return cleaned, warning


def fold_key(text: str) -> str:
    """Folded text with spaces removed: the form terms are matched in."""
    return fold(text).replace(" ", "")


def analyse(question: str, store) -> Query:
    """The ``Query`` for a raw question against a loaded store (its tokenizer, IDF and aliases)."""
    text, warning = clean_question(question)
    folded = fold_key(text)
    tokens = store.tokenizer.tokens(text)
    terms = tuple(t for t in dict.fromkeys(tokens) if t.replace(" ", "") in folded)
    aliases = tuple(store.aliases.expand(text))
    expanded = tokens + [t for alias in aliases for t in store.tokenizer.tokens(alias)]
    return Query(text=text, folded=folded, terms=terms, weights=term_weights(terms, store.idf),
                 lexical_tokens=tuple(expanded), aliases=aliases, asks_quantity=bool(ASKS_QUANTITY.search(folded)),
                 about_boilerplate=asks_about_boilerplate(text), warning=warning, raw=question)


def term_weights(terms: Iterable[str], idf) -> dict[str, float]:
    """Each distinct term, spaces removed (as in folded passage text), with its IDF weight."""
    return {term: idf(term) for term in {t.replace(" ", "") for t in terms} - {""}}
