"""Report metadata: title, institution, date and analysts, read from the text where possible.

Values live in ``corpus/metadata.json``. Ingest fills in what it can detect for new reports and
never overwrites a value a person has written there, so the file doubles as a place to correct
what the heuristics got wrong.
"""

from __future__ import annotations

import json
import os
import re
import stat
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .documents import METADATA_FILE

FIELDS = ("title", "institution", "date", "analysts")

# Research houses often named only by e-mail domain in the report header.
EMAIL_DOMAINS = {
    "stocke.com.cn": "浙商证券", "csc.com.cn": "中信建投", "tfzq.com": "天风证券",
    "citics.com": "中信证券", "htsc.com": "华泰证券", "gtjas.com": "国泰君安", "cmschina.com.cn": "招商证券",
    "gf.com.cn": "广发证券", "essence.com.cn": "国投证券", "cicc.com.cn": "中金公司",
}
_INSTITUTION = re.compile(r"([\u4e00-\u9fff]{2,6}?(?:证券|资本|研究院|研究所|基金|期货|银行|咨询|智库))")
_COMPANY = re.compile(r"([\u4e00-\u9fff]{2}(?:证券|资本))股份有限公司")
_DATE = re.compile(r"(20\d{2})\s*年\s*(\d{1,2})\s*月(?:\s*(\d{1,2})\s*日)?"
                   r"|(20\d{2})[.\-/](\d{1,2})(?:[.\-/](\d{1,2}))?")
_ANALYST = re.compile(r"分析师[\s:：]*([\u4e00-\u9fff]{2,4})")
_BOILERPLATE = re.compile(
    r"证券研究报告|行业报告|评级|分析师|邮箱|证书|SAC|SFC|日期|请务必|免责|摘要|目录|专题|核心观点|月报|"
    r"^\s*\d|^\s*[一二三四五六七八九十]+、|@|\||20\d{2}\s*年")


@dataclass
class ReportInfo:
    """Human-facing description of a report, used in results and citations."""

    title: str = ""
    institution: str = ""
    date: str = ""
    analysts: list[str] = field(default_factory=list)

    def completeness(self) -> int:
        """How many fields are filled in."""
        return sum(bool(getattr(self, name)) for name in FIELDS)

    def label(self, source: str) -> str:
        """One-line label, e.g. ``浙商证券《ChatGPT: AI模型框架研究》2023-03-25``."""
        title = f"《{self.title}》" if self.title else source
        return " ".join(part for part in (f"{self.institution}{title}", self.date) if part)


def detect_info(text: str) -> ReportInfo:
    """Guess title, institution, date and analysts from the first part of a report."""
    head = text[:2500]
    info = ReportInfo()
    for date in _DATE.finditer(head):
        year, month, day = (date.group(1), date.group(2), date.group(3)) if date.group(1) else (
            date.group(4), date.group(5), date.group(6))
        if 1 <= int(month) <= 12 and (not day or 1 <= int(day) <= 31):
            info.date = f"{year}-{int(month):02d}" + (f"-{int(day):02d}" if day else "")
            break
    for domain, name in EMAIL_DOMAINS.items():
        if domain in head:
            info.institution = name
            break
    if not info.institution:
        found = _INSTITUTION.search(head) or _COMPANY.search(text)
        if found:
            info.institution = found.group(1)
    info.analysts = list(dict.fromkeys(_ANALYST.findall(head)))
    if info.date or info.institution:
        # Without a header (no date, no institution) the first lines are body text, not a title.
        for line in head.split("\n")[:40]:
            candidate = line.strip().strip("#").strip()
            if 6 <= len(candidate) <= 40 and not _BOILERPLATE.search(candidate) \
                    and candidate[-1] not in "。；：:，":
                info.title = candidate
                break
    return info


def metadata_path(corpus_dir: Path) -> Path:
    """Where the corpus' metadata file lives."""
    return corpus_dir / METADATA_FILE


def load_metadata(corpus_dir: Path) -> dict[str, ReportInfo]:
    """Read ``metadata.json``; a missing or unreadable file is an empty mapping."""
    raw = _read_raw(corpus_dir)
    result = {}
    for source, values in raw.items():
        if isinstance(values, dict):
            result[source] = ReportInfo(**{k: values[k] for k in FIELDS if k in values})
    return result


def merge_info(existing: ReportInfo | None, detected: ReportInfo) -> ReportInfo:
    """Keep every value already present in ``existing``; fill only empty fields from ``detected``."""
    if existing is None:
        return detected
    merged = ReportInfo(**asdict(existing))
    for name in FIELDS:
        if not getattr(merged, name):
            setattr(merged, name, getattr(detected, name))
    return merged


def _read_raw(corpus_dir: Path) -> dict:
    path = metadata_path(corpus_dir)
    if not path.is_file():  # a FIFO or folder of that name must not block or break a build
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def _write_json(path: Path, payload: dict) -> None:
    """Replace ``path`` atomically with ``payload``, keeping the file's permission bits.

    The temporary file is created like any new file (mode 0666 less the umask, not mkstemp's
    0600); when ``path`` exists its mode is copied, so a rewrite never changes who may read it.
    """
    temporary = path.with_name(f".metadata-{os.getpid()}-{threading.get_ident()}.json")
    temporary.unlink(missing_ok=True)  # a leftover of a crashed write
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            json.dump(payload, out, ensure_ascii=False, indent=2)
            out.write("\n")
        try:
            os.chmod(temporary, stat.S_IMODE(os.stat(path).st_mode))
        except FileNotFoundError:
            pass
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def save_metadata(corpus_dir: Path, infos: dict[str, ReportInfo]) -> None:
    """Write ``metadata.json`` atomically, sorted by file name, keeping the file's mode."""
    payload = {source: asdict(infos[source]) for source in sorted(infos)}
    _write_json(metadata_path(corpus_dir), payload)


def forget_report(corpus_dir: Path, source: str) -> bool:
    """Drop ``source``'s entry from ``metadata.json`` (its file was replaced); True if there was one.

    Other entries are written back exactly as they were read.
    """
    raw = _read_raw(corpus_dir)
    if source not in raw:
        return False
    del raw[source]
    _write_json(metadata_path(corpus_dir), raw)
    return True
