"""The index: build it from a corpus folder, persist it atomically, open it for search.

Layout of an index folder::

    index/
      current -> v-20261125T160000-1234   (symlink, swapped atomically after a build)
      v-…/manifest.json                   (format, model, dimension, chunker settings, corpus hashes)
      v-…/meta.sqlite                     (documents and chunks: text, offsets, lines, pages)
      v-…/dense.faiss                     (IndexIDMap2 over IndexFlatIP, ids = chunk ids)
      v-…/bm25/                           (bm25s index over jieba tokens)

Embeddings are cached by content hash outside the index (``rag.embed.EmbeddingCache``), so a
rebuild only embeds passages whose text changed, and a crash mid-build loses nothing already
embedded. A build never touches the live version, so the previous index stays usable.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .chunking import CHUNKER_VERSION, Chunk, Chunker, ChunkerSettings, missing_context, sentence_spans
from .dedup import find_duplicate_documents
from .documents import Document, LoadFailure, load_corpus
from .embed import Embedder, EmbeddingCache, document_input, embed_with_cache
from .errors import RagError
from .metadata import ReportInfo, detect_info, load_metadata, merge_info, metadata_path, save_metadata
from .tokenize import TOKENIZER_VERSION, add_words, corpus_terms, tokens

FORMAT_VERSION = 1
CURRENT = "current"
REBUILD_HINT = "请运行 `rag index` 重新建立索引 / run `rag index` to (re)build it"


@dataclass
class StoredChunk:
    """A chunk as stored in the index, with its citation and location in the original file."""

    id: int
    citation: str
    source: str
    start: int
    end: int
    text: str
    heading: str
    table_header: str
    kind: str
    line_start: int
    line_end: int
    page: int | None


@dataclass
class StoredDocument:
    """A report as stored in the index."""

    source: str
    sha256: str
    text: str
    info: ReportInfo
    duplicates: list[str] = field(default_factory=list)
    line_starts: list[int] = field(default_factory=list, repr=False)

    @property
    def label(self) -> str:
        """Human label: institution, title and date."""
        return self.info.label(self.source)


@dataclass
class BuildReport:
    """What a build did: counts and timings, plus files that could not be read.

    ``embedded`` and ``reused`` count embedded strings (passages and their sentences/table rows):
    newly computed, and taken from the content-hash cache.
    """

    index_dir: str
    documents: int
    chunks: int
    embedded: int
    reused: int
    seconds: float
    skipped: bool = False
    failures: list[LoadFailure] = field(default_factory=list)
    duplicates: dict[str, list[str]] = field(default_factory=dict)


def embedding_text(chunk: Chunk, info: ReportInfo, with_context: bool = True) -> str:
    """What the model sees for a chunk: report title, heading and table header as context."""
    if not with_context:
        return document_input(chunk.text)
    context = "\n".join(part for part in (missing_context(chunk.heading, chunk.text),
                                          missing_context(chunk.table_header, chunk.text)) if part)
    return document_input(chunk.text, title=info.title, context=context)


MIN_UNIT_CHARS = 8


def unit_sentences(chunk: Chunk | StoredChunk) -> list[str]:
    """The sentences (table rows) of a chunk that get a vector of their own, in order."""
    header = chunk.table_header.split("\n")[-1] if chunk.kind == "table" else ""
    sentences = (chunk.text[start:end] for start, end in sentence_spans(chunk.text))
    return [s for s in sentences if len(s) >= MIN_UNIT_CHARS and s != header]


def sentence_units(chunk: StoredChunk, info: ReportInfo) -> list[str]:
    """Embedding inputs for the sentences (table rows) of a chunk: matched small, cited whole."""
    # A row means nothing without its column names, so every row carries the title and header row.
    context = chunk.table_header if chunk.kind == "table" else ""
    return [document_input(sentence, title=info.title, context=context) for sentence in unit_sentences(chunk)]


def lexical_text(chunk: Chunk | StoredChunk) -> str:
    """What BM25 indexes for a chunk: its text plus a table's header row."""
    header = missing_context(chunk.table_header, chunk.text)
    return f"{header}\n{chunk.text}" if header else chunk.text


def _citations(chunks: list[Chunk], documents: dict[str, Document]) -> list[StoredChunk]:
    stored: list[StoredChunk] = []
    seen: dict[str, int] = {}
    for number, chunk in enumerate(chunks):
        document = documents[chunk.source]
        line_start = document.line_of(chunk.start)
        line_end = document.line_of(max(chunk.start, chunk.end - 1))
        citation = f"{chunk.source}:L{line_start}-L{line_end}"
        seen[citation] = seen.get(citation, 0) + 1
        if seen[citation] > 1:
            citation = f"{citation}.{seen[citation]}"
        stored.append(StoredChunk(number, citation, chunk.source, chunk.start, chunk.end, chunk.text,
                                  chunk.heading, chunk.table_header, chunk.kind, line_start, line_end,
                                  document.page_of(chunk.start)))
    return stored


