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

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

import numpy as np

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


def _env_python() -> Path:
    """The export venv's interpreter, created and filled with the pinned stack on first use."""
    env = export_env_dir()
    python = env / "bin" / "python"
    wanted = "\n".join(EXPORT_REQUIREMENTS)
    stamp = env / ".requirements"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    shutil.rmtree(env, ignore_errors=True)
    print("ov_export: creating the exporter environment (pinned, separate from the project venv)", flush=True)
    venv.EnvBuilder(with_pip=True).create(env)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *EXPORT_REQUIREMENTS], check=True)
    stamp.write_text(wanted)
    return python


def reference_vectors(model_path: Path) -> np.ndarray:
    """Torch (sentence-transformers, fp32) vectors of ``PROBE_TEXTS`` from the project's own stack."""
    from .embed import SentenceTransformerEmbedder

    torch_embedder = SentenceTransformerEmbedder(str(model_path))
    return np.vstack([torch_embedder.embed_queries([text])[0] if kind == "query"
                      else torch_embedder.embed_documents([text])[0] for kind, text in PROBE_TEXTS])


def export(force: bool = False) -> Path:
    """Export the bundled model to OpenVINO IR beside it; returns the export folder."""
    target = export_dir()
    if is_export_ready(target) and not force:
        return target
    model_path = default_model_path()
    if not is_model_ready(model_path):
        raise RagError("嵌入模型尚未安装，请先运行 `python -m rag.model_fetch` / run rag.model_fetch first")
    began = time.perf_counter()
    python = _env_python()
    import openvino as ov

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ov-export-", dir=target.parent) as tmp:
        work = Path(tmp)
        onnx_dir = work / "onnx"
        worker = Path(__file__).with_name("ov_export_worker.py")
        subprocess.run([str(python), "-I", str(worker), str(model_path), str(onnx_dir)], check=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        staged = work / "staged"
        staged.mkdir()
        model = ov.convert_model(str(onnx_dir / "model.onnx"))
        ov.save_model(model, str(staged / "model.xml"), compress_to_fp16=False)  # precision is chosen at compile
        references = reference_vectors(model_path)
        np.save(staged / "probe_vectors.npy", references.astype(np.float32))
        (staged / "probes.json").write_text(json.dumps(PROBE_TEXTS, ensure_ascii=False, indent=1))
        from .embed_openvino import OpenVINOEmbedder

        check = OpenVINOEmbedder(model_path, staged).self_check()
        if check < 0.999:
            raise RagError(f"OpenVINO 导出与 torch 向量不一致 / OpenVINO export disagrees with torch "
                           f"(cosine {check:.5f})")
        (staged / MARKER).write_text(json.dumps({
            "export_version": EXPORT_VERSION, "openvino": ov.__version__, "min_probe_cosine": round(check, 6),
            "seconds": round(time.perf_counter() - began, 1), "exporter": EXPORT_REQUIREMENTS}, indent=1))
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    print(f"ov_export: {target} ready (probe cosine {check:.5f}, {time.perf_counter() - began:.0f} s)", flush=True)
    return target


def main() -> None:
    """Command-line entry: export once (``--force`` redoes it); failure is a notice, torch stays usable."""
    try:
        export(force="--force" in sys.argv)
    except (RagError, subprocess.CalledProcessError, OSError) as exc:
        print(f"OpenVINO 导出失败，将使用 torch / OpenVINO export failed, torch will be used: {exc}", file=sys.stderr)
        sys.exit(0 if "--strict" not in sys.argv else 1)


if __name__ == "__main__":
    main()
