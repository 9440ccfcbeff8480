"""Documents: read report files (TXT, Markdown, PDF) into canonical text with locations.

A ``Document`` keeps the canonical text (what citations quote), for each canonical character the
offset in the raw extracted text (so a citation can name the line of the original file), and for
PDFs the page on which each raw offset lies.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import RagError
from .textnorm import clean_text

SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".pdf")
METADATA_FILE = "metadata.json"
PAGE_BREAK = "\n\n\n"


@dataclass
class Document:
    """One report: its canonical text and how to map offsets back to lines and pages."""

    source: str
    sha256: str
    text: str
    origin: list[int] = field(repr=False)
    raw_line_starts: list[int] = field(repr=False)
    raw_page_starts: list[int] | None = field(default=None, repr=False)

    def raw_offset(self, offset: int) -> int:
        """Offset in the raw text of canonical offset ``offset`` (end offsets map past the char)."""
        if not self.origin:
            return 0
        if offset >= len(self.origin):
            return self.origin[-1] + 1
        return self.origin[offset]

    def line_of(self, offset: int) -> int:
        """1-based line number, in the original file, of canonical offset ``offset``."""
        return bisect.bisect_right(self.raw_line_starts, self.raw_offset(offset))

    def page_of(self, offset: int) -> int | None:
        """1-based PDF page of canonical offset ``offset``, or None for text files."""
        if self.raw_page_starts is None:
            return None
        return bisect.bisect_right(self.raw_page_starts, self.raw_offset(offset))


@dataclass
class LoadFailure:
    """A file that could not be read, with a one-line bilingual reason."""

    source: str
    reason: str


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _decode(data: bytes, name: str) -> str:
    if b"\x00" in data[:8192]:
        raise RagError(f"{name}: 二进制文件，无法读取 / binary file, not text")
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise RagError(f"{name}: 无法识别的文本编码 / unknown text encoding (expected UTF-8 or GB18030)")


def _read_pdf(path: Path) -> tuple[str, list[int]]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, OSError, KeyError, TypeError) as exc:
        raise RagError(f"{path.name}: PDF 文件损坏或无法解析 / unreadable PDF ({exc})") from exc
    except Exception as exc:  # pypdf raises many internal types on malformed files
        raise RagError(f"{path.name}: PDF 文件损坏或无法解析 / unreadable PDF ({exc})") from exc
    starts, parts, position = [], [], 0
    for page_text in pages:
        starts.append(position)
        parts.append(page_text)
        position += len(page_text) + len(PAGE_BREAK)
    return PAGE_BREAK.join(parts), starts


def load_document(path: Path, source: str | None = None) -> Document:
    """Read one report file into a ``Document``; raise ``RagError`` with a clear reason if unusable."""
    name = source or path.name
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise RagError(f"{name}: 不支持的文件类型 {suffix or '(无扩展名)'} / unsupported file type "
                       f"(supported: {', '.join(SUPPORTED_SUFFIXES)})")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RagError(f"{name}: 无法读取文件 / cannot read file ({exc.strerror})") from exc
    page_starts = None
    if suffix == ".pdf":
        raw, page_starts = _read_pdf(path)
    else:
        raw = _decode(data, name)
    text, origin = clean_text(raw)
    if not text.strip():
        raise RagError(f"{name}: 文件为空或没有可提取的文字 / empty file or no extractable text")
    line_starts = [0] + [i + 1 for i, ch in enumerate(raw) if ch == "\n"]
    return Document(source=name, sha256=hashlib.sha256(data).hexdigest(), text=text, origin=origin,
                    raw_line_starts=line_starts, raw_page_starts=page_starts)


def corpus_files(corpus_dir: Path) -> list[Path]:
    """Report files in ``corpus_dir`` (sorted, hidden files and the metadata file skipped)."""
    if not corpus_dir.is_dir():
        raise RagError(f"语料目录不存在 / corpus folder not found: {corpus_dir}")
    return sorted(p for p in corpus_dir.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name != METADATA_FILE)


def load_corpus(corpus_dir: Path) -> tuple[list[Document], list[LoadFailure]]:
    """Load every report in ``corpus_dir``; unreadable files are reported, not fatal."""
    documents, failures = [], []
    for path in corpus_files(corpus_dir):
        try:
            documents.append(load_document(path))
        except RagError as exc:
            failures.append(LoadFailure(path.name, str(exc)))
    return documents, failures
