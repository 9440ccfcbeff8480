"""The second-stage hook: a reranker re-orders the head of the ranking; bad configs are clear errors."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from rag.cli import main
from rag.errors import RagError
from rag.rerank import CrossEncoderReranker, load_reranker
from rag.retrieve import Retriever


class PhraseReranker:
    """A real (if simple) reranker: passages containing a given phrase first, then longer ones."""

    def __init__(self, phrase: str):
        self.phrase = phrase

    def score(self, query: str, passages: list[str]) -> list[float]:
        return [(10.0 if self.phrase in p else 0.0) + len(p) / 10000 for p in passages]


def test_reranker_reorders_the_head_of_the_ranking(seed_qa):
    plain = seed_qa.search("阿里通义大模型", top_k=10).hits
    target = next(h for h in plain[1:] if h.chunk.text not in plain[0].chunk.text)
    phrase = target.chunk.text[:12]
    retriever = Retriever(seed_qa.index, seed_qa.embedder, seed_qa.settings.fusion, PhraseReranker(phrase))
    reranked = retriever.search("阿里通义大模型", top_k=10)
    assert phrase in reranked[0].chunk.text
    assert [h.rank for h in reranked] == list(range(1, len(reranked) + 1))
    assert all(a.score >= b.score for a, b in zip(reranked, reranked[1:], strict=False))


def test_no_reranker_is_configured_by_default(monkeypatch):
    monkeypatch.delenv("RAG_RERANKER", raising=False)
    assert load_reranker(None) is None


def test_missing_cross_encoder_folder_is_a_clear_error(tmp_path):
    with pytest.raises(RagError, match="reranker model folder not found"):
        CrossEncoderReranker(str(tmp_path / "nope"))


def test_cli_reports_a_bad_reranker_without_traceback(seed_qa, tmp_path):
    result = CliRunner().invoke(main, ["--corpus", str(seed_qa.corpus_dir), "--index", str(seed_qa.index_dir),
                                       "--reranker", str(tmp_path / "nope"), "search", "GPT-3参数量"])
    assert result.exit_code == 1
    assert "reranker" in result.output and "Traceback" not in result.output
