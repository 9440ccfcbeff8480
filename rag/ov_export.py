"""Set-up step: export the verified EmbeddingGemma to OpenVINO and record torch reference vectors.

``python -m rag.ov_export`` (called by ``make model``/``make setup``) is idempotent and never leaves a
half-written export: everything is written into a temporary folder beside the target and renamed
into place only after the OpenVINO model reproduces the torch reference vectors.

Why a separate environment: the project runs sentence-transformers 6 / transformers 5, on which both
``torch.onnx.export`` and OpenVINO's direct conversion of Gemma3 fail ("unordered_map::at"). The
export works with the pinned stack in ``EXPORT_REQUIREMENTS``, which pip cannot resolve together with
the project's own dependencies, so it lives in its own venv under the models folder (reused when
present). Only the Transformer module is exported; mean pooling and the two Dense layers are applied
in numpy by ``rag.embed_openvino``.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .embed_openvino import PROBE_MIN_COSINE, OpenVINOEmbedder
from .errors import RagError
from .model_fetch import default_model_path, is_model_ready, models_dir

EXPORT_REQUIREMENTS = ["torch==2.13.0", "sentence-transformers==5.1.2", "transformers==4.57.6",
                       "optimum-onnx==0.1.0", "optimum==2.1.0", "onnx==1.23.2", "onnxruntime==1.32.0"]
EXPORT_VERSION = 1  # bump when the export recipe changes, so old exports are redone
PROBE_TEXTS = [
    ("query", "GPT-3 的参数量是多少？"),
    ("query", "英伟达数据中心业务收入"),
    ("document", "title: none | text: 2023年中国AI大模型市场规模预计达到147亿元，同比增长110%。"),
    ("document", "title: 昇腾 | text: 昇腾910的FP16算力为256 TFLOPS，功耗310W。"),
    ("document", "title: none | text: OpenAI released GPT-4 in March 2023 with multimodal input."),
]
MARKER = ".verified"


def export_dir() -> Path:
    """Where the OpenVINO export of the bundled model lives (beside the model)."""
    return models_dir() / (default_model_path().name + "-openvino")


def export_env_dir() -> Path:
    """The separate venv holding the pinned exporter stack."""
    return models_dir() / ".export-env"


def is_export_ready(path: Path | None = None) -> bool:
    """True when a finished export of the current recipe is in place."""
    marker = (path or export_dir()) / MARKER
    try:
        return json.loads(marker.read_text()).get("export_version") == EXPORT_VERSION
    except (OSError, ValueError):
        return False


def _run(command: list[str], what: str, env: dict[str, str] | None = None) -> None:
    """Run a set-up step quietly; on failure raise ``RagError`` with the step and the tail of its output."""
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise RagError(f"{what}失败 / {what} failed (exit {result.returncode}):\n{tail}")


def _env_python() -> Path:
    """The export venv's interpreter, created and filled with the pinned stack on first use.

    The stamp file is written last, so an environment left half-installed by a crash is rebuilt.
    """
    env = export_env_dir()
    python = env / "bin" / "python"
    wanted = "\n".join(EXPORT_REQUIREMENTS)
    stamp = env / ".requirements"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    shutil.rmtree(env, ignore_errors=True)
    print(f"ov_export: creating the exporter environment {env} (pinned, separate from the project venv; "
          "a few minutes)", flush=True)
    venv.EnvBuilder(with_pip=True).create(env)
    _run([str(python), "-m", "pip", "install", "--quiet", *EXPORT_REQUIREMENTS],
         "安装导出环境 / installing the exporter")
    stamp.write_text(wanted)
    return python


@contextmanager
def _export_lock(folder: Path) -> Iterator[None]:
    """One export at a time per models folder (two `make setup` runs must not build the same files)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".ov-export.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def reference_vectors(model_path: Path) -> np.ndarray:
    """Torch (sentence-transformers, fp32) vectors of ``PROBE_TEXTS`` from the project's own stack."""
    from .embed import SentenceTransformerEmbedder

    torch_embedder = SentenceTransformerEmbedder(str(model_path))
    return np.vstack([torch_embedder.embed_queries([text])[0] if kind == "query"
                      else torch_embedder.embed_documents([text])[0] for kind, text in PROBE_TEXTS])


