"""The Milvus store: the same ``Store``/``StoreWriter`` as the embedded one, held by Milvus.

One client code path serves Milvus Lite (``milvus:///abs/path/file.db``, embedded in this process)
and a Milvus server or cluster (``milvus://host:port``). Collections (prefix ``report_qa`` unless the
location says ``?prefix=name``)::

    <p>_passages   one row per passage: stable primary key, report, reading position, citation, text,
                   offsets, lines, page, and its passage vector (FLAT index, inner product = cosine)
    <p>_lexical    one row per passage: the BM25 document-side term weights as a SPARSE_FLOAT_VECTOR,
                   plus the raw term counts and length they were computed from
    <p>_units      one row per sentence/table-row vector: owning passage key, order, vector
    <p>_records    JSON records split in parts: each report (text, description, line starts), the
                   manifest, the BM25 vocabulary with document frequencies, each report's term counts

BM25 is the project's own (the same jieba tokens and the same Lucene-variant formula as bm25s in
the embedded store): the document side ``tf / (tf + k1·(1 − b + b·dl/avgdl))`` is stored, the IDF
``log(1 + (N − df + 0.5)/(df + 0.5))`` is applied to the query's sparse vector, so Milvus' inner
product is exactly the embedded store's BM25 score. Milvus' built-in BM25 function is not used:
Lite computes its IDF per segment and returns negative scores (``tests/test_milvus_store.py`` shows
the difference), and its jieba analyzer does not know the corpus' own words.

Passage ids handed to retrieval are contiguous and follow (report file name, reading order), as in
the embedded store, so ties and every id-based step behave alike; the Milvus primary key is a stable
hash of (report, position), so unchanged reports are never rewritten.

A write session compares each report's fingerprint (its records and vectors) with what is stored,
deletes and inserts only the changed reports, in batches, and writes the manifest last. Unlike the
embedded store's version swap, a reader that loads during a write may see a mix of old and new
reports; the manifest (and with it the version a reader reloads on) changes only at the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np

from .aliases import AliasTable
from .errors import RagError
from .metadata import ReportInfo
from .records import StoredChunk, StoredDocument, lexical_text
from .store import ReportRecords, Scored
from .textnorm import fold
from .tokenize import TOKENIZER_VERSION, Tokenizer, tokenizer_for

FORMAT_VERSION = 2  # 2: boilerplate spans recorded with each report
BM25_K1, BM25_B = 1.5, 0.75  # bm25s' defaults, which the embedded store uses
# The stored document-side weights depend on the average passage length; they are rewritten when a
# build moves it by more than this (relative). Adding one report to millions of passages moves it far
# less, and rewriting every row each time would dominate the build.
AVGDL_TOLERANCE = 1e-3
BATCH_ROWS = 500  # rows per insert call
PART_CHARS = 16000  # a JSON record part: ≤ 64 KB of UTF-8, under Milvus' VARCHAR limit
TEXT_BYTES = 65535
MAX_TOPK = 16384  # Milvus' limit on one search's result count
UNIT_TIE_MARGIN = 64  # extra unit hits read so ties at the cut are broken like the embedded store
REBUILD_HINT = "请运行 `rag index --store …` 重新建立索引 / run `rag index --store …` to (re)build it"
PASSAGE_FIELDS = ["id", "source", "position", "citation", "start", "end", "text", "heading", "table_header",
                  "kind", "line_start", "line_end", "page"]


@dataclass(frozen=True)
class MilvusLocation:
    """Where the Milvus store lives: a Milvus Lite file or a server URI, and the collection prefix."""

    uri: str
    prefix: str = "report_qa"

    @classmethod
    def parse(cls, setting: str) -> MilvusLocation:
        """``milvus:///abs/file.db`` (Milvus Lite) or ``milvus://host:port`` (server), optional ``?prefix=``.

        Raises ``RagError`` saying what a valid location looks like for anything else.
        """
        forms = "可用 milvus:///绝对路径/文件.db（Milvus Lite）或 milvus://主机:端口（Milvus 服务器）"
        parsed = urlparse(setting)
        if parsed.scheme != "milvus":
            raise RagError(f"无法识别的存储位置：{setting}（{forms}）/ unknown store location")
        prefix = parse_qs(parsed.query).get("prefix", ["report_qa"])[0]
        if not prefix.replace("_", "").isalnum() or not prefix[0].isalpha():
            raise RagError(f"集合前缀只能包含字母、数字和下划线，并以字母开头：{prefix} / bad collection prefix")
        if parsed.netloc:
            if parsed.netloc.endswith(".db") or parsed.path.endswith(".db"):
                raise RagError(f"Milvus Lite 文件要写绝对路径（三个斜杠）：milvus:///绝对路径/文件.db，而不是 {setting}"
                               " / Milvus Lite needs milvus:///abs/path.db")
            if "@" in parsed.netloc:
                raise RagError(f"暂不支持带账号的 Milvus 地址：{setting} / credentials in the URL are not supported")
            try:
                port = parsed.port
            except ValueError:
                port = None
            if not parsed.hostname or port is None or not 0 < port < 65536 or parsed.path not in ("", "/"):
                raise RagError(f"Milvus 服务器地址应为 milvus://主机:端口（例如 milvus://127.0.0.1:19530）：{setting}"
                               " / a Milvus server is milvus://host:port")
            return cls(f"http://{parsed.netloc}", prefix)
        if not parsed.path.startswith("/") or not parsed.path.endswith(".db") or parsed.path == "/.db":
            raise RagError(f"Milvus Lite 需要以 .db 结尾的绝对路径：{setting}（{forms}）"
                           " / Milvus Lite needs milvus:///abs/path.db")
        return cls(parsed.path, prefix)

    @property
    def is_server(self) -> bool:
        """True for a Milvus server or cluster, False for a Milvus Lite file."""
        return self.uri.startswith("http://")

    @property
    def display(self) -> str:
        """The location as a user wrote it (host:port, or the Lite file's path)."""
        return self.uri.removeprefix("http://")

    def collection(self, name: str) -> str:
        """Full name of one of the store's collections."""
        return f"{self.prefix}_{name}"



def _quiet_logs() -> None:
    """Silence pymilvus' and Milvus Lite's own logging (run after importing pymilvus, whose import sets it up).

    pymilvus logs a traceback for every failed request and a warning on every query iterator against
    Milvus Lite; Milvus Lite logs a traceback when it cannot open a file. Every failure reaches the user
    as one ``RagError`` line instead (``milvus_errors``).
    """
    for name in ("pymilvus", "pymilvus.milvus_client", "pymilvus.bulk_writer", "milvus_lite"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


_CLIENTS: dict[str, Any] = {}
_CLIENTS_LOCK = threading.Lock()


def _failure_types() -> tuple[type[BaseException], ...]:
    """What pymilvus raises when Milvus fails (not the programming errors, which stay tracebacks)."""
    from grpc import RpcError
    from pymilvus.exceptions import MilvusException

    return MilvusException, RpcError, ConnectionError, TimeoutError


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "message", None) or exc).strip() or type(exc).__name__


