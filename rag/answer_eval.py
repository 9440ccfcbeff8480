"""Extractive and generated answers side by side on the same questions: ``rag eval --answers``.

Every question is asked once with ``generate=True`` (one retrieval, both answers), so the two
columns see the same passages. For the extractive answer and for the generated one:

* ``states_numbers``    — share of the reference answer's numbers the answer states (answerable
  questions whose reference holds a number; an answer not given states none);
* ``number_precision``  — share of the numbers in the answers given that belong to the reference
  answer or its evidence (pooled over answerable questions);
* ``refuse_unanswerable`` / ``false_refusal`` — no answer given on unanswerable / answerable questions.

For the generated answer only (``shown``: the checked generated answer reached the user):

* ``shown_sentences_verified`` — share of the shown sentences the checker verified and cited;
* ``shown_numbers_not_in_cited`` — numbers in shown sentences found in none of the passages that
  sentence cites, re-checked here by a plain literal search independent of the checker (goal: 0);
* ``fabricated_numbers`` / ``fabricated_caught`` — numbers in the raw model output that occur in no
  passage, and the share of them that did not reach the user;
* ``model_refusals``, ``nothing_verified``, ``llm_failures`` — why the extractive answer was shown;
* latency p50/p95 of the first token and of the whole answer (seconds).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api import ReportQA
from .evaluate import MARKER, Question, numbers_in, percentile
from .generate import MODEL_REFUSED, NOTHING_VERIFIED
from .llm import LLMConfig
from .results import AskResult, GeneratedAnswer, Hit

KINDS = ("extractive", "generated")


@dataclass
class Tally:
    """Running counts for one answer kind."""

    states: list[float] = field(default_factory=list)
    numbers_given: int = 0
    numbers_right: int = 0
    refused_unanswerable: list[float] = field(default_factory=list)
    refused_answerable: list[float] = field(default_factory=list)

    def add(self, question: Question, text: str | None) -> None:
        """Count one answer (``None``: no answer given)."""
        if not question.answerable:
            self.refused_unanswerable.append(float(text is None))
            return
        self.refused_answerable.append(float(text is None))
        shown = numbers_in(MARKER.sub("", text or ""))
        wanted = numbers_in(question.answer)
        if wanted:
            self.states.append(len(wanted & shown) / len(wanted))
        allowed = wanted | {n for evidence in question.evidence for n in numbers_in(evidence)}
        self.numbers_given += len(shown)
        self.numbers_right += len(shown & allowed)

    def metrics(self) -> dict[str, float]:
        """The answer-kind-independent numbers."""
        return {"states_numbers": _mean(self.states),
                "number_precision": self.numbers_right / self.numbers_given if self.numbers_given else 0.0,
                "numbers_given": float(self.numbers_given),
                "refuse_unanswerable": _mean(self.refused_unanswerable),
                "false_refusal": _mean(self.refused_answerable)}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def cited_numbers(hits: list[Hit]) -> set[str]:
    """Every number written in the passages (text and table header), found by a plain literal search."""
    return {n for hit in hits for n in numbers_in(hit.chunk.table_header + "\n" + hit.chunk.text)}


def uncited_numbers(generated: GeneratedAnswer) -> list[str]:
    """Numbers in shown sentences that occur in none of the passages the sentence cites."""
    missing = []
    for sentence in generated.displayed:
        cited = cited_numbers([generated.sources[m - 1] for m in sentence.markers])
        missing += [n for n in numbers_in(sentence.text) if n not in cited]
    return missing


def answer_record(question: Question, result: AskResult) -> dict[str, Any]:
    """Everything the metrics need from one asked question, as plain JSON (one line of the records file)."""
    generated = result.generated or GeneratedAnswer(shown=False, notice="no generated answer")
    if generated.shown:
        outcome = "shown"
    elif generated.notice == MODEL_REFUSED:
        outcome = "model_refusals"
    elif generated.notice == NOTHING_VERIFIED:
        outcome = "nothing_verified"
    else:
        outcome = "llm_failures"
    shown_numbers = numbers_in(generated.text)
    return {"id": question.id, "type": question.type, "question": question.question, "reference": question.answer,
            "extractive": None if result.abstained else result.answer, "abstained": result.abstained,
            "generated_text": generated.text if generated.shown else None, "outcome": outcome,
            "shown_sentences": len(generated.displayed) if generated.shown else 0,
            "verified_sentences": sum(1 for s in generated.displayed if s.verified and s.markers)
            if generated.shown else 0,
            "not_in_cited": uncited_numbers(generated) if generated.shown else [],
            "fabricated": list(generated.fabricated_numbers),
            "fabricated_caught": [n for n in generated.fabricated_numbers if n not in shown_numbers],
            "first_token_seconds": generated.first_token_seconds,
            "total_seconds": generated.total_seconds if generated.raw else None,
            "generated": generated.to_json()}


def summarise(questions: list[Question], records: dict[str, dict[str, Any]], model: str) -> dict[str, Any]:
    """The numbers per answer kind over ``questions`` from their records (keyed by question id)."""
    tallies = {kind: Tally() for kind in KINDS}
    asked = [q for q in questions if q.id in records]
    rows = [records[q.id] for q in asked]
    for question, row in zip(asked, rows, strict=True):
        tallies["extractive"].add(question, row["extractive"])
        tallies["generated"].add(question, row["generated_text"])
    count = len(rows)
    shown_sentences = sum(r["shown_sentences"] for r in rows)
    fabricated = sum(len(r["fabricated"]) for r in rows)
    first_tokens = [r["first_token_seconds"] for r in rows if r["first_token_seconds"] is not None]
    totals = [r["total_seconds"] for r in rows if r["total_seconds"] is not None]
    outcomes = {key: sum(r["outcome"] == key for r in rows) / count if count else 0.0
                for key in ("shown", "model_refusals", "nothing_verified", "llm_failures")}
    generated_metrics = {
        **tallies["generated"].metrics(),
        "shown": outcomes.pop("shown"),
        "shown_sentences": float(shown_sentences),
        "shown_sentences_verified": sum(r["verified_sentences"] for r in rows) / shown_sentences
        if shown_sentences else 1.0,
        "shown_numbers_not_in_cited": float(sum(len(r["not_in_cited"]) for r in rows)),
        "fabricated_numbers": float(fabricated),
        "fabricated_caught": sum(len(r["fabricated_caught"]) for r in rows) / fabricated if fabricated else 1.0,
        **outcomes,
        "first_token_p50": percentile(first_tokens, 0.5), "first_token_p95": percentile(first_tokens, 0.95),
        "full_p50": percentile(totals, 0.5), "full_p95": percentile(totals, 0.95),
    }
    return {"extractive": tallies["extractive"].metrics(), "generated": generated_metrics,
            "questions": {"n": count, "answerable": sum(q.answerable for q in asked),
                          "unanswerable": sum(not q.answerable for q in asked)},
            "model": model, "records": rows}


def load_records(path: Path, questions: list[Question], model: str) -> dict[str, dict[str, Any]]:
    """The records of an earlier run in ``path`` for these questions (same wording) and this model."""
    if not path.exists():
        return {}
    wording = {q.id: q.question for q in questions}
    kept: dict[str, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the last line of a run killed mid-write
            continue
        if record.get("model") == model and wording.get(record.get("id")) == record.get("question"):
            kept[record["id"]] = record
    return kept


def evaluate_answers(qa: ReportQA, questions: list[Question], llm: LLMConfig,
                     progress: Callable[[str], None] | None = None,
                     done: dict[str, dict[str, Any]] | None = None,
                     on_record: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Both answers for every question; the numbers per answer kind and the per-question records.

    ``done``: records of questions already asked (a resumed run), which are not asked again;
    ``on_record`` receives each new record as soon as it exists, so an interrupted run loses nothing.
    """
    records = dict(done or {})
    todo = [q for q in questions if q.id not in records]
    if todo:
        qa.search("预热 warm-up", top_k=1)  # load the model and the index outside the timing
    for number, question in enumerate(todo, start=1):
        record = answer_record(question, qa.ask(question.question, generate=True, llm=llm))
        records[question.id] = record
        if on_record:
            on_record(record)
        if progress:
            progress(f"[{number}/{len(todo)}] {question.id} {record['outcome']} "
                     f"{record['total_seconds'] or 0:.1f}s {(record['generated_text'] or '')[:60]!r}")
    return summarise(questions, records, llm.model)


