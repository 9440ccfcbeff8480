"""Scale benchmark of the embedded store: 10k, 100k and 1M passages on this machine.

Embedding a million passages here would take days, so the corpus is generated: every passage
recombines real seed sentences (the sentences of a random seed passage, each replaced with
probability ``--mix`` by a random seed sentence from anywhere), and its vectors are the real
EmbeddingGemma vectors of those seed passages/sentences plus Gaussian noise (``--noise``, relative
norm), renormalised. Questions are the first 20 characters of random seed sentences with that
sentence's vector plus noise. The output says so.

For each size and each store configuration it prints: build time, hybrid search p50/p95 without and
with a report filter (analysis + retrieval + second stage; the question vector is precomputed, so
query embedding is excluded), adding one report and deleting one (store commit, the new report's
texts already embedded), peak RSS of the search process (a fresh process per configuration), index
size on disk, and recall@10 of dense search (passages, and the owners of the top sentence units)
against exact brute-force search over the same vectors (units: the best 10 of a search as deep as
retrieval's, ``rag.scoring.UNIT_DEPTH``).

Configurations, each measured in the same run on the same generated corpus:

* ``scaled``: this tree's store with ``rag/data/scale.json`` (exact below the threshold, IVF-SQ8 above);
* ``exact``: this tree's store with every index exact (the baseline at the sizes it can handle);
* ``rewrite``: ``scaled``, except that every commit rewrites the whole index (no segments: how adding
  or deleting a report worked before; the baseline for the update timings and for search without segments);
* ``main`` (with ``--baseline-tree DIR``, a checkout of an older revision): that tree's store, as it was.

Usage::

    python benchmarks/scale.py --seed-index index --sizes 10k,100k [--configs scaled,exact] \
        [--baseline-tree /path/to/main] [--work /tmp/scale] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pickle
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Collection
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent.parent
PASSAGES_PER_REPORT = 330  # about the seeds' size (3,000 reports ≈ a million passages, as in issue #17)
QUESTION_CHARS = 20


def _size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("km")) * scale)


def _normalised(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


def _noisy(base: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    jitter = rng.standard_normal(base.shape).astype(np.float32) * (noise / np.sqrt(base.shape[1]))
    return _normalised(base + jitter)


# -- the seed material -------------------------------------------------------------------------------------

def load_seeds(seed_index: Path) -> dict:
    """Seed passages' sentences with their real unit vectors and passage vectors, and the seed manifest."""
    from rag.records import unit_sentences
    from rag.store import open_store

    store = open_store(seed_index)
    passages = []
    for chunk_id in range(len(store)):
        chunk = store.chunk(chunk_id)
        units = store.unit_vectors(chunk_id)
        sentences = unit_sentences(chunk)
        if units is None or len(units) != len(sentences) or not sentences:
            continue
        vector = store.dense.reconstruct(chunk_id)  # type: ignore[attr-defined]
        passages.append((sentences, np.asarray(units, np.float32), np.asarray(vector, np.float32)))
    manifest = {k: v for k, v in store.manifest.items() if k not in ("files", "corpus", "chunks", "indexes", "ann",
                                                                         "segments")}
    return {"passages": passages, "manifest": manifest, "tokenizer_words": manifest.get("user_words", [])}