@contextmanager
def milvus_errors(location: MilvusLocation) -> Iterator[None]:
    """Turn a failed Milvus request into a ``RagError`` naming the store (a server that went away, …)."""
    try:
        yield
    except RagError:
        raise
    except _failure_types() as exc:
        if location.is_server:
            raise RagError(f"Milvus 服务器 {location.display} 请求失败：{_reason(exc)}。请确认服务器仍在运行、网络可达"
                           " / a request to the Milvus server failed") from exc
        raise RagError(f"Milvus Lite 文件 {location.display} 读写失败：{_reason(exc)}"
                       " / a Milvus Lite request failed") from exc


class _GuardedClient:
    """A ``MilvusClient`` whose failures surface as ``RagError`` (see ``milvus_errors``)."""

    def __init__(self, client: Any, location: MilvusLocation):
        self._client = client
        self._location = location

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def guarded(*args: Any, **kwargs: Any) -> Any:
            with milvus_errors(self._location):
                return attribute(*args, **kwargs)
        return guarded


def _lite_locked(path: str) -> bool:
    """True when another process holds Milvus Lite's lock on the file (a Lite file has one opener)."""
    import fcntl

    lock = Path(path) / "LOCK"
    if not lock.is_file():
        return False
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def _open_client(location: MilvusLocation) -> Any:
    # gRPC's own logging (set before pymilvus imports it) would print transport notices such as Milvus
    # Lite's "too_many_pings" GOAWAY to the user's terminal; failures still reach us as exceptions.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:
        raise RagError("未安装 pymilvus（Milvus 存储需要它）：pip install -e '.[milvus]'"
                       " / pymilvus is not installed") from exc
    _quiet_logs()
    if location.is_server:
        try:
            return MilvusClient(location.uri)
        except Exception as exc:  # pymilvus raises several kinds here, all meaning "no usable server"
            raise RagError(f"无法连接 Milvus 服务器 {location.display}：服务器未运行、地址或端口错误，或网络不通"
                           f"（{_reason(exc)}）/ cannot reach the Milvus server") from exc
    path = Path(location.uri)
    if path.exists() and not path.is_dir():
        raise RagError(f"{path} 不是 Milvus Lite 数据（Milvus Lite 3 的 .db 是一个文件夹）/ not a Milvus Lite store")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RagError(f"无法创建 Milvus Lite 文件所在的文件夹 {path.parent}（{exc.strerror}）"
                       " / cannot create the folder") from exc
    try:
        return MilvusClient(location.uri)
    except Exception as exc:  # Milvus Lite reports a locked or unreadable file as a generic connection error
        if _lite_locked(location.uri):
            raise RagError(f"Milvus Lite 文件 {path} 正被另一个进程使用（例如正在运行的 rag ui / rag serve）。"
                           "Milvus Lite 只允许一个进程打开；多个进程同时使用请改用 Milvus 服务器"
                           " / the Milvus Lite file is open in another process") from exc
        raise RagError(f"无法打开 Milvus Lite 文件 {path}（{_reason(exc)}）/ cannot open the Milvus Lite file") from exc


