"""Follow-up questions in a chat: each turn answered as the standalone question it stands for.

An analyst asks "GPT-3 的参数量是多少？", then "那GPT-4呢？", then "它是哪年推出的？". The later
turns name no subject (ellipsis) or point back to it (a pronoun: 它, 这家公司, 该模型, 上面提到的 …).
``standalone`` rewrites such a turn deterministically from the previous standalone question:

* a pronoun is replaced by the previous question's subject ("它是哪年推出的？" → "GPT-4是哪年推出的？");
* "那X呢？" keeps the previous question and puts X in the place of what X replaces: a year for a
  year, a Latin name for a Latin name, otherwise the subject ("那GPT-4呢？" → "GPT-4 的参数量是多少？").

The subject of a question is its first Latin or numbered name ("GPT-3", "M6-OFA"), else the Chinese
phrase it opens with, up to the first function word, verb or question word (的/是/有/让/多少/哪 …;
question openers such as 请问, 报告中 skipped). A turn that is neither elliptical nor uses a pronoun
is already standalone and stays as it is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .tokenize import tokenizer_for

PRONOUNS = ("上面提到的", "上文提到的", "前面提到的", "刚才提到的", "上述的", "上述", "这家公司", "该公司", "这个公司",
            "这家企业", "该企业", "这个模型", "该模型", "此模型", "这款模型", "这个大模型", "该大模型", "这个框架",
            "该框架", "这个平台", "该平台", "这份报告", "该报告", "它们", "他们", "它的", "它", "其")
_ELLIPSIS = re.compile(r"^(?:那么?|那|还有)?\s*(?P<x>[^，。？?！!]{1,24}?)\s*(?:的)?"
                       r"(?:情况|数据|数字|表现)?\s*呢\s*[？?]?\s*$")
_YEAR = re.compile(r"(?:19|20)\d{2}\s*年?")
_LATIN = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[\-\.\s]?[A-Za-z0-9]+)*")
_OPENERS = re.compile(r"^(?:请问|报告中|报告里|报告|在报告中|根据报告|那么|那)\s*")
# Words that end the phrase a question opens with: function words, verbs and question words.
SUBJECT_ENDS = frozenset("""的 是 有 在 于 对 将 为 和 与 让 了 被 把 从 由 目前 已经 一共 共 主要 首批 之间
推出 发布 采用 使用 用 上架 上市 落地 达到 占 提升 形成 包括 多少 哪 哪些 哪个 哪家 哪年 什么 如何 怎么 怎样
几 是否 能否 可以""".split())
MAX_SUBJECT_CHARS = 16


@dataclass(frozen=True)
class Rewrite:
    """The standalone form of one turn; ``rewritten`` is False when the turn stood alone already."""

    text: str
    rewritten: bool = False


def subject_of(question: str) -> str | None:
    """The thing a question is about: the phrase it opens with, up to its first function word, verb or
    question word (as jieba cuts it with the domain words)."""
    text = question.strip()
    while _OPENERS.match(text) and _OPENERS.sub("", text, count=1) != text:
        text = _OPENERS.sub("", text, count=1)
    end = len(text)
    for start, stop in tokenizer_for().word_spans(text):
        if text[start:stop] in SUBJECT_ENDS or text[start:stop] in "，,。？?！!：:；;":
            end = start
            break
    head = text[:end].strip(" ，,：:？?")
    return head if 2 <= len(head) <= MAX_SUBJECT_CHARS else None


def _pronoun(question: str) -> str | None:
    for pronoun in PRONOUNS:
        position = question.find(pronoun)
        # "其" alone is too common inside words (其中, 其他, 尤其); only take it at the start of a clause.
        if position >= 0 and (pronoun != "其" or position == 0 or question[position - 1] in "，,；;"):
            if pronoun == "其" and question[position:position + 2] in ("其中", "其他", "其余", "其实"):
                continue
            return pronoun
    return None


def _replace_like(previous: str, new: str) -> str | None:
    """``previous`` with the part that ``new`` stands in for replaced by ``new``."""
    if _YEAR.fullmatch(new.strip()):
        year = _YEAR.search(previous)
        if year:
            value = new.strip()
            return previous[:year.start()] + (value if value.endswith("年") or not year.group(0).endswith("年")
                                              else value + "年") + previous[year.end():]
    subject = subject_of(previous)
    if _LATIN.fullmatch(new.strip()):
        for match in _LATIN.finditer(previous):
            if len(match.group(0).strip()) >= 2:
                return previous[:match.start()] + new.strip() + previous[match.end():]
    if subject and subject in previous:
        return previous.replace(subject, new.strip(), 1)
    return None


def standalone(question: str, previous: str | None) -> Rewrite:
    """The standalone form of ``question`` given the previous turn's standalone question."""
    text = question.strip()
    if not previous or not text:
        return Rewrite(text)
    ellipsis = _ELLIPSIS.match(text)
    if ellipsis and not _pronoun(ellipsis.group("x")):
        replaced = _replace_like(previous.strip(), ellipsis.group("x"))
        if replaced:
            return Rewrite(replaced, True)
    pronoun = _pronoun(text)
    subject = subject_of(previous)
    if pronoun and subject:
        joiner = "的" if pronoun in ("它的",) else ""
        return Rewrite(text.replace(pronoun, subject + joiner, 1), True)
    return Rewrite(text)


def standalone_turns(history: Sequence[str], question: str) -> tuple[Rewrite, list[str]]:
    """The standalone form of ``question`` after the earlier user turns ``history`` (oldest first),
    and the standalone form of each earlier turn."""
    earlier: list[str] = []
    for turn in history:
        earlier.append(standalone(turn, earlier[-1] if earlier else None).text)
    return standalone(question, earlier[-1] if earlier else None), earlier
