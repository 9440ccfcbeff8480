"""Fit the checker's embedding bar (``generated.min_similarity`` in rag/data/fitted.json) on dev only.

A generated sentence restates what a passage says. On the dev split, each answerable question's
reference answer against its own evidence strings is a supported pair; the same answer against the
evidence of another dev question from the same report is an unsupported pair (hard negatives:
same vocabulary, other fact). The bar is the cosine that maximises Youden's J (true pass rate minus
false pass rate). The number and subject checks do the rest of the work.

    python eval/fit_generated.py
"""

from __future__ import annotations

import datetime
import hashlib
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rag import fitted  # noqa: E402
from rag.embed import load_embedder  # noqa: E402
from rag.evaluate import load_questions  # noqa: E402

QUESTIONS = Path("eval/questions.jsonl")


def main() -> None:
    """Fit and write the bar."""
    questions = [q for q in load_questions(QUESTIONS, "dev") if q.answerable and q.answer]
    rng = random.Random(19)
    pairs: list[tuple[str, str, bool]] = []
    for question in questions:
        for evidence in question.evidence:
            pairs.append((question.answer, evidence, True))
        others = [o for o in questions if o.id != question.id and set(o.docs) & set(question.docs)
                  and o.answer != question.answer]
        for other in rng.sample(others, min(2, len(others))):
            pairs.append((question.answer, other.evidence[0], False))
    embedder = load_embedder()
    texts = sorted({t for a, b, _ in pairs for t in (a, b)})
    vectors = dict(zip(texts, embedder.embed_documents(texts), strict=True))
    scores = np.array([float(vectors[a] @ vectors[b]) for a, b, _ in pairs])
    labels = np.array([label for _, _, label in pairs])
    best = max(np.unique(scores), key=lambda t: (scores[labels] >= t).mean() - (scores[~labels] >= t).mean())
    true_pass = float((scores[labels] >= best).mean())
    false_pass = float((scores[~labels] >= best).mean())
    digest = hashlib.sha256(QUESTIONS.read_bytes()).hexdigest()
    origin = {"command": "python eval/fit_generated.py", "date": datetime.date.today().isoformat(),
              "questions": str(QUESTIONS), "questions_sha256": digest, "split": "dev",
              "model": embedder.name, "supported_pairs": int(labels.sum()), "unsupported_pairs": int((~labels).sum()),
              "dev_true_pass_rate": round(true_pass, 4), "dev_false_pass_rate": round(false_pass, 4),
              "method": "reference answer vs own evidence (supported) / vs other same-report question's evidence "
                        "(unsupported); bar maximising Youden's J"}
    fitted.write_section("generated", {"min_similarity": round(float(best), 4)}, origin)
    print(f"min_similarity={best:.4f} true pass {true_pass:.3f} false pass {false_pass:.3f} "
          f"({int(labels.sum())}/{int((~labels).sum())} pairs)")


if __name__ == "__main__":
    main()