def client_for(location: MilvusLocation) -> Any:
    """One ``MilvusClient`` per URI and process (Milvus Lite allows one opener of a file), failures as ``RagError``."""
    with _CLIENTS_LOCK:
        if location.uri not in _CLIENTS:
            _CLIENTS[location.uri] = _GuardedClient(_open_client(location), location)
        return _CLIENTS[location.uri]


def release_client(setting: str) -> None:
    """Close this process' client for the store at ``setting`` (a Milvus Lite file is then free for
    another process); the next use opens a new one."""
    location = MilvusLocation.parse(setting)
    with _CLIENTS_LOCK:
        client = _CLIENTS.pop(location.uri, None)
    if client is not None:
        client.close()
        if not location.is_server:
            # Closing the client leaves Milvus Lite's engine (and its lock on the file) running until exit.
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(location.uri)


def passage_key(source: str, position: int) -> int:
    """Stable primary key of a passage: 43 bits of the report name's hash, 20 bits of position."""
    digest = int.from_bytes(hashlib.sha256(source.encode("utf-8")).digest()[:8], "big") >> 21
    return (digest << 20) | position


def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _in_filter(field: str, values: Sequence) -> str:
    return f"{field} in [{', '.join(_quote(v) if isinstance(v, str) else str(int(v)) for v in values)}]"


def bm25_idf(df: int, total: int) -> float:
    """Lucene IDF, as bm25s computes it."""
    return math.log(1 + (total - df + 0.5) / (df + 0.5))


def bm25_weights(counts: dict[int, int], length: int, avgdl: float) -> dict[int, float]:
    """Document-side BM25 weights (Lucene variant, as bm25s), one per term id."""
    norm = BM25_K1 * ((1 - BM25_B) + BM25_B * length / avgdl)
    return {term: float(np.float32(tf / (norm + tf))) for term, tf in counts.items()}


