"""Aliases the reports define themselves: "视觉问答（VQA）", "英伟达（NVIDIA）", "魔搭（ModelScope）".

A Chinese question often names a thing by its Chinese name while the passage that answers it uses
the English one ("视觉问答比赛" against "VQA challenge"). BM25 cannot bridge that and the embedding
model bridges it only weakly. The reports themselves say which names go together, in a parenthesis
after the first use, so the pairs are mined from the indexed text (no hand-made list to maintain)
and a question that uses the Chinese name also searches BM25 for the English one.

Only that direction is expanded: the text before a parenthesis is a run of Chinese characters whose
start is unknown ("图像字幕和视觉问答（VQA）"), so a question matches a pair when it contains a
suffix of the run of at least ``MIN_SUFFIX`` characters (or the whole run); the English name inside
the parenthesis has clear edges.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

from .textnorm import fold

MIN_SUFFIX = 3
_NATIVE_THEN_LATIN = re.compile(
    r"([\u4e00-\u9fff]{2,12})[”\"」]?\s*[（(]\s*([A-Za-z][A-Za-z0-9\- ]{1,24}?)\s*[)）]")
_LATIN_THEN_NATIVE = re.compile(r"([A-Za-z][A-Za-z0-9\-]{1,24})\s*[（(]\s*([\u4e00-\u9fff]{2,12})\s*[)）]")


@dataclass
class AliasTable:
    """Pairs of (Chinese run, folded English name) found in the reports."""

    pairs: set[tuple[str, str]] = field(default_factory=set)

    @classmethod
    def mine(cls, texts: Iterable[str]) -> AliasTable:
        """Collect "中文（English）" and "English（中文）" pairs from passage texts."""
        pairs: set[tuple[str, str]] = set()
        for text in texts:
            for match in _NATIVE_THEN_LATIN.finditer(text):
                pairs.add((match.group(1), " ".join(fold(match.group(2)).split())))
            for match in _LATIN_THEN_NATIVE.finditer(text):
                pairs.add((match.group(2), fold(match.group(1))))
        return cls(pairs)

    def expand(self, query: str) -> list[str]:
        """English names of the things ``query`` calls by a Chinese name (and does not name itself)."""
        folded = fold(query).replace(" ", "")
        # A longer suffix of a run contains its shortest checked suffix, so a pair matches exactly when that
        # shortest suffix (the last MIN_SUFFIX characters, or a shorter whole run) occurs in the question:
        # look those up among the question's substrings instead of testing every pair (thousands at scale).
        keys = {folded[i:i + n] for n in range(2, MIN_SUFFIX + 1) for i in range(len(folded) - n + 1)}
        matching = sorted(pair for key in keys for pair in self._by_shortest_suffix.get(key, ()))
        found: list[str] = []
        for _, latin in matching:
            if latin.replace(" ", "") in folded or latin in found:
                continue
            found.append(latin)
        return found

    @cached_property
    def _by_shortest_suffix(self) -> dict[str, list[tuple[str, str]]]:
        index: dict[str, list[tuple[str, str]]] = {}
        for native, latin in self.pairs:
            index.setdefault(native[-MIN_SUFFIX:] if len(native) >= MIN_SUFFIX else native, []).append((native, latin))
        return index