def export(force: bool = False) -> Path:
    """Export the bundled model to OpenVINO IR beside it; returns the export folder.

    Idempotent: a finished export of the current recipe is kept. The work happens in a temporary
    folder that is renamed into place only after the probe check passes, so a crash leaves either
    the old export or none (leftover temporary folders are removed by the next run).
    """
    target = export_dir()
    if is_export_ready(target) and not force:
        return target
    model_path = default_model_path()
    if not is_model_ready(model_path):
        raise RagError("嵌入模型尚未安装，请先运行 `python -m rag.model_fetch` / "
                       "embedding model not installed; run `python -m rag.model_fetch` first")
    try:
        import openvino as ov
    except ImportError as exc:
        raise RagError("未安装 openvino，请运行 `pip install -e .` / openvino is not installed in this "
                       f"environment; run `pip install -e .` ({exc})") from exc
    with _export_lock(target.parent):
        if is_export_ready(target) and not force:  # another run finished it while we waited
            return target
        for leftover in target.parent.glob(".ov-export-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        began = time.perf_counter()
        python = _env_python()
        with tempfile.TemporaryDirectory(prefix=".ov-export-", dir=target.parent) as tmp:
            work = Path(tmp)
            onnx_dir = work / "onnx"
            worker = Path(__file__).with_name("ov_export_worker.py")
            print("ov_export: exporting the Transformer to ONNX", flush=True)
            _run([str(python), "-I", str(worker), str(model_path), str(onnx_dir)], "导出 ONNX / ONNX export",
                 env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
            staged = work / "staged"
            staged.mkdir()
            model = ov.convert_model(str(onnx_dir / "model.onnx"))
            ov.save_model(model, str(staged / "model.xml"), compress_to_fp16=False)  # precision is chosen at compile
            del model
            shutil.rmtree(onnx_dir)  # 1.2 GB not needed any more
            print("ov_export: recording torch reference vectors and checking OpenVINO against them", flush=True)
            references = reference_vectors(model_path)
            np.save(staged / "probe_vectors.npy", references.astype(np.float32))
            (staged / "probes.json").write_text(json.dumps(PROBE_TEXTS, ensure_ascii=False, indent=1))
            # No compiled cache here: OpenVINO keys it by the model's path, which changes at the rename.
            check = OpenVINOEmbedder(model_path, staged, compiled_cache=False).self_check()
            if check < PROBE_MIN_COSINE:
                raise RagError(f"OpenVINO 导出与 torch 向量不一致 / OpenVINO export disagrees with torch "
                               f"(cosine {check:.5f} < {PROBE_MIN_COSINE})")
            (staged / MARKER).write_text(json.dumps({
                "export_version": EXPORT_VERSION, "openvino": ov.__version__, "min_probe_cosine": round(check, 6),
                "seconds": round(time.perf_counter() - began, 1), "exporter": EXPORT_REQUIREMENTS}, indent=1))
            if target.exists():
                shutil.rmtree(target)
            staged.rename(target)
        # Compile once at the final path (and remember the check), so the first `rag` command loads the
        # compiled model from the cache and skips the probes.
        OpenVINOEmbedder(model_path, target).checked_cosine()
    print(f"ov_export: {target} ready (probe cosine {check:.5f}, {time.perf_counter() - began:.0f} s)", flush=True)
    return target


def main() -> None:
    """Command-line entry: export once (``--force`` redoes it); failure is a notice, torch stays usable."""
    try:
        export(force="--force" in sys.argv)
    except Exception as exc:  # converter and runtime raise many types; set-up must end with one clear line
        detail = str(exc) if isinstance(exc, RagError | OSError) else f"{type(exc).__name__}: {exc}"
        print(f"OpenVINO 导出失败，将使用 torch / OpenVINO export failed, torch will be used: {detail}",
              file=sys.stderr)
        sys.exit(0 if "--strict" not in sys.argv else 1)


if __name__ == "__main__":
    main()