class _Collections:
    """The store's collections on one client: creation, JSON records, paging through rows."""

    def __init__(self, location: MilvusLocation):
        self.location = location
        self.client = client_for(location)
        self.passages = location.collection("passages")
        self.lexical = location.collection("lexical")
        self.units = location.collection("units")
        self.records = location.collection("records")

    def exists(self) -> bool:
        """True when every collection exists; they are then loaded, so that they can be searched.

        Milvus keeps a collection "released" (not searchable) after the engine restarts: a Milvus Lite
        file opened by a new process, a server restarted since the build.
        """
        names = (self.passages, self.lexical, self.units, self.records)
        if not all(self.client.has_collection(name) for name in names):
            return False
        for name in names:
            if getattr(self.client.get_load_state(name).get("state"), "name", "") != "Loaded":
                self.client.load_collection(name)
        return True

    def drop(self) -> None:
        for name in (self.passages, self.lexical, self.units, self.records):
            if self.client.has_collection(name):
                self.client.drop_collection(name)

    def create(self, dimension: int) -> None:
        from pymilvus import DataType, MilvusClient

        def schema(fields: list[tuple], auto_id: bool = False) -> Any:
            result = MilvusClient.create_schema(auto_id=auto_id, enable_dynamic_field=False)
            for name, kind, options in fields:
                result.add_field(name, kind, **options)
            return result

        def indexed(field: str, index_type: str) -> Any:
            params = self.client.prepare_index_params()
            params.add_index(field, index_type=index_type, metric_type="IP")
            return params

        text = {"max_length": TEXT_BYTES}
        self.client.create_collection(self.passages, schema=schema([
            ("id", DataType.INT64, {"is_primary": True}), ("source", DataType.VARCHAR, {"max_length": 1024}),
            ("position", DataType.INT64, {}), ("citation", DataType.VARCHAR, {"max_length": 2048}),
            ("start", DataType.INT64, {}), ("end", DataType.INT64, {}), ("text", DataType.VARCHAR, text),
            ("heading", DataType.VARCHAR, text), ("table_header", DataType.VARCHAR, text),
            ("kind", DataType.VARCHAR, {"max_length": 64}), ("line_start", DataType.INT64, {}),
            ("line_end", DataType.INT64, {}), ("page", DataType.INT64, {}),
            ("dense", DataType.FLOAT_VECTOR, {"dim": dimension})]), index_params=indexed("dense", "FLAT"))
        self.client.create_collection(self.lexical, schema=schema([
            ("id", DataType.INT64, {"is_primary": True}), ("source", DataType.VARCHAR, {"max_length": 1024}),
            ("counts", DataType.VARCHAR, text), ("length", DataType.INT64, {}),
            ("weights", DataType.SPARSE_FLOAT_VECTOR, {})]), index_params=indexed("weights", "SPARSE_INVERTED_INDEX"))
        self.client.create_collection(self.units, schema=schema([
            ("id", DataType.INT64, {"is_primary": True}), ("owner", DataType.INT64, {}),
            ("position", DataType.INT64, {}), ("source", DataType.VARCHAR, {"max_length": 1024}),
            ("dense", DataType.FLOAT_VECTOR, {"dim": dimension})], auto_id=True), index_params=indexed("dense", "FLAT"))
        # Milvus wants a vector field in every collection; records carry a constant two-dimensional one.
        self.client.create_collection(self.records, schema=schema([
            ("key", DataType.VARCHAR, {"is_primary": True, "max_length": 2048}),
            ("kind", DataType.VARCHAR, {"max_length": 64}), ("name", DataType.VARCHAR, {"max_length": 1024}),
            ("part", DataType.INT64, {}), ("data", DataType.VARCHAR, text),
            ("unused", DataType.FLOAT_VECTOR, {"dim": 2})]), index_params=indexed("unused", "FLAT"))

    def dimension(self) -> int | None:
        """The passage vectors' dimension of the existing collections."""
        description = self.client.describe_collection(self.passages)
        for field in description.get("fields", []):
            if field.get("name") == "dense":
                return int(field.get("params", {}).get("dim"))
        return None

    def rows(self, collection: str, fields: list[str], filter: str = "") -> Iterator[dict]:
        """Every row matching ``filter`` (paged, so millions of rows never sit in one response)."""
        iterator = self.client.query_iterator(collection, batch_size=2000, filter=filter, output_fields=fields)
        try:
            while True:
                with milvus_errors(self.location):
                    batch = iterator.next()
                if not batch:
                    return
                yield from batch
        finally:
            with milvus_errors(self.location):
                iterator.close()

    def read_record(self, kind: str, name: str) -> Any:
        """One JSON record (None when absent)."""
        parts = self.client.query(self.records, filter=f"kind == {_quote(kind)} and name == {_quote(name)}",
                                  output_fields=["part", "data"])
        if not parts:
            return None
        return json.loads("".join(p["data"] for p in sorted(parts, key=lambda p: p["part"])))

    def read_records(self, kind: str) -> dict[str, Any]:
        """Every record of one kind, by name."""
        parts: dict[str, list[tuple[int, str]]] = {}
        for row in self.rows(self.records, ["name", "part", "data"], f"kind == {_quote(kind)}"):
            parts.setdefault(row["name"], []).append((row["part"], row["data"]))
        return {name: json.loads("".join(data for _, data in sorted(chunks))) for name, chunks in parts.items()}

    def write_record(self, kind: str, name: str, value: Any) -> None:
        """Replace one JSON record."""
        self.delete_records(kind, [name])
        text = json.dumps(value, ensure_ascii=False)
        rows = [{"key": f"{kind}/{name}/{i}", "kind": kind, "name": name, "part": i,
                 "data": text[start:start + PART_CHARS], "unused": [0.0, 1.0]}
                for i, start in enumerate(range(0, max(len(text), 1), PART_CHARS))]
        self.insert(self.records, rows)

    def delete_records(self, kind: str, names: Sequence[str]) -> None:
        if names:
            self.client.delete(self.records, filter=f"kind == {_quote(kind)} and {_in_filter('name', names)}")

    def insert(self, collection: str, rows: list[dict]) -> None:
        for start in range(0, len(rows), BATCH_ROWS):
            self.client.insert(collection, rows[start:start + BATCH_ROWS])

    def count(self, collection: str) -> int:
        return int(self.client.query(collection, filter="", output_fields=["count(*)"])[0]["count(*)"])

    def flush(self) -> None:
        for name in (self.passages, self.lexical, self.units, self.records):
            try:
                self.client.flush(name)
            except Exception:  # Milvus Lite flushes on its own; a server accepts the call
                pass


def milvus_manifest(setting: str) -> dict | None:
    """The manifest of the Milvus store at ``setting`` (None when there is none)."""
    collections = _Collections(MilvusLocation.parse(setting))
    if not collections.exists():
        return None
    manifest = collections.read_record("manifest", "live")
    return manifest if isinstance(manifest, dict) else None


