"""The Python API: one object that the CLI, the UI, the benchmark and the eval harness all call.

    qa = ReportQA()                      # ./corpus, ./index, the bundled model
    qa.build()                           # documents → chunks → embeddings → store
    qa.search("GPT-3 的参数量是多少？")   # ranked, cited passages
    qa.ask("哪些公司是通义大模型的合作伙伴？")  # extractive answer with [n] markers
    qa.cite("004_e0d667138c034a95.txt:L12-L15")

A question is analysed once (``analyse`` → ``Query``) and that ``Query`` goes to retrieval and to
answer composition.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .answer import AnswerSettings, compose_answer
from .answerability import TOP_PASSAGES
from .build import BuildReport, build_index, update_index
from .chunking import ChunkerSettings
from .cite import CitationView, find_phrase, lookup
from .documents import REPLACED_DIR, SUPPORTED_SUFFIXES, file_sha256, load_document, max_file_bytes
from .embed import Embedder, EmbeddingCache, QueryEncoder, load_embedder
from .errors import NotFoundError, RagError
from .followup import standalone_turns
from .fusion import FusionSettings
from .generate import generate_answer
from .llm import LLMClient, LLMConfig
from .metadata import forget_report
from .query import Query, analyse
from .rerank import Reranker, load_cross_encoder
from .results import Answer, AskResult, GeneratedAnswer, Hit, SearchResult
from .retrieve import MODES, Retriever
from .store import Store, lender, open_store, store_setting, store_version, verify_store
from .versions import REBUILD_HINT

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_TOP_K = 50


@dataclass
class Settings:
    """Every tunable of the pipeline in one place (fitted values come from ``rag/data/fitted.json``)."""

    chunker: ChunkerSettings = field(default_factory=ChunkerSettings)
    fusion: FusionSettings = field(default_factory=FusionSettings)
    answer: AnswerSettings = field(default_factory=AnswerSettings)


def clamp_top_k(top_k: int) -> int:
    """``top_k`` limited to 1..``MAX_TOP_K`` passages."""
    return max(1, min(int(top_k), MAX_TOP_K))


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
                 cache: EmbeddingCache | None = None, reranker: str | None = None,
                 store_location: str | None = None):
        # Which store holds the index: "faiss" (in index_dir) or a milvus:// location ($RAG_STORE).
        self.store_location = store_setting(store_location)
        self.corpus_dir = Path(corpus_dir) if corpus_dir else default_corpus_dir()
        self.index_dir = Path(index_dir) if index_dir else default_index_dir()
        self.model = model
        self.settings = settings or Settings()
        self.cache = cache
        self.reranker = reranker
        self._embedder: Embedder | None = None
        self._encoder: QueryEncoder | None = None
        self._store: Store | None = None
        self._retriever: Retriever | None = None
        self._cross_encoder: Reranker | None = None
        self._cross_encoder_loaded = False
        self._loaded_version: str | None = None
        self._lock = threading.RLock()
        self._build_lock = threading.Lock()

    @property
    def embedder(self) -> Embedder:
        """The embedding model, loaded on first use."""
        if self._embedder is None:
            self._embedder = load_embedder(self.model)
        return self._embedder

    @property
    def encoder(self) -> QueryEncoder:
        """Question vectors (cached per question text)."""
        if self._encoder is None:
            self._encoder = QueryEncoder(self.embedder)
        return self._encoder

    def configure(self, settings: Settings) -> None:
        """Use other settings from the next question on (the tuning commands sweep through this)."""
        with self._lock:
            self.settings = settings
            self._retriever = None

    def build(self, force: bool = False, progress=None, log=lambda message: None,
              write_metadata: bool = False) -> BuildReport:
        """Index the corpus (only changed passages are embedded); the live index swaps atomically.

        Searches keep using the previous index while a build runs; builds run one at a time.
        ``write_metadata`` also saves the detected report descriptions into ``corpus/metadata.json``.
        """
        with self._build_lock:
            report = build_index(self.corpus_dir, self.index_dir, self.embedder, self.settings.chunker,
                                 cache=self.cache or EmbeddingCache(), force=force, progress=progress, log=log,
                                 write_metadata=write_metadata, store=self.store_location)
            self._built()
        return report

    def _built(self) -> None:
        """After a build or update: replaced uploads were kept only until it indexed what replaced them;
        the store is reloaded on next use (the old index served queries meanwhile, and lends the new one the
        segments both share)."""
        shutil.rmtree(self.corpus_dir / REPLACED_DIR, ignore_errors=True)
        with self._lock:
            self._loaded_version = self._retriever = None

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
    def store(self) -> Store:
        """The loaded index (reloaded when a newer build has been swapped in)."""
        return self.retriever.store

    @property
    def retriever(self) -> Retriever:
        """Retriever over the current index; the store is reloaded when another version goes live."""
        with self._lock:
            version = store_version(self.index_dir, self.store_location)
            if self._store is None or version != self._loaded_version:
                lending = lender(self._store)
                self._store = self._retriever = None  # freed before the new one loads, unless it lends segments
                store = open_store(self.index_dir, self.store_location, previous=lending)
                del lending
                embedder = self.embedder
                if embedder.name != store.manifest["model"] or embedder.dimension != store.manifest.get("dimension"):
                    raise RagError(f"索引由模型 {store.manifest['model']} 建立，当前模型为 {embedder.name}。"
                                   "请运行 `rag index` 重新建立索引 / run `rag index` to rebuild it")
                self._store, self._loaded_version, self._retriever = store, version, None
            if self._retriever is None:
                if not self._cross_encoder_loaded:  # a model folder: load it once per process
                    self._cross_encoder, self._cross_encoder_loaded = load_cross_encoder(self.reranker), True
                self._retriever = Retriever(self._store, self.encoder, self.settings.fusion, self._cross_encoder)
            return self._retriever

    def analyse(self, question: str) -> Query:
        """The ``Query`` for a question against the loaded index (raises ``RagError`` when empty)."""
        return analyse(question, self.store)

    def search(self, question: str, top_k: int = 5, mode: str = "hybrid",
               sources: list[str] | None = None, history: Sequence[str] | None = None) -> SearchResult:
        """Ranked passages for a question; an unusable question gives a result with ``error``.

        ``history`` holds the chat's earlier questions (oldest first): a follow-up ("那GPT-4呢？",
        "它是哪年推出的？") is searched as the standalone question it stands for (``rag.followup``),
        which the result reports as ``standalone``.
        """
        if mode not in MODES:
            raise RagError(f"未知检索模式 {mode!r}，可选 {', '.join(MODES)} / unknown mode")
        retriever = self.retriever
        self.check_sources(sources)
        rewrite = standalone_turns(history, question or "")[0] if history else None
        try:
            query = analyse(rewrite.text if rewrite else question, retriever.store)
        except RagError as exc:
            return SearchResult(query=question if isinstance(question, str) else "", error=str(exc))
        try:
            hits = retriever.search(query, top_k=clamp_top_k(top_k), mode=mode, sources=sources or None)
        except (IndexError, KeyError, ValueError, RuntimeError) as exc:
            # Damage the size check cannot see (bytes changed in place) surfaces here: say what to do.
            raise RagError(f"索引已损坏：{self.index_dir}（{type(exc).__name__}: {exc}）。{REBUILD_HINT}") from exc
        return SearchResult(query=question, hits=hits, warning=query.warning, analysed=query,
                            standalone=query.text if rewrite and rewrite.rewritten else None)

    def ask(self, question: str, top_k: int = 5, mode: str = "hybrid",
            sources: list[str] | None = None, history: Sequence[str] | None = None,
            generate: bool = False, llm: LLMConfig | None = None,
            on_text: Callable[[str], None] | None = None) -> AskResult:
        """An extractive answer built only from the retrieved passages, with citation markers.

        Whether to answer is judged on at least ``TOP_PASSAGES`` hits whatever ``top_k`` is, so
        asking for fewer passages does not change the decision; only ``top_k`` are returned and quoted.
        ``history``: the chat's earlier questions, as for ``search``. ``generate`` also asks the
        OpenAI-compatible LLM of ``llm`` (default: ``RAG_LLM_*``) and checks its answer sentence by
        sentence (``result.generated``; ``on_text`` sees the raw text grow); the extractive answer
        stays in ``answer`` as the fallback.
        """
        top_k = clamp_top_k(top_k)
        found = self.search(question, top_k=max(top_k, TOP_PASSAGES), mode=mode, sources=sources, history=history)
        if found.error or found.analysed is None:
            return AskResult(query=found.query, error=found.error, answer=found.error or "", abstained=True)
        answer = self.compose(found.analysed, found.hits, max_passages=min(3, top_k))
        generated = self.generate(found.analysed, found.hits, llm, on_text) if generate else None
        return AskResult(query=found.query, hits=found.hits[:top_k], warning=found.warning, answer=answer.text,
                         abstained=answer.abstained, sources=answer.sources, caution=answer.caution,
                         unanswerable_probability=answer.unanswerable_probability, analysed=found.analysed,
                         standalone=found.standalone, generated=generated)

    def generate(self, query: Query, hits: list[Hit], llm: LLMConfig | None = None,
                 on_text: Callable[[str], None] | None = None) -> GeneratedAnswer:
        """The checked generated answer to ``query`` from ``hits`` (``shown=False`` with a notice on failure)."""
        config = llm or LLMConfig.from_env()
        if config is None:
            return GeneratedAnswer(shown=False, notice="未配置大模型（RAG_LLM_BASE_URL），以下为抽取式答案。")
        return generate_answer(query, hits, LLMClient(config), self.embedder.embed_documents, on_text=on_text)

    def compose(self, query: Query, hits: list[Hit], max_passages: int = 3) -> Answer:
        """The extractive answer to ``query`` from ``hits``: what ``ask`` replies and ``rag eval`` measures."""
        return compose_answer(query, hits, self.settings.answer, max_passages=max_passages)

    def check(self) -> list[str]:
        """Everything wrong with the index on disk, every file's checksum included (empty when healthy)."""
        return verify_store(self.index_dir, self.store_location)

    def check_sources(self, sources: Sequence[str] | None) -> None:
        """Raise ``RagError`` naming every report in a search filter that is not in the index.

        An unknown name would otherwise filter every passage out and read as "not found".
        """
        unknown = [str(source) for source in sources or [] if source not in self.store.documents]
        if unknown:
            raise RagError(f"筛选条件中的报告不存在：{'、'.join(unknown)} / unknown report in the filter: "
                           f"{', '.join(unknown)}")

    def cite(self, citation: str) -> CitationView:
        """Look up a citation ID (a line range that is no passage shows exactly those lines)."""
        return lookup(self.store, citation, corpus_dir=self.corpus_dir)

    def find(self, phrase: str, sources: list[str] | None = None) -> list[CitationView]:
        """Passages that contain a quoted phrase."""
        self.check_sources(sources)
        return find_phrase(self.store, phrase, sources)

    def reports(self) -> dict[str, str]:
        """File name → human label of every indexed report."""
        return {source: doc.label for source, doc in sorted(self.store.documents.items())}

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
        return self._update([safe_name], [], progress)

    def remove_report(self, name: str, progress=None) -> BuildReport:
        """Delete a report file from the corpus and rebuild the index without it.

        ``name`` must be a report's plain file name as stored (what ``reports()`` lists): a name that
        ``safe_file_name`` would change is refused rather than mapped onto another file, and only
        report types are removable (never ``metadata.json``). Raises ``NotFoundError`` for a report
        that is not in the corpus.
        """
        safe_name = safe_file_name(name)
        if safe_name != name:
            raise RagError(f"文件名无效：{name!r} / invalid report name")
        target = self.corpus_dir / safe_name
        if Path(safe_name).suffix.lower() not in SUPPORTED_SUFFIXES or not target.is_file():
            raise NotFoundError(f"未找到报告 {safe_name} / unknown report")
        if not any(p.suffix.lower() in SUPPORTED_SUFFIXES and p.name != safe_name
                   for p in self.corpus_dir.iterdir() if p.is_file()):  # an index needs one report
            raise RagError(f"{safe_name} 是语料中唯一的报告，不能删除 / cannot remove the only report")
        target.unlink()
        return self._update([], [safe_name], progress)

    def _update(self, changed: list[str], removed: list[str], progress=None) -> BuildReport:
        """Index the reports just added, replaced or removed: only they are read and embedded when the
        index is large enough to be kept in segments (``rag.build.update_index``), else a build."""
        with self._build_lock:
            report = update_index(self.corpus_dir, self.index_dir, self.embedder, self.settings.chunker, changed,
                                  removed, cache=self.cache or EmbeddingCache(), progress=progress,
                                  store=self.store_location, metadata_of_changed_only=True)
            if report is not None:
                self._built()
                return report
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
