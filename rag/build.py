"""Indexing: documents → chunks → embeddings → a store write, only re-embedding what changed.

Embeddings are cached by content hash outside the index (``rag.embed.EmbeddingCache``), so a
rebuild only embeds passages whose text changed, and a crash mid-build loses nothing already
embedded. The store's write session publishes the new version in one step, so the previous index
stays usable until then.

Adding or removing single reports (an upload in the UI or through the HTTP API) on a large embedded
index goes through ``update_index`` instead: only the named reports are read, chunked and embedded,
and a store update session writes them as a new segment, so the cost follows the report, not the
archive (see ``update_index`` for what it leaves to the next full build).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .ann import default_settings
from .boilerplate import boilerplate_map
from .chunking import CHUNKER_VERSION, Chunk, Chunker, ChunkerSettings
from .dedup import find_duplicate_documents
from .documents import Document, LoadFailure, file_sha256, load_corpus, load_document, scan_corpus
from .embed import Embedder, EmbeddingCache, embed_with_cache
from .errors import RagError
from .metadata import ReportInfo, detect_info, load_metadata, merge_info, metadata_path, save_metadata
from .records import StoredDocument, embedding_text, sentence_units
from .store import ReportRecords, store_manifest, store_setting, store_writer, verify_store
from .tokenize import TOKENIZER_VERSION, corpus_terms, tokenizer_for
from .versions import check_target, clean_leftovers, resolve_live, writer_lock


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


def _sound(index_dir: Path, log: Callable[[str], None], store: str | None = None) -> bool:
    """True when the live index loads and every file matches its recorded checksum; a damaged index
    must be rebuilt, not reported up to date."""
    problems = verify_store(index_dir, store)
    for problem in problems:
        log(f"索引需要重建 / the index will be rebuilt: {problem}")
    return not problems


def _corpus_infos(corpus_dir: Path, documents: list[Document], duplicates: dict[str, list[str]],
                  write_metadata: bool) -> dict[str, ReportInfo]:
    """Each report's description: what ``metadata.json`` says, completed from the text."""
    known = load_metadata(corpus_dir)
    infos = {d.source: merge_info(known.get(d.source), detect_info(d.text)) for d in documents}
    for source, others in duplicates.items():
        if source not in known:
            # A copy without a readable header takes the description of its better-described twin.
            best = max(others, key=lambda other: infos[other].completeness())
            if infos[best].completeness() > infos[source].completeness():
                infos[source] = merge_info(ReportInfo(), infos[best])
    if write_metadata and any(known.get(s) != infos[s] for s in infos):
        try:
            save_metadata(corpus_dir, {**known, **infos})
        except OSError:
            pass  # a read-only corpus still indexes; metadata is then only in the index
    return infos


def _located(document: Document, chunks: list[Chunk]) -> list[tuple[str, Chunk, int, int, int | None]]:
    """Each chunk with its citation ID, original line range and PDF page."""
    located = []
    seen: dict[str, int] = {}
    for chunk in chunks:
        line_start = document.line_of(chunk.start)
        line_end = document.line_of(max(chunk.start, chunk.end - 1))
        citation = f"{chunk.source}:L{line_start}-L{line_end}"
        seen[citation] = seen.get(citation, 0) + 1
        if seen[citation] > 1:
            citation = f"{citation}.{seen[citation]}"
        located.append((citation, chunk, line_start, line_end, document.page_of(chunk.start)))
    return located


def build_index(corpus_dir: Path, index_dir: Path, embedder: Embedder,
                settings: ChunkerSettings | None = None, cache: EmbeddingCache | None = None,
                force: bool = False, progress: Callable[[int, int], None] | None = None,
                log: Callable[[str], None] = lambda message: None, write_metadata: bool = False,
                store: str | None = None) -> BuildReport:
    """Build (or bring up to date) the index of ``corpus_dir`` in ``index_dir`` (or in the Milvus store
    ``store`` names, see ``rag.store.store_setting``; ``index_dir`` then only holds the writer lock).

    ``corpus/`` is only read, unless ``write_metadata`` asks to save the detected report descriptions
    into its ``metadata.json``. One build of an index runs at a time, across processes: a second one
    waits for the first (and then usually finds the index up to date).
    """
    began = time.perf_counter()
    check_target(index_dir)
    if not force:
        update = _update_in_place(corpus_dir, index_dir, embedder, settings or ChunkerSettings(), cache, progress,
                                  log, store)
        if update is not None:
            return update
    documents, failures = load_corpus(corpus_dir)
    for failure in failures:
        log(f"跳过 / skipped: {failure.reason}")
    if not documents:
        raise RagError(f"语料目录中没有可用的报告 / no usable report in {corpus_dir}")
    with writer_lock(index_dir, log):
        live = resolve_live(index_dir)
        removed = clean_leftovers(index_dir, keep={live.name} if live else set())
        if removed:
            log(f"清理了中断的建索引留下的文件夹 / removed leftovers of interrupted builds: {', '.join(removed)}")
        return _build_locked(corpus_dir, index_dir, embedder, settings or ChunkerSettings(), documents, failures,
                             cache, force, progress, log, write_metadata, began, store_setting(store))


