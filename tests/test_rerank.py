"""The re-ranking hook: a reranker re-orders the head of the ranking; bad configs are clear errors."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from rag.cli import main
from rag.errors import RagError
from rag.rerank import CrossEncoderReranker, load_cross_encoder
from rag.retrieve import Retriever


class PhraseReranker:
    """A real (if simple) reranker: passages containing a given phrase first, then longer ones."""

    def __init__(self, phrase: str):
        self.phrase = phrase

    def rescore(self, query, head) -> list[float]:
        return [(10.0 if self.phrase in c.chunk.text else 0.0) + len(c.chunk.text) / 10000 for c in head]


def test_reranker_reorders_the_head_of_the_ranking(tiny_qa):
    plain = tiny_qa.search("阿里通义大模型", top_k=10).hits
    target = next(h for h in plain[1:] if h.chunk.text not in plain[0].chunk.text)
    phrase = target.chunk.text[:12]
    retriever = Retriever(tiny_qa.store, tiny_qa.encoder, tiny_qa.settings.fusion, PhraseReranker(phrase))
    reranked = retriever.search(tiny_qa.analyse("阿里通义大模型"), top_k=10)
    assert phrase in reranked[0].chunk.text
    assert [h.rank for h in reranked] == list(range(1, len(reranked) + 1))
    assert all(a.score >= b.score for a, b in zip(reranked, reranked[1:], strict=False))


def test_no_reranker_is_configured_by_default(monkeypatch):
    monkeypatch.delenv("RAG_RERANKER", raising=False)
    assert load_cross_encoder(None) is None


def test_missing_cross_encoder_folder_is_a_clear_error(tmp_path):
    with pytest.raises(RagError, match="reranker model folder not found"):
        CrossEncoderReranker(str(tmp_path / "nope"))


def test_cli_reports_a_bad_reranker_without_traceback(tiny_qa, tmp_path):
    result = CliRunner().invoke(main, ["--corpus", str(tiny_qa.corpus_dir), "--index", str(tiny_qa.index_dir),
                                       "--model", tiny_qa.model,
                                       "--reranker", str(tmp_path / "nope"), "search", "GPT-3参数量"])
    assert result.exit_code == 1
    assert "reranker" in result.output and "Traceback" not in result.output
