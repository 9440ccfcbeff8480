"""Check recorded LLM answers again with the current checker, without asking the model again.

``rag eval --answers`` keeps every model answer in ``eval/results/answers-<split>.records.jsonl``. A
local model takes half a minute or more per answer on this machine, so when the checker changes, this
re-runs only the deterministic part: the same retrieval (same index) gives the same passages, and
``rag.generate.checked_answer`` checks the recorded raw text against them. It prints the answer table
for the rechecked records and every sentence whose verdict changed.

    python eval/recheck_generated.py --split test [--records FILE]

The table is also written to ``eval/results/<date>-answers-<split>-rechecked.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rag.answer_eval import answer_record, answers_report, summarise  # noqa: E402
from rag.api import ReportQA  # noqa: E402
from rag.evaluate import load_questions  # noqa: E402
from rag.generate import PASSAGES_FOR_LLM, checked_answer  # noqa: E402
from rag.llm import StreamTiming  # noqa: E402
from rag.results import AskResult  # noqa: E402


def main() -> None:
    """Recheck the records of one split and print the table and the changed verdicts."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="test")
    parser.add_argument("--questions", type=Path, default=Path("eval/questions.jsonl"))
    parser.add_argument("--records", type=Path, default=None,
                        help="default: eval/results/answers-<split>.records.jsonl")
    args = parser.parse_args()
    records_file = args.records or Path("eval/results") / f"answers-{args.split}.records.jsonl"
    questions = {q.id: q for q in load_questions(args.questions, args.split)}
    old = [json.loads(line) for line in records_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    qa = ReportQA()
    rechecked: dict[str, dict] = {}
    model = ""
    for record in old:
        question = questions.get(record["id"])
        raw = record["generated"].get("raw")
        if question is None or not raw:  # an LLM failure has nothing to check
            if question is not None:
                rechecked[record["id"]] = record
            continue
        model = record.get("model", model)
        found = qa.search(question.question, top_k=PASSAGES_FOR_LLM)
        assert found.analysed is not None, found.error
        timing = StreamTiming(record.get("first_token_seconds"), record.get("total_seconds"))
        generated = checked_answer(found.analysed, found.hits[:PASSAGES_FOR_LLM], raw, qa.embedder.embed_documents,
                                   model=model, timing=timing)
        result = AskResult(query=question.question, answer=record["extractive"] or "",
                           abstained=record["extractive"] is None, generated=generated)
        rechecked[record["id"]] = answer_record(question, result)
        before = {s["text"]: s["verified"] for s in record["generated"].get("sentences", [])}
        for sentence in generated.sentences:
            if sentence.text in before and before[sentence.text] != sentence.verified:
                verdict = "now verified" if sentence.verified else f"now rejected ({sentence.reason})"
                print(f"{record['id']}: {verdict}: {sentence.text}")
    chosen = [q for q in questions.values() if q.id in rechecked]
    report = answers_report(summarise(chosen, rechecked, model), args.split, f"{records_file} (rechecked)")
    out = records_file.parent / f"{datetime.date.today().isoformat()}-answers-{args.split}-rechecked.md"
    out.write_text(report, encoding="utf-8")
    print(report)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
