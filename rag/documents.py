"""Documents: read report files (TXT, Markdown, PDF) into canonical text with locations.

A ``Document`` keeps the canonical text (what citations quote), for each canonical character the
offset in the raw extracted text (so a citation can name the line of the original file), and for
PDFs the page on which each raw offset lies.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import logging
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .errors import RagError
from .textnorm import clean_text

SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".pdf")
METADATA_FILE = "metadata.json"
REPLACED_DIR = ".replaced"  # previous versions of replaced uploads, kept until the next build completes
PAGE_BREAK = "\n\n\n"
DEFAULT_MAX_FILE_MB = 20.0  # the same limit as an upload through the UI
MAX_FILE_MB_ENV = "RAG_MAX_FILE_MB"

log = logging.getLogger(__name__)


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


def max_file_bytes() -> int:
    """Per-file size limit of the corpus loader: ``RAG_MAX_FILE_MB`` (default 20 MB) in bytes."""
    raw = os.environ.get(MAX_FILE_MB_ENV, "").strip()
    if not raw:
        return int(DEFAULT_MAX_FILE_MB * 1024 * 1024)
    try:
        megabytes = float(raw)
    except ValueError:
        megabytes = -1.0
    if not megabytes > 0:
        raise RagError(f"{MAX_FILE_MB_ENV} 必须是正数（单位 MB），当前为 {raw!r} / "
                       f"{MAX_FILE_MB_ENV} must be a positive number of megabytes")
    return int(megabytes * 1024 * 1024)


def format_size(size: int) -> str:
    """A size in bytes for people: ``12.3 MB``, or ``4.0 KB`` below one megabyte."""
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size / (1024 * 1024):.1f} MB"


def read_regular_file(path: Path, name: str | None = None, follow_symlinks: bool = True) -> bytes:
    """The bytes of ``path`` if it is a regular file; raise ``RagError`` for anything else.

    The file is opened non-blocking and checked with ``fstat`` on the open descriptor, so a FIFO
    or device swapped in after an earlier check is refused instead of blocking the reader.
    """
    name = name or path.name
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as exc:
        raise RagError(f"{name}: 无法读取文件 / cannot read file ({exc.strerror})") from exc
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise RagError(f"{name}: 不是普通文件（管道、设备或套接字），已跳过 / "
                           "not a regular file (FIFO, device or socket), skipped")
        try:
            return handle.read()
        except OSError as exc:
            raise RagError(f"{name}: 无法读取文件 / cannot read file ({exc.strerror})") from exc


def file_sha256(path: Path) -> str:
    """SHA-256 of a regular file's bytes."""
    return hashlib.sha256(read_regular_file(path)).hexdigest()


