"""The OpenVINO embedding backend: it reproduces torch, and a broken or absent export falls back to torch.

Everything runs for real: the export made by ``python -m rag.ov_export`` (``make setup``), OpenVINO,
and sentence-transformers for the fallback. Broken exports are made by copying the real one and
damaging the copy, in a temporary models folder that links the verified model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rag import embed
from rag.embed import DEFAULT_MODEL, SentenceTransformerEmbedder, cache_namespace, load_embedder
from rag.embed_openvino import OpenVINOEmbedder
from rag.errors import RagError
from rag.model_fetch import default_model_path, is_model_ready
from rag.ov_export import EXPORT_VERSION, MARKER, export, export_dir, is_export_ready, main

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not is_model_ready(), reason="bundled model not installed (make setup)")]

TEXTS = ["title: none | text: 2023年中国AI大模型市场规模预计达到147亿元。",
         "title: none | text: 短句",
         "title: 英伟达 | text: 英伟达数据中心业务收入在2023财年第四季度同比增长11%，达到36.2亿美元，"
         "主要受益于大型云服务商对 H100 与 A100 的需求。" * 3]


@pytest.fixture
def fresh_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test loads its own embedders (the factory keeps one per model and backend per process)."""
    monkeypatch.setattr(embed, "_EMBEDDERS", {})


def _models_dir_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A models folder that links the verified model and has no export yet; returns the export path."""
    models = tmp_path / "models"
    models.mkdir()
    (models / DEFAULT_MODEL).symlink_to(default_model_path())
    monkeypatch.setenv("RAG_MODELS_DIR", str(models))
    return export_dir()


def _copy_export(target: Path) -> None:
    """Link the real export's weights and copy its small files, so the copy can be damaged safely."""
    source = export_dir_real()
    target.mkdir()
    for item in source.iterdir():
        if item.name == "compiled-cache":
            continue
        if item.suffix == ".bin":
            (target / item.name).symlink_to(item)
        else:
            shutil.copy(item, target / item.name)


def export_dir_real() -> Path:
    """The export made at set-up (before any test redirects RAG_MODELS_DIR)."""
    return _REAL_EXPORT


_REAL_EXPORT = export_dir()
needs_export = pytest.mark.skipif(not is_export_ready(_REAL_EXPORT),
                                  reason="no OpenVINO export (run `python -m rag.ov_export`)")


@needs_export
def test_openvino_backend_reproduces_torch(fresh_factory: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_EMBED_BACKEND", "openvino")
    fast = load_embedder(DEFAULT_MODEL)
    assert isinstance(fast, OpenVINOEmbedder)
    assert fast.self_check() >= 0.999
    assert fast.precision in {"bf16", "f32"}
    # The index and the fitted values name the model; the embedding cache keeps the runtimes apart.
    assert fast.name == DEFAULT_MODEL
    assert cache_namespace(fast) == f"{DEFAULT_MODEL}+openvino-{fast.precision}"
    torch_embedder = SentenceTransformerEmbedder(DEFAULT_MODEL)
    documents = fast.embed_documents(TEXTS)
    assert documents.shape == (len(TEXTS), torch_embedder.dimension)
    assert np.allclose(np.linalg.norm(documents, axis=1), 1, atol=1e-4)
    cosines = np.sum(documents * torch_embedder.embed_documents(TEXTS), axis=1)
    assert cosines.min() >= 0.999
    questions = ["GPT-3 的参数量是多少？", "AI框架市场份额"]
    queries = fast.embed_queries(questions)
    assert np.sum(queries * torch_embedder.embed_queries(questions), axis=1).min() >= 0.999
    # Length sorting inside a batch must not reorder the output.
    one_by_one = np.vstack([fast.embed_documents([t]) for t in TEXTS])
    assert np.sum(one_by_one * documents, axis=1).min() >= 0.9999


def test_absent_export_falls_back_to_torch(fresh_factory: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    _models_dir_with(tmp_path, monkeypatch)
    monkeypatch.setenv("RAG_EMBED_BACKEND", "auto")
    chosen = load_embedder(DEFAULT_MODEL)
    assert isinstance(chosen, SentenceTransformerEmbedder)
    assert "using torch" in capsys.readouterr().err


@needs_export
@pytest.mark.parametrize("damage", ["corrupt_ir", "wrong_references"])
def test_broken_export_falls_back_to_torch(damage: str, fresh_factory: None, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    broken = _models_dir_with(tmp_path, monkeypatch)
    _copy_export(broken)
    assert is_export_ready(broken) and (broken / MARKER).is_file()
    if damage == "corrupt_ir":
        (broken / "model.xml").write_text("<net>not a model</net>")
    else:  # a model that no longer matches torch: references rotated so every probe disagrees
        assert isinstance(load_embedder(DEFAULT_MODEL), OpenVINOEmbedder)  # passes, and the pass is remembered
        embed._EMBEDDERS.clear()
        references = np.load(broken / "probe_vectors.npy")
        np.save(broken / "probe_vectors.npy", np.roll(references, 1, axis=0))
        assert json.loads((broken / "probes.json").read_text())
    monkeypatch.setenv("RAG_EMBED_BACKEND", "auto")
    chosen = load_embedder(DEFAULT_MODEL)
    assert isinstance(chosen, SentenceTransformerEmbedder)
    notice = capsys.readouterr().err
    assert "OpenVINO" in notice and "torch" in notice


def test_torch_backend_is_forced(fresh_factory: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_EMBED_BACKEND", "torch")
    assert isinstance(load_embedder(DEFAULT_MODEL), SentenceTransformerEmbedder)


def test_export_without_model_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RAG_MODELS_DIR", str(tmp_path / "empty"))
    with pytest.raises(RagError, match="model_fetch"):
        export()
    # As a set-up step: one line, no traceback; exit 0 (torch stays usable) unless --strict.
    for argv, code in ((["ov_export"], 0), (["ov_export", "--strict"], 1)):
        monkeypatch.setattr("sys.argv", argv)
        with pytest.raises(SystemExit) as stopped:
            main()
        assert stopped.value.code == code
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "OpenVINO" in err and "Traceback" not in err


def test_export_of_another_recipe_is_not_ready(tmp_path: Path) -> None:
    (tmp_path / MARKER).write_text(json.dumps({"export_version": EXPORT_VERSION - 1}))
    assert not is_export_ready(tmp_path)
    (tmp_path / MARKER).write_text(json.dumps({"export_version": EXPORT_VERSION}))
    assert is_export_ready(tmp_path)
    (tmp_path / MARKER).write_text("half-writ")
    assert not is_export_ready(tmp_path)