def _build_locked(corpus_dir: Path, index_dir: Path, embedder: Embedder, settings: ChunkerSettings,
                  documents: list[Document], failures: list[LoadFailure], cache: EmbeddingCache | None, force: bool,
                  progress: Callable[[int, int], None] | None, log: Callable[[str], None], write_metadata: bool,
                  began: float, store: str) -> BuildReport:
    where = str(index_dir) if store == "faiss" else store  # what the build report names as the index
    manifest = store_manifest(index_dir, store)
    wanted = {**_index_settings(embedder, settings), "corpus": {d.source: d.sha256 for d in documents}}
    reuse = not force  # a forced or repairing build writes every file anew
    if not force and manifest and all(manifest.get(k) == v for k, v in wanted.items()):
        metadata_unchanged = _metadata_unchanged(corpus_dir, manifest)
        reuse = _sound(index_dir, log, store)
        if metadata_unchanged and reuse:
            return BuildReport(where, len(documents), manifest.get("chunks", 0), 0,
                               manifest.get("chunks", 0), time.perf_counter() - began, skipped=True,
                               failures=failures)

    user_words = sorted(corpus_terms(d.text for d in documents))
    tokenizer = tokenizer_for(user_words)
    duplicates = find_duplicate_documents({d.source: d.text for d in documents}, tokenizer)
    infos = _corpus_infos(corpus_dir, documents, duplicates, write_metadata)
    chunker = Chunker(settings, tokenizer)
    located = {d.source: _located(d, chunker.chunk(d.source, d.text)) for d in documents}
    log(f"{len(documents)} reports, {sum(len(v) for v in located.values())} passages")

    cache = cache or EmbeddingCache()
    records = _embed(documents, located, infos, duplicates, settings, embedder, cache, progress)
    writer = store_writer(index_dir, embedder.dimension, tokenizer, store, log=log, reuse=reuse)
    for report in records.reports:
        writer.add_report(report)
    writer.commit({**wanted, "built_at": time.time(), "user_words": user_words, "duplicates": duplicates,
                   "failures": [{"source": f.source, "reason": f.reason} for f in failures]})
    chunk_count = sum(len(v) for v in located.values())
    return BuildReport(where, len(documents), chunk_count, records.embedded,
                       records.texts - records.embedded, time.perf_counter() - began, failures=failures,
                       duplicates=duplicates)


