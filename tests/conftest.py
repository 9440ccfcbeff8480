"""Shared fixtures: a tiny local embedding model for mechanics, the real one for retrieval quality.

Everything is real: FAISS, bm25s, jieba and sentence-transformers run their own code paths.

* ``tiny_model`` is a randomly initialised sentence-transformers model (a one-layer BERT over the
  seed reports' characters) created in a temp folder at session start and loaded by the same code
  path as the bundled model: no Hub, nothing mocked. Tests of mechanics (chunking, offsets,
  incremental builds, crash safety, the CLI contract, UI wiring, store behaviour) use it.
* ``seed_qa`` indexes the seed reports with the bundled EmbeddingGemma. Any test that uses it
  (directly or through another fixture) is marked ``slow`` here, so ``pytest -m "not slow"``
  (``make test-fast``) runs every test that does not need the real model.

The embedding cache of the test session lives in a temp folder, never the user's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
_SCRATCH = Path(tempfile.mkdtemp(prefix="rag-tests-"))
os.environ["RAG_EMBED_CACHE"] = str(_SCRATCH / "embeddings.sqlite")

from rag.api import ReportQA  # noqa: E402
from rag.embed import DEFAULT_MODEL  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "corpus"
SEED_FILES = sorted(p.name for p in CORPUS.glob("*.txt"))
REAL_MODEL_FIXTURES = {"seed_qa"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the real embedding model as slow."""
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the session's scratch folder (tiny model, embedding cache)."""
    shutil.rmtree(_SCRATCH, ignore_errors=True)


def copy_corpus(target: Path, names: list[str] | None = None) -> Path:
    """Copy some (default: all) seed reports and the metadata file into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names or SEED_FILES:
        shutil.copy(CORPUS / name, target / name)
    shutil.copy(CORPUS / "metadata.json", target / "metadata.json")
    return target


def make_tiny_model(folder: Path) -> Path:
    """A randomly initialised (seeded) sentence-transformers model whose vocabulary is the seed reports'
    characters: BERT with one 32-wide layer, mean pooling, normalisation. Saved like any local model."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    characters = sorted({ch.lower() for p in CORPUS.glob("*.txt") for ch in p.read_text(encoding="utf-8")
                         if not ch.isspace()})
    vocab = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *characters]))
    backbone = folder / "backbone"
    backbone.mkdir(parents=True)
    (backbone / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(backbone / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(str(backbone))
    tokenizer.save_pretrained(str(backbone))
    transformer = Transformer(str(backbone), max_seq_length=256)
    model = SentenceTransformer(modules=[transformer, Pooling(32, "mean"), Normalize()], device="cpu")
    target = folder / "tiny-st"
    model.save(str(target))
    return target


@pytest.fixture(scope="session")
def tiny_model() -> str:
    """Path of the session's tiny model (pass it as ``model=`` or ``--model``)."""
    return str(make_tiny_model(_SCRATCH / "models"))


@pytest.fixture(scope="session")
def tiny_qa(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> ReportQA:
    """A ReportQA over a copy of the five seed reports with the tiny model, indexed once per session."""
    base = tmp_path_factory.mktemp("tiny")
    qa = ReportQA(corpus_dir=copy_corpus(base / "corpus"), index_dir=base / "index", model=tiny_model)
    qa.build()
    return qa


@pytest.fixture(scope="session")
def seed_qa(tmp_path_factory: pytest.TempPathFactory) -> ReportQA:
    """A ReportQA over a copy of the five seed reports with the real model, indexed once per session."""
    base = tmp_path_factory.mktemp("seed")
    qa = ReportQA(corpus_dir=copy_corpus(base / "corpus"), index_dir=base / "index", model=DEFAULT_MODEL)
    qa.build()
    return qa
