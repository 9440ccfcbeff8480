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

from collections.abc import Callable
from dataclasses import dataclass, field
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


def evaluate_answers(qa: ReportQA, questions: list[Question], llm: LLMConfig,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Both answers for every question; the numbers per answer kind and the per-question records."""
    tallies = {kind: Tally() for kind in KINDS}
    shown_sentences = verified_sentences = 0
    not_in_cited: list[str] = []
    fabricated = caught = 0
    reasons = {"shown": 0, "model_refusals": 0, "nothing_verified": 0, "llm_failures": 0}
    first_tokens: list[float] = []
    totals: list[float] = []
    records = []
    qa.search("预热 warm-up", top_k=1)  # load the model and the index outside the timing
    for number, question in enumerate(questions, start=1):
        result: AskResult = qa.ask(question.question, generate=True, llm=llm)
        generated = result.generated or GeneratedAnswer(shown=False, notice="no generated answer")
        tallies["extractive"].add(question, None if result.abstained else result.answer)
        tallies["generated"].add(question, generated.text if generated.shown else None)
        if generated.shown:
            reasons["shown"] += 1
            shown_sentences += len(generated.displayed)
            verified_sentences += sum(1 for s in generated.displayed if s.verified and s.markers)
            not_in_cited += uncited_numbers(generated)
        elif generated.notice == MODEL_REFUSED:
            reasons["model_refusals"] += 1
        elif generated.notice == NOTHING_VERIFIED:
            reasons["nothing_verified"] += 1
        else:
            reasons["llm_failures"] += 1
        shown_numbers = numbers_in(generated.text)
        fabricated += len(generated.fabricated_numbers)
        caught += sum(1 for n in generated.fabricated_numbers if n not in shown_numbers)
        if generated.first_token_seconds is not None:
            first_tokens.append(generated.first_token_seconds)
        if generated.total_seconds is not None and generated.raw:
            totals.append(generated.total_seconds)
        records.append({"id": question.id, "type": question.type, "question": question.question,
                        "reference": question.answer, "extractive": result.answer, "abstained": result.abstained,
                        "generated": generated.to_json()})
        if progress:
            state = "shown" if generated.shown else (generated.notice or "")
            progress(f"[{number}/{len(questions)}] {question.id} {state} "
                     f"{generated.total_seconds or 0:.1f}s {generated.text[:60]!r}")
    count = len(questions)
    generated_metrics = {
        **tallies["generated"].metrics(),
        "shown": reasons["shown"] / count if count else 0.0,
        "shown_sentences": float(shown_sentences),
        "shown_sentences_verified": verified_sentences / shown_sentences if shown_sentences else 1.0,
        "shown_numbers_not_in_cited": float(len(not_in_cited)),
        "fabricated_numbers": float(fabricated),
        "fabricated_caught": caught / fabricated if fabricated else 1.0,
        **{key: value / count if count else 0.0 for key, value in reasons.items() if key != "shown"},
        "first_token_p50": percentile(first_tokens, 0.5), "first_token_p95": percentile(first_tokens, 0.95),
        "full_p50": percentile(totals, 0.5), "full_p95": percentile(totals, 0.95),
    }
    return {"extractive": tallies["extractive"].metrics(), "generated": generated_metrics,
            "questions": {"n": count, "answerable": sum(q.answerable for q in questions),
                          "unanswerable": sum(not q.answerable for q in questions)},
            "model": llm.model, "records": records}


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
