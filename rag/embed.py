"""Embedders: a small interface, the sentence-transformers backend, and a persistent vector cache.

``Embedder`` is what the index and the retriever need: document vectors, query vectors, a name
and a dimension. ``load_embedder`` is the factory: any sentence-transformers model id or local
path, defaulting to the bundled EmbeddingGemma verified by ``rag.model_fetch``. The Hub is never
contacted on the default path (``HF_HUB_OFFLINE=1`` is set before the library loads).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import RagError
from .model_fetch import MODEL_NAME, default_model_path, is_model_ready, models_dir

DEFAULT_MODEL = MODEL_NAME
ProgressCallback = Callable[[int, int], None]


class Embedder(Protocol):
    """What the rest of the library needs from an embedding model.

    ``name`` identifies the model (the index manifest and the fitted values record it). A backend whose
    vectors are close to but not bit-identical with another runtime of the same model also has a
    ``cache_name`` that keeps its vectors apart in the embedding cache (see ``cache_namespace``).
    """

    name: str
    dimension: int

    def embed_documents(self, texts: Sequence[str], progress: ProgressCallback | None = None) -> np.ndarray:
        """Normalised float32 vectors for passages, shape (len(texts), dimension)."""
        ...

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised float32 vectors for questions."""
        ...


def document_input(text: str, title: str = "", context: str = "") -> str:
    """The string embedded for a passage: EmbeddingGemma's document prompt with its title slot."""
    body = f"{context}\n{text}" if context else text
    return f"title: {title or 'none'} | text: {body}"


class SentenceTransformerEmbedder:
    """sentence-transformers backend; documents are formatted by ``document_input`` beforehand."""

    def __init__(self, model: str | None = None, batch_size: int = 16):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        path = resolve_model(model)
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()

        try:
            self.model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        except Exception as exc:  # the library raises many types for a bad model folder
            raise RagError(f"无法加载嵌入模型 / cannot load embedding model {path}: {exc}") from exc
        self.name = Path(str(path)).name if Path(str(path)).exists() else str(model)
        dimension = (self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension")
                     else self.model.get_sentence_embedding_dimension())
        if dimension is None:
            raise RagError(f"无法确定模型的向量维度 / model {path} does not report its embedding dimension")
        self.dimension = int(dimension)
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._query_prompt = self.model.prompts.get("query", "")

    def embed_documents(self, texts: Sequence[str], progress: ProgressCallback | None = None) -> np.ndarray:
        """Encode passages longest-first in batches (less padding), reporting (done, total) after each."""
        result = np.zeros((len(texts), self.dimension), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for begin in range(0, len(order), self.batch_size):
            chosen = order[begin:begin + self.batch_size]
            with self._lock:
                result[chosen] = self.model.encode([texts[i] for i in chosen], batch_size=self.batch_size, prompt="",
                                                   normalize_embeddings=True, convert_to_numpy=True)
            if progress:
                progress(min(begin + self.batch_size, len(texts)), len(texts))
        return result

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Encode questions with the model's query prompt."""
        with self._lock:
            vectors = self.model.encode(list(texts), prompt=self._query_prompt, normalize_embeddings=True,
                                        convert_to_numpy=True, batch_size=self.batch_size)
        return np.asarray(vectors, dtype=np.float32)


class QueryEncoder:
    """Question vectors with a small cache: a question asked again (or re-answered) is not re-embedded."""

    def __init__(self, embedder: Embedder, cache_size: int = 256):
        self.embedder = embedder
        self._encode = lru_cache(maxsize=cache_size)(self._encode_uncached)
        # The embedder encodes one batch at a time anyway; holding a lock across the cache lookup
        # makes simultaneous identical questions share one encoding instead of queueing several.
        self._lock = threading.Lock()

    def _encode_uncached(self, text: str) -> np.ndarray:
        return self.embedder.embed_queries([text])[0]

    def encode(self, text: str) -> np.ndarray:
        """The normalised vector of one question."""
        with self._lock:
            return self._encode(text)

    def clear(self) -> None:
        """Forget cached vectors (benchmarks time uncached questions)."""
        self._encode.cache_clear()


def resolve_model(model: str | None) -> Path | str:
    """Local path of the model to load: ``--model``/``RAG_MODEL``, else the bundled model."""
    chosen = model or os.environ.get("RAG_MODEL") or DEFAULT_MODEL
    if chosen == DEFAULT_MODEL:
        path = default_model_path()
        if not is_model_ready(path):
            raise RagError(
                f"嵌入模型尚未安装，请先运行 `make setup` 或 `python -m rag.model_fetch` / "
                f"embedding model not installed at {path}; run `make setup` or `python -m rag.model_fetch`"
            )
        return path
    candidate = Path(chosen).expanduser()
    if candidate.exists():
        return candidate
    if (models_dir() / chosen).exists():
        return models_dir() / chosen
    return chosen


_EMBEDDERS: dict[tuple[str, str], Embedder] = {}
_EMBEDDERS_LOCK = threading.Lock()


BACKENDS = ("auto", "openvino", "torch")


def embed_backend() -> str:
    """Chosen runtime: ``RAG_EMBED_BACKEND`` = auto (default) | openvino | torch."""
    backend = os.environ.get("RAG_EMBED_BACKEND", "auto").lower()
    if backend not in BACKENDS:
        raise RagError(f"RAG_EMBED_BACKEND 只能是 {'/'.join(BACKENDS)} / must be one of {BACKENDS}, got {backend!r}")
    return backend


def _openvino_embedder(model: str) -> Embedder | None:
    """The OpenVINO embedder of the bundled model if its export loads and passes the probe check, else None.

    Any failure is one line on stderr and the caller falls back to torch: the export is an optimisation.
    """
    from .embed_openvino import PROBE_MIN_COSINE
    from .ov_export import export_dir, is_export_ready

    if model != DEFAULT_MODEL:
        return None
    path = export_dir()
    reason = ""
    if not is_export_ready(path):
        reason = f"no export at {path} (run `make setup` or `python -m rag.ov_export`)"
    else:
        try:
            from .embed_openvino import OpenVINOEmbedder

            embedder = OpenVINOEmbedder(default_model_path(), path)
            cosine = embedder.checked_cosine()
            if cosine >= PROBE_MIN_COSINE:
                return embedder
            reason = f"probe cosine {cosine:.5f} < {PROBE_MIN_COSINE}"
        except Exception as exc:  # openvino/tokenizers raise many types for a broken export
            reason = f"{type(exc).__name__}: {exc}"
    print(f"OpenVINO 嵌入不可用，改用 torch / OpenVINO embedding unavailable, using torch: {reason}",
          file=sys.stderr, flush=True)
    return None


def load_embedder(model: str | None = None) -> Embedder:
    """Factory: one loaded embedder per model per process (loading costs seconds).

    The bundled model runs on OpenVINO when its export passes the self-check (``RAG_EMBED_BACKEND``
    auto/openvino), otherwise on sentence-transformers/torch.
    """
    key = model or os.environ.get("RAG_MODEL") or DEFAULT_MODEL
    backend = embed_backend()
    with _EMBEDDERS_LOCK:
        if (key, backend) not in _EMBEDDERS:
            chosen = _openvino_embedder(key) if backend != "torch" else None
            _EMBEDDERS[(key, backend)] = chosen or SentenceTransformerEmbedder(key)
        return _EMBEDDERS[(key, backend)]


def preload_embedder(model: str | None = None) -> None:
    """Start loading the embedder in a background thread; ``load_embedder`` then waits for it.

    Loading the OpenVINO model (reading the compiled model, parsing the tokenizer, the self-check)
    runs mostly outside the GIL, so a command overlaps it with importing the rest of the library and
    opening the index. Not a daemon thread: the interpreter waits for it rather than tearing down
    while native code is still loading.
    """
    def load() -> None:
        try:
            load_embedder(model)
        except Exception:  # the foreground call repeats the load and reports the error
            pass

    threading.Thread(target=load, name="preload-embedder").start()


def default_cache_path() -> Path:
    """Embedding cache location (``RAG_EMBED_CACHE`` overrides)."""
    override = os.environ.get("RAG_EMBED_CACHE")
    return Path(override).expanduser() if override else models_dir().parent / "embeddings.sqlite"


class EmbeddingCache:
    """Vectors keyed by (model, SHA-256 of the embedded string), in SQLite.

    Each batch is committed as soon as it is computed, so an interrupted build keeps its work.
    """

    def __init__(self, path: Path | None = None):
        self.path = path or default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS embeddings (model TEXT, key TEXT, vector BLOB, "
                        "PRIMARY KEY (model, key))")
        self.db.commit()

    @staticmethod
    def key(text: str) -> str:
        """Content hash of the exact string that is embedded."""
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def get_many(self, model: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """Cached vectors for those of ``keys`` that are present."""
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        for begin in range(0, len(unique), 500):
            part = unique[begin:begin + 500]
            marks = ",".join("?" * len(part))
            rows = self.db.execute(f"SELECT key, vector FROM embeddings WHERE model=? AND key IN ({marks})",
                                   [model, *part])
            for key, blob in rows:
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, model: str, items: dict[str, np.ndarray]) -> None:
        """Store vectors and commit at once."""
        self.db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)",
                            [(model, k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items.items()])
        self.db.commit()

    def close(self) -> None:
        """Close the database connection."""
        self.db.close()


