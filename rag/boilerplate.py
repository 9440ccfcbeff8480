"""Report boilerplate: the legal and furniture text every broker report repeats.

Disclaimers (本报告由……制作, 请务必阅读正文之后的免责条款), analyst certifications, rating
definitions, contact blocks, page headers and footers and "资料来源：" lines say nothing about the
question a reader asks, yet they share its words (a question about a rating meets the rating
definitions; a question about a company meets its legal notice). They are found in one report's
own text at ingest (``boilerplate_map``), recorded with the report in the index
(``StoredDocument.boilerplate``) and read back by retrieval and answers (``notices_of``), so every
store gives the same label and no search recomputes it:

* the notice zone: from the first notice heading (法律声明, 免责声明, 分析师声明, 投资评级说明 …)
  in the closing part of a report to its end;
* lines matching a notice, contact or source pattern anywhere in the report;
* lines repeated at least ``REPEATED_LINE`` times in one report (page headers and footers).

Repetition *across* reports is not a signal: on the seed corpus 52 lines of 12+ characters stand in
two reports, and nearly all are content a broker reuses (the GPT-3 parameter row of a table, a
section title, a figure caption), not notices; the notices they share are caught by the patterns.

Retrieval moves passages that are mostly boilerplate below the others, and answers skip
boilerplate sentences, unless the question is itself about such text (``asks_about_boilerplate``:
what a rating means, who the analyst is, where a figure comes from) or the boilerplate matches the
question's terms better than anything else does (boilerplate loses ties; the issuing broker's own
name does not count, since every notice carries it).
"""

from __future__ import annotations

import bisect
import re
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .chunking import line_spans
from .records import StoredChunk, StoredDocument
from .textnorm import fold

if TYPE_CHECKING:  # rag.query asks this module whether a question is about boilerplate
    from .query import Query

# The notice zone starts at one of these headings, in the closing share of the report.
NOTICE_HEADING = re.compile(
    r"^(?:[#*\s\d.、一二三四五六七八九十]*)"
    r"(?:法律声明|免责声明|免责条款|重要声明|一般声明|特别声明|分析师声明|分析师承诺|分析师介绍|信息披露|"
    r"投资评级(?:声明|说明|定义|标准)?|评级说明|评级标准|行业的投资评级|公司的投资评级|股票投资评级|"
    r"行业投资评级|证券研究报告评级|(?:行业)?评级与免责声明|法律声明及风险提示|免责及评级说明)"
    r"[\s:：及与和、A-Za-z]*$")
NOTICE_ZONE_FROM = 0.6
NOTICE_HEADING_MAX_CHARS = 24
# Lines that are boilerplate wherever they stand.
NOTICE_LINE = re.compile(
    r"本报告(?:由|仅供|版权|仅反映|是机密|所载|署名|中的(?:信息|资料|所有材料)|不构成|的信息来源)|"
    r"请(?:务必)?(?:仔细)?阅读(?:正文|本报告|报告)?.{0,12}(?:免责|声明|披露|条款)|"
    r"免责(?:声明|条款)|证书编号|执业证书|执业编号|SAC\s*(?:编号|执业)|"
    r"未经.{0,12}(?:书面)?(?:授权|许可|同意).{0,20}(?:转载|复制|刊载|转发|发布|引用)|"
    r"投资者(?:应当|应)(?:对本报告|自主|独立)|据此(?:投资|做出)|投资有风险|"
    r"(?:不构成|并不构成).{0,12}(?:投资建议|要约|邀请)|"
    r"(?:相对|相比|高于|低于|领先|落后)于?(?:同期)?(?:沪深300|市场基准|基准指数|大盘)|"
    r"(?:^|\s)(?:邮箱|电子邮件|E-?mail|电话|传真|Tel|Fax|地址|邮编|邮政编码|联系人|网址)\s*[:：\t]")
SOURCE_LINE = re.compile(r"^\s*(?:资料|数据|图表|信息)?来源\s*[:：]")
REPEATED_LINE = 3
REPEATED_LINE_MIN_CHARS = 12
# A passage is a boilerplate passage when at least this share of its characters is boilerplate.
PASSAGE_SHARE = 0.5
# Words that make a question about boilerplate itself.
ABOUT_BOILERPLATE = re.compile(
    r"免责|声明|评级(?:标准|说明|定义|体系|含义|意味|是什么意思)|什么意思|分析师|研究员|作者|证书|执业|联系|电话|"
    r"邮箱|地址|来源|出处|版权|披露|法律")