def _utf16_without_bom(data: bytes) -> str | None:
    """Guess BOM-less UTF-16 from where the NUL bytes sit; None when the bytes do not look like it.

    ASCII characters in UTF-16 put their NUL on one parity only (odd offsets little-endian, even
    big-endian), while binary files have NULs at both.
    """
    sample = data[:8192]
    if len(data) % 2 or len(sample) < 4:
        return None
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    for zeros, other, encoding in ((odd, even, "utf-16-le"), (even, odd, "utf-16-be")):
        if zeros >= max(2, len(sample) // 40) and other == 0:
            try:
                text = data.decode(encoding)
            except UnicodeDecodeError:
                continue
            controls = sum(1 for ch in text[:4096] if ord(ch) < 32 and ch not in "\t\n\r\x0c")
            if controls == 0:
                return text
    return None


def _decode(data: bytes, name: str) -> str:
    # UTF-32 first: its little-endian BOM begins with UTF-16's.
    for bom, encoding in ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
                          (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError as exc:
                raise RagError(f"{name}: 文本编码损坏（{encoding.upper()}）/ damaged {encoding.upper()} text") from exc
    if b"\x00" in data[:8192]:
        text = _utf16_without_bom(data)
        if text is not None:
            return text
        raise RagError(f"{name}: 二进制文件，无法读取 / binary file, not text")
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise RagError(f"{name}: 无法识别的文本编码 / unknown text encoding (expected UTF-8 or GB18030)")


class _CollectWarnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().strip()
        if message and message not in self.messages:
            self.messages.append(message)


# pypdf's logger is process-wide: one PDF read at a time, so each warning is told with its own file.
_PDF_LOCK = threading.Lock()


def _read_pdf(data: bytes, name: str) -> tuple[str, list[int]]:
    from pypdf import PdfReader

    # pypdf logs problems it worked around ("EOF marker not found") without naming the file:
    # collect them here and report them in our own line, with the file name.
    pypdf_log = logging.getLogger("pypdf")
    collector = _CollectWarnings()
    with _PDF_LOCK:
        propagate = pypdf_log.propagate
        pypdf_log.addHandler(collector)
        pypdf_log.propagate = False
        try:
            reader = PdfReader(io.BytesIO(data))
            pages = [page.extract_text() or "" for page in reader.pages]
        except Exception as exc:  # pypdf raises many internal types on malformed files
            notes = f"; {'; '.join(collector.messages)}" if collector.messages else ""
            raise RagError(f"{name}: PDF 文件损坏或无法解析 / unreadable PDF ({exc}{notes})") from exc
        finally:
            pypdf_log.removeHandler(collector)
            pypdf_log.propagate = propagate
    if collector.messages:
        log.warning("%s: PDF 有问题但已读取 / PDF read with warnings: %s", name, "; ".join(collector.messages))
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
    data = read_regular_file(path, name)
    page_starts = None
    if suffix == ".pdf":
        raw, page_starts = _read_pdf(data, name)
    else:
        raw = _decode(data, name)
    text, origin = clean_text(raw)
    if not text.strip():
        raise RagError(f"{name}: 文件为空或没有可提取的文字 / empty file or no extractable text")
    line_starts = [0] + [i + 1 for i, ch in enumerate(raw) if ch == "\n"]
    return Document(source=name, sha256=hashlib.sha256(data).hexdigest(), text=text, origin=origin,
                    raw_line_starts=line_starts, raw_page_starts=page_starts)


@dataclass
class CorpusFile:
    """A report file the loader will read: its name in the corpus, the resolved path, its size."""

    name: str
    path: Path
    size: int


def _skip(name: str, reason: str) -> LoadFailure:
    return LoadFailure(name, f"{name}: {reason}")


def scan_corpus(corpus_dir: Path, max_bytes: int | None = None) -> tuple[list[CorpusFile], list[LoadFailure]]:
    """The report files of ``corpus_dir`` to read, and one notice for every other entry.

    Only regular files directly in the folder are read; a symbolic link is followed only when
    it resolves to a regular file inside the folder. Hidden entries, sub-folders, dangling
    links, links that leave the folder, FIFOs, devices, sockets and files over ``max_bytes``
    (default ``max_file_bytes()``) are each reported by a ``LoadFailure``: nothing is skipped
    silently. Only the metadata file and the ``.replaced`` folder of this tool are left out
    without a word. Nothing is opened here (opening a FIFO would block): ``lstat``/``stat`` only.
    """
    if not corpus_dir.is_dir():
        raise RagError(f"语料目录不存在 / corpus folder not found: {corpus_dir}")
    limit = max_file_bytes() if max_bytes is None else max_bytes
    root = corpus_dir.resolve()
    files: list[CorpusFile] = []
    notices: list[LoadFailure] = []
    for entry in sorted(corpus_dir.iterdir()):
        name = entry.name
        if name == REPLACED_DIR:
            continue
        try:
            info = os.lstat(entry)
        except OSError:
            continue  # removed while we were listing
        if name == METADATA_FILE and stat.S_ISREG(info.st_mode):
            continue
        if name.startswith("."):
            folder = stat.S_ISDIR(info.st_mode)
            chinese, english = ("隐藏文件夹", "hidden folder") if folder else ("隐藏文件", "hidden file")
            notices.append(_skip(name, f"{chinese}，已跳过（以 . 开头的名称不读取） / {english} skipped (names "
                                       "starting with '.' are not read)"))
            continue
        target = root / name
        if stat.S_ISLNK(info.st_mode):
            # The suffix check looks at the link's name, so where it leads must be checked here.
            try:
                target = entry.resolve(strict=True)
                info = os.stat(target)
            except (OSError, RuntimeError):
                notices.append(_skip(name, "链接指向的文件不存在，已跳过 / dangling symbolic link, skipped"))
                continue
            if not target.is_relative_to(root):
                notices.append(_skip(name, "链接指向语料目录之外，出于安全考虑不读取 / symbolic link leads outside "
                                           "the corpus folder, not read"))
                continue
        if stat.S_ISDIR(info.st_mode):
            notices.append(_skip(name, "子文件夹不会被读取，请把报告直接放在语料目录中 / sub-folder skipped (only "
                                       "files directly in the corpus folder are read)"))
        elif not stat.S_ISREG(info.st_mode):
            notices.append(_skip(name, "特殊文件（管道、设备或套接字），已跳过 / special file (FIFO, device or "
                                       "socket) skipped"))
        elif info.st_size > limit:
            notices.append(_skip(name, f"文件大小 {format_size(info.st_size)} 超过上限 "
                                       f"{format_size(limit)}，已跳过 / file larger than the limit, skipped "
                                       f"(raise it with {MAX_FILE_MB_ENV} or `rag index --max-file-mb`)"))
        else:
            files.append(CorpusFile(name, target, info.st_size))
    return files, notices


def corpus_files(corpus_dir: Path) -> list[Path]:
    """Resolved paths of the report files ``load_corpus`` reads (see ``scan_corpus``)."""
    return [file.path for file in scan_corpus(corpus_dir)[0]]


def load_corpus(corpus_dir: Path, max_bytes: int | None = None) -> tuple[list[Document], list[LoadFailure]]:
    """Load every report in ``corpus_dir``; unreadable or skipped entries are reported, not fatal.

    A report is named by its entry in the folder (a link inside the folder keeps its own name).
    """
    files, failures = scan_corpus(corpus_dir, max_bytes)
    documents = []
    for file in files:
        try:
            documents.append(load_document(file.path, source=file.name))
        except RagError as exc:
            failures.append(LoadFailure(file.name, str(exc)))
    failures.sort(key=lambda failure: failure.source)
    return documents, failures
