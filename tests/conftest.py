"""Shared fixtures: one real index of the seed reports, built once per test session.

Everything is real: the bundled EmbeddingGemma model, FAISS, bm25s and jieba. Embeddings are
cached by content hash (``~/.cache/report-qa/embeddings.sqlite``), so only the first run on a
machine pays for embedding the corpus.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from rag.api import ReportQA  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "corpus"
SEED_FILES = sorted(p.name for p in CORPUS.glob("*.txt"))


def copy_corpus(target: Path, names: list[str] | None = None) -> Path:
    """Copy some (default: all) seed reports and the metadata file into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names or SEED_FILES:
        shutil.copy(CORPUS / name, target / name)
    shutil.copy(CORPUS / "metadata.json", target / "metadata.json")
    return target


@pytest.fixture(scope="session")
def seed_qa(tmp_path_factory: pytest.TempPathFactory) -> ReportQA:
    """A ReportQA over a copy of the five seed reports, indexed once for the whole session."""
    base = tmp_path_factory.mktemp("seed")
    qa = ReportQA(corpus_dir=copy_corpus(base / "corpus"), index_dir=base / "index")
    qa.build()
    return qa
