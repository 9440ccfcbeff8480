"""Tune on the dev split only (never the test split): fusion weights, chunk size and overlap, abstention.

    python eval/tune.py fusion       # uses the built default index (run `rag index` first)
    python eval/tune.py chunks       # builds one index per setting under index/sweep/
    python eval/tune.py rerank       # fits the second stage; prints defaults for rag/second_stage.py
    python eval/tune.py abstention   # fits the answerability model; prints defaults for rag/answerability.py
    python eval/tune.py answers      # answer metrics per sentence-cosine weight and for 3, 4, 5 quoted sentences

Query vectors are cached inside the retriever and passage embeddings by content, so each extra
setting costs little beyond what actually changes.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from rag.answer import SIMILARITY_WEIGHT
from rag.answerability import FEATURES, AnswerabilityModel, features
from rag.api import ReportQA, Settings
from rag.evaluate import Configuration, evaluate_configuration, is_relevant, load_questions
from rag.second_stage import SIGNALS, SecondStageModel

FUSION_GRID = [("rrf", 1, 0, 1, 0), ("rrf", 1, 0.5, 1, 0), ("rrf", 1, 1, 1, 0),
               ("score", 1, 0, 0.2, 0), ("score", 1, 0, 0.3, 0.1), ("score", 1, 0.5, 0.2, 0.1),
               ("score", 1, 0.5, 0.3, 0.1), ("score", 1, 0.5, 0.3, 0.2), ("score", 1, 1, 0.3, 0.2),
               ("score", 1, 0.5, 0.5, 0.1)]
CHUNK_GRID = [(250, 60), (350, 80), (450, 100), (350, 0)]
ANSWER_SENTENCE_GRID = (3, 4, 5)
SIMILARITY_WEIGHT_GRID = (0.0, 1.0, 2.0, 3.0, 5.0, 20.0)


def _report(label: str, qa: ReportQA, questions) -> None:
    result = evaluate_configuration(Configuration("default", "hybrid", qa), questions)
    m = result.metrics
    print(f"{label} | {m['hit@1']:.3f} {m['hit@5']:.3f} {m['mrr@10']:.3f} {result.passage_chars:.0f}")


def tune_fusion(questions) -> None:
    """One line per fusion setting, on the default index."""
    qa = ReportQA()
    print("method dense sentence bm25 coverage | hit@1 hit@5 mrr@10 top5-chars")
    for method, dense, sentence, bm25, cover in FUSION_GRID:
        qa.settings.fusion = replace(qa.settings.fusion, method=method, dense_weight=dense,
                                     sentence_weight=sentence, bm25_weight=bm25, coverage_weight=cover)
        qa.retriever.fusion = qa.settings.fusion
        _report(f"{method:6} {dense:5} {sentence:8} {bm25:4} {cover:8}", qa, questions)


def tune_chunks(questions) -> None:
    """One line per chunker setting, each on its own index."""
    print("target overlap | hit@1 hit@5 mrr@10 top5-chars")
    for target, overlap in CHUNK_GRID:
        settings = Settings()
        settings.chunker = replace(settings.chunker, target_chars=target, overlap_chars=overlap)
        qa = ReportQA(index_dir=Path("index") / "sweep" / f"t{target}-o{overlap}", settings=settings)
        qa.build()
        _report(f"{target:6} {overlap:7}", qa, questions)


# Leave a margin under the 5% false-abstention goal: the bar is set on dev, unseen questions drift.
FALSE_ABSTAIN_BUDGET = 0.04
CAUTION_REACH = 0.8


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, steps: int = 5000,
                 rate: float = 0.1) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by gradient descent on standardised inputs."""
    weights, bias = np.zeros(x.shape[1]), 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ weights + bias)))
        weights -= rate * (x.T @ (p - y) + l2 * weights) / len(y)
        bias -= rate * float(np.mean(p - y))
    return weights, bias


RERANK_L2 = (1.0, 10.0, 100.0, 300.0, 1000.0, 3000.0)
FOLDS = 5


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


def tune_rerank(questions) -> None:
    """Fit the second stage on dev (pairwise logistic regression, L2 chosen by 5-fold cross-validation)."""
    qa = ReportQA()
    qa.retriever.fusion = replace(qa.retriever.fusion, second_stage=None)
    documents = qa.index.documents
    groups = []
    for question in questions:
        if not question.answerable:
            continue
        # A copy of a listed report (the same report extracted twice) answers as well as the original.
        copies = {d for source in question.docs if source in documents for d in documents[source].duplicates}
        judged = replace(question, docs=sorted(set(question.docs) | copies)) if question.docs else question
        chunks, x = qa.retriever.second_stage_candidates(question.question)
        groups.append((x, np.array([is_relevant(c.text, c.source, judged) for c in chunks], dtype=bool)))
    stacked = np.vstack([x for x, _ in groups])
    means, scales = stacked.mean(axis=0), stacked.std(axis=0) + 1e-9
    groups = [((x - means) / scales, relevant) for x, relevant in groups]
    print(f"first stage alone: dev MRR@10 {_mrr(groups, None):.3f}")
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
    model = SecondStageModel(weights=dict(zip(SIGNALS, np.round(weights / scales, 3).tolist(), strict=True)))
    print(f"\nchosen l2={best[1]} (cross-validated MRR@10 {best[0]:.3f}); fitted on all of dev:")
    print(model)


