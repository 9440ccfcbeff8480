"""OpenVINO backend for EmbeddingGemma: the exported Transformer plus pooling and Dense layers in numpy.

The export (``rag.ov_export``) holds only the Transformer; this module tokenises with the model's
own ``tokenizer.json``, runs the compiled OpenVINO model, mean-pools over the attention mask,
applies the two bias-free Dense layers (768→3072→768) and normalises — the same steps as the
sentence-transformers pipeline in ``modules.json``. OpenVINO picks bf16 on CPUs with AMX/AVX512-BF16
and f32 elsewhere (``RAG_OV_PRECISION`` forces one); the compiled model is cached beside the export.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .embed import ProgressCallback

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# Measured with benchmarks/embed_batch.py on the seed texts (length-sorted): 8, 16 and 32 embed
# equally fast and 1-4 slower; padding is 0.8% of the tokens at 8, 1.7% at 16.
BATCH_SIZE = 8
PROBE_MIN_COSINE = 0.999  # the bar for using OpenVINO instead of torch


def _load_tokenizer(path: Path, max_length: int) -> Tokenizer:
    """The model's fast tokenizer, truncating at ``max_length`` tokens and not padding (batches pad themselves)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length)
    tokenizer.no_padding()
    return tokenizer


class OpenVINOEmbedder:
    """``Embedder`` over an OpenVINO export of EmbeddingGemma."""

    def __init__(self, model_path: Path, export_path: Path, batch_size: int = BATCH_SIZE,
                 compiled_cache: bool = True):
        import openvino as ov
        from safetensors.numpy import load_file

        self.model_path, self.export_path = Path(model_path), Path(export_path)
        st_config = json.loads((self.model_path / "config_sentence_transformers.json").read_text())
        self._query_prompt = st_config.get("prompts", {}).get("query", "")
        max_length = json.loads((self.model_path / "sentence_bert_config.json").read_text())["max_seq_length"]
        # Parsing the 262k-token tokenizer.json takes over a second; it runs while OpenVINO compiles.
        with ThreadPoolExecutor(max_workers=1) as pool:
            tokenizer = pool.submit(_load_tokenizer, self.model_path / "tokenizer.json", max_length)
            self.dense = [load_file(str(self.model_path / part / "model.safetensors"))["linear.weight"].T
                          for part in ("2_Dense", "3_Dense")]
            core = ov.Core()
            if compiled_cache:
                core.set_property({"CACHE_DIR": str(self.export_path / "compiled-cache")})
            config = {"PERFORMANCE_HINT": "LATENCY"}
            forced = os.environ.get("RAG_OV_PRECISION", "").lower()
            if forced in ("bf16", "f32"):
                config["INFERENCE_PRECISION_HINT"] = forced
            self.compiled = core.compile_model(str(self.export_path / "model.xml"), "CPU", config)
            self.tokenizer = tokenizer.result()
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # "bf16" or "f32"
        self.dimension = int(self.dense[-1].shape[1])
        # The index manifest and the fitted values name the model, not the runtime: OpenVINO and torch
        # vectors agree to cosine >= 0.999, so an index built by either serves queries from the other.
        self.name = self.model_path.name
        # The embedding cache keeps them apart all the same, so an index holds one runtime's vectors.
        self.cache_name = f"{self.model_path.name}+openvino-{self.precision}"
        self.batch_size = batch_size
        self._lock = threading.Lock()

    def _encode(self, texts: Sequence[str], progress: ProgressCallback | None = None) -> np.ndarray:
        """Vectors in input order; texts are run longest-first in batches of similar length."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(list(texts))
        order = sorted(range(len(texts)), key=lambda i: -len(encodings[i].ids))
        result = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for begin in range(0, len(order), self.batch_size):
            chosen = order[begin:begin + self.batch_size]
            width = max(len(encodings[i].ids) for i in chosen)
            ids = np.zeros((len(chosen), width), dtype=np.int64)
            mask = np.zeros((len(chosen), width), dtype=np.int64)
            for row, i in enumerate(chosen):
                tokens = encodings[i].ids
                ids[row, :len(tokens)] = tokens
                mask[row, :len(tokens)] = 1
            with self._lock:
                hidden = self.compiled({"input_ids": ids, "attention_mask": mask})[0]
            weights = mask[:, :, None].astype(np.float32)
            pooled = (np.asarray(hidden, dtype=np.float32) * weights).sum(axis=1) / weights.sum(axis=1)
            for matrix in self.dense:
                pooled = pooled @ matrix
            pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
            result[chosen] = pooled
            if progress:
                progress(min(begin + self.batch_size, len(texts)), len(texts))
        return result

    def embed_documents(self, texts: Sequence[str], progress: ProgressCallback | None = None) -> np.ndarray:
        """Normalised float32 vectors for passages (already formatted by ``document_input``)."""
        return self._encode(texts, progress)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised float32 vectors for questions, with the model's query prompt."""
        return self._encode([self._query_prompt + text for text in texts])

    def self_check(self) -> float:
        """Smallest cosine between this backend's probe vectors and the torch references of the export.

        The probes run as two batches (questions, passages), which also warms the compiled model up.
        """
        probes = json.loads((self.export_path / "probes.json").read_text())
        references = np.load(self.export_path / "probe_vectors.npy")
        queries = [i for i, (kind, _) in enumerate(probes) if kind == "query"]
        documents = [i for i, (kind, _) in enumerate(probes) if kind != "query"]
        vectors = np.zeros_like(references, dtype=np.float32)
        vectors[queries] = self.embed_queries([probes[i][1] for i in queries])
        vectors[documents] = self.embed_documents([probes[i][1] for i in documents])
        return float(np.min(np.sum(vectors * references, axis=1)))

    def checked_cosine(self) -> float:
        """``self_check``, remembered once passed for these export files, runtime, precision and CPU.

        The answer cannot change while none of those do, and the check costs two inferences (~1 s
        of cold start on a loaded 2-core machine). Any change to the export, the OpenVINO version,
        the precision or the processor runs the check again; only passing results are remembered.
        """
        record = self.export_path / "compiled-cache" / f"self-check-{self._fingerprint()}.json"
        try:
            return float(json.loads(record.read_text())["min_probe_cosine"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        cosine = self.self_check()
        if cosine >= PROBE_MIN_COSINE:
            try:
                record.parent.mkdir(parents=True, exist_ok=True)
                handle, temporary = tempfile.mkstemp(dir=record.parent, prefix=".self-check-")
                with os.fdopen(handle, "w") as out:
                    json.dump({"min_probe_cosine": cosine}, out)
                os.chmod(temporary, 0o644)
                os.replace(temporary, record)
            except OSError:  # a read-only models folder: check every time
                pass
        return cosine

    def _fingerprint(self) -> str:
        """Hash of what the self-check result depends on."""
        import openvino as ov

        parts: list[object] = [ov.get_version(), self.precision, _cpu_description()]
        for name in ("model.xml", "model.bin", "probes.json", "probe_vectors.npy"):
            stat = (self.export_path / name).stat()
            parts.append([name, stat.st_size, stat.st_mtime_ns])
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _cpu_description() -> str:
    """The processor's model name and feature flags (bf16 support decides OpenVINO's precision)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = [line for line in lines if line.startswith(("model name", "flags"))]
    return "\n".join(wanted[:2])
