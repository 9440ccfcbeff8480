"""Near-duplicate detection: whole reports at ingest, passages in results (``collapse_copies``).

Real corpora hold the same report twice (a PDF and its text export, two versions). Reports are
compared with MinHash over jieba word shingles (datasketch's LSH finds candidate pairs); passages
are compared with character 4-gram Jaccard on their folded, whitespace-free text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from .textnorm import fold, squeeze
from .tokenize import Tokenizer

if TYPE_CHECKING:
    from datasketch import MinHash

    from .records import StoredDocument
    from .scoring import Candidate

# Share of the shorter report's shingles found in the longer one (a partial extraction of the same
# report is still a duplicate); LSH only proposes candidates at a lower Jaccard.
DOCUMENT_THRESHOLD = 0.6
CANDIDATE_JACCARD = 0.25
PASSAGE_THRESHOLD = 0.6
NUM_PERM = 128
# Two extractions of one report cut passages at different places, so copies overlap only partly;
# between reports already known to be duplicates a modest shared share means the same passage.
PASSAGE_COPY_OVERLAP = 0.3


def _shingles(text: str, tokenizer: Tokenizer, size: int = 3) -> set[str]:
    folded = squeeze(fold(text))
    words = [folded[a:b] for a, b in tokenizer.word_spans(folded)]
    return {"\x1f".join(words[i:i + size]) for i in range(max(1, len(words) - size + 1))}


def _minhash(shingles: Iterable[str]) -> MinHash:
    from datasketch import MinHash  # imported on use: it pulls in scipy (~1 s), which `rag search` never needs

    signature = MinHash(num_perm=NUM_PERM)
    for shingle in shingles:
        signature.update(shingle.encode("utf-8"))
    return signature


def find_duplicate_documents(texts: dict[str, str], tokenizer: Tokenizer,
                             threshold: float = DOCUMENT_THRESHOLD) -> dict[str, list[str]]:
    """For each report, the other reports that are near-duplicates of it (sorted names), comparing
    word shingles cut by the index's ``tokenizer``."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=CANDIDATE_JACCARD, num_perm=NUM_PERM)
    signatures, shingles = {}, {}
    for source, text in texts.items():
        shingles[source] = _shingles(text, tokenizer)
        signatures[source] = _minhash(shingles[source])
        lsh.insert(source, signatures[source])
    related: dict[str, list[str]] = {}
    for source, signature in signatures.items():
        others = sorted(s for s in lsh.query(signature) if s != source
                        and containment(shingles[s], shingles[source]) >= threshold)
        if others:
            related[source] = others
    return related


def passage_key(text: str) -> str:
    """Folded, whitespace-free text used to compare passages."""
    return squeeze(fold(text))


def grams(key: str, size: int = 4) -> set[str]:
    """Character n-grams of a passage key."""
    return {key[i:i + size] for i in range(max(1, len(key) - size + 1))}


def jaccard(a: set[str], b: set[str]) -> float:
    """Jaccard similarity of two sets (0 for two empty sets)."""
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


def containment(a: set[str], b: set[str]) -> float:
    """Share of the smaller set found in the larger one."""
    if not a or not b:
        return 0.0
    return len(a & b) / min(len(a), len(b))


def collapse_copies(ranked: Sequence[Candidate], documents: Mapping[str, StoredDocument], top_k: int,
                    grams_of: Callable[[int], set[str]]) -> list[tuple[Candidate, list[str]]]:
    """The first ``top_k`` passages of a ranking, each with the citations of the near-copies of it found
    further down (the same passage in a report known to duplicate its own), which are dropped."""
    kept: list[tuple[Candidate, list[str]]] = []
    for candidate in ranked:
        chunk = candidate.chunk
        twins = documents[chunk.source].duplicates
        copy_of = next((also for kept_candidate, also in kept
                        if kept_candidate.chunk.source != chunk.source and kept_candidate.chunk.source in twins
                        and containment(grams_of(chunk.id), grams_of(kept_candidate.id)) >= PASSAGE_COPY_OVERLAP),
                       None)
        if copy_of is not None:
            copy_of.append(chunk.citation)
        elif len(kept) < top_k:
            kept.append((candidate, []))
    return kept