def cache_namespace(embedder: Embedder) -> str:
    """Key of an embedder's vectors in the cache: its ``cache_name`` (model and runtime) if any, else its name."""
    return str(getattr(embedder, "cache_name", embedder.name))


def embed_with_cache(embedder: Embedder, cache: EmbeddingCache, texts: Sequence[str],
                     progress: ProgressCallback | None = None, batch_size: int = 32) -> tuple[np.ndarray, int]:
    """Vectors for ``texts``, computing only those not cached; returns (vectors, number computed)."""
    keys = [cache.key(t) for t in texts]
    namespace = cache_namespace(embedder)
    known = cache.get_many(namespace, keys)
    missing = [i for i, k in enumerate(keys) if k not in known]
    missing_unique = list(dict.fromkeys(keys[i] for i in missing))
    first_text = {keys[i]: texts[i] for i in reversed(missing)}
    # Longest first, so each batch holds texts of similar length and little padding is computed.
    missing_unique.sort(key=lambda k: -len(first_text[k]))
    done = 0
    for begin in range(0, len(missing_unique), batch_size):
        batch_keys = missing_unique[begin:begin + batch_size]
        vectors = embedder.embed_documents([first_text[k] for k in batch_keys])
        fresh = dict(zip(batch_keys, vectors, strict=True))
        cache.put_many(namespace, fresh)
        known.update(fresh)
        done += len(batch_keys)
        if progress:
            progress(done, len(missing_unique))
    if not keys:
        return np.zeros((0, embedder.dimension), dtype=np.float32), 0
    return np.vstack([known[k] for k in keys]).astype(np.float32), len(missing_unique)
