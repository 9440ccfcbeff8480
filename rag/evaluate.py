"""The retrieval benchmark behind ``rag eval``.

A question set (``eval/questions.jsonl`` or a user's file in the same format) is run through
several configurations side by side, on the same machine with the same model:

* ``bm25``     — BM25 over jieba tokens only, on the project's chunks;
* ``dense``    — embeddings only, on the project's chunks;
* ``default``  — the project's pipeline (hybrid fusion, de-duplication);
* ``recipe``   — the typical tutorial recipe: fixed 500-character windows with 50 overlap, dense
  only, no table handling, no context in the embeddings.

A retrieved passage is relevant when, with all whitespace removed from both, it contains one of
the question's evidence strings and comes from one of its listed reports. Ranking metrics come
from ranx; abstention is judged with the same rule ``rag ask`` uses.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from . import fitted
from .api import ReportQA, Settings
from .boilerplate import notices_of
from .chunking import ChunkerSettings
from .errors import RagError
from .llm import LLMConfig, rewrite_question
from .results import Answer, Hit
from .textnorm import drop_thousands_separators, fold, squeeze

TYPES = ("fact", "table", "numeric", "list", "paraphrase", "multi", "unanswerable")
RANX_METRICS = ["hit_rate@1", "hit_rate@3", "hit_rate@5", "hit_rate@10", "mrr@10", "ndcg@10"]
MAIN_METRICS = ["hit@1", "hit@5", "mrr@10", "ndcg@10", "abstain", "false_abstain"]
RECIPE_CHUNKER = ChunkerSettings(strategy="fixed", embed_context=False, sentence_vectors=False,
                                 target_chars=500, overlap_chars=50)
MISSING = "__no_relevant_passage_retrieved__"
T = TypeVar("T")


@dataclass
class Question:
    """One benchmark question."""

    id: str
    question: str
    evidence: list[str]
    docs: list[str]
    type: str
    split: str = ""
    answer: str = ""
    difficulty: str = ""

    @property
    def answerable(self) -> bool:
        """False for questions that no report answers."""
        return self.type != "unanswerable" and bool(self.evidence)


@dataclass
class Configuration:
    """One column of the side-by-side table."""

    name: str
    mode: str
    qa: ReportQA


@dataclass
class ConfigResult:
    """Per-configuration numbers."""

    name: str
    metrics: dict[str, float] = field(default_factory=dict)
    by_type: dict[str, dict[str, float]] = field(default_factory=dict)
    by_report: dict[str, dict[str, float]] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    passage_chars: float = 0.0
    misses: list[str] = field(default_factory=list)
    abstention_curve: list[tuple[float, float, float]] = field(default_factory=list)
    per_question: dict[str, dict[str, float]] = field(default_factory=dict)
    abstained: dict[str, bool] = field(default_factory=dict)  # per question id: did `rag ask` abstain


def _parsed_lines(path: Path, kind: str, parse: Callable[[dict], T]) -> list[T]:
    """Every non-empty JSON line of ``path`` through ``parse``; ``kind`` names the file in errors (问题集, 对话集)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise RagError(f"无法读取{kind} / cannot read {path}: {exc.strerror}") from exc
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            items.append(parse(json.loads(line)))
        except (ValueError, KeyError, TypeError) as exc:
            raise RagError(f"{kind}第 {number} 行格式错误 / bad line {number} in {path}: {exc}") from exc
    return items


def _question(raw: dict) -> Question:
    return Question(id=str(raw["id"]), question=raw["question"], evidence=list(raw.get("evidence", [])),
                    docs=list(raw.get("docs", [])), type=raw.get("type", "fact"), split=raw.get("split", ""),
                    answer=raw.get("answer", ""), difficulty=raw.get("difficulty", ""))


def load_questions(path: Path, split: str | None = None) -> list[Question]:
    """Read a question file (JSON lines); ``split`` keeps one split (``select_split``)."""
    return select_split(_parsed_lines(path, "问题集", _question), split, path)


