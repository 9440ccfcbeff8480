"""Jieba-based tokenisation for lexical matching, and word boundaries for the chunker.

Matching tokens are computed on folded text (``textnorm.fold``). Latin/number runs such as
``GPT-3``, ``M6-OFA`` or ``3.5`` are kept whole (jieba would split them at the hyphen) and also
contribute their parts, so "GPT3" and "GPT-3" still meet. Chinese runs go through jieba's search
mode, which yields whole words plus their shorter sub-words. A name written straight before a
version number ("源1.0", "悟道3.0", "ERNIE 3.0") also yields the joined name ("源1.0", "ernie3.0"), so a
question about one version meets the rows that name it rather than every "1.0" in the corpus.

Each index owns a ``Tokenizer``: its own ``jieba.Tokenizer`` with the domain words in
``data/domain_words.txt`` (参数量, 算力 …) and the corpus terms the index was built with, so how a
question is cut never depends on which other indexes the process opened before.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources

import jieba

from .textnorm import fold

jieba.setLogLevel(logging.WARNING)

_TOKEN = re.compile(r"[a-z0-9]+(?:[\-_.+/][a-z0-9]+)*|[\u3400-\u9fff\uf900-\ufaff]+")
_CJK_RUN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")
_SEPARATOR = re.compile(r"[\-_+/]")
_VERSION = re.compile(r"v?\d+(?:\.\d+)+")
# Bump when tokens() changes: the BM25 index must be rebuilt with the new tokens.
TOKENIZER_VERSION = 3
WORD_FREQUENCY = 20000


@lru_cache(maxsize=1)
def stopwords() -> frozenset[str]:
    """Chinese stopwords and question words that carry no evidence."""
    text = resources.files("rag.data").joinpath("stopwords_zh.txt").read_text(encoding="utf-8")
    return frozenset(w.strip() for w in text.split() if w.strip())


@lru_cache(maxsize=1)
def domain_words() -> tuple[str, ...]:
    """The bundled domain vocabulary (``data/domain_words.txt``)."""
    text = resources.files("rag.data").joinpath("domain_words.txt").read_text(encoding="utf-8")
    return tuple(text.split())


class Tokenizer:
    """Jieba with its own dictionary: the general one, the domain words and ``user_words``."""

    def __init__(self, user_words: Iterable[str] = ()):
        self.user_words = tuple(sorted({w for w in user_words if len(w) >= 2}))
        self._jieba = jieba.Tokenizer()
        self._ready = False
        self._lock = threading.Lock()

    def _ensure_ready(self) -> jieba.Tokenizer:
        # Loading jieba's dictionary takes about a second: only on first use.
        with self._lock:
            if not self._ready:
                self._jieba.initialize()
                for word in domain_words():
                    self._jieba.add_word(word, freq=WORD_FREQUENCY)
                for word in self.user_words:
                    self._jieba.add_word(word, freq=WORD_FREQUENCY)
                self._ready = True
        return self._jieba

    def word_spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) of every jieba word in ``text``, covering it without gaps."""
        return [(start, end) for _, start, end in self._ensure_ready().tokenize(text)]

    def tokens(self, text: str) -> list[str]:
        """Matching tokens of ``text``: folded, jieba search-mode words, Latin runs and their parts."""
        cutter = self._ensure_ready()
        folded = fold(text)
        stop = stopwords()
        result: list[str] = []
        name, name_end = "", -1  # the last word before this piece, and where it ended
        for match in _TOKEN.finditer(folded):
            piece = match.group(0)
            if name and _VERSION.fullmatch(piece) and folded[name_end:match.start()].strip() == "":
                result.append(name + piece)
            if _CJK_RUN.fullmatch(piece):
                words = list(cutter.cut_for_search(piece))
                # Search mode ends with the run's last whole word; "增长了3.5倍": 了 names nothing.
                name = "" if words[-1] in stop else words[-1]
                result.extend(word for word in words if word not in stop)
            else:
                name = piece
                result.append(piece)
                parts = [part for part in _SEPARATOR.split(piece) if part]
                if len(parts) > 1:
                    result.extend(parts)
                    result.append("".join(parts))
            name_end = match.end()
        return result


_SHARED: dict[tuple[str, ...], Tokenizer] = {}
_SHARED_LOCK = threading.Lock()


def tokenizer_for(user_words: Iterable[str] = ()) -> Tokenizer:
    """One ``Tokenizer`` per distinct dictionary per process (two indexes of one corpus share it)."""
    key = tuple(sorted({w for w in user_words if len(w) >= 2}))
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = Tokenizer(key)
        return _SHARED[key]


def corpus_terms(texts: Iterable[str]) -> set[str]:
    """Names worth adding to jieba's dictionary: Chinese company/product names seen in the corpus."""
    pattern = re.compile(r"([\u4e00-\u9fff]{2,6}?"
                         r"(?:科技|信息|智能|股份|集团|网络|软件|证券|银行|大模型|实验室|研究院))")
    found: set[str] = set()
    for text in texts:
        found.update(pattern.findall(text))
    return found