def _corpus_infos(corpus_dir: Path, documents: list[Document],
                  duplicates: dict[str, list[str]]) -> dict[str, ReportInfo]:
    known = load_metadata(corpus_dir)
    infos = {d.source: merge_info(known.get(d.source), detect_info(d.text)) for d in documents}
    for source, others in duplicates.items():
        if source not in known:
            # A copy without a readable header takes the description of its better-described twin.
            best = max(others, key=lambda other: infos[other].completeness())
            if infos[best].completeness() > infos[source].completeness():
                infos[source] = merge_info(ReportInfo(), infos[best])
    if any(known.get(s) != infos[s] for s in infos):
        try:
            save_metadata(corpus_dir, {**known, **infos})
        except OSError:
            pass  # a read-only corpus still indexes; metadata is then only in the index
    return infos


def _write_meta(path: Path, documents: list[Document], infos: dict[str, ReportInfo],
                duplicates: dict[str, list[str]], chunks: list[StoredChunk]) -> None:
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE documents (source TEXT PRIMARY KEY, sha256 TEXT, text TEXT, info TEXT,
                                duplicates TEXT, line_starts TEXT);
        CREATE TABLE chunks (id INTEGER PRIMARY KEY, citation TEXT UNIQUE, source TEXT, start INTEGER,
                             "end" INTEGER, text TEXT, heading TEXT, table_header TEXT, kind TEXT,
                             line_start INTEGER, line_end INTEGER, page INTEGER);
    """)
    db.executemany("INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?)", [
        (d.source, d.sha256, d.text, json.dumps(asdict(infos[d.source]), ensure_ascii=False),
         json.dumps(duplicates.get(d.source, [])), json.dumps(d.raw_line_starts)) for d in documents])
    db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   [tuple(asdict(c).values()) for c in chunks])
    db.commit()
    db.close()


def read_manifest(index_dir: Path) -> dict | None:
    """The live index's manifest, or None when there is no readable index."""
    try:
        return json.loads((index_dir / CURRENT / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _opens(index_dir: Path) -> bool:
    """True when the live index loads; a damaged one must be rebuilt, not reported up to date."""
    try:
        Index(index_dir)
    except RagError:
        return False
    return True


def _switch_current(index_dir: Path, version: str) -> None:
    link = index_dir / f".current-{os.getpid()}"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(version)
    os.replace(link, index_dir / CURRENT)


def _remove_stale_versions(index_dir: Path, keep: str) -> None:
    for entry in index_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink() and entry.name.startswith(("v-", ".build-")) \
                and entry.name != keep:
            shutil.rmtree(entry, ignore_errors=True)


def build_index(corpus_dir: Path, index_dir: Path, embedder: Embedder,
                settings: ChunkerSettings | None = None, cache: EmbeddingCache | None = None,
                force: bool = False, progress: Callable[[int, int], None] | None = None,
                log: Callable[[str], None] = lambda message: None) -> BuildReport:
    """Build (or bring up to date) the index of ``corpus_dir`` in ``index_dir``."""
    began = time.perf_counter()
    settings = settings or ChunkerSettings()
    documents, failures = load_corpus(corpus_dir)
    for failure in failures:
        log(f"跳过 / skipped: {failure.reason}")
    if not documents:
        raise RagError(f"语料目录中没有可用的报告 / no usable report in {corpus_dir}")
    corpus_hashes = {d.source: d.sha256 for d in documents}
    manifest = read_manifest(index_dir)
    wanted = {"format": FORMAT_VERSION, "model": embedder.name, "dimension": embedder.dimension,
              "chunker": settings.as_dict(), "chunker_version": CHUNKER_VERSION,
              "tokenizer_version": TOKENIZER_VERSION, "corpus": corpus_hashes}
    if not force and manifest and all(manifest.get(k) == v for k, v in wanted.items()):
        metadata_file = metadata_path(corpus_dir)
        if metadata_file.exists() and metadata_file.stat().st_mtime <= manifest.get("built_at", 0) \
                and _opens(index_dir):
            return BuildReport(str(index_dir), len(documents), manifest.get("chunks", 0), 0,
                               manifest.get("chunks", 0), time.perf_counter() - began, skipped=True,
                               failures=failures)

    duplicates = find_duplicate_documents({d.source: d.text for d in documents})
    infos = _corpus_infos(corpus_dir, documents, duplicates)
    user_words = sorted(corpus_terms(d.text for d in documents))
    add_words(user_words)
    chunker = Chunker(settings)
    chunks = [c for d in documents for c in chunker.chunk(d.source, d.text)]
    stored = _citations(chunks, {d.source: d for d in documents})
    log(f"{len(documents)} reports, {len(stored)} passages")

    cache = cache or EmbeddingCache()
    passages = [embedding_text(c, infos[c.source], settings.embed_context) for c in chunks]
    vectors, embedded = embed_with_cache(embedder, cache, passages, progress=progress)

    unit_texts: list[str] = []
    unit_owner: list[int] = []
    if settings.sentence_vectors:
        for chunk in stored:
            for unit in sentence_units(chunk, infos[chunk.source]):
                unit_texts.append(unit)
                unit_owner.append(chunk.id)
        unit_vectors, unit_embedded = embed_with_cache(embedder, cache, unit_texts, progress=progress)
        embedded += unit_embedded

    import bm25s
    import faiss

    index_dir.mkdir(parents=True, exist_ok=True)
    version = f"v-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**9:09d}-{os.getpid()}"
    build_dir = index_dir / f".build-{version}"
    build_dir.mkdir()
    try:
        dense = faiss.IndexIDMap2(faiss.IndexFlatIP(embedder.dimension))
        dense.add_with_ids(vectors, np.arange(len(stored), dtype=np.int64))
        faiss.write_index(dense, str(build_dir / "dense.faiss"))
        if settings.sentence_vectors:
            units = faiss.IndexFlatIP(embedder.dimension)
            units.add(unit_vectors)
            faiss.write_index(units, str(build_dir / "units.faiss"))
            np.save(build_dir / "unit_owner.npy", np.asarray(unit_owner, dtype=np.int64))
        lexical = bm25s.BM25()
        lexical.index([tokens(lexical_text(c)) or ["\x00"] for c in stored], show_progress=False)
        lexical.save(str(build_dir / "bm25"))
        _write_meta(build_dir / "meta.sqlite", documents, infos, duplicates, stored)
        manifest = {**wanted, "chunks": len(stored), "built_at": time.time(), "user_words": user_words,
                    "duplicates": duplicates, "failures": [asdict(f) for f in failures]}
        (build_dir / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2),
                                                 encoding="utf-8")
        os.replace(build_dir, index_dir / version)
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise
    _switch_current(index_dir, version)
    _remove_stale_versions(index_dir, version)
    return BuildReport(str(index_dir), len(documents), len(stored), embedded,
                       len(stored) + len(unit_texts) - embedded,
                       time.perf_counter() - began, failures=failures, duplicates=duplicates)


class Index:
    """A loaded index: chunks, documents, the FAISS and BM25 structures, and the manifest."""

    def __init__(self, index_dir: Path):
        self.index_dir = index_dir
        live = index_dir / CURRENT
        manifest = read_manifest(index_dir)
        if manifest is None:
            raise RagError(f"索引不存在或无法读取：{index_dir}。{REBUILD_HINT}")
        if manifest.get("format") != FORMAT_VERSION:
            raise RagError(f"索引格式已过期：{index_dir}。{REBUILD_HINT}")
        if manifest.get("tokenizer_version", 1) != TOKENIZER_VERSION:
            # The BM25 vocabulary was cut by an older tokenizer: questions would no longer meet it.
            raise RagError(f"索引的分词方式已过期：{index_dir}。{REBUILD_HINT}")
        self.manifest = manifest
        # Queries must be cut with the same dictionary the passages were indexed with.
        add_words(manifest.get("user_words", []))
        try:
            import bm25s
            import faiss

            self.dense = faiss.read_index(str(live / "dense.faiss"))
            self.units = faiss.read_index(str(live / "units.faiss")) if (live / "units.faiss").exists() else None
            self.unit_owner = np.load(live / "unit_owner.npy") if self.units is not None else None
            self.lexical = bm25s.BM25.load(str(live / "bm25"))
            db = sqlite3.connect(f"file:{live / 'meta.sqlite'}?mode=ro", uri=True)
            self.chunks = [StoredChunk(*row) for row in db.execute(
                "SELECT id, citation, source, start, \"end\", text, heading, table_header, kind, "
                "line_start, line_end, page FROM chunks ORDER BY id")]
            self.documents = {}
            for source, sha, text, info, dups, line_starts in db.execute("SELECT * FROM documents"):
                self.documents[source] = StoredDocument(source, sha, text, ReportInfo(**json.loads(info)),
                                                        json.loads(dups), json.loads(line_starts))
            db.close()
        except Exception as exc:  # any damage to the files means the same thing to the user
            raise RagError(f"索引已损坏：{index_dir}（{exc}）。{REBUILD_HINT}") from exc
        if self.dense.ntotal != len(self.chunks) or manifest.get("chunks") != len(self.chunks):
            raise RagError(f"索引文件不一致：{index_dir}。{REBUILD_HINT}")
        self.by_citation = {c.citation: c for c in self.chunks}

    @property
    def model(self) -> str:
        """Name of the embedding model that built this index."""
        return self.manifest["model"]

    def check_embedder(self, embedder: Embedder) -> None:
        """Refuse to search with a model other than the one that built the index."""
        if embedder.name != self.model or embedder.dimension != self.manifest.get("dimension"):
            raise RagError(f"索引由模型 {self.model} 建立，当前模型为 {embedder.name}。{REBUILD_HINT}")
