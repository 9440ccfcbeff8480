"""Text normalisation: repair the stored text, fold the matching keys.

Two different jobs live here and must not be confused:

* ``clean_text`` builds the *canonical* text of a report, the text every citation quotes. It only
  repairs broken code points (PDF radicals, control characters) and joins PDF line breaks that cut
  a sentence; full-width punctuation and everything else stays as the report printed it. It also
  returns, for every canonical character, its offset in the raw text, so a citation can name the
  line of the original file.
* ``fold`` builds matching keys (queries, BM25 tokens, evidence checks): NFKC, width folding and
  lower-casing. Folded text is never shown to a user.
"""

from __future__ import annotations

import re
import unicodedata

# CJK Radicals Supplement code points that NFKC leaves alone but PDF text layers emit instead of
# the ordinary character (e.g. U+2EDC for 飞).
RADICAL_REPAIRS = {
    "\u2e84": "乙", "\u2e8c": "小", "\u2e8d": "小", "\u2e96": "心", "\u2e97": "心", "\u2ea0": "民",
    "\u2ea4": "爪", "\u2ea6": "丬", "\u2ea8": "犬", "\u2eab": "罒", "\u2eb2": "罒", "\u2eb3": "罒",
    "\u2eb7": "羊", "\u2ebb": "聿", "\u2ebc": "肉", "\u2ebe": "艹", "\u2ebf": "艹", "\u2ec0": "艹",
    "\u2ec3": "西", "\u2ec4": "西", "\u2ec5": "见", "\u2ec6": "角", "\u2ec8": "讠", "\u2ec9": "贝",
    "\u2ecb": "车", "\u2ecc": "辶", "\u2ecd": "辶", "\u2ed0": "钅", "\u2ed2": "长", "\u2ed3": "长",
    "\u2ed4": "门", "\u2ed6": "阝", "\u2ed7": "雨", "\u2ed8": "青", "\u2ed9": "韦", "\u2eda": "页",
    "\u2edb": "风", "\u2edc": "飞", "\u2edd": "食", "\u2ede": "食", "\u2edf": "食", "\u2ee0": "饣",
    "\u2ee2": "马", "\u2ee4": "鬼", "\u2ee5": "鱼", "\u2ee6": "鸟", "\u2ee7": "卤", "\u2ee8": "麦",
    "\u2ee9": "黄", "\u2eea": "黾", "\u2eeb": "斉", "\u2eec": "齐", "\u2eed": "歯", "\u2eee": "齿",
    "\u2eef": "竜", "\u2ef0": "龙", "\u2ef2": "亀", "\u2ef3": "龟",
}

SENTENCE_END = "。！？；!?;"
# A line ending in one of these closes a thought: never glue the next line onto it.
LINE_CLOSERS = SENTENCE_END + "：:」』）)】》”\"'"
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LIST_START = re.compile(r"^\s*([-*•·●▪■◆]|\d+[、.．)）]|[（(]\d+[)）]|[一二三四五六七八九十]+[、.．]|#)")


_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3})")

def repair_char(ch: str) -> str:
    """Repair one code point: CJK radicals and compatibility forms to ordinary characters.

    Only characters that are *broken* change (Kangxi radicals, CJK compatibility ideographs,
    radical supplements, stray control characters); full-width punctuation is kept.
    """
    if ch in RADICAL_REPAIRS:
        return RADICAL_REPAIRS[ch]
    code = ord(ch)
    if 0x2F00 <= code <= 0x2FDF or 0x2E80 <= code <= 0x2EFF or 0xF900 <= code <= 0xFAFF:
        return unicodedata.normalize("NFKC", ch)
    if ch in "\t\n":
        return ch
    if ch == "\r" or ch == "\x0c":
        return "\n"
    if ch == "\u00a0" or ch == "\u3000":
        return ch
    category = unicodedata.category(ch)
    if category in ("Cc", "Cs", "Co") or ch in "\ufeff\u200b\ufffd":
        return ""
    return ch


def _should_join(line: str, next_line: str) -> bool:
    """True when a single line break between ``line`` and ``next_line`` cut a sentence."""
    stripped = line.rstrip()
    following = next_line.lstrip()
    if len(stripped) < 20 or not following or "\t" in line or "\t" in next_line:
        return False
    if stripped[-1] in LINE_CLOSERS or _LIST_START.match(following):
        return False
    return bool(_CJK.match(stripped[-1])) and bool(_CJK.match(following[0]))


def clean_text(raw: str) -> tuple[str, list[int]]:
    """Canonical text of a report and, for each of its characters, the offset in ``raw``.

    Repairs code points, normalises line ends, strips trailing spaces and joins a line broken in
    the middle of a CJK sentence to the next one. Blank lines (page and section breaks) stay.
    """
    chars: list[str] = []
    origin: list[int] = []
    for index, ch in enumerate(raw):
        if ch == "\r" and index + 1 < len(raw) and raw[index + 1] == "\n":
            continue
        for out in repair_char(ch):
            chars.append(out)
            origin.append(index)
    repaired = "".join(chars)

    lines = repaired.split("\n")
    text_parts: list[str] = []
    out_origin: list[int] = []
    position = 0
    for number, line in enumerate(lines):
        kept = line.rstrip(" \t\u00a0\u3000") if "\t" not in line.strip() else line.rstrip("\n")
        text_parts.append(kept)
        out_origin.extend(origin[position:position + len(kept)])
        end_of_line = position + len(line)
        if number + 1 < len(lines):
            if not _should_join(kept, lines[number + 1]):
                text_parts.append("\n")
                out_origin.append(origin[end_of_line] if end_of_line < len(origin) else len(raw))
        position = end_of_line + 1
    text = "".join(text_parts).strip("\n")
    leading = len("".join(text_parts)) - len("".join(text_parts).lstrip("\n"))
    out_origin = out_origin[leading:leading + len(text)]
    return text, out_origin


# One translation table (C-level, not a Python loop per character: fold runs on every candidate passage per search).
_WIDTH = str.maketrans({"\u3000": " ", **RADICAL_REPAIRS})


def fold(text: str) -> str:
    """Matching key of ``text``: NFKC (full-width to half-width), lower case, radicals repaired."""
    return unicodedata.normalize("NFKC", text.translate(_WIDTH)).lower()


def drop_thousands_separators(text: str) -> str:
    """``text`` with the commas inside numbers removed ("3,958" becomes "3958"), so a number reads as one."""
    return _THOUSANDS.sub("", text)


def squeeze(text: str) -> str:
    """``text`` without any whitespace, used to compare passages with evidence strings."""
    return re.sub(r"\s+", "", text)


def is_sentence_end(ch: str) -> bool:
    """True for characters that end a Chinese or Western sentence."""
    return ch in SENTENCE_END