ROWS = [
    ("states_numbers", "答案包含参考数字 / states the reference numbers", "{:.3f}"),
    ("number_precision", "数字精确率 / number precision", "{:.3f}"),
    ("numbers_given", "给出的数字个数 / numbers given", "{:.0f}"),
    ("refuse_unanswerable", "无答案题拒答率 / refusals on unanswerable", "{:.3f}"),
    ("false_refusal", "有答案题误拒率 / false refusals", "{:.3f}"),
    ("shown", "生成回答展示率 / generated answer shown", "{:.3f}"),
    ("shown_sentences", "展示的句子数 / shown sentences", "{:.0f}"),
    ("shown_sentences_verified", "展示句已核实比例 / shown sentences verified", "{:.3f}"),
    ("shown_numbers_not_in_cited", "展示数字不在所引段落 / shown numbers not in cited passages", "{:.0f}"),
    ("fabricated_numbers", "原始输出中的编造数字 / fabricated numbers in raw output", "{:.0f}"),
    ("fabricated_caught", "编造数字被拦截比例 / fabricated numbers caught", "{:.3f}"),
    ("model_refusals", "模型拒答（回退）/ model refusals (fallback)", "{:.3f}"),
    ("nothing_verified", "无句可核实（回退）/ nothing verified (fallback)", "{:.3f}"),
    ("llm_failures", "大模型失败（回退）/ LLM failures (fallback)", "{:.3f}"),
    ("first_token_p50", "首字延迟 p50 (s) / first token p50", "{:.1f}"),
    ("first_token_p95", "首字延迟 p95 (s) / first token p95", "{:.1f}"),
    ("full_p50", "完整回答 p50 (s) / full answer p50", "{:.1f}"),
    ("full_p95", "完整回答 p95 (s) / full answer p95", "{:.1f}"),
]


def answers_report(numbers: dict[str, Any], split: str, source: str) -> str:
    """The side-by-side Markdown table of ``evaluate_answers``' numbers."""
    counts = numbers["questions"]
    lines = [f"# Extractive vs generated answers — split `{split}`", "",
             f"Questions: {counts['n']} from `{source}` ({counts['answerable']} answerable, "
             f"{counts['unanswerable']} unanswerable); LLM model `{numbers['model']}`.", "",
             "| metric | extractive | generated |", "|---|---|---|"]
    for key, label, form in ROWS:
        cells = [form.format(numbers[kind][key]) if key in numbers[kind] else "—" for kind in KINDS]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"