class MilvusStore:
    """A loaded Milvus store (read side): records in memory, searches in Milvus."""

    def __init__(self, setting: str, index_dir: Path | None = None):
        self.setting = setting
        self.index_dir = index_dir or Path(setting)
        self._c = _Collections(MilvusLocation.parse(setting))
        manifest = self._c.read_record("manifest", "live") if self._c.exists() else None
        if not isinstance(manifest, dict):
            raise RagError(f"Milvus 中没有索引：{setting}。{REBUILD_HINT}")
        if manifest.get("format") != FORMAT_VERSION or manifest.get("tokenizer_version", 1) != TOKENIZER_VERSION:
            raise RagError(f"索引格式已过期：{setting}。{REBUILD_HINT}")
        self.manifest = manifest
        self.tokenizer: Tokenizer = tokenizer_for(manifest.get("user_words", []))
        try:
            rows = sorted(self._c.rows(self._c.passages, PASSAGE_FIELDS), key=lambda r: (r["source"], r["position"]))
            self.documents: dict[str, StoredDocument] = {}
            for source, value in self._c.read_records("document").items():
                value["info"] = ReportInfo(**value["info"])
                value["boilerplate"] = [tuple(span) for span in value["boilerplate"]]
                self.documents[source] = StoredDocument(**value)
            bm25 = self._c.read_record("bm25", "vocabulary") or {"terms": {}, "df": [], "passages": 0}
        except Exception as exc:
            raise RagError(f"Milvus 中的索引无法读取：{setting}（{exc}）。{REBUILD_HINT}") from exc
        self.chunks = [StoredChunk(i, r["citation"], r["source"], r["start"], r["end"], r["text"], r["heading"],
                                   r["table_header"], r["kind"], r["line_start"], r["line_end"],
                                   None if r["page"] < 0 else r["page"]) for i, r in enumerate(rows)]
        self._keys = np.array([r["id"] for r in rows], dtype=np.int64)
        self._local = {int(key): i for i, key in enumerate(self._keys)}
        if len(self.chunks) != manifest.get("chunks") or any(c.source not in self.documents for c in self.chunks):
            raise RagError(f"Milvus 中的索引不完整（可能正在写入）：{setting}。{REBUILD_HINT}")
        self._terms: dict[str, int] = bm25["terms"]
        self._df: list[int] = bm25["df"]
        self._total = int(bm25["passages"])
        self._by_citation = {c.citation: c for c in self.chunks}
        self._ids_of: dict[str, list[int]] = {}
        for chunk in self.chunks:
            self._ids_of.setdefault(chunk.source, []).append(chunk.id)
        self._idf: dict[str, float] = {}
        self._unit_cache: OrderedDict[int, np.ndarray | None] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def model(self) -> str:
        """Name of the embedding model that built this index."""
        return self.manifest["model"]

    @cached_property
    def aliases(self) -> AliasTable:
        """Chinese/English name pairs mined from the indexed text."""
        return AliasTable.mine(c.text for c in self.chunks)

    @cached_property
    def _folded(self) -> list[str]:
        return [fold(c.table_header + c.text).replace(" ", "") for c in self.chunks]

    def chunk(self, chunk_id: int) -> StoredChunk:
        """One passage by id."""
        return self.chunks[chunk_id]

    def chunk_by_citation(self, citation: str) -> StoredChunk | None:
        """The passage with this citation ID, if any."""
        return self._by_citation.get(citation)

    def chunks_of(self, source: str) -> list[StoredChunk]:
        """Every passage of one report, in reading order."""
        return [self.chunks[i] for i in self._ids_of.get(source, [])]

    def allowed_ids(self, sources: Sequence[str]) -> np.ndarray:
        """Ids of the passages of ``sources``."""
        ids = [i for source in dict.fromkeys(sources) for i in self._ids_of.get(source, [])]
        return np.array(sorted(ids), dtype=np.int64)

    def _filter(self, allowed: np.ndarray | None) -> str:
        """A Milvus filter for a set of passage ids: by report when it is whole reports (the report filter)."""
        if allowed is None:
            return ""
        sources = sorted({self.chunks[int(i)].source for i in allowed})
        if sum(len(self._ids_of[s]) for s in sources) == len(allowed):
            return _in_filter("source", sources)
        return _in_filter("id", self._keys[np.asarray(allowed, dtype=np.int64)].tolist())

    def _search(self, collection: str, field: str, data: Any, limit: int, filter: str,
                output: list[str] | None = None) -> list[dict]:
        if limit <= 0:
            return []
        result = self._c.client.search(collection, data=[data], anns_field=field, limit=min(limit, MAX_TOPK),
                                       filter=filter, output_fields=output or [],
                                       search_params={"metric_type": "IP"})
        return list(result[0])

    def _scored(self, hits: list[dict]) -> Scored:
        """Search hits as local ids, best first, ties by id (as the embedded store orders them)."""
        if not hits:
            return Scored.empty()
        ids = np.array([self._local[int(h["id"])] for h in hits], dtype=np.int64)
        scores = np.array([h["distance"] for h in hits], dtype=np.float32)
        order = np.lexsort((ids, -scores))
        return Scored(ids[order], scores[order])

    def dense_top_k(self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None) -> Scored:
        """Exact inner-product top-k in Milvus (FLAT index), the report filter as a Milvus filter."""
        limit = min(k, len(self.chunks) if allowed is None else len(allowed))
        return self._scored(self._search(self._c.passages, "dense", _floats(vector), limit, self._filter(allowed)))

    def dense_scores(self, vector: np.ndarray, ids: Sequence[int]) -> np.ndarray:
        """Cosine of ``vector`` with the passages ``ids``, computed by Milvus as its search does."""
        wanted = np.asarray(ids, dtype=np.int64)
        return self._scores_of(self._c.passages, "dense", _floats(vector), wanted)

    def _scores_of(self, collection: str, field: str, data: Any, wanted: np.ndarray) -> np.ndarray:
        out = np.zeros(len(wanted), dtype=np.float32)
        if not len(wanted):
            return out
        keys = self._keys[wanted]
        hits = self._search(collection, field, data, len(set(keys.tolist())), _in_filter("id", keys.tolist()))
        found = {int(h["id"]): h["distance"] for h in hits}
        for i, key in enumerate(keys.tolist()):
            out[i] = found.get(key, 0.0)
        return out

    def unit_top_k(self, vector: np.ndarray, k: int) -> Scored:
        """Top-k sentence/row units as (owning chunk id, score), best first."""
        if not self.manifest.get("units"):
            return Scored.empty()
        # Read a margin past k so that ties at the cut are broken as the embedded store breaks them
        # (by unit order: report file name, passage, sentence), not by Milvus' segment order.
        hits = self._search(self._c.units, "dense", _floats(vector), k + UNIT_TIE_MARGIN, "", ["owner", "position"])
        if not hits:
            return Scored.empty()
        owners = np.array([self._local[int(h["entity"]["owner"])] for h in hits], dtype=np.int64)
        positions = np.array([h["entity"]["position"] for h in hits], dtype=np.int64)
        scores = np.array([h["distance"] for h in hits], dtype=np.float32)
        order = np.lexsort((positions, owners, -scores))[:k]
        return Scored(owners[order], scores[order])

    def unit_vectors(self, chunk_id: int) -> np.ndarray | None:
        """The unit vectors of one passage in order (None without unit vectors)."""
        if not self.manifest.get("units"):
            return None
        with self._lock:
            if chunk_id in self._unit_cache:
                self._unit_cache.move_to_end(chunk_id)
                return self._unit_cache[chunk_id]
        rows = self._c.client.query(self._c.units, filter=f"owner == {int(self._keys[chunk_id])}",
                                    output_fields=["position", "dense"])
        rows.sort(key=lambda r: r["position"])
        vectors = np.array([r["dense"] for r in rows], dtype=np.float32).reshape(len(rows), self.manifest["dimension"])
        with self._lock:
            self._unit_cache[chunk_id] = vectors
            while len(self._unit_cache) > 4096:
                self._unit_cache.popitem(last=False)
        return vectors

    def _query_weights(self, tokens: Sequence[str]) -> dict[int, float]:
        """The question's sparse vector: each known term's IDF times its count (bm25s sums repeats)."""
        weights: dict[int, float] = {}
        for term, count in Counter(tokens).items():
            term_id = self._terms.get(term)
            if term_id is not None and self._df[term_id] > 0:
                weights[term_id] = count * bm25_idf(self._df[term_id], self._total)
        return weights

    def bm25_top_k(self, tokens: Sequence[str], k: int, allowed: np.ndarray | None = None) -> Scored:
        """The ``k`` best passages with a positive BM25 score."""
        weights = self._query_weights(tokens)
        if not weights:
            return Scored.empty()
        limit = min(k, len(self.chunks) if allowed is None else len(allowed))
        hits = [h for h in self._search(self._c.lexical, "weights", weights, limit, self._filter(allowed))
                if h["distance"] > 0]
        return self._scored(hits)

    def bm25_scores(self, tokens: Sequence[str], ids: Sequence[int]) -> np.ndarray:
        """BM25 scores of the passages ``ids`` (0 where no term matches)."""
        weights = self._query_weights(tokens)
        wanted = np.asarray(ids, dtype=np.int64)
        if not weights:
            return np.zeros(len(wanted), dtype=np.float32)
        return self._scores_of(self._c.lexical, "weights", weights, wanted)

    def idf(self, term: str) -> float:
        """Inverse passage frequency of a folded term (substring match, as coverage counts it)."""
        if term not in self._idf:
            frequency = sum(1 for text in self._folded if term in text)
            self._idf[term] = float(np.log((len(self._folded) + 1) / (frequency + 0.5)))
        return self._idf[term]

    def problems(self) -> list[str]:
        """Counts that do not agree between the collections and the manifest (empty when healthy)."""
        found = []
        if self._c.count(self._c.lexical) != len(self.chunks):
            found.append("BM25 rows and passages differ in number")
        if self.manifest.get("units") and self._c.count(self._c.units) != self.manifest.get("unit_count"):
            found.append("unit vectors and the manifest differ in number")
        if set(self.documents) != set(self.manifest.get("reports", {})):
            found.append("stored reports and the manifest differ")
        return found