def update_index(corpus_dir: Path, index_dir: Path, embedder: Embedder, settings: ChunkerSettings | None,
                 changed: list[str], removed: list[str], cache: EmbeddingCache | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 log: Callable[[str], None] = lambda message: None, store: str | None = None,
                 metadata_of_changed_only: bool = False) -> BuildReport | None:
    """Bring a large embedded index up to date after the reports ``changed`` (added or replaced files of
    ``corpus_dir``) and ``removed`` (deleted files), touching only them; None when that is not possible
    here and a full ``build_index`` is needed (a Milvus store, an index below the segment threshold,
    which is rewritten whole anyway, other model, chunker or tokenizer, or ``metadata.json`` edited
    since the build, unless the caller changed only the entries of ``changed``).

    What it leaves to the next full build: the jieba dictionary only grows (names from the new reports
    are added; those of removed reports stay), and a new report's duplicates are found by identical file
    content only (near-duplicates need every report's text).
    """
    began = time.perf_counter()
    settings = settings or ChunkerSettings()
    location = store_setting(store)
    if location != "faiss":
        return None
    with writer_lock(index_dir, log):
        manifest = store_manifest(index_dir, location)
        wanted = _index_settings(embedder, settings)
        if not manifest or any(manifest.get(k) != v for k, v in wanted.items()):
            return None
        if manifest.get("chunks", 0) < default_settings().rewrite_below:
            return None
        if not metadata_of_changed_only and not _metadata_unchanged(corpus_dir, manifest):
            return None
        files = {f.name: f for f in scan_corpus(corpus_dir)[0]}
        documents: list[Document] = []
        failures = [LoadFailure(f["source"], f["reason"]) for f in manifest.get("failures", [])
                    if f["source"] not in changed and f["source"] not in removed]
        for name in changed:
            try:
                documents.append(load_document(files[name].path, source=name))
            except KeyError:
                failures.append(LoadFailure(name, "文件不存在或已被跳过 / file missing or skipped"))
            except RagError as exc:
                failures.append(LoadFailure(name, str(exc)))
        new = {d.source for d in documents}
        gone = set(removed) | {name for name in changed if name not in new}
        corpus = {s: sha for s, sha in manifest["corpus"].items() if s not in gone}
        corpus.update({d.source: d.sha256 for d in documents})
        if not corpus:
            raise RagError(f"语料目录中没有可用的报告 / no usable report in {corpus_dir}")
        user_words = sorted(set(manifest.get("user_words", [])) | corpus_terms(d.text for d in documents))
        tokenizer = tokenizer_for(user_words)
        duplicates = _identical_reports(corpus, manifest.get("duplicates", {}), new)
        among_new = {s: [o for o in others if o in new] for s, others in duplicates.items() if s in new}
        infos = _corpus_infos(corpus_dir, documents, {s: o for s, o in among_new.items() if o}, False)
        chunker = Chunker(settings, tokenizer)
        located = {d.source: _located(d, chunker.chunk(d.source, d.text)) for d in documents}
        log(f"{len(documents)} reports added or replaced, {len(gone - {d.source for d in documents})} removed, "
            f"{sum(len(v) for v in located.values())} new passages")
        records = _embed(documents, located, infos, duplicates, settings, embedder, cache or EmbeddingCache(),
                         progress)
        writer = store_writer(index_dir, embedder.dimension, tokenizer, location, log=log, update=True)
        for report in records.reports:
            writer.add_report(report)
        for source in gone:
            writer.remove_report(source)
        try:
            writer.commit({**manifest, **wanted, "corpus": corpus, "built_at": time.time(),
                           "user_words": user_words, "duplicates": duplicates,
                           "failures": [{"source": f.source, "reason": f.reason} for f in failures]})
        except RagError:
            return None  # the live index cannot lend its segments: a full build rewrites it
        written = store_manifest(index_dir, location) or {}
    return BuildReport(str(index_dir), len(corpus), written.get("chunks", 0), records.embedded,
                       records.texts - records.embedded, time.perf_counter() - began, failures=failures,
                       duplicates=duplicates)


def _update_in_place(corpus_dir: Path, index_dir: Path, embedder: Embedder, settings: ChunkerSettings,
                     cache: EmbeddingCache | None, progress: Callable[[int, int], None] | None,
                     log: Callable[[str], None], store: str | None) -> BuildReport | None:
    """``rag index`` on a large embedded index after a few reports were added, replaced or deleted: read
    only those (``update_index``) instead of the whole archive. None when a full build is due instead:
    nothing changed (the build then checks the index and skips), more than ``merge_share`` of the reports
    changed, or ``update_index`` cannot apply (see there)."""
    if store_setting(store) != "faiss":
        return None
    manifest = store_manifest(index_dir, "faiss")
    if not manifest or not isinstance(manifest.get("corpus"), dict):
        return None
    known: dict[str, str] = manifest["corpus"]
    failed = {f.get("source") for f in manifest.get("failures", []) if isinstance(f, dict)}
    built_at = float(manifest.get("built_at", 0))
    files = {f.name: f.path for f in scan_corpus(corpus_dir)[0]}
    changed = []
    for name, path in files.items():
        if name in known:
            try:
                same = file_sha256(path) == known[name]
            except RagError:
                same = False  # unreadable now: update_index records why
            if not same:
                changed.append(name)
        elif name not in failed or _modified_since(path, built_at):  # new, or a failed file edited since
            changed.append(name)
    removed = sorted(set(known) - set(files))
    if not changed and not removed:
        return None
    if len(changed) + len(removed) > default_settings().merge_share * max(1, len(known)):
        return None
    report = update_index(corpus_dir, index_dir, embedder, settings, changed, removed, cache=cache,
                          progress=progress, log=log, store=store)
    if report is not None:
        log(f"增量更新：只读取了变化的 {len(changed)} 份报告，删除 {len(removed)} 份（`rag index --force` 重建全部，"
            f"并重新查找近似重复的报告） / updated in place: read only {len(changed)} changed reports, removed "
            f"{len(removed)} (`rag index --force` rebuilds everything and looks for near-duplicates again)")
    return report