def report_count(count: int) -> int:
    """How many generated reports hold ``count`` passages."""
    return -(-count // PASSAGES_PER_REPORT)


def generate(seeds: dict, count: int, noise: float, mix: float, seed: int, prefix: str = "r"):
    """``count`` passages in reports of ``PASSAGES_PER_REPORT``, yielded report by report as
    (ReportRecords, {passage text: its tokens}). Each report has its own random stream (``seed``, report
    number), so the same arguments give the same reports in any process and nothing is kept: a million
    passages' vectors (about 24 GB with their units) never sit in memory at once."""
    from rag.chunking import Chunk
    from rag.metadata import ReportInfo
    from rag.records import StoredDocument
    from rag.store import ReportRecords

    tokenizer = _seed_tokenizer(seeds)
    passages = seeds["passages"]
    pool = [(s, u) for sentences, units, _ in passages for s, u in zip(sentences, units, strict=True)]
    sentence_tokens: dict[str, list[str]] = {}
    for report_no in range(report_count(count)):
        rng = np.random.default_rng([seed, report_no])
        source = f"{prefix}{report_no:06d}.txt"
        size = min(PASSAGES_PER_REPORT, count - report_no * PASSAGES_PER_REPORT)
        chunks, bases, unit_bases, owners, offset, tokens = [], [], [], [], 0, {}
        for position in range(size):
            sentences, units, vector = passages[int(rng.integers(len(passages)))]
            picked = []
            for sentence, unit in zip(sentences, units, strict=True):
                if rng.random() < mix:
                    sentence, unit = pool[int(rng.integers(len(pool)))]
                picked.append((sentence, unit))
            text = "".join(s for s, _ in picked)
            chunk = Chunk(source, offset, offset + len(text), text)
            offset += len(text) + 1
            chunks.append((f"{source}:L{position + 1}-L{position + 1}", chunk, position + 1, position + 1, None))
            bases.append(vector)
            for sentence, unit in picked:
                unit_bases.append(unit)
                owners.append(position)
                if sentence not in sentence_tokens:
                    sentence_tokens[sentence] = tokenizer.tokens(sentence)
            tokens[text] = [t for s, _ in picked for t in sentence_tokens[s]]
        document_text = "\n".join(c[1].text for c in chunks)
        line_starts = [c[1].start for c in chunks]
        document = StoredDocument(source, hashlib.sha256(document_text.encode()).hexdigest(), document_text,
                                  ReportInfo(title=f"合成报告 {report_no}"), [], line_starts)
        yield (ReportRecords(document, chunks, _noisy(np.vstack(bases), noise, rng),
                             _noisy(np.vstack(unit_bases), noise, rng), owners), tokens)


def extra_report(seeds: dict, noise: float, mix: float, seed: int):
    """The report the update timings add (its own random stream), with its token table."""
    return next(generate(seeds, PASSAGES_PER_REPORT, noise, mix, seed + 1, prefix="zz-new-"))


def _seed_tokenizer(seeds: dict):
    from rag.tokenize import tokenizer_for

    return tokenizer_for(seeds["tokenizer_words"])


class TableTokenizer:
    """The index's tokenizer, except that generated passages take their tokens from a table built from
    their seed sentences' tokens (jieba over a million passages would dominate every build here)."""

    def __init__(self, real, table: dict[str, list[str]]):
        self.real = real
        self.table = table

    def tokens(self, text: str) -> list[str]:
        """Tokens of ``text``: from the table when it is a generated passage."""
        found = self.table.get(text)
        return list(found) if found is not None else self.real.tokens(text)


def questions(seeds: dict, count: int, noise: float, rng: np.random.Generator,
              besides: Collection[str] = ()) -> tuple[list[str], np.ndarray]:
    """Question texts (seed sentence heads) and their vectors (the sentence's vector plus noise), none of
    them among the question texts ``besides``."""
    pool = [(s, u) for sentences, units, _ in seeds["passages"] for s, u in zip(sentences, units, strict=True)
            if s[:QUESTION_CHARS] not in besides]
    picked = [pool[int(i)] for i in rng.choice(len(pool), count, replace=False)]
    return [s[:QUESTION_CHARS] for s, _ in picked], _noisy(np.vstack([u for _, u in picked]), noise, rng)


class _RunningTop:
    """The best ``k`` (score, label) per question over scores arriving in blocks; ties keep arrival order,
    as a stable sort of all scores at once would."""

    def __init__(self, questions: int, k: int):
        self.k = k
        self.scores = np.zeros((questions, 0), dtype=np.float32)
        self.labels = np.zeros((questions, 0), dtype=object)

    def add(self, scores: np.ndarray, labels: list[str]) -> None:
        """Merge a block of scores (questions × items) whose items carry ``labels``."""
        merged = np.hstack([self.scores, scores.astype(np.float32)])
        named = np.hstack([self.labels, np.broadcast_to(np.asarray(labels, dtype=object), scores.shape)])
        best = np.argsort(-merged, axis=1, kind="stable")[:, :self.k]
        self.scores = np.take_along_axis(merged, best, axis=1)
        self.labels = np.take_along_axis(named, best, axis=1)

    def lists(self) -> list[list[str]]:
        """The labels of the best ``k``, best first, per question."""
        return [list(row) for row in self.labels]


def exact_truth(reports, vectors: np.ndarray, k: int = 10) -> tuple[list[list[str]], list[list[str]]]:
    """Citations of the exact top-``k`` passages and of the owners of the exact top-``k`` units, per question
    (citations, not ids: updates renumber passages), by brute force over ``reports`` in one streaming pass."""
    passages, units = _RunningTop(len(vectors), k), _RunningTop(len(vectors), k)
    for report in reports:
        citations = [citation for citation, *_ in report.chunks]
        passages.add(vectors @ np.asarray(report.vectors).T, citations)
        units.add(vectors @ np.asarray(report.unit_vectors).T, [citations[o] for o in report.unit_owner])
    return passages.lists(), units.lists()


def gone_source(count: int) -> str:
    """The built report the build child deletes."""
    return f"r{report_count(count) // 2:06d}.txt"


def after_updates(reports, count: int, extra):
    """The reports the index holds after the build child's add-one/delete-one (see ``child_build``)."""
    gone = gone_source(count)
    yield from (r for r, _ in reports if r.document.source != gone)
    yield extra


# -- children: build (in the configuration's tree) and search (in a fresh process) ---------------------------

def child_build(args: argparse.Namespace) -> dict:
    """Build the index of the generated corpus (regenerated here report by report), then add one new report
    and delete one built report (timed).

    In this tree both are update sessions on the live index (a new segment; a deletion mark); the
    ``main`` tree can only rewrite its whole index, so there they are full commits. The search child
    then measures the index as these updates left it. Timings are the sessions' ``add_report`` calls
    plus ``commit``, not the generation."""
    with open(args.corpus_file, "rb") as handle:
        payload = pickle.load(handle)
    from rag import faiss_store

    seeds, size = payload["seeds"], payload["size"]
    table: dict[str, list[str]] = {}
    tokenizer = TableTokenizer(_seed_tokenizer(seeds), table)
    index_dir = Path(args.index)
    shutil.rmtree(index_dir, ignore_errors=True)

    def corpus():
        for report, tokens in generate(seeds, size, payload["noise"], payload["mix"], payload["seed"]):
            table.update(tokens)
            yield report

    extra, extra_tokens = extra_report(seeds, payload["noise"], payload["mix"], payload["seed"])
    table.update(extra_tokens)

    def writer(update: bool = False):
        if args.config == "main":
            return faiss_store.EmbeddedWriter(index_dir, payload["dimension"], tokenizer)
        from dataclasses import replace

        from rag.ann import default_settings

        settings = {"scaled": default_settings(), "exact": default_settings().exact(),
                    "rewrite": replace(default_settings(), rewrite_below=2**62)}[args.config]
        return faiss_store.EmbeddedWriter(index_dir, payload["dimension"], tokenizer, ann=settings, update=update)

    state: dict[str, str] = {}  # what the index holds after each commit: source -> sha256
    commits: list[dict] = []

    def commit(reports, removed=(), update: bool = False) -> float:
        session = writer(update)
        if not update:
            state.clear()
        seconds = 0.0
        for report in reports:
            began = time.perf_counter()
            session.add_report(report)
            seconds += time.perf_counter() - began
            state[report.document.source] = report.document.sha256
        for source in removed:
            session.remove_report(source)
            state.pop(source, None)
        manifest = {**seeds["manifest"], "built_at": time.time(), "corpus": dict(state)}
        began = time.perf_counter()
        session.commit(manifest)
        seconds += time.perf_counter() - began
        commits.append(getattr(session, "last_commit", {}))
        return seconds

    sampler = _AnonPeak()
    result = {"build_s": commit(corpus())}
    result["build_peak_rss_mb"] = peak_rss_mb()
    result["build_peak_anon_mb"] = sampler.stop()
    if args.child_updates:
        gone = gone_source(size)
        if args.config == "main":  # its only way: rewrite everything
            result["add_one_s"] = commit([*corpus(), extra])
            result["delete_one_s"] = commit([r for r in [*corpus(), extra] if r.document.source != gone])
        else:
            # A server holds the index loaded while reports are added and deleted; after each commit it loads
            # the new version, taking over the segments the two share.
            from rag.store import open_store

            served = open_store(index_dir)
            result["add_one_s"] = commit([extra], update=True)
            began = time.perf_counter()
            served = open_store(index_dir, previous=served)
            result["reload_after_add_s"] = time.perf_counter() - began
            result["delete_one_s"] = commit([], removed=[gone], update=True)
            began = time.perf_counter()
            served = open_store(index_dir, previous=served)
            result["reload_after_delete_s"] = time.perf_counter() - began
            del served
            result.update(_check_updates(index_dir, extra, gone))
    result["commits"] = [c.get("kind", "rewrite") for c in commits]
    live = (index_dir / "current").resolve()
    result["disk_mb"] = sum(p.stat().st_size for p in live.rglob("*") if p.is_file()) / 2**20
    return result


class _AnonPeak:
    """The largest RssAnon of this process (its own memory, not file pages it maps), sampled twice a second from
    a background thread: the kernel keeps a peak only of the whole resident set (VmHWM), which for a build is
    mostly the mapped spool and vector files."""

    def __init__(self) -> None:
        import threading

        self.peak = _status_mb("RssAnon")
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(0.5):
            self.peak = max(self.peak, _status_mb("RssAnon"))

    def stop(self) -> float:
        """Stop sampling; the peak in MB."""
        self._done.set()
        self._thread.join()
        return max(self.peak, _status_mb("RssAnon"))


def _check_updates(index_dir: Path, extra, gone: str) -> dict:
    """Whether the added report is found and the deleted one is gone, in the index the updates left."""
    from rag.store import open_store

    store = open_store(index_dir)
    vector = extra.vectors[7]
    found = set(store.dense_top_k(vector, 3).ids.tolist()) & set(store.allowed_ids([extra.document.source]).tolist())
    deleted_gone = gone not in store.documents and not store.allowed_ids([gone]).size
    return {"added_found": bool(found), "deleted_gone": bool(deleted_gone),
            "segments": len(store.manifest.get("segments", [None]))}


class FixedEncoder:
    """Question vectors computed beforehand: the timings exclude query embedding."""

    def __init__(self, vectors: dict[str, np.ndarray]):
        self.vectors = vectors

    def encode(self, text: str) -> np.ndarray:
        """The precomputed vector of ``text``."""
        return self.vectors[text]

    def clear(self) -> None:
        """Nothing to forget."""


def child_search(args: argparse.Namespace) -> dict:
    """Open the index in this fresh process and time hybrid searches; dense top-10 for recall."""
    from rag.query import analyse, clean_question
    from rag.retrieve import Retriever
    from rag.store import open_store

    data = np.load(args.questions_file)
    texts = json.loads(Path(args.questions_file).with_suffix(".json").read_text(encoding="utf-8"))
    vectors = data["vectors"]
    began = time.perf_counter()
    store = open_store(Path(args.index))
    load_s = time.perf_counter() - began
    # Keyed by the cleaned question: that is the text retrieval embeds.
    asked = [*texts["questions"], *texts.get("warmup", [])]
    every_vector = np.vstack([vectors, data["warmup_vectors"]]) if "warmup_vectors" in data else vectors
    encoder = FixedEncoder({clean_question(q)[0]: v for q, v in zip(asked, every_vector, strict=True)})
    retriever = Retriever(store, encoder)  # type: ignore[arg-type]
    sources = sorted(store.documents)
    rng = np.random.default_rng(1)

    def timed(filtered: bool, asking: list[str] = texts["questions"]) -> list[float]:
        timings = []
        for question in asking:
            chosen = [sources[int(rng.integers(len(sources)))]] if filtered else None
            start = time.perf_counter()
            retriever.search(analyse(question, store), top_k=5, sources=chosen)
            timings.append((time.perf_counter() - start) * 1000)
        return timings

    first = timed(False, texts.get("warmup", []))  # the first questions after opening the index
    if not first:  # no warm-up questions (--warmup 0): three measured ones load jieba's dictionary and first pages
        for question in texts["questions"][:3]:
            retriever.search(analyse(question, store), top_k=5)
    plain, filtered = timed(False), timed(True)
    again = timed(False)  # the same questions a second time: what they read is in the page cache now
    dense = [store.dense_top_k(v, 10).ids.tolist() for v in vectors]
    # Units as retrieval reads them: UNIT_DEPTH deep (an approximate index re-scores that many candidates
    # and more), of which the best 10 are compared with the exact best 10.
    from rag.scoring import UNIT_DEPTH

    units = [store.unit_top_k(v, UNIT_DEPTH).ids[:10].tolist() for v in vectors]
    return {"load_s": load_s, "hybrid_ms": _percentiles(plain), "hybrid_filtered_ms": _percentiles(filtered),
            "hybrid_again_ms": _percentiles(again), "first_questions_ms": _percentiles(first),
            "search_peak_rss_mb": peak_rss_mb(), "search_anon_mb": _status_mb("RssAnon"),
            "dense_top10": [[store.chunk(i).citation for i in row] for row in dense],
            "unit_owner_top10": [[store.chunk(i).citation for i in row] for row in units]}


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM: unlike ``ru_maxrss`` it does not carry the parent's peak
    across fork and exec)."""
    peak = _status_mb("VmHWM")
    return peak if not math.isnan(peak) else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (RssAnon: its own memory, without the page
    cache it maps), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": float("nan"), "p95": float("nan"), "n": 0}
    ordered = sorted(values)
    return {"p50": statistics.median(ordered), "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
            "n": len(ordered)}


def _run_child(mode: str, tree: Path, extra: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode, *extra]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode} child failed ({tree}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the parent -----------------------------------------------------------------------------------------------

def recall(found: list[list[str]], truth) -> float:
    """Mean share of the exact top-10 (as a multiset of citations) found by the approximate top-10."""
    shares = []
    for got, want in zip(found, truth, strict=True):
        want = list(want)
        shares.append(sum((Counter(got) & Counter(want)).values()) / max(1, len(want)))
    return statistics.fmean(shares)


def drop_page_cache(log, control: Path = Path("/proc/sys/vm/drop_caches")) -> bool:
    """Empty the kernel's page cache (needs root), so the search child starts as a server does after a
    reboot: nothing of the index in memory. Whether it worked."""
    os.sync()
    try:
        control.write_text("1\n")
    except OSError as error:
        log(f"  page cache not dropped ({error}); the search reads what the build left in memory")
        return False
    return True


def run_size(size: int, seeds: dict, args: argparse.Namespace, log) -> dict:
    """Build and search each configuration on ``size`` generated passages, compute recall."""
    rng = np.random.default_rng(size)
    work = Path(args.work) / f"n{size}"
    work.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    corpus_file, questions_file = work / "corpus.pkl", work / "questions.npz"
    texts, vectors = questions(seeds, args.queries, args.noise, rng)
    # Other questions asked first: the measured ones then meet a search process that has been answering
    # questions for a while (on a dropped page cache, these first ones are the cold start).
    warmup_texts, warmup_vectors = questions(seeds, args.warmup, args.noise, np.random.default_rng([size, 1]),
                                             besides=set(texts))
    with open(corpus_file, "wb") as handle:  # what the build child regenerates the corpus from
        pickle.dump({"seeds": seeds, "size": size, "noise": args.noise, "mix": args.mix, "seed": size,
                     "dimension": vectors.shape[1]}, handle, protocol=5)
    np.savez(questions_file, vectors=vectors, warmup_vectors=warmup_vectors)
    questions_file.with_suffix(".json").write_text(json.dumps({"questions": texts, "warmup": warmup_texts},
                                                              ensure_ascii=False),
                                                   encoding="utf-8")
    counted = {"units": 0}

    def reports():
        for report, tokens in generate(seeds, size, args.noise, args.mix, size):
            counted["units"] += len(report.unit_owner)
            yield report, tokens

    truth_file = work / "truth.json"
    setting = {"queries": args.queries, "noise": args.noise, "mix": args.mix, "updates": args.updates}
    known = json.loads(truth_file.read_text(encoding="utf-8")) if truth_file.exists() else {}
    if args.reuse_index and known.get("setting") == setting:  # the brute force of an earlier run of this corpus
        truth_passages, truth_units, counted["units"] = known["passages"], known["units"], known["unit_count"]
    else:
        extra = extra_report(seeds, args.noise, args.mix, size)[0]
        held = after_updates(reports(), size, extra) if args.updates else (r for r, _ in reports())
        truth_passages, truth_units = exact_truth(held, vectors)
        truth_file.write_text(json.dumps({"setting": setting, "passages": truth_passages, "units": truth_units,
                                          "unit_count": counted["units"]}), encoding="utf-8")
    units = counted["units"]
    log(f"{size:,} passages, {units:,} units generated, exact top-10 by brute force in "
        f"{time.perf_counter() - began:.0f} s")
    result = {"passages": size, "units": units, "configs": {}}
    for config in args.configs:
        if config == "exact" and size > args.exact_max:
            continue
        tree = Path(args.baseline_tree) if config == "main" else HERE
        index = work / f"index-{config}"
        built = work / f"index-{config}.build.json"
        if args.reuse_index and (index / "current").exists() and built.exists():
            numbers = json.loads(built.read_text(encoding="utf-8"))  # searched again, not built again
        else:
            numbers = _run_child("build", tree, ["--config", config, "--corpus-file", str(corpus_file),
                                                 "--index", str(index)] + (["--child-updates"] if args.updates else []))
            built.write_text(json.dumps(numbers), encoding="utf-8")
        log(f"  {config}: built in {numbers['build_s']:.0f} s")
        numbers["page_cache"] = "dropped" if args.drop_caches and drop_page_cache(log) else "as left"
        searched = _run_child("search", tree, ["--index", str(index), "--questions-file", str(questions_file)])
        numbers.update({k: v for k, v in searched.items() if not k.endswith("top10")})
        numbers["dense_recall@10"] = recall(searched["dense_top10"], truth_passages)
        numbers["unit_recall@10"] = recall(searched["unit_owner_top10"], truth_units)
        numbers["load_average_1min"] = os.getloadavg()[0]  # how busy the shared machine was
        result["configs"][config] = numbers
        log(f"  {config}: {json.dumps(_rounded(numbers), ensure_ascii=False)}")
        if not (args.keep_index or args.reuse_index):
            shutil.rmtree(index, ignore_errors=True)
    return result


def _rounded(value):
    if isinstance(value, float):
        return round(value, 3 if value < 10 else 1)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def table(results: list[dict]) -> str:
    """The numbers as a Markdown table, one row per size and configuration."""
    head = ("| passages | units | config | first questions p50/p95 ms | hybrid p50/p95 ms | filtered p50/p95 ms "
            "| same again p50/p95 ms | add one s | delete one s | build s | load s | search peak RSS MB | disk MB "
            "| dense recall@10 | unit recall@10 |")
    lines = [head, "|" + " --- |" * 15]

    def both(figures: dict) -> str:
        return f"{figures['p50']:.1f} / {figures['p95']:.1f}"

    for result in results:
        for name, n in result["configs"].items():
            lines.append(
                f"| {result['passages']:,} | {result['units']:,} | {name}"
                f"{' (page cache dropped)' if n.get('page_cache') == 'dropped' else ''} "
                f"| {both(n['first_questions_ms'])} | {both(n['hybrid_ms'])} | {both(n['hybrid_filtered_ms'])} "
                f"| {both(n['hybrid_again_ms'])} "
                f"| {n.get('add_one_s', float('nan')):.1f} | {n.get('delete_one_s', float('nan')):.1f} "
                f"| {n['build_s']:.1f} | {n['load_s']:.1f} | {n['search_peak_rss_mb']:.0f} | {n['disk_mb']:.0f} "
                f"| {n['dense_recall@10']:.3f} | {n['unit_recall@10']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed-index", default="index", help="an index of the seed reports built with the real model")
    parser.add_argument("--sizes", default="10k,100k", help="comma-separated passage counts: 10k,100k,1m")
    parser.add_argument("--configs", default="scaled,exact,rewrite",
                        help="scaled, exact, rewrite, main (needs --baseline-tree)")
    parser.add_argument("--baseline-tree", help="a checkout whose store is the 'main' configuration")
    parser.add_argument("--exact-max", type=_size, default=_size("100k"), help="largest size for the exact config")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=100,
                        help="other questions asked first (not timed in the main figures: first_questions_ms)")
    parser.add_argument("--noise", type=float, default=0.5, help="relative norm of the noise added to seed vectors")
    parser.add_argument("--mix", type=float, default=0.3, help="chance a sentence is swapped for a random seed one")
    parser.add_argument("--no-updates", dest="updates", action="store_false", help="skip add-one/delete-one")
    parser.add_argument("--work", default="/tmp/rag-scale")
    parser.add_argument("--keep-index", action="store_true", help="keep each configuration's index in --work")
    parser.add_argument("--reuse-index", action="store_true",
                        help="search an index (and exact top-10) an earlier --keep-index run left in --work, "
                             "reporting that run's build numbers, instead of building again")
    parser.add_argument("--drop-caches", action="store_true",
                        help="drop the page cache before each search (root): time searches on a cold cache")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=["build", "search"], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--corpus-file", help=argparse.SUPPRESS)
    parser.add_argument("--index", help=argparse.SUPPRESS)
    parser.add_argument("--questions-file", help=argparse.SUPPRESS)
    # Its own name: sharing the dest "updates" with --no-updates made the child's default True (the first
    # action's default wins), so --no-updates never reached it.
    parser.add_argument("--child-updates", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_build(args) if args.child == "build" else child_search(args)))
        return
    args.configs = [c for c in args.configs.split(",") if c]
    if "main" in args.configs and not args.baseline_tree:
        parser.error("the main configuration needs --baseline-tree")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log("语料与向量为合成数据 / generated data: passages recombine real seed sentences (mix "
        f"{args.mix}); vectors are real EmbeddingGemma seed vectors plus Gaussian noise (relative norm "
        f"{args.noise}), renormalised; questions are seed sentence heads with noisy sentence vectors; "
        "BM25 tokens of generated passages are their seed sentences' jieba tokens. Query embedding excluded.")
    seeds = load_seeds(Path(args.seed_index))
    results = [run_size(_size(size), seeds, args, log) for size in args.sizes.split(",")]
    from rag.ann import default_settings

    summary = {"generated_data": True, "noise": args.noise, "mix": args.mix, "queries": args.queries,
               "cpu_count": os.cpu_count(), "ann": default_settings().as_dict(), "results": _rounded(results)}
    print(json.dumps(summary, ensure_ascii=False, indent=1) if args.json else table(results))


if __name__ == "__main__":
    main()