def _floats(vector: np.ndarray) -> list[float]:
    return np.asarray(vector, dtype=np.float32).ravel().tolist()


def _fingerprint(report: ReportRecords) -> str:
    """Content hash of everything a report's rows are made of (records and vectors)."""
    digest = hashlib.sha256()
    document = report.document
    digest.update(json.dumps([document.source, document.sha256, asdict(document.info), document.duplicates],
                             ensure_ascii=False, sort_keys=True).encode())
    for citation, chunk, line_start, line_end, page in report.chunks:
        digest.update(json.dumps([citation, asdict(chunk), line_start, line_end, page], ensure_ascii=False,
                                 sort_keys=True, default=str).encode())
    digest.update(np.ascontiguousarray(report.vectors, dtype=np.float32).tobytes())
    if report.unit_vectors is not None:
        digest.update(np.ascontiguousarray(report.unit_vectors, dtype=np.float32).tobytes())
        digest.update(json.dumps(report.unit_owner).encode())
    return digest.hexdigest()


class MilvusWriter:
    """A write session: only reports whose fingerprint changed are deleted and re-inserted on commit."""

    def __init__(self, setting: str, dimension: int, tokenizer: Tokenizer, progress: Any = None,
                 log: Callable[[str], None] = lambda message: None):
        self.setting = setting
        self.dimension = dimension
        self.tokenizer = tokenizer
        self.reports: dict[str, ReportRecords] = {}
        self.progress = progress
        self.log = log
        self.inserted: list[str] = []  # reports written by the last commit (for tests and logs)
        self.removed: list[str] = []

    def add_report(self, report: ReportRecords) -> None:
        """Add or replace one report."""
        self.reports[report.document.source] = report

    def remove_report(self, source: str) -> None:
        """Leave one report out of the new state."""
        self.reports.pop(source, None)

    def commit(self, manifest: dict) -> None:
        """Bring the collections to the session's reports, then write the manifest."""
        began = time.perf_counter()
        collections = _Collections(MilvusLocation.parse(self.setting))
        client = collections.client
        old = collections.read_record("manifest", "live") if collections.exists() else None
        # Without a manifest (a first build, or a write interrupted after it dropped the manifest) nothing
        # stored can be trusted: start over (the embedding cache makes that cheap).
        if (not isinstance(old, dict) or old.get("format") != FORMAT_VERSION
                or old.get("tokenizer_version") != manifest.get("tokenizer_version")
                or collections.dimension() != self.dimension):
            collections.drop()
            old = None
        if not collections.exists():
            collections.create(self.dimension)
        stored: dict[str, str] = (old or {}).get("reports", {})
        wanted = {source: _fingerprint(report) for source, report in self.reports.items()}
        changed = sorted(s for s in wanted if stored.get(s) != wanted[s])
        gone = sorted(s for s in stored if stored[s] != wanted.get(s))
        # New corpus words change how jieba cuts every passage: the BM25 side of unchanged reports is
        # re-tokenized (their vectors and records stay).
        retokenize = (sorted(s for s in wanted if s not in changed)
                      if (old or {}).get("user_words") != manifest.get("user_words") else [])
        # Drop the manifest first: a reader meanwhile finds no index rather than a half-written one.
        collections.delete_records("manifest", ["live"])
        bm25 = collections.read_record("bm25", "vocabulary") or {"terms": {}, "df": [], "passages": 0, "length": 0}
        terms: dict[str, int] = bm25["terms"]
        df: list[int] = bm25["df"]
        contributions = collections.read_records("terms") if gone or retokenize else {}
        for source in [*gone, *retokenize]:
            kinds = (collections.passages, collections.lexical, collections.units) if source in gone else (
                collections.lexical,)
            for collection in kinds:
                client.delete(collection, filter=f"source == {_quote(source)}")
            before = contributions.get(source, {"df": {}, "passages": 0, "length": 0})
            for term_id, count in before["df"].items():
                df[int(term_id)] -= count
            bm25["passages"] -= before["passages"]
            bm25["length"] -= before["length"]
        collections.delete_records("document", gone)
        collections.delete_records("terms", [*gone, *retokenize])
        tokenized: dict[str, list[Counter]] = {}
        for source in [*changed, *retokenize]:
            counts = [Counter(self.tokenizer.tokens(lexical_text(chunk)) or ["\x00"])
                      for _, chunk, *_ in self.reports[source].chunks]
            tokenized[source] = counts
            contribution: dict[str, int] = {}
            for passage in counts:
                for term in passage:
                    if term not in terms:
                        terms[term] = len(df)
                        df.append(0)
                    df[terms[term]] += 1
                    contribution[str(terms[term])] = contribution.get(str(terms[term]), 0) + 1
            length = sum(sum(c.values()) for c in counts)
            bm25["passages"] += len(counts)
            bm25["length"] += length
            collections.write_record("terms", source, {"df": contribution, "passages": len(counts), "length": length})
        avgdl = bm25["length"] / bm25["passages"] if bm25["passages"] else 1.0
        previous = bm25.get("weights_avgdl")
        if previous and abs(avgdl - previous) > AVGDL_TOLERANCE * previous:
            self._reweight(collections, avgdl, skip=set(tokenized))
        else:
            avgdl = previous or avgdl
        bm25["weights_avgdl"] = avgdl
        for number, source in enumerate(changed):
            self._insert_report(collections, self.reports[source], tokenized[source], terms, avgdl)
            if self.progress:
                self.progress(number + 1, len(changed))
        for source in retokenize:
            rows = _lexical_rows(self.reports[source], tokenized[source], terms, avgdl)
            collections.insert(collections.lexical, rows)
        collections.write_record("bm25", "vocabulary", bm25)
        units = any(r.unit_vectors is not None for r in self.reports.values())
        unit_count = sum(len(r.unit_owner) for r in self.reports.values() if r.unit_vectors is not None)
        collections.flush()
        collections.write_record("manifest", "live", {
            **manifest, "format": FORMAT_VERSION, "chunks": sum(len(r.chunks) for r in self.reports.values()),
            "units": units, "unit_count": unit_count, "reports": wanted, "store": "milvus"})
        collections.flush()
        self.inserted, self.removed = changed, gone
        written = sum(len(self.reports[s].chunks) * 2 + len(self.reports[s].unit_owner) for s in changed)
        replaced = len(set(changed) & set(gone))
        seconds = time.perf_counter() - began
        self.log(f"Milvus：写入 {len(changed)} 份报告（{written} 行，其中替换旧版 {replaced} 份），"
                 f"删除 {len(gone) - replaced} 份，{len(wanted) - len(changed)} 份未变"
                 f"（其中 {len(retokenize)} 份因语料词变化重写了 BM25 行），用时 {seconds:.1f} 秒"
                 f" / Milvus: wrote {len(changed)} reports ({written} rows, {replaced} replacing an older version),"
                 f" removed {len(gone) - replaced}, {len(wanted) - len(changed)} unchanged"
                 f" ({len(retokenize)} re-tokenized for new corpus words), {seconds:.1f} s")

    def _insert_report(self, collections: _Collections, report: ReportRecords, counts: list[Counter],
                       terms: dict[str, int], avgdl: float) -> None:
        source = report.document.source
        document = asdict(report.document)
        collections.write_record("document", source, document)
        keys = [passage_key(source, position) for position in range(len(report.chunks))]
        passages = []
        for position, (citation, chunk, line_start, line_end, page) in enumerate(report.chunks):
            passages.append({"id": keys[position], "source": source, "position": position, "citation": citation,
                             "start": chunk.start, "end": chunk.end, "text": chunk.text, "heading": chunk.heading,
                             "table_header": chunk.table_header, "kind": chunk.kind, "line_start": line_start,
                             "line_end": line_end, "page": -1 if page is None else page,
                             "dense": _floats(report.vectors[position])})
        collections.insert(collections.passages, passages)
        collections.insert(collections.lexical, _lexical_rows(report, counts, terms, avgdl))
        if report.unit_vectors is not None:
            order: Counter = Counter()
            rows = []
            for vector, owner in zip(report.unit_vectors, report.unit_owner, strict=True):
                rows.append({"owner": keys[owner], "position": order[owner], "source": source,
                             "dense": _floats(vector)})
                order[owner] += 1
            collections.insert(collections.units, rows)

    def _reweight(self, collections: _Collections, avgdl: float, skip: set[str]) -> None:
        """Rewrite the stored BM25 weights of every kept passage for a new average length."""
        rows = [row for row in collections.rows(collections.lexical, ["id", "source", "counts", "length"])
                if row["source"] not in skip]
        updated = []
        for row in rows:
            counts = {int(term): count for term, count in json.loads(row["counts"]).items()}
            updated.append({**row, "weights": bm25_weights(counts, row["length"], avgdl)})
        for start in range(0, len(updated), BATCH_ROWS):
            collections.client.upsert(collections.lexical, updated[start:start + BATCH_ROWS])


