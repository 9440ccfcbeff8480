"""The Python API: one object that the CLI, the UI and the benchmark all call.

    qa = ReportQA()                      # ./corpus, ./index, the bundled model
    qa.build()                           # documents → chunks → embeddings → FAISS + BM25
    qa.search("GPT-3 的参数量是多少？")   # ranked, cited passages
    qa.ask("哪些公司是通义大模型的合作伙伴？")  # extractive answer with [n] markers
    qa.cite("004_e0d667138c034a95.txt:L12-L15")
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from .answer import (
    ANSWER_SENTENCES,
    CAUTION,
    CLOSEST_TITLE,
    SIMILARITY_WEIGHT,
    AbstentionSettings,
    Answer,
    compose_answer,
    excerpt,
    format_sources,
    has_dense_scores,
)
from .answerability import TOP_PASSAGES
from .chunking import ChunkerSettings
from .cite import CitationView, find_phrase, lookup
from .documents import REPLACED_DIR, SUPPORTED_SUFFIXES, file_sha256, load_document, max_file_bytes
from .embed import Embedder, EmbeddingCache, load_embedder
from .errors import RagError
from .index import BuildReport, Index, build_index, read_manifest
from .metadata import forget_report
from .rerank import load_reranker
from .retrieve import MAX_QUERY_CHARS, MODES, FusionSettings, Hit, Retriever

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
CLOSEST_AFTER_REFUSAL = 3


@dataclass
class Settings:
    """Every tunable of the pipeline in one place."""

    chunker: ChunkerSettings = field(default_factory=ChunkerSettings)
    fusion: FusionSettings = field(default_factory=FusionSettings)
    abstention: AbstentionSettings = field(default_factory=AbstentionSettings)
    answer_sentences: int = ANSWER_SENTENCES
    answer_similarity_weight: float = SIMILARITY_WEIGHT


@dataclass
class SearchResult:
    """Hits for one question (``error`` is set instead when the question was unusable)."""

    query: str
    hits: list[Hit] = field(default_factory=list)
    error: str | None = None
    warning: str | None = None

    def to_json(self) -> dict:
        """The JSON contract: ``{"query", "hits": [...]}`` plus ``error``/``warning`` when set."""
        payload: dict = {"query": self.query, "hits": [h.to_json() for h in self.hits]}
        if self.error:
            payload["error"] = self.error
        if self.warning:
            payload["warning"] = self.warning
        return payload


@dataclass
class AskResult(SearchResult):
    """A search plus the extractive answer built from it."""

    answer: str = ""
    abstained: bool = False
    sources: list[Hit] = field(default_factory=list)
    caution: bool = False
    unanswerable_probability: float | None = None

    def to_json(self) -> dict:
        """Search JSON plus ``answer``, ``abstained``, ``caution``, ``unanswerable_probability`` and the
        cited ``sources``."""
        payload = super().to_json()
        payload.update({"answer": self.answer, "abstained": self.abstained, "caution": self.caution,
                        "unanswerable_probability": self.unanswerable_probability,
                        "sources": [{"marker": n, "citation": h.citation, "label": h.document.label}
                                    for n, h in enumerate(self.sources, start=1)]})
        return payload

    @property
    def closest(self) -> list[Hit]:
        """After a refusal, the best passages found anyway, so a reader can check the refusal."""
        return self.hits[:CLOSEST_AFTER_REFUSAL] if self.abstained and not self.error else []

    def render(self) -> str:
        """Answer and numbered sources as plain text."""
        if self.error:
            return self.error
        lines = [CAUTION, self.answer] if self.caution else [self.answer]
        if self.sources:
            lines += ["", "来源："] + format_sources(self.sources)
        if self.closest:
            lines += ["", CLOSEST_TITLE] + [f"{line}\n    {excerpt(hit.chunk.text)}"
                                            for line, hit in zip(format_sources(self.closest), self.closest,
                                                                 strict=True)]
        return "\n".join(lines)


def clean_query(query: str) -> tuple[str, str | None]:
    """Drop control characters and trim; returns (query, warning). Raises for empty questions."""
    if query is not None and not isinstance(query, str):
        raise RagError(f"问题必须是文本，收到的是 {type(query).__name__} / the question must be a string")
    cleaned = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in query or "")
    cleaned = re.sub(r"\s+", " ", cleaned).strip()
    if not cleaned:
        raise RagError("问题为空，请输入问题 / empty question")
    warning = None
    if len(cleaned) > MAX_QUERY_CHARS:
        warning = f"问题过长，只使用前 {MAX_QUERY_CHARS} 个字符 / question truncated to {MAX_QUERY_CHARS} characters"
        cleaned = cleaned[:MAX_QUERY_CHARS]
    return cleaned, warning


def clamp_top_k(top_k: int) -> int:
    """``top_k`` limited to 1..50 passages."""
    return max(1, min(int(top_k), 50))


def default_corpus_dir() -> Path:
    """``RAG_CORPUS`` or ./corpus."""
    return Path(os.environ.get("RAG_CORPUS", "corpus"))


def default_index_dir() -> Path:
    """``RAG_INDEX`` or ./index."""
    return Path(os.environ.get("RAG_INDEX", "index"))


class ReportQA:
    """Question answering over one corpus folder and its index."""

    def __init__(self, corpus_dir: Path | str | None = None, index_dir: Path | str | None = None,
                 model: str | None = None, settings: Settings | None = None,
                 cache: EmbeddingCache | None = None, reranker: str | None = None):
        self.corpus_dir = Path(corpus_dir) if corpus_dir else default_corpus_dir()
        self.index_dir = Path(index_dir) if index_dir else default_index_dir()
        self.model = model
        self.settings = settings or Settings()
        self.cache = cache
        self.reranker = reranker
        self._embedder: Embedder | None = None
        self._retriever: Retriever | None = None
        self._loaded_at: float | None = None
        self._lock = threading.RLock()
        self._build_lock = threading.Lock()

    @property
    def embedder(self) -> Embedder:
        """The embedding model, loaded on first use."""
        if self._embedder is None:
            self._embedder = load_embedder(self.model)
        return self._embedder

    def build(self, force: bool = False, progress=None, log=lambda message: None) -> BuildReport:
        """Index the corpus (only changed passages are embedded); the live index swaps atomically.

        Searches keep using the previous index while a build runs; builds run one at a time.
        """
        with self._build_lock:
            report = build_index(self.corpus_dir, self.index_dir, self.embedder, self.settings.chunker,
                                 cache=self.cache or EmbeddingCache(), force=force, progress=progress, log=log)
            # Replaced uploads were kept only until a build indexed what replaced them.
            shutil.rmtree(self.corpus_dir / REPLACED_DIR, ignore_errors=True)
        with self._lock:
            self._retriever = None  # reloaded on next use; the old index served queries meanwhile
        return report

    @property
    def building(self) -> bool:
        """True while a build is running (searches meanwhile use the previous index)."""
        return self._build_lock.locked()

    def index_status(self) -> str | None:
        """None when an index is ready, else a Chinese explanation of what is missing."""
        try:
            _ = self.retriever
        except RagError as exc:
            if self.building:
                return "索引正在建立，请稍候 / the index is being built, please wait"
            return str(exc)
        return None

    @property
    def index(self) -> Index:
        """The loaded index (reloaded when a newer build has been swapped in)."""
        return self.retriever.index

    @property
    def retriever(self) -> Retriever:
        """Retriever over the current index, reloaded when the index on disk changes."""
        with self._lock:
            manifest = read_manifest(self.index_dir)
            built_at = manifest.get("built_at") if manifest else None
            if self._retriever is None or built_at != self._loaded_at:
                index = Index(self.index_dir)
                embedder = self.embedder
                index.check_embedder(embedder)
                self._retriever = Retriever(index, embedder, self.settings.fusion, load_reranker(self.reranker))
                self._loaded_at = index.manifest.get("built_at")
            return self._retriever

    def search(self, query: str, top_k: int = 5, mode: str = "hybrid",
               sources: list[str] | None = None) -> SearchResult:
        """Ranked passages for a question; an unusable question gives a result with ``error``."""
        if mode not in MODES:
            raise RagError(f"未知检索模式 {mode!r}，可选 {', '.join(MODES)} / unknown mode")
        try:
            cleaned, warning = clean_query(query)
        except RagError as exc:
            return SearchResult(query=query if isinstance(query, str) else "", error=str(exc))
        top_k = clamp_top_k(top_k)
        self.check_sources(sources)
        hits = self.retriever.search(cleaned, top_k=top_k, mode=mode, sources=sources or None)
        return SearchResult(query=query, hits=hits, warning=warning)

    def ask(self, query: str, top_k: int = 5, mode: str = "hybrid",
            sources: list[str] | None = None) -> AskResult:
        """An extractive answer built only from the retrieved passages, with citation markers.

        Whether to answer is judged on at least ``TOP_PASSAGES`` hits whatever ``top_k`` is, so
        asking for fewer passages does not change the decision; only ``top_k`` are returned and quoted.
        """
        top_k = clamp_top_k(top_k)
        found = self.search(query, top_k=max(top_k, TOP_PASSAGES), mode=mode, sources=sources)
        if found.error:
            return AskResult(query=found.query, error=found.error, answer=found.error, abstained=True)
        answer = self.compose(clean_query(query)[0], found.hits, max_passages=min(3, top_k))
        return AskResult(query=found.query, hits=found.hits[:top_k], warning=found.warning, answer=answer.text,
                         abstained=answer.abstained, sources=answer.sources, caution=answer.caution,
                         unanswerable_probability=answer.unanswerable_probability)

    def compose(self, query: str, hits: list[Hit], max_passages: int = 3) -> Answer:
        """The extractive answer to ``query`` from ``hits``: what ``ask`` replies and ``rag eval`` measures."""
        def similarities(hit: Hit) -> dict[str, float]:
            return self.retriever.sentence_similarities(query, hit.chunk)

        return compose_answer(query, hits, self.retriever.idf, self.settings.abstention,
                              max_sentences=self.settings.answer_sentences, max_passages=max_passages,
                              # bm25-only hits: choose sentences by terms alone
                              similarities=similarities if has_dense_scores(hits) else None,
                              similarity_weight=self.settings.answer_similarity_weight)

    def check_sources(self, sources: list[str] | None) -> None:
        """Raise ``RagError`` naming every report in a search filter that is not in the index.

        An unknown name would otherwise filter every passage out and read as "not found".
        """
        unknown = [str(source) for source in sources or [] if source not in self.index.documents]
        if unknown:
            raise RagError(f"筛选条件中的报告不存在：{'、'.join(unknown)} / unknown report in the filter: "
                           f"{', '.join(unknown)}")

    def cite(self, citation: str) -> CitationView:
        """Look up a citation ID (a line range that is no passage shows exactly those lines)."""
        return lookup(self.index, citation, corpus_dir=self.corpus_dir)

    def find(self, phrase: str, sources: list[str] | None = None) -> list[CitationView]:
        """Passages that contain a quoted phrase."""
        self.check_sources(sources)
        return find_phrase(self.index, phrase, sources)

    def reports(self) -> dict[str, str]:
        """File name → human label of every indexed report."""
        return {source: doc.label for source, doc in sorted(self.index.documents.items())}

    def add_report(self, path: Path | str, name: str | None = None, progress=None,
                   replace: bool = False) -> BuildReport:
        """Copy a report into the corpus (validated, name sanitised) and index it incrementally.

        An upload never overwrites silently: a report of the same name is only replaced when
        ``replace`` is true; otherwise ``ReportExists`` is raised (its ``identical`` flag says the
        same bytes are already there, so nothing needs doing). A replaced file is kept in the
        corpus' hidden ``.replaced/`` folder until the next build completes, and its entry in
        ``metadata.json`` is reset so the old title is not shown for the new content.
        """
        path = Path(path)
        safe_name = safe_file_name(name or path.name)
        if Path(safe_name).suffix.lower() not in SUPPORTED_SUFFIXES:
            raise RagError(f"{safe_name}: 不支持的文件类型，仅支持 TXT、Markdown、PDF / unsupported file type")
        size = path.stat().st_size
        if size == 0:
            raise RagError(f"{safe_name}: 文件为空 / empty file")
        limit = min(MAX_UPLOAD_BYTES, max_file_bytes())  # the build would skip a larger file anyway
        if size > limit:
            raise RagError(f"{safe_name}: 文件超过 {limit / (1024 * 1024):g} MB / file too large")
        load_document(path, source=safe_name)  # raises a clear error before the corpus is touched
        self.corpus_dir.mkdir(parents=True, exist_ok=True)
        target = self.corpus_dir / safe_name
        with self._build_lock:  # no build may list the corpus between the backup and the swap
            replaced = self._check_existing(path, target, replace)
            temporary = self.corpus_dir / f".upload-{os.getpid()}-{safe_name}"
            shutil.copyfile(path, temporary)
            if replaced:
                backup = self.corpus_dir / REPLACED_DIR / f"{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns()}"
                backup.mkdir(parents=True)
                shutil.copy2(target, backup / safe_name)
            os.replace(temporary, target)
            # The upload is new content: whatever metadata.json said about an earlier file of
            # this name (a replaced or deleted report) no longer describes it.
            forget_report(self.corpus_dir, safe_name)
        return self.build(progress=progress)

    @staticmethod
    def _check_existing(upload: Path, target: Path, replace: bool) -> bool:
        """True when ``target`` exists and is to be replaced; raise when the upload must not proceed."""
        try:
            info = os.lstat(target)
        except FileNotFoundError:
            return False
        name = target.name
        if not stat.S_ISREG(info.st_mode):
            raise ReportExists(f"语料目录中已有同名的文件夹、链接或特殊文件 {name}，未做更改 / "
                               f"{name} already exists in the corpus and is not a regular file; nothing changed")
        if file_sha256(target) == file_sha256(upload):
            raise ReportExists(f"报告 {name} 已存在，内容完全相同，无需更改 / {name} is already in the corpus "
                               "with identical content; nothing changed", identical=True)
        if not replace:
            raise ReportExists(f"已有同名报告 {name}（内容不同），未覆盖。如需替换，请勾选“替换同名报告”后重新上传，"
                               f"或改名后上传 / a different report named {name} already exists; not overwritten "
                               "(pass replace=True to replace it)")
        return True


class ReportExists(RagError):
    """An upload was refused because a report of that name exists (``identical``: same bytes)."""

    def __init__(self, message: str, identical: bool = False):
        super().__init__(message)
        self.identical = identical


def safe_file_name(name: str) -> str:
    """A plain file name that cannot leave the corpus folder (no separators, no dot-files)."""
    base = Path(name.replace("\\", "/")).name
    base = re.sub(r"[\x00-\x1f<>:\"|?*]", "_", base).strip(" .")
    if not base or base in (".", "..") or base.startswith("."):
        raise RagError("文件名无效 / invalid file name")
    return base[:150]