def select_split(questions: list[Question], split: str | None, path: Path) -> list[Question]:
    """The questions of one split (``None`` or ``all``: every question); an error when none are left."""
    chosen = [q for q in questions if split in (None, "all") or q.split == split]
    if not chosen:
        raise RagError(f"问题集中没有题目 / no questions in {path} for split {split!r}")
    return chosen


def spread(items: list[T], limit: int | None) -> list[T]:
    """``limit`` of ``items`` at even steps (all of them when ``limit`` is None or not smaller).

    A question file lists questions report by report with the unanswerable ones last, so the first N
    would test one report and no refusal; even steps keep every report and kind represented.
    """
    if limit is None or limit >= len(items):
        return list(items)
    if limit <= 0:
        return []
    return [items[(i * len(items)) // limit] for i in range(limit)]


def is_relevant(hit_text: str, source: str, question: Question) -> bool:
    """Whitespace-free containment of an evidence string, in one of the listed reports."""
    if question.docs and source not in question.docs:
        return False
    text = squeeze(hit_text)
    return any(squeeze(e) in text for e in question.evidence)


def _relevant_hit(hit: Hit, question: Question, qa: ReportQA) -> bool:
    if is_relevant(hit.chunk.text, hit.chunk.source, question):
        return True
    for citation in hit.also_in:  # a folded near-copy counts as the same passage
        copy = qa.store.chunk_by_citation(citation)
        if copy and is_relevant(copy.text, copy.source, question):
            return True
    return False


def _ranx_scores(runs: dict[str, list[tuple[str, bool]]]) -> dict[str, dict[str, float]]:
    """Per-question ranx metrics from ranked (citation, relevant) lists."""
    import warnings

    from ranx import Qrels, Run, evaluate

    warnings.filterwarnings("ignore", module="ranx")
    warnings.filterwarnings("ignore", message=".*unsafe cast.*")

    qrels_dict: dict[str, dict[str, int]] = {}
    run_dict: dict[str, dict[str, float]] = {}
    for qid, ranked in runs.items():
        relevant = {cid: 1 for cid, ok in ranked if ok}
        qrels_dict[qid] = relevant or {MISSING: 1}
        run_dict[qid] = {cid: float(len(ranked) - i) for i, (cid, _) in enumerate(ranked)} or {"__empty__": 0.0}
    if not qrels_dict:
        return {}
    qrels = Qrels(qrels_dict)
    scores = evaluate(qrels, Run(run_dict), RANX_METRICS, return_mean=False, make_comparable=True)
    order = qrels.get_query_ids()  # ranx reports per-query values in its own (sorted) order
    per_question: dict[str, dict[str, float]] = {qid: {} for qid in qrels_dict}
    for metric, values in scores.items():
        for qid, value in zip(order, values, strict=True):
            per_question[qid][metric.replace("hit_rate", "hit")] = float(value)
    return per_question


def _mean(values: list[float]) -> float:
    return float(statistics.fmean(values)) if values else 0.0


BOOTSTRAP_RESAMPLES = 2000
INTERVAL_METRICS = ("hit@5", "mrr@10")


def bootstrap_interval(values: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of per-question ``values`` (fixed seed: reruns agree)."""
    import numpy as np

    if not values:
        return 0.0, 0.0
    data = np.asarray(values, dtype=float)
    draws = np.random.default_rng(seed).integers(0, len(data), size=(resamples, len(data)))
    means = data[draws].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def metric_interval(result: ConfigResult, metric: str, against: ConfigResult | None = None) -> tuple[float, float]:
    """Bootstrap interval of ``metric`` over the answerable questions; with ``against``, of the paired
    difference ``result - against`` on the same questions (an interval above 0 means ``result`` leads
    beyond what resampling the questions explains)."""
    ids = sorted(result.per_question)
    values = [result.per_question[q][metric] - (against.per_question[q][metric] if against else 0.0)
              for q in ids if against is None or q in against.per_question]
    return bootstrap_interval(values)


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def numbers_in(text: str) -> set[str]:
    """The numbers written in ``text`` (thousands separators dropped: "3,958" is 3958)."""
    return set(_NUMBER.findall(drop_thousands_separators(fold(text))))


MARKER = re.compile(r"\[(\d+)\]")


def answer_sentences(answer: Answer) -> list[tuple[str, Hit | None]]:
    """The quoted sentences of an extractive answer, each with the source its marker cites."""
    parts, begin = [], 0
    for match in MARKER.finditer(answer.text):
        marker = int(match.group(1))
        source = answer.sources[marker - 1] if 0 < marker <= len(answer.sources) else None
        parts.append((answer.text[begin:match.start()].strip(), source))
        begin = match.end()
    return [(text, source) for text, source in parts if text]


def is_boilerplate_sentence(sentence: str, source: Hit | None) -> bool:
    """True when a quoted sentence lies in its report's boilerplate lines (``rag.boilerplate``)."""
    if source is None:
        return False
    at = source.chunk.text.find(sentence)
    if at < 0:
        return False  # a table row is quoted with its column names and is not notice text
    begin = source.chunk.start + at
    return notices_of(source.document).covers(begin, begin + len(sentence))


def key_terms(reference: str, question: str, qa: ReportQA) -> set[str]:
    """Words of a reference answer that the question does not already say (two characters or more)."""
    asked = fold(question).replace(" ", "")
    words = {fold(t).replace(" ", "") for t in qa.store.tokenizer.tokens(reference)}
    return {w for w in words if len(w) >= 2 and not w.isdigit() and w not in asked and re.search(r"\w", w)}


def answer_quality(answer: Answer, question: Question, qa: ReportQA) -> dict[str, float]:
    """Per-question answer measures (a key is missing where the measure does not apply).

    * ``states_numbers`` — share of the reference answer's numbers written in the answer;
    * ``number_precision`` — share of the answer's numbers that belong to the reference answer or its evidence
      (or to the question);
    * ``lead_correct`` — the first sentence states a reference number or a key term of the reference answer
      (0 when the answer abstained);
    * ``boilerplate_share`` — share of the answer's sentences that are report boilerplate.
    """
    measures: dict[str, float] = {}
    sentences = [] if answer.abstained else answer_sentences(answer)
    text = " ".join(sentence for sentence, _ in sentences)
    wanted = numbers_in(question.answer)
    if wanted:
        measures["states_numbers"] = len(wanted & numbers_in(text)) / len(wanted)
    stated = numbers_in(text)
    if stated:
        # A number the question itself writes (GPT-3, 2023年) names what was asked; it is not a stray figure.
        allowed = numbers_in(" ".join([question.question, question.answer, *question.evidence]))
        measures["number_precision"] = len(stated & allowed) / len(stated)
    terms = key_terms(question.answer, question.question, qa)
    if wanted or terms:
        lead = fold(sentences[0][0]).replace(" ", "") if sentences else ""
        measures["lead_correct"] = float(bool(lead) and (bool(wanted & numbers_in(lead))
                                                          or any(t in lead for t in terms)))
    if sentences:
        measures["boilerplate_share"] = _mean([float(is_boilerplate_sentence(s, h)) for s, h in sentences])
    return measures


def answer_metrics(questions: list[Question], answers: dict[str, Answer], runs: dict[str, list[tuple[str, bool]]],
                   qa: ReportQA) -> dict[str, float]:
    """The answer columns of the report from each question's answer and its judged ranking (``runs``)."""
    cites: list[float] = []
    lengths: list[float] = []
    quality: dict[str, list[float]] = {}
    for question in questions:
        answer = answers[question.id]
        measures = answer_quality(answer, question, qa)
        if question.answerable:
            relevant = dict(runs[question.id])
            cites.append(float(any(relevant.get(h.citation, False) for h in answer.sources)))
            if not answer.abstained:
                lengths.append(float(len(MARKER.sub("", answer.text))))
        else:  # only how much boilerplate an answer quotes applies to an unanswerable question
            measures = {k: v for k, v in measures.items() if k == "boilerplate_share"}
        for name, value in measures.items():
            quality.setdefault(name, []).append(value)
    return {"answer_cites_relevant": _mean(cites), "answer_states_numbers": _mean(quality.get("states_numbers", [])),
            "answer_number_precision": _mean(quality.get("number_precision", [])),
            "answer_lead_correct": _mean(quality.get("lead_correct", [])),
            "answer_boilerplate": _mean(quality.get("boilerplate_share", [])), "answer_chars": _mean(lengths)}


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def evaluate_configuration(config: Configuration, questions: list[Question], depth: int = 10,
                           progress: Callable[[str], None] | None = None) -> ConfigResult:
    """Run every question through one configuration and compute its metrics."""
    result = ConfigResult(config.name)
    runs: dict[str, list[tuple[str, bool]]] = {}
    latencies: list[float] = []
    passage_lengths: list[int] = []
    abstained: dict[str, bool] = {}
    probabilities: dict[str, float | None] = {}
    cautioned: dict[str, bool] = {}
    best_signals: dict[str, list[Hit]] = {}
    answers: dict[str, Answer] = {}
    config.qa.search("预热 warm-up", top_k=1, mode=config.mode)  # load model and index outside the timing
    config.qa.encoder.clear()
    for question in questions:
        began = time.perf_counter()
        found = config.qa.search(question.question, top_k=depth, mode=config.mode)
        latencies.append((time.perf_counter() - began) * 1000)
        hits = found.hits
        best_signals[question.id] = hits
        # The answer `rag ask` would give, with its abstention decision and caution flag.
        answer = (config.qa.compose(found.analysed, hits) if found.analysed is not None
                  else Answer(found.error or "", True, []))
        probabilities[question.id] = answer.unanswerable_probability
        abstained[question.id] = answer.abstained
        cautioned[question.id] = answer.caution
        passage_lengths.extend(len(h.chunk.text) for h in hits[:5])
        if question.answerable:
            runs[question.id] = judged(hits, question, config.qa)
        answers[question.id] = answer
    per_question = _ranx_scores(runs)
    answerable = [q for q in questions if q.answerable]
    unanswerable = [q for q in questions if not q.answerable]

    def summarise(group: list[Question]) -> dict[str, float]:
        scored = [per_question[q.id] for q in group if q.id in per_question]
        summary = {m: _mean([s[m] for s in scored]) for m in ("hit@1", "hit@3", "hit@5", "hit@10", "mrr@10", "ndcg@10")}
        summary["n"] = float(len(group))
        return summary

    result.metrics = summarise(answerable)
    multi = [q for q in answerable if q.type == "multi"]
    if multi:
        recalls = []
        for question in multi:
            top = best_signals[question.id][:5]
            covered = [any(squeeze(e) in squeeze(h.chunk.text) for h in top) for e in question.evidence]
            recalls.append(sum(covered) / len(covered))
        result.metrics["multi_evidence_recall@5"] = _mean(recalls)
    result.metrics["abstain"] = _mean([float(abstained[q.id]) for q in unanswerable]) if unanswerable else 0.0
    result.metrics["false_abstain"] = _mean([float(abstained[q.id]) for q in answerable])
    # The extractive answer `rag ask` would give: does it cite a relevant passage, and does its text
    # state the numbers of the reference answer?
    result.metrics.update(answer_metrics(questions, answers, runs, config.qa))
    # The softer level: answered, but with the caution note (rag.answer.CAUTION).
    result.metrics["abstain_or_caution"] = (_mean([float(abstained[q.id] or cautioned[q.id]) for q in unanswerable])
                                            if unanswerable else 0.0)
    result.metrics["caution_answerable"] = _mean([float(cautioned[q.id]) for q in answerable])
    auc = separation_auc([probabilities[q.id] for q in unanswerable], [probabilities[q.id] for q in answerable])
    if auc is not None:
        result.metrics["abstain_auc"] = auc
    for kind in TYPES:
        group = [q for q in questions if q.type == kind]
        if group:
            result.by_type[kind] = (summarise(group) if kind != "unanswerable" else
                                    {"abstain": _mean([float(abstained[q.id]) for q in group]), "n": float(len(group))})
    reports = sorted({d for q in answerable for d in q.docs})
    for report in reports:
        result.by_report[report] = summarise([q for q in answerable if report in q.docs])
    result.latency_ms = {"p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95)}
    result.passage_chars = _mean([float(n) for n in passage_lengths])
    result.misses = [q.id for q in answerable if per_question.get(q.id, {}).get("hit@5", 0.0) == 0.0]
    result.per_question = {q.id: per_question[q.id] for q in answerable if q.id in per_question}
    result.abstention_curve = _abstention_curve(probabilities, abstained, answerable, unanswerable)
    result.abstained = abstained
    if progress:
        progress(f"{config.name}: hit@5={result.metrics['hit@5']:.3f} mrr@10={result.metrics['mrr@10']:.3f}")
    return result


def separation_auc(positive: Sequence[float | None], negative: Sequence[float | None]) -> float | None:
    """ROC AUC: the chance that a random unanswerable question gets a higher P(unanswerable) than a random
    answerable one (ties count half). Independent of where the refusal bar sits; None without probabilities."""
    pos = [p for p in positive if p is not None]
    neg = [n for n in negative if n is not None]
    if not pos or not neg:
        return None
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def _abstention_curve(probabilities: dict[str, float | None], abstained: dict[str, bool],
                      answerable: list[Question], unanswerable: list[Question]) -> list[tuple[float, float, float]]:
    """(threshold, abstain rate, false-abstain rate) for a sweep of the answerability model's bar."""
    def refused(question: Question, threshold: float) -> float:
        probability = probabilities[question.id]
        return float(abstained[question.id] if probability is None else probability >= threshold)

    curve = []
    for step in range(10, 91, 5):
        threshold = step / 100
        curve.append((threshold, _mean([refused(q, threshold) for q in unanswerable]),
                      _mean([refused(q, threshold) for q in answerable])))
    return curve


def standard_configurations(corpus_dir: Path, index_dir: Path, model: str | None = None,
                            settings: Settings | None = None,
                            log: Callable[[str], None] = lambda message: None) -> list[Configuration]:
    """bm25, dense, default and recipe configurations over one corpus (recipe index built if needed).

    The main configurations use the store ``$RAG_STORE`` names; the recipe baseline always lives in the
    embedded store under ``index_dir`` (it is a reference point, not the system under test).
    """
    settings = settings or Settings()
    main = ReportQA(corpus_dir, index_dir, model=model, settings=settings)
    main.build(log=log)
    for warning in fitted.mismatches(main.store.manifest):
        log(warning)
    recipe_settings = replace(settings, chunker=RECIPE_CHUNKER)
    recipe = ReportQA(corpus_dir, index_dir / "baselines" / "recipe", model=model,
                      settings=recipe_settings, store_location="faiss")
    recipe.build(log=log)
    return [Configuration("bm25", "bm25", main), Configuration("dense", "dense", main),
            Configuration("recipe", "dense", recipe), Configuration("default", "hybrid", main)]


def run_benchmark(questions: list[Question], configurations: list[Configuration],
                  progress: Callable[[str], None] | None = None) -> list[ConfigResult]:
    """Evaluate every configuration on the same questions."""
    return [evaluate_configuration(c, questions, progress=progress) for c in configurations]


def _row(values: list[str]) -> str:
    return "| " + " | ".join(values) + " |"


def markdown_report(results: list[ConfigResult], questions: list[Question], split: str, source: str,
                    chart: str | None = None) -> str:
    """The benchmark as a Markdown report (tables per metric, type, report; abstention curve)."""
    answerable = sum(q.answerable for q in questions)
    lines = [f"# Retrieval benchmark — split `{split}`", "",
             f"Questions: {len(questions)} from `{source}` ({answerable} answerable, "
             f"{len(questions) - answerable} unanswerable). Generated by `rag eval --split {split}`.", ""]
    header = ["config", "Hit@1", "Hit@3", "Hit@5", "Hit@10", "MRR@10", "nDCG@10", "multi recall@5",
              "abstain (unans.)", "false abstain", "p50 ms", "p95 ms", "top-5 chars"]
    lines += [_row(header), _row(["---"] * len(header))]
    def cell(metrics: dict[str, float], name: str) -> str:
        # A question set without multi-evidence or unanswerable questions has nothing to show there.
        if name not in metrics or (name == "abstain" and answerable == len(questions)):
            return "—"
        return f"{metrics[name]:.3f}"

    for r in results:
        lines.append(_row([r.name] + [cell(r.metrics, k) for k in
                                      ("hit@1", "hit@3", "hit@5", "hit@10", "mrr@10", "ndcg@10",
                                       "multi_evidence_recall@5", "abstain", "false_abstain")]
                          + [f"{r.latency_ms['p50']:.0f}", f"{r.latency_ms['p95']:.0f}", f"{r.passage_chars:.0f}"]))
    if chart:
        lines += ["", f"![main metrics]({chart})"]
    lines += ["", "## Hit@5 / MRR@10 by question type", ""]
    kinds = [k for k in TYPES if any(k in r.by_type for r in results)]
    lines += [_row(["config"] + kinds), _row(["---"] * (len(kinds) + 1))]
    for r in results:
        cells = []
        for kind in kinds:
            values = r.by_type.get(kind, {})
            cells.append(f"abstain {values.get('abstain', 0):.2f}" if kind == "unanswerable"
                         else f"{values.get('hit@5', 0):.2f} / {values.get('mrr@10', 0):.2f}")
        lines.append(_row([r.name] + cells))
    reports = sorted({rep for r in results for rep in r.by_report})
    lines += ["", "## Hit@5 / MRR@10 by report", "", _row(["config"] + reports), _row(["---"] * (len(reports) + 1))]
    for r in results:
        lines.append(_row([r.name] + [f"{r.by_report.get(rep, {}).get('hit@5', 0):.2f} / "
                                      f"{r.by_report.get(rep, {}).get('mrr@10', 0):.2f}" for rep in reports]))
    lines += ["", "## Extractive answers (what `rag ask` would reply)", "",
              "Cites a relevant passage: share of answerable questions whose answer cites at least one passage "
              "that contains the evidence. States the numbers: over answerable questions whose reference answer "
              "has numbers, the share of those numbers written in the answer text. Number precision: over "
              "answers that write numbers, the share of them that belong to the reference answer or its evidence "
              "(or the question: GPT-3). "
              "Lead correct: share of answerable questions whose first answer sentence states a reference number "
              "or a key term of the reference answer (a refusal counts as wrong). Boilerplate: share of the "
              "answer sentences (all questions answered) that are report boilerplate (`rag.boilerplate`).", "",
              _row(["config", "cites a relevant passage", "states the reference numbers", "number precision",
                    "lead correct", "boilerplate sentences", "answer chars"]),
              _row(["---"] * 7)]
    lines += [_row([r.name] + [f"{r.metrics.get(k, 0):.3f}" for k in
                               ("answer_cites_relevant", "answer_states_numbers", "answer_number_precision",
                                "answer_lead_correct", "answer_boilerplate")]
                   + [f"{r.metrics.get('answer_chars', 0):.0f}"])
              for r in results]
    lines += ["", "## Uncertainty (95% bootstrap over the answerable questions)", "",
              "A split of a few dozen questions moves MRR by a few hundredths when one question moves; "
              "these intervals show how far. The last columns resample the default configuration's lead "
              "over each configuration question by question.", ""]
    default = next((r for r in results if r.name == "default"), None)
    lines += [_row(["config", "Hit@5", "MRR@10", "default − config: Hit@5", "default − config: MRR@10"]),
              _row(["---"] * 5)]
    for r in results:
        cells = [f"{r.metrics.get(m, 0):.3f} [{lo:.3f}, {hi:.3f}]"
                 for m in INTERVAL_METRICS for lo, hi in [metric_interval(r, m)]]
        if default is not None and r is not default:
            cells += [f"{default.metrics.get(m, 0) - r.metrics.get(m, 0):+.3f} [{lo:+.3f}, {hi:+.3f}]"
                      for m in INTERVAL_METRICS for lo, hi in [metric_interval(default, m, r)]]
        else:
            cells += ["", ""]
        lines.append(_row([r.name] + cells))
    lines += ["", "## Abstention trade-off (varying the answerability model's bar)", "",
              "How well each configuration's hits let the answerability model separate unanswerable from "
              "answerable questions, whatever the bar (ROC AUC; 0.5 is chance; bm25 has no model):", "",
              _row(["config", "AUC", "abstain at the bar", "false abstain at the bar"]), _row(["---"] * 4)]
    for r in results:
        if "abstain_auc" in r.metrics:
            lines.append(_row([r.name, f"{r.metrics['abstain_auc']:.3f}", f"{r.metrics['abstain']:.3f}",
                               f"{r.metrics['false_abstain']:.3f}"]))
    lines += ["", "The default configuration's curve:", ""]
    for r in results:
        if r.name != "default":
            continue
        lines += [_row(["refuse when P(unanswerable) ≥", "abstain on unanswerable", "false abstain on answerable"]),
                  _row(["---"] * 3)]
        lines += [_row([f"{t:.2f}", f"{a:.2f}", f"{f:.2f}"]) for t, a, f in r.abstention_curve]
        m = r.metrics
        lines += ["", "Between the caution bar and the refusal bar the answer is given with a caution note "
                  "(`rag.answer.CAUTION`). Refused or cautioned: "
                  f"{m.get('abstain_or_caution', 0):.2f} of the unanswerable questions; cautioned: "
                  f"{m.get('caution_answerable', 0):.2f} of the answerable ones (still answered)."]
    lines += ["", "## Missed at 5", ""]
    for r in results:
        lines.append(f"- {r.name}: {', '.join(r.misses) or 'none'}")
    return "\n".join(lines) + "\n"


def plot_chart(results: list[ConfigResult], path: Path) -> None:
    """Bar chart of the main metrics per configuration (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["hit@1", "hit@5", "mrr@10", "ndcg@10"]
    figure, axis = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(results))
    for index, result in enumerate(results):
        positions = [m + index * width for m in range(len(metrics))]
        bars = axis.bar(positions, [result.metrics.get(m, 0) for m in metrics], width, label=result.name)
        axis.bar_label(bars, fmt="%.2f", fontsize=7)
    axis.set_xticks([m + width * (len(results) - 1) / 2 for m in range(len(metrics))], metrics)
    axis.set_ylim(0, 1.18)
    axis.set_ylabel("score")
    axis.legend(loc="upper center", ncol=len(results), fontsize=8, frameon=False)
    axis.set_title("Retrieval quality per configuration")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def results_json(results: list[ConfigResult]) -> dict:
    """Numbers for scripts (``rag eval --json``)."""
    return {r.name: {"metrics": r.metrics, "by_type": r.by_type, "by_report": r.by_report,
                     "latency_ms": r.latency_ms, "passage_chars": r.passage_chars, "misses": r.misses,
                     "abstained": r.abstained,
                     "intervals": {m: metric_interval(r, m) for m in INTERVAL_METRICS}}
            for r in results}



# -- follow-up questions ---------------------------------------------------------------------------

@dataclass
class Conversation:
    """A chat of two or three turns; every turn is a ``Question`` whose ``answer`` is its reference and whose
    ``standalone`` form is what a person would write for it out of context."""

    id: str
    split: str
    turns: list[Question]
    standalone: list[str]


def _conversation(raw: dict) -> Conversation:
    turns = [Question(id=f"{raw['id']}-{n}", question=t["question"], evidence=list(t["evidence"]),
                      docs=list(t.get("docs", [])), type="followup" if n else "fact", split=raw.get("split", ""),
                      answer=t.get("answer", ""))
             for n, t in enumerate(raw["turns"])]
    return Conversation(str(raw["id"]), raw.get("split", ""), turns,
                        [t.get("standalone") or t["question"] for t in raw["turns"]])


def load_conversations(path: Path, split: str | None = None) -> list[Conversation]:
    """Read a conversation file (JSON lines: id, split, turns with question/standalone/evidence/docs/answer)."""
    chosen = [c for c in _parsed_lines(path, "对话集", _conversation) if split in (None, "all") or c.split == split]
    if not chosen:
        raise RagError(f"对话集中没有对话 / no conversations in {path} for split {split!r}")
    return chosen


FOLLOWUP_RUNS = ("first turns", "follow-ups as typed", "follow-ups rewritten from the history",
                 "follow-ups as written standalone (reference)")
LLM_REWRITE_RUN = "follow-ups rewritten by the LLM"


def judged(hits: list[Hit], question: Question, qa: ReportQA) -> list[tuple[str, bool]]:
    """Each hit's citation with whether it is relevant to ``question`` (the run ranx scores)."""
    return [(h.citation, _relevant_hit(h, question, qa)) for h in hits]


def evaluate_conversations(qa: ReportQA, conversations: list[Conversation], depth: int = 10,
                           llm: LLMConfig | None = None) -> dict[str, dict]:
    """Hit@5 and MRR@10 of the first turns, and of the follow-up turns searched as typed (no history),
    rewritten from the history (``rag.followup``), and as their reference standalone questions; with ``llm``
    also rewritten by that LLM (``rag.llm.rewrite_question``, the deterministic rewrite where it fails)."""
    names = FOLLOWUP_RUNS + ((LLM_REWRITE_RUN,) if llm else ())
    runs: dict[str, dict[str, list[tuple[str, bool]]]] = {name: {} for name in names}
    exact: list[float] = []
    llm_exact: list[float] = []
    for conversation in conversations:
        for position, turn in enumerate(conversation.turns):
            asked = [t.question for t in conversation.turns[:position]]

            if position == 0:
                runs[FOLLOWUP_RUNS[0]][turn.id] = judged(qa.search(turn.question, top_k=depth).hits, turn, qa)
                continue
            runs[FOLLOWUP_RUNS[1]][turn.id] = judged(qa.search(turn.question, top_k=depth).hits, turn, qa)
            rewritten = qa.search(turn.question, top_k=depth, history=asked)
            runs[FOLLOWUP_RUNS[2]][turn.id] = judged(rewritten.hits, turn, qa)
            reference = conversation.standalone[position]
            by_rule = rewritten.standalone or turn.question
            exact.append(float(squeeze(by_rule) == squeeze(reference)))
            runs[FOLLOWUP_RUNS[3]][turn.id] = judged(qa.search(reference, top_k=depth).hits, turn, qa)
            if llm:
                written = rewrite_question(llm, asked, turn.question, by_rule)
                runs[LLM_REWRITE_RUN][turn.id] = judged(qa.search(written, top_k=depth).hits, turn, qa)
                llm_exact.append(float(squeeze(written) == squeeze(reference)))
    results: dict[str, dict[str, float | str]] = {}
    for name, run in runs.items():
        scores = _ranx_scores(run)
        results[name] = {"n": float(len(run)), "hit@5": _mean([s["hit@5"] for s in scores.values()]),
                         "mrr@10": _mean([s["mrr@10"] for s in scores.values()])}
    results["rewrite equals the reference"] = {"n": float(len(exact)), "share": _mean(exact)}
    if llm:
        results["LLM rewrite equals the reference"] = {"n": float(len(llm_exact)), "share": _mean(llm_exact),
                                                       "model": llm.model, "url": llm.base_url}
    return results


def conversations_report(results: dict[str, dict], split: str, source: str) -> str:
    """The follow-up evaluation as Markdown."""
    lines = [f"# Follow-up questions — split `{split}`", "",
             f"Conversations from `{source}`. Generated by `rag eval --conversations {source} --split {split}`.", "",
             _row(["turns", "n", "Hit@5", "MRR@10"]), _row(["---"] * 4)]
    for name in (*FOLLOWUP_RUNS, LLM_REWRITE_RUN):
        if name not in results:
            continue
        r = results[name]
        lines.append(_row([name, f"{r['n']:.0f}", f"{r['hit@5']:.3f}", f"{r['mrr@10']:.3f}"]))
    exact = results["rewrite equals the reference"]
    lines += ["", f"The rewrite equals the reference standalone question (whitespace ignored) for "
              f"{exact['share']:.2f} of {exact['n']:.0f} follow-up turns."]
    if "LLM rewrite equals the reference" in results:
        llm_exact = results["LLM rewrite equals the reference"]
        lines += ["", f"The LLM's rewrite (`{llm_exact['model']}` at {llm_exact['url']}, the deterministic rewrite "
                  f"where the LLM failed or replied with more than a question) equals the reference for "
                  f"{llm_exact['share']:.2f} of {llm_exact['n']:.0f} follow-up turns."]
    return "\n".join(lines) + "\n"