def _modified_since(path: Path, moment: float) -> bool:
    """Whether ``path`` was modified after ``moment`` (a file gone meanwhile counts as modified)."""
    try:
        return path.stat().st_mtime > moment
    except OSError:
        return True


def _index_settings(embedder: Embedder, settings: ChunkerSettings) -> dict:
    """What an index records about how it was made, besides its corpus: an index made otherwise is rebuilt."""
    return {"model": embedder.name, "dimension": embedder.dimension, "chunker": settings.as_dict(),
            "chunker_version": CHUNKER_VERSION, "tokenizer_version": TOKENIZER_VERSION}


def _metadata_unchanged(corpus_dir: Path, manifest: dict) -> bool:
    """Whether ``metadata.json`` is missing or not edited since the index was built."""
    metadata_file = metadata_path(corpus_dir)
    return not metadata_file.exists() or not _modified_since(metadata_file, manifest.get("built_at", 0))


def _identical_reports(corpus: dict[str, str], previous: dict[str, list[str]], new: set[str]) -> dict[str, list[str]]:
    """The duplicate lists after an update: ``previous`` without reports that are gone or replaced, plus
    each new report's twins by identical content (``corpus`` maps report to file SHA-256)."""
    kept = {s: [o for o in others if o in corpus and o not in new] for s, others in previous.items()
            if s in corpus and s not in new}
    for source in sorted(new):
        twins = [other for other, sha in corpus.items() if sha == corpus[source] and other != source]
        if twins:
            kept[source] = sorted(twins)
            for other in twins:
                kept.setdefault(other, [])
                if source not in kept[other]:
                    kept[other] = sorted(kept[other] + [source])
    return {s: others for s, others in sorted(kept.items()) if others}


@dataclass
class _Embedded:
    reports: list[ReportRecords]
    embedded: int
    texts: int


def _embed(documents: list[Document], located: dict[str, list], infos: dict[str, ReportInfo],
           duplicates: dict[str, list[str]], settings: ChunkerSettings, embedder: Embedder,
           cache: EmbeddingCache, progress: Callable[[int, int], None] | None) -> _Embedded:
    """Vectors for every passage, then for every sentence unit, across the corpus in one pass each
    (one progress bar per kind), split back into per-report records."""
    passages = [embedding_text(chunk, infos[d.source], settings.embed_context)
                for d in documents for _, chunk, *_ in located[d.source]]
    vectors, embedded = embed_with_cache(embedder, cache, passages, progress=progress)
    unit_texts: list[str] = []
    owners: dict[str, list[int]] = {d.source: [] for d in documents}
    if settings.sentence_vectors:
        for d in documents:
            for position, (_, chunk, *_) in enumerate(located[d.source]):
                for unit in sentence_units(chunk, infos[d.source]):
                    unit_texts.append(unit)
                    owners[d.source].append(position)
        unit_vectors, unit_embedded = embed_with_cache(embedder, cache, unit_texts, progress=progress)
        embedded += unit_embedded
    reports = []
    offset = unit_offset = 0
    for d in documents:
        count, unit_count = len(located[d.source]), len(owners[d.source])
        units = unit_vectors[unit_offset:unit_offset + unit_count] if settings.sentence_vectors else None
        unit_offset += unit_count
        document = StoredDocument(d.source, d.sha256, d.text, infos[d.source], duplicates.get(d.source, []),
                                  d.raw_line_starts, boilerplate_map(d.text).spans())
        reports.append(ReportRecords(document, located[d.source], np.asarray(vectors[offset:offset + count]),
                                     units, owners[d.source]))
        offset += count
    return _Embedded(reports, embedded, len(passages) + len(unit_texts))