def answerability_matrix(qa: ReportQA, questions) -> tuple[np.ndarray, np.ndarray]:
    """The answerability features of each question's hits (rows in ``FEATURES`` order), and 1 for unanswerable."""
    rows, labels = [], []
    for question in questions:
        hits = qa.search(question.question, top_k=10).hits
        found = features(question.question, hits, qa.retriever.idf)
        rows.append([found[name] for name in FEATURES])
        labels.append(0.0 if question.answerable else 1.0)
    return np.array(rows), np.array(labels)


def refusal_bar(answerable_probabilities: np.ndarray, budget: float) -> float:
    """The probability at which refusing stays within ``budget`` of the answerable questions: the
    answerable question just past the budget (refuse strictly above it)."""
    ordered = np.sort(answerable_probabilities)[::-1]
    return float(ordered[int(np.floor(budget * len(ordered)))])


def tune_abstention(questions) -> None:
    """Fit the answerability model on dev; print its defaults and the trade-off curve."""
    x, y = answerability_matrix(ReportQA(), questions)
    means, scales = x.mean(axis=0), x.std(axis=0) + 1e-9
    weights, bias = fit_logistic((x - means) / scales, y)
    model = AnswerabilityModel(weights=dict(zip(FEATURES, np.round(weights, 3).tolist(), strict=True)),
                               means=dict(zip(FEATURES, np.round(means, 4).tolist(), strict=True)),
                               scales=dict(zip(FEATURES, np.round(scales, 4).tolist(), strict=True)),
                               bias=round(bias, 3))
    probability = np.array([model.probability(dict(zip(FEATURES, row, strict=True))) for row in x])
    print("bar | abstain false-abstain")
    for bar in np.arange(0.10, 0.91, 0.05):
        print(f"{bar:.2f} | {np.mean(probability[y == 1] >= bar):.3f} {np.mean(probability[y == 0] >= bar):.3f}")
    model.threshold = round(refusal_bar(probability[y == 0], FALSE_ABSTAIN_BUDGET) + 1e-3, 3)
    print(f"\nthreshold (false abstentions <= {FALSE_ABSTAIN_BUDGET:.0%} on dev): {model.threshold}")
    print(model)
    bars = [bar for bar in np.arange(0.05, model.threshold, 0.05)
            if np.mean(probability[y == 1] >= bar) >= CAUTION_REACH]
    if bars:
        print(f"caution bar (refuses or flags >= {CAUTION_REACH:.0%} of dev's unanswerable questions): "
              f"{max(bars):.2f}, flagging {np.mean(probability[y == 0] >= max(bars)):.3f} of the answerable")


def tune_answers(questions) -> None:
    """Answer metrics for each weight of the sentence cosine, then for each answer length."""
    qa = ReportQA()

    def report(label: str) -> None:
        m = evaluate_configuration(Configuration("default", "hybrid", qa), questions).metrics
        print(f"{label} | {m['answer_cites_relevant']:.3f} {m['answer_states_numbers']:.3f} {m['answer_chars']:.0f}")

    print("similarity weight | cites a relevant passage, states the reference numbers, answer chars")
    for weight in SIMILARITY_WEIGHT_GRID:
        qa.settings.answer_similarity_weight = weight
        report(f"{weight:17g}")
    qa.settings.answer_similarity_weight = SIMILARITY_WEIGHT
    print(f"\nsentences (weight {SIMILARITY_WEIGHT:g}) | cites a relevant passage, states the reference numbers, "
          "answer chars")
    for sentences in ANSWER_SENTENCE_GRID:
        qa.settings.answer_sentences = sentences
        report(f"{sentences:9}")


def main() -> None:
    """Parse arguments and run one sweep."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["fusion", "chunks", "rerank", "abstention", "answers"])
    parser.add_argument("--questions", type=Path, default=Path("eval/questions.jsonl"))
    args = parser.parse_args()
    questions = load_questions(args.questions, "dev")
    {"fusion": tune_fusion, "chunks": tune_chunks, "rerank": tune_rerank,
     "abstention": tune_abstention, "answers": tune_answers}[args.what](questions)


if __name__ == "__main__":
    main()
