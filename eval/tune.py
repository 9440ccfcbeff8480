"""Tune on the dev split only (never test or holdout): fusion, chunks, second stage, abstention, answers.

    python eval/tune.py fusion       # one line per fusion setting, on the built default index
    python eval/tune.py chunks       # builds one index per chunker setting under index/sweep/
    python eval/tune.py rerank       # fits the second stage (L2 chosen by 5-fold cross-validation)
    python eval/tune.py abstention   # fits the answerability model, its refusal bar and caution bar
    python eval/tune.py answers      # answer metrics per sentence-cosine weight, length and follow ratio

With ``--write``, ``fusion``, ``rerank``, ``abstention`` and ``answers`` write what they chose into
``rag/data/fitted.json`` with its provenance (date, question file and hash, model, chunker and
tokenizer versions, the dev metrics reached); the library loads the values from there. Settings are
changed through ``ReportQA.configure``, never by patching a loaded retriever.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, replace
from itertools import product
from pathlib import Path

import numpy as np

from rag import fitted
from rag.answer import compose_answer
from rag.answerability import FEATURES, AnswerabilityModel
from rag.api import ReportQA, Settings
from rag.evaluate import Configuration, answer_metrics, evaluate_configuration, is_relevant, judged, load_questions
from rag.fusion import FusionSettings
from rag.results import Answer
from rag.second_stage import SIGNALS, signals
from rag.tuning import answerability_matrix, fit_logistic, provenance, refusal_bar

FUSION_GRID = [("rrf", 1, 0, 1, 0), ("rrf", 1, 0.5, 1, 0), ("rrf", 1, 1, 1, 0),
               ("score", 1, 0, 0.2, 0), ("score", 1, 0, 0.3, 0.1), ("score", 1, 0.5, 0.2, 0.1),
               ("score", 1, 0.5, 0.3, 0.1), ("score", 1, 0.5, 0.3, 0.2), ("score", 1, 1, 0.3, 0.2),
               ("score", 1, 0.5, 0.5, 0.1)]
CHUNK_GRID = [(250, 60), (350, 80), (450, 100), (350, 0)]
ANSWER_SENTENCE_GRID = (3, 4, 5)
SIMILARITY_WEIGHT_GRID = (0.0, 1.0, 2.0, 3.0, 5.0, 20.0)
FOLLOW_RATIO_GRID = (0.0, 0.5, 0.7, 0.8, 0.9)
# Answers are quoted sentences: the longest answer a reader takes in at a glance, on average.
ANSWER_CHAR_BUDGET = 300
# What a reader needs first (a relevant citation, the asked numbers) decides; among settings this close to
# the best on that, the tidier answer (fewer stray numbers, the fact first) wins.
ANSWER_PRIMARY_TOLERANCE = 0.02
# Leave a margin under the 5% false-abstention goal: the bar is set on dev, unseen questions drift.
FALSE_ABSTAIN_BUDGET = 0.04
CAUTION_REACH = 0.8
RERANK_L2 = (1.0, 10.0, 100.0, 300.0, 1000.0, 3000.0)
FOLDS = 5


class Tuner:
    """One tuning run: the dev questions, the default index, and where to record what was chosen."""

    def __init__(self, questions_file: Path, write: bool):
        self.questions_file = questions_file
        self.questions = load_questions(questions_file, "dev")
        self.write = write
        self.qa = ReportQA()

    def evaluate(self, settings: Settings | None = None) -> dict[str, float]:
        """Dev metrics of the default configuration under ``settings``."""
        self.qa.configure(settings or Settings())
        return evaluate_configuration(Configuration("default", "hybrid", self.qa), self.questions).metrics

    def record(self, section: str, values: dict, command: str, metrics: dict) -> None:
        """Write one fitted section (with ``--write``), or say how to."""
        if not self.write:
            print(f"\n(not written; rerun with --write to store these {section} values in rag/data/fitted.json)")
            return
        path = fitted.write_section(section, values,
                                    provenance(command, self.questions_file, "dev", self.qa, metrics))
        print(f"\nwritten: {section} → {path}")

    def fusion(self) -> None:
        """One line per fusion setting; the best dev MRR@10 is chosen (the earlier row on a tie)."""
        print("method dense sentence bm25 coverage | hit@1 hit@5 mrr@10 top5-chars")
        best: tuple[float, dict, dict] | None = None
        for method, dense, sentence, bm25, cover in FUSION_GRID:
            values = {"method": method, "dense_weight": dense, "sentence_weight": sentence,
                      "bm25_weight": bm25, "coverage_weight": cover}
            m = self.evaluate(replace(Settings(), fusion=replace(FusionSettings(), **values)))
            print(f"{method:6} {dense:5} {sentence:8} {bm25:4} {cover:8} | {m['hit@1']:.3f} {m['hit@5']:.3f} "
                  f"{m['mrr@10']:.3f}")
            if best is None or m["mrr@10"] > best[0]:
                best = (m["mrr@10"], values, m)
        assert best is not None
        print(f"\nchosen: {best[1]}")
        self.record("fusion", best[1], "python eval/tune.py fusion --write",
                    {k: best[2][k] for k in ("hit@1", "hit@5", "mrr@10")})

    def chunks(self) -> None:
        """One line per chunker setting, each on its own index (nothing is written)."""
        print("target overlap | hit@1 hit@5 mrr@10")
        for target, overlap in CHUNK_GRID:
            settings = replace(Settings(), chunker=replace(Settings().chunker, target_chars=target,
                                                           overlap_chars=overlap))
            qa = ReportQA(index_dir=Path("index") / "sweep" / f"t{target}-o{overlap}", settings=settings)
            qa.build()
            m = evaluate_configuration(Configuration("default", "hybrid", qa), self.questions).metrics
            print(f"{target:6} {overlap:7} | {m['hit@1']:.3f} {m['hit@5']:.3f} {m['mrr@10']:.3f}")

    def rerank(self) -> None:
        """Fit the second stage on dev (pairwise logistic regression, L2 chosen by 5-fold cross-validation)."""
        retriever = self.qa.retriever
        documents = retriever.store.documents
        depth = retriever.fusion.rerank_depth
        groups = []
        for question in self.questions:
            if not question.answerable:
                continue
            # A copy of a listed report (the same report extracted twice) answers as well as the original.
            copies = {d for source in question.docs if source in documents for d in documents[source].duplicates}
            judged = replace(question, docs=sorted(set(question.docs) | copies)) if question.docs else question
            query = self.qa.analyse(question.question)
            head = retriever.ranking(query)[:depth]
            groups.append((signals(query, head),
                           np.array([is_relevant(c.chunk.text, c.chunk.source, judged) for c in head], dtype=bool)))
        stacked = np.vstack([x for x, _ in groups])
        means, scales = stacked.mean(axis=0), stacked.std(axis=0) + 1e-9
        groups = [((x - means) / scales, relevant) for x, relevant in groups]
        first_stage = _mrr(groups, None)
        print(f"first stage alone: dev MRR@10 {first_stage:.3f}")
        folds = [set(range(start, len(groups), FOLDS)) for start in range(FOLDS)]
        best = (-1.0, RERANK_L2[0])
        print("l2 | cross-validated dev MRR@10")
        for l2 in RERANK_L2:
            scores = []
            for held in folds:
                weights, _ = fit_logistic(*_pairs([g for n, g in enumerate(groups) if n not in held]), l2=l2)
                scores.append(_mrr([groups[n] for n in held], weights))
            print(f"{l2:5} | {np.mean(scores):.3f}")
            best = max(best, (float(np.mean(scores)), l2))
        weights, _ = fit_logistic(*_pairs(groups), l2=best[1])
        # Fold the standardisation into the weights: the subtracted means shift every score alike.
        values = {"weights": dict(zip(SIGNALS, np.round(weights / scales, 3).tolist(), strict=True))}
        print(f"\nchosen l2={best[1]} (cross-validated MRR@10 {best[0]:.3f}); fitted on all of dev:\n{values}")
        self.record("second_stage", values, "python eval/tune.py rerank --write",
                    {"first_stage_mrr@10": first_stage, "cross_validated_mrr@10": best[0], "l2": best[1]})

    def abstention(self) -> None:
        """Fit the answerability model on dev; print the trade-off curve, the refusal bar and the caution bar."""
        x, y = answerability_matrix(self.qa, self.questions)
        means, scales = x.mean(axis=0), x.std(axis=0) + 1e-9
        weights, bias = fit_logistic((x - means) / scales, y)
        model = AnswerabilityModel(weights=dict(zip(FEATURES, np.round(weights, 3).tolist(), strict=True)),
                                   means=dict(zip(FEATURES, np.round(means, 4).tolist(), strict=True)),
                                   scales=dict(zip(FEATURES, np.round(scales, 4).tolist(), strict=True)),
                                   bias=round(bias, 3), threshold=0.5)
        probability = np.array([model.probability(dict(zip(FEATURES, row, strict=True))) for row in x])
        print("bar | abstain false-abstain")
        for bar in np.arange(0.10, 0.91, 0.05):
            print(f"{bar:.2f} | {np.mean(probability[y == 1] >= bar):.3f} {np.mean(probability[y == 0] >= bar):.3f}")
        model.threshold = round(refusal_bar(probability[y == 0], FALSE_ABSTAIN_BUDGET) + 1e-3, 3)
        print(f"\nthreshold (false abstentions <= {FALSE_ABSTAIN_BUDGET:.0%} on dev): {model.threshold}\n{model}")
        bars = [bar for bar in np.arange(0.05, model.threshold, 0.05)
                if np.mean(probability[y == 1] >= bar) >= CAUTION_REACH]
        caution = round(float(max(bars)), 2) if bars else model.threshold
        print(f"caution bar (refuses or flags >= {CAUTION_REACH:.0%} of dev's unanswerable questions): {caution:.2f}, "
              f"flagging {np.mean(probability[y == 0] >= caution):.3f} of the answerable")
        self.record("answerability", {**asdict(model), "caution": caution}, "python eval/tune.py abstention --write",
                    {"abstain": float(np.mean(probability[y == 1] >= model.threshold)),
                     "false_abstain": float(np.mean(probability[y == 0] >= model.threshold)),
                     "abstain_or_caution": float(np.mean(probability[y == 1] >= caution))})

    def answers(self) -> None:
        """Answer metrics over a grid of sentence-cosine weight, answer length and follow ratio, each dev question
        searched once and answered under every setting. Among the settings whose mean answer stays within
        ``ANSWER_CHAR_BUDGET`` characters and whose cites-a-relevant-passage plus states-the-reference-numbers
        is within ``ANSWER_PRIMARY_TOLERANCE`` of the best, the highest number precision plus lead correct wins."""
        self.qa.configure(Settings())
        searched = {q.id: self.qa.search(q.question, top_k=10) for q in self.questions}
        runs = {q.id: judged(searched[q.id].hits, q, self.qa) for q in self.questions if q.answerable}
        base = self.qa.settings.answer
        columns = ("answer_cites_relevant", "answer_states_numbers", "answer_number_precision",
                   "answer_lead_correct", "answer_chars")
        print("similarity weight, sentences, follow ratio | cites, states numbers, number precision, lead correct, "
              "chars")
        results: list[tuple[dict, dict]] = []
        for weight, sentences, ratio in product(SIMILARITY_WEIGHT_GRID, ANSWER_SENTENCE_GRID, FOLLOW_RATIO_GRID):
            settings = replace(base, similarity_weight=weight, sentences=sentences, follow_ratio=ratio)
            answers = {q.id: (compose_answer(found.analysed, found.hits, settings) if found.analysed is not None
                              else Answer(found.error or "", True, [])) for q, found in
                       ((q, searched[q.id]) for q in self.questions)}
            m = answer_metrics(self.questions, answers, runs, self.qa)
            print(f"{weight:g}, {sentences}, {ratio:g} | "
                  + " ".join(f"{m[c]:.3f}" for c in columns[:-1]) + f" {m['answer_chars']:.0f}")
            if m["answer_chars"] <= ANSWER_CHAR_BUDGET:
                results.append(({"sentences": sentences, "similarity_weight": weight, "follow_ratio": ratio}, m))
        if not results:
            raise SystemExit(f"no setting keeps answers within {ANSWER_CHAR_BUDGET} characters")

        def primary(m: dict) -> float:
            return m["answer_cites_relevant"] + m["answer_states_numbers"]

        bar = max(primary(m) for _, m in results) - ANSWER_PRIMARY_TOLERANCE
        values, m = max((r for r in results if primary(r[1]) >= bar),
                        key=lambda r: r[1]["answer_number_precision"] + r[1]["answer_lead_correct"])
        print(f"\nchosen: {values}")
        self.record("answer", values, "python eval/tune.py answers --write", {c: m[c] for c in columns})


def _pairs(groups: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Differences relevant-minus-irrelevant (label 1) and the reverse (label 0) within each question."""
    rows, labels = [], []
    for x, relevant in groups:
        for good in x[relevant]:
            for bad in x[~relevant]:
                rows += [good - bad, bad - good]
                labels += [1.0, 0.0]
    return np.array(rows), np.array(labels)


def _mrr(groups: list[tuple[np.ndarray, np.ndarray]], weights: np.ndarray | None) -> float:
    """MRR@10 of the candidates ordered by ``x @ weights`` (None: the first stage's order)."""
    total = 0.0
    for x, relevant in groups:
        order = np.arange(len(relevant)) if weights is None else np.argsort(-(x @ weights), kind="stable")
        ranks = np.flatnonzero(relevant[order])
        total += 1.0 / (ranks[0] + 1) if len(ranks) and ranks[0] < 10 else 0.0
    return total / len(groups)


def main() -> None:
    """Parse arguments and run one sweep."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["fusion", "chunks", "rerank", "abstention", "answers"])
    parser.add_argument("--questions", type=Path, default=Path("eval/questions.jsonl"))
    parser.add_argument("--write", action="store_true", help="store the chosen values in rag/data/fitted.json")
    args = parser.parse_args()
    tuner = Tuner(args.questions, args.write)
    getattr(tuner, args.what)()


if __name__ == "__main__":
    main()