def _lexical_rows(report: ReportRecords, counts: list[Counter], terms: dict[str, int], avgdl: float) -> list[dict]:
    """The BM25 rows of one report's passages: term counts, length and document-side weights."""
    source = report.document.source
    rows = []
    for position, passage in enumerate(counts):
        by_id = {terms[term]: count for term, count in passage.items()}
        length = sum(by_id.values())
        rows.append({"id": passage_key(source, position), "source": source, "length": length,
                     "counts": json.dumps(by_id), "weights": bm25_weights(by_id, length, avgdl)})
    return rows


@contextmanager
def lite_server(data_dir: Path, log_path: Path, timeout: float = 120.0) -> Iterator[str]:
    """``milvus-lite server`` on a free loopback port with its data in ``data_dir`` and its output in ``log_path``;
    yields the server's ``milvus://`` location and stops it by process group on exit (tests, benchmarks, trying
    the server path on one machine)."""
    import signal
    import socket
    import subprocess
    import sys

    from .llm_server import free_port

    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(Path(sys.executable).parent / "milvus-lite"), "server", "--data-dir",
                                    str(data_dir), "--host", "127.0.0.1", "--port", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    raise RagError(f"milvus-lite server 启动失败，见 {log_path} / exited at start")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RagError(f"milvus-lite server {timeout:.0f} 秒内未就绪，见 {log_path}") from None
                    time.sleep(0.5)
            yield f"milvus://127.0.0.1:{port}"
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