@dataclass(frozen=True)
class BoilerplateMap:
    """The boilerplate lines of one report, as sorted, disjoint character spans of its text."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]

    def share(self, start: int, end: int) -> float:
        """Share of the characters in ``[start, end)`` that are boilerplate (non-space characters count alike)."""
        if end <= start:
            return 0.0
        covered = 0
        index = bisect.bisect_right(self.ends, start)
        while index < len(self.starts) and self.starts[index] < end:
            covered += min(end, self.ends[index]) - max(start, self.starts[index])
            index += 1
        return covered / (end - start)

    def plain_text(self, text: str, start: int, end: int) -> str:
        """The characters of ``text[start:end]`` outside boilerplate lines (a newline where a line was cut)."""
        parts, position = [], start
        index = bisect.bisect_right(self.ends, start)
        while index < len(self.starts) and self.starts[index] < end:
            parts.append(text[position:max(position, self.starts[index])])
            position = max(position, self.ends[index])
            index += 1
        parts.append(text[position:end] if position < end else "")
        return "\n".join(parts)

    def covers(self, start: int, end: int) -> bool:
        """True when most of ``[start, end)`` is boilerplate (a sentence or table row inside such a line)."""
        return self.share(start, end) >= PASSAGE_SHARE

    def spans(self) -> list[tuple[int, int]]:
        """The spans as the index records them."""
        return list(zip(self.starts, self.ends, strict=True))

    @classmethod
    def from_spans(cls, spans: list[tuple[int, int]] | list[list[int]]) -> BoilerplateMap:
        """The map of recorded spans (sorted and disjoint, as ``boilerplate_map`` found them)."""
        return cls(tuple(int(a) for a, _ in spans), tuple(int(b) for _, b in spans))


def _line_key(line: str) -> str:
    return re.sub(r"\s+", "", fold(line))


def boilerplate_map(text: str) -> BoilerplateMap:
    """Find the boilerplate lines of one report's (canonical) text (at ingest; searches use ``notices_of``)."""
    spans = line_spans(text)
    lines = [text[a:b] for a, b in spans]
    keys = [_line_key(line) for line in lines]
    # Table header rows repeat when a table spans pages; they label data and are not furniture.
    repeated = Counter(k for k, line in zip(keys, lines, strict=True)
                       if len(k) >= REPEATED_LINE_MIN_CHARS and "\t" not in line)
    zone_start = len(lines)
    for number, (line, key) in enumerate(zip(lines, keys, strict=True)):
        if (spans[number][0] >= NOTICE_ZONE_FROM * len(text) and 0 < len(key) <= NOTICE_HEADING_MAX_CHARS
                and NOTICE_HEADING.match(line.strip())):
            zone_start = number
            break
    flagged = [number >= zone_start or repeated[key] >= REPEATED_LINE
               or bool(NOTICE_LINE.search(line)) or bool(SOURCE_LINE.match(line))
               for number, (line, key) in enumerate(zip(lines, keys, strict=True))]
    starts: list[int] = []
    ends: list[int] = []
    for (a, b), is_boilerplate in zip(spans, flagged, strict=True):
        if not is_boilerplate or b <= a:
            continue
        if ends and ends[-1] + 1 >= a:  # adjacent lines merge into one span (the newline between them too)
            ends[-1] = b
        else:
            starts.append(a)
            ends.append(b)
    return BoilerplateMap(tuple(starts), tuple(ends))


# Maps of recorded spans by (source, text hash): the spans are a function of the text, and a search asks for the
# map of each candidate passage's report.
# Maps of recently used reports (an archive of thousands fits; a long-running server that sees many uploads
# keeps only the most recent ones).
_RECORDED_LIMIT = 4096
_recorded: OrderedDict[tuple[str, str], BoilerplateMap] = OrderedDict()
_recorded_lock = threading.Lock()


def notices_of(document: StoredDocument) -> BoilerplateMap:
    """The boilerplate lines recorded for a stored report at ingest."""
    key = (document.source, document.sha256)
    with _recorded_lock:  # searches run in several threads of the server
        found = _recorded.get(key)
        if found is None:
            found = _recorded[key] = BoilerplateMap.from_spans(document.boilerplate)
            if len(_recorded) > _RECORDED_LIMIT:
                _recorded.popitem(last=False)
        else:
            _recorded.move_to_end(key)
        return found


def passage_share(chunk: StoredChunk, document: StoredDocument) -> float:
    """Share of a passage's characters that are boilerplate."""
    return notices_of(document).share(chunk.start, chunk.end)


def passage_plain_text(chunk: StoredChunk, document: StoredDocument) -> str:
    """What a passage says outside boilerplate lines (a risk list just before the disclaimer, say)."""
    return notices_of(document).plain_text(document.text, chunk.start, chunk.end)


ISSUER_SUFFIX = re.compile(r"(?:证券|研究所|研究院|股份有限公司|有限公司|集团)+$")


def _issuer_forms(document: StoredDocument) -> set[str]:
    name = fold(document.info.institution).replace(" ", "")
    return {form for form in {name, ISSUER_SUFFIX.sub("", name)} if len(form) >= 2}


def share_beyond_issuer(query: Query, folded: str, document: StoredDocument) -> float:
    """The question's IDF-weighted term share in ``folded`` (folded, space-free text), with the issuing
    institution left out on both sides: every notice names its broker, so a question that names the broker
    (浙商证券, and so 浙商 and 证券) says nothing about whether a notice line is what it asks."""
    forms = _issuer_forms(document)
    for form in forms:
        folded = folded.replace(form, "")
    return query.weighted_share(folded, leave_out=forms)


def asks_about_boilerplate(question: str) -> bool:
    """True when the question asks about notice text itself (rating definitions, analysts, sources)."""
    return bool(ABOUT_BOILERPLATE.search(fold(question)))
