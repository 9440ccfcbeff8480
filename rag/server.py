"""HTTP API: REST under ``/v1``, an OpenAI-compatible chat endpoint and the Gradio UI, in one ASGI app.

    rag serve                                  # http://127.0.0.1:8000: UI at /ui/, API at /v1, docs at /docs
    RAG_API_KEY=… rag serve --host 0.0.0.0     # any other address needs a key (Bearer token)

One process and one ``ReportQA``: the UI (mounted with ``gr.mount_gradio_app``) and the API share
the loaded model and the index. Every answer, citation and ingest decision is made by ``ReportQA``;
this module only validates requests, maps errors to HTTP statuses and formats replies.

Routes (the OpenAPI schema is at ``/openapi.json``, the docs page at ``/docs``):

* ``POST /v1/search``, ``POST /v1/ask`` (JSON, or server-sent events with ``"stream": true``),
  ``GET /v1/citations/{id}``, ``GET|POST /v1/reports``, ``DELETE /v1/reports/{name}``,
  ``GET|POST /v1/index`` (a rebuild runs in the background), ``GET /v1/health``;
* ``POST /v1/chat/completions`` and ``GET /v1/models``, OpenAI-compatible (model ``report-qa``).

Bodies are the JSON contract of ``rag search --json`` / ``rag ask --json`` / ``rag cite --json``:
the ``TypedDict`` types next to each ``to_json`` (``rag/results.py``, ``rag/cite.py``) are the
response models, so the contract is written once. Errors are JSON, never a traceback:
``{"error": {"message": "中文 / English", "zh", "en", "type", "status"}}``.

Security: loopback by default; with ``RAG_API_KEY`` set (required for any other address) every
route but ``/v1/health`` wants ``Authorization: Bearer <key>`` (the UI asks for the key on a login
page; the schema and docs pages stay readable). Request bodies under ``/v1`` are size-limited, an
upload's file name is reduced to a plain name inside the corpus, and there is no CORS unless
origins are configured.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import anyio  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import APIRouter, Depends, FastAPI, File, HTTPException, Query, Request, UploadFile  # noqa: E402
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.middleware.cors import CORSMiddleware  # noqa: E402
from fastapi.responses import JSONResponse, RedirectResponse  # noqa: E402
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer  # noqa: E402
from fastapi.sse import EventSourceResponse  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402
from starlette.types import ASGIApp, Message, Receive, Scope, Send  # noqa: E402

from .api import MAX_TOP_K, MAX_UPLOAD_BYTES, ReportQA, safe_file_name  # noqa: E402
from .build import BuildReport  # noqa: E402
from .cite import CONTEXT_CHARS, CitationJSON  # noqa: E402
from .errors import NotFoundError, RagError  # noqa: E402
from .present import answer_markdown  # noqa: E402
from .results import AskJSON, AskResult, SearchJSON, SearchResult  # noqa: E402
from .retrieve import MODES  # noqa: E402

log = logging.getLogger(__name__)

API_VERSION = "v1"
MODEL_ID = "report-qa"
UI_PATH = "/ui"
DEFAULT_PORT = 8000
MAX_QUESTION_CHARS = 2000
MAX_CONTEXT_CHARS = 5000
MAX_JSON_BODY = 1024 * 1024                       # chat histories included
MAX_UPLOAD_BODY = MAX_UPLOAD_BYTES + 1024 * 1024  # the file plus multipart framing
QUERY_WORKERS = 4  # questions computed at once; the question encoder runs one at a time anyway
API_KEY_ENV = "RAG_API_KEY"
CORS_ENV = "RAG_CORS_ORIGINS"
LOOPBACK_NAMES = {"localhost"}

Mode = Literal["hybrid", "dense", "bm25"]
assert set(get_args(Mode)) == set(MODES), "the API's modes must be the retriever's"

T = TypeVar("T")
R = TypeVar("R", bound=SearchResult)


# ---------------------------------------------------------------------------------------------
# Errors: one JSON shape, a Chinese and an English message, the right status
# ---------------------------------------------------------------------------------------------

ERROR_TYPES = {400: "invalid_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
               409: "build_running", 413: "too_large", 500: "internal_error", 503: "index_unavailable"}
DEFAULT_MESSAGES = {
    400: "请求无效 / bad request",
    401: "缺少或错误的 API 密钥，请在请求头中加入 Authorization: Bearer <RAG_API_KEY> / missing or wrong API key",
    404: "未找到 / not found",
    405: "不支持该请求方法 / method not allowed",
    409: "索引正在建立，请稍后再试 / an index build is already running",
    413: "请求体过大 / request body too large",
    500: "内部错误，请查看服务器日志 / internal error, see the server log",
    503: "索引不可用 / the index is not available",
}


class ApiError(HTTPException):
    """An HTTP error whose ``detail`` is a user-facing ``中文 / English`` message."""

    def __init__(self, status: int, message: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(status_code=status, detail=message or DEFAULT_MESSAGES.get(status, str(status)),
                         headers=headers)


class ErrorDetail(BaseModel):
    """What went wrong: ``message`` is ``中文 / English``; ``zh`` and ``en`` are its two halves."""

    message: str
    zh: str
    en: str
    type: str
    status: int


class ErrorResponse(BaseModel):
    """Every error reply (the ``error`` object mirrors OpenAI's, so chat clients show ``message``)."""

    error: ErrorDetail


def split_message(message: str) -> tuple[str, str]:
    """The Chinese and English halves of a ``中文 / English`` message (the English falls back to the whole)."""
    zh, separator, en = message.rpartition(" / ")
    return (zh.strip(), en.strip()) if separator and zh.strip() and en.strip() else (message, message)


def error_body(status: int, message: str) -> dict:
    """The JSON of an error reply."""
    zh, en = split_message(message)
    return {"error": {"message": message, "zh": zh, "en": en, "type": ERROR_TYPES.get(status, "error"),
                      "status": status}}


def error_response(status: int, message: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error reply (status, JSON body, optional headers)."""
    return JSONResponse(error_body(status, message or DEFAULT_MESSAGES.get(status, str(status))),
                        status_code=status, headers=headers)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": DEFAULT_MESSAGES[status]}
    for status in (400, 401, 404, 409, 413, 503)}


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: ERROR_RESPONSES[status] for status in statuses}


def _validation_message(exc: RequestValidationError) -> str:
    problems = []
    for error in exc.errors()[:5]:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        problems.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
    return f"请求格式不正确 / invalid request: {'; '.join(problems)}"


def install_error_handlers(app: FastAPI) -> None:
    """Every error as JSON with both messages; unexpected ones logged here, never shown to the client."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc, ApiError) else None
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RagError)
    async def user_error(request: Request, exc: RagError) -> JSONResponse:
        # The library's user-facing errors: a name that does not exist, else a request it cannot serve.
        return error_response(404 if isinstance(exc, NotFoundError) else 400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, _validation_message(exc))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500)


# ---------------------------------------------------------------------------------------------
# Body size limits (a plain ASGI middleware, so the 413 is our JSON before the route reads anything)
# ---------------------------------------------------------------------------------------------

def body_limit(method: str, path: str) -> int | None:
    """Largest request body accepted on ``path``; None outside ``/v1`` (the UI has its own upload limit)."""
    if not path.startswith(f"/{API_VERSION}/"):
        return None
    if method == "POST" and path.rstrip("/") == f"/{API_VERSION}/reports":
        return MAX_UPLOAD_BODY
    return MAX_JSON_BODY


class BodyTooLarge(ApiError):
    """Raised while reading a body that turns out larger than the limit (no or a false Content-Length)."""

    def __init__(self) -> None:
        super().__init__(413)


class BodyLimitMiddleware:
    """Refuses bodies over ``body_limit``: at once when Content-Length says so, else while reading."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (limit := body_limit(scope["method"], scope["path"])) is None:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await error_response(413, f"请求体超过 {limit // (1024 * 1024)} MB / request body over "
                                      f"{limit} bytes")(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge()  # a FastAPI HTTPException: the route's body parsing re-raises it
            return message

        await self.app(scope, limited, send)


# ---------------------------------------------------------------------------------------------
# Request and response models (the result contract itself is the TypedDicts of rag.results/rag.cite)
# ---------------------------------------------------------------------------------------------

class SearchRequest(BaseModel):
    """A question, as for ``rag search``."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS, description="问题 / the question",
                       examples=["GPT-3 的参数量是多少？"])
    top_k: int = Field(5, ge=1, le=MAX_TOP_K, description="返回的段落数 / passages to return")
    mode: Mode = Field("hybrid", description="检索模式 / retrieval mode")
    sources: list[str] | None = Field(None, description="只检索这些报告（文件名） / only these report files")


class AskRequest(SearchRequest):
    """A question, as for ``rag ask``; ``stream`` asks for server-sent events."""

    stream: bool = Field(False, description="以 SSE 流式返回 / reply as server-sent events")
    generate: bool = Field(False, description="同时请大模型（RAG_LLM_BASE_URL）生成回答并逐句核实，见 `generated` / "
                                              "also a generated answer from the configured LLM, checked sentence "
                                              "by sentence (`generated`)")


class ReportEntry(BaseModel):
    """One indexed report."""

    name: str
    label: str
    title: str
    institution: str
    date: str
    also_in: list[str]


class ReportList(BaseModel):
    """The indexed reports."""

    reports: list[ReportEntry]


class LoadFailureEntry(BaseModel):
    """A corpus file the build could not read."""

    source: str
    reason: str


class BuildSummary(BaseModel):
    """What a build did (counts of reports, passages, embedded and reused texts, seconds)."""

    documents: int
    chunks: int
    embedded: int
    reused: int
    seconds: float
    skipped: bool
    failures: list[LoadFailureEntry]
    duplicates: dict[str, list[str]]

    @classmethod
    def of(cls, report: BuildReport) -> BuildSummary:
        """The summary of a ``BuildReport``."""
        return cls(documents=report.documents, chunks=report.chunks, embedded=report.embedded,
                   reused=report.reused, seconds=round(report.seconds, 3), skipped=report.skipped,
                   failures=[LoadFailureEntry(source=f.source, reason=f.reason) for f in report.failures],
                   duplicates=report.duplicates)


class ReportChange(BaseModel):
    """A report added or removed, and the build that followed."""

    name: str
    build: BuildSummary


class BuildProgress(BaseModel):
    """Embedding progress of the running build: phase 1 passages, phase 2 their sentences and table rows."""

    phase: int
    stage: str
    done: int
    total: int


class BuildState(BaseModel):
    """The latest build started through the API (an upload or a deletion rebuilds too)."""

    state: Literal["idle", "running", "succeeded", "failed"]
    kind: Literal["rebuild", "upload", "delete"] | None = None
    started_at: str | None = None
    finished_at: str | None = None
    progress: BuildProgress | None = None
    result: BuildSummary | None = None
    error: str | None = None


class IndexStatus(BaseModel):
    """Whether the index answers questions, whether a build runs, and the API's latest build."""

    ready: bool
    building: bool
    message: str | None
    reports: int | None
    build: BuildState


class IndexRequest(BaseModel):
    """Rebuild options."""

    model_config = ConfigDict(extra="forbid")

    force: bool = Field(False, description="即使语料未变也重建 / rebuild even when nothing changed")


class Health(BaseModel):
    """Liveness: the server runs; ``ready`` when the index answers questions."""

    status: Literal["ok"]
    ready: bool
    building: bool


class ModelCard(BaseModel):
    """An OpenAI model object."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    """OpenAI ``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ChatMessage(BaseModel):
    """An OpenAI chat message; ``content`` may be text or a list of parts (only text parts are read)."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """OpenAI chat completion request. The last user message is the question, earlier user messages
    the history. Sampling options (``temperature``, ``max_tokens``, …) are accepted and ignored;
    ``top_k`` and ``sources`` are this API's extensions (``extra_body`` in the openai client)."""

    model_config = ConfigDict(extra="allow")

    model: str = MODEL_ID
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    top_k: int = Field(5, ge=1, le=MAX_TOP_K)
    sources: list[str] | None = None


class ChatReply(BaseModel):
    """The assistant message: the answer with [n] markers, then the numbered sources."""

    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    """The one choice of a completion."""

    index: int = 0
    message: ChatReply
    finish_reason: Literal["stop"] = "stop"


class ChatCompletion(BaseModel):
    """OpenAI ``chat.completion``, plus ``report_qa``: the ``rag ask --json`` object (hits, sources…)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    report_qa: AskJSON


# ---------------------------------------------------------------------------------------------
# Builds started through the API
# ---------------------------------------------------------------------------------------------

STAGES = {1: "passages", 2: "sentences"}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class BuildTracker:
    """Runs the API's index builds one at a time and keeps their progress readable.

    ``ReportQA.build`` already serialises builds; this adds the refusal (409) instead of a wait, and
    the progress for ``GET /v1/index``. Builds the UI starts show as ``building`` there too.
    """

    def __init__(self, qa: ReportQA):
        self.qa = qa
        self._lock = threading.Lock()
        self._running = False
        self._state = BuildState(state="idle")

    def snapshot(self) -> BuildState:
        """A copy of the latest build's state."""
        with self._lock:
            return self._state.model_copy(deep=True)

    def begin(self, kind: Literal["rebuild", "upload", "delete"]) -> None:
        """Claim the build slot; ``ApiError(409)`` when a build runs (the API's or the UI's)."""
        with self._lock:
            if self._running or self.qa.building:
                raise ApiError(409)
            self._running = True
            self._state = BuildState(state="running", kind=kind, started_at=_now())

    def progress(self, done: int, total: int) -> None:
        """The build's progress callback. Each phase reports after every batch and ends with done == total,
        so a report after a finished phase starts the next one."""
        with self._lock:
            current = self._state.progress
            phase = 1 if current is None else current.phase
            if current is not None and current.done >= current.total:
                phase += 1
            self._state.progress = BuildProgress(phase=phase, stage=STAGES.get(phase, f"phase {phase}"),
                                                 done=done, total=total)

    def run(self, work: Callable[[Callable[[int, int], None]], BuildReport]) -> BuildReport:
        """Do ``work(progress)`` in the slot claimed by ``begin`` and record how it ended."""
        try:
            report = work(self.progress)
        except Exception as exc:
            with self._lock:
                self._state.state, self._state.finished_at = "failed", _now()
                self._state.error = str(exc) if isinstance(exc, RagError) else DEFAULT_MESSAGES[500]
                self._running = False
            if not isinstance(exc, RagError):
                log.error("index build failed", exc_info=exc)
            raise
        with self._lock:
            self._state.state, self._state.finished_at = "succeeded", _now()
            self._state.result = BuildSummary.of(report)
            self._running = False
        return report

    def start(self, force: bool) -> BuildState:
        """Rebuild in a background thread; returns the state right after it started."""
        self.begin("rebuild")

        def work() -> None:
            try:
                self.run(lambda progress: self.qa.build(force=force, progress=progress))
            except Exception:  # recorded in the state (and logged when unexpected)
                pass

        threading.Thread(target=work, name="rag-api-build", daemon=True).start()
        return self.snapshot()


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------

def chat_turns(messages: Sequence[ChatMessage]) -> tuple[str, list[str]]:
    """The question (the last user message) and the history (the user messages before it, oldest first)."""
    texts = [_message_text(m) for m in messages if m.role == "user"]
    if not texts or not texts[-1].strip():
        raise ApiError(400, "没有用户问题：最后一条 user 消息为空或不存在 / no user message to answer")
    return texts[-1], texts[:-1]


def _message_text(message: ChatMessage) -> str:
    if isinstance(message.content, str):
        return message.content
    if isinstance(message.content, list):
        return "\n".join(str(part.get("text", "")) for part in message.content if part.get("type") == "text")
    return ""


_PIECE = re.compile(r"[^。！？!?\n]*(?:[。！？!?]+|\n|$)")


def pieces(text: str) -> list[str]:
    """``text`` cut after sentence ends and line breaks, for streaming (joined, they give ``text`` back)."""
    return [piece for piece in _PIECE.findall(text) if piece]


def sse_event(data: Any, event: str | None = None) -> bytes:
    """One server-sent event; ``data`` is sent as JSON (one line), or as-is when it is a string."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return ((f"event: {event}\n" if event else "") + f"data: {text}\n\n").encode()


class Service:
    """The API's state: the ``ReportQA``, its build tracker and the pool that computes answers."""

    def __init__(self, qa: ReportQA, workers: int = QUERY_WORKERS):
        self.qa = qa
        self.builds = BuildTracker(qa)
        self.workers = workers
        self._limiter: anyio.CapacityLimiter | None = None

    async def compute(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking pipeline work in a worker thread, at most ``workers`` at once (the event loop
        stays free for the UI, health checks and streams)."""
        if self._limiter is None:  # created on the server's event loop
            self._limiter = anyio.CapacityLimiter(self.workers)
        return await anyio.to_thread.run_sync(partial(function, *args, **kwargs), limiter=self._limiter)

    def require_index(self) -> None:
        """``ApiError(503)`` unless the index answers questions (loads it on first use: call in a worker)."""
        status = self.qa.index_status()
        if status:
            raise ApiError(503, status)

    def known_sources(self, sources: list[str] | None) -> list[str] | None:
        """The report filter, refused with 404 when it names a report that is not indexed."""
        if not sources:
            return None
        known = self.qa.reports()
        unknown = [s for s in sources if s not in known]
        if unknown:
            raise ApiError(404, f"未找到报告 {', '.join(unknown)} / unknown report(s) in sources")
        return sources

    def _query(self, run: Callable[[], R]) -> R:
        self.require_index()
        try:
            result = run()
        except RagError as exc:  # the index became unusable since the check (or never loaded)
            raise ApiError(503 if self.qa.index_status() else 400, str(exc)) from exc
        if result.error:
            raise ApiError(400, result.error)
        return result

    async def answer(self, question: str, top_k: int, mode: str, sources: list[str] | None,
                     history: Sequence[str] = (), generate: bool = False) -> AskResult:
        """``ReportQA.ask`` with the API's checks: 503 without an index, 404 for unknown reports,
        400 for an unusable question; one trip to a worker thread. ``history`` (a chat's earlier
        questions) turns a follow-up into the standalone question it stands for (``rag.followup``).
        """
        def run() -> AskResult:
            return self.qa.ask(question, top_k=top_k, mode=mode, sources=self.known_sources(sources),
                               history=list(history) or None, generate=generate)

        return await self.compute(self._query, run)

    async def search(self, request: SearchRequest) -> SearchResult:
        """``ReportQA.search`` with the same checks as ``answer``."""
        def run() -> SearchResult:
            return self.qa.search(request.query, top_k=request.top_k, mode=request.mode,
                                  sources=self.known_sources(request.sources))

        return await self.compute(self._query, run)

    async def index_status(self) -> IndexStatus:
        """Readiness, build state and report count.

        Not queued behind questions (anyio's own thread pool, not ``compute``): with the index loaded
        this is cheap, and a build's progress must stay readable while the workers are busy.
        """
        def status() -> IndexStatus:
            message = self.qa.index_status()
            return IndexStatus(ready=message is None, building=self.qa.building, message=message,
                               reports=None if message else len(self.qa.reports()), build=self.builds.snapshot())

        return await anyio.to_thread.run_sync(status)


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def create_app(qa: ReportQA, *, api_key: str | None = None, cors_origins: Sequence[str] = (), ui: bool = True,
               workers: int = QUERY_WORKERS) -> FastAPI:
    """The ASGI app: REST and OpenAI-compatible routes under ``/v1``, docs at ``/docs``, the UI at ``/ui/``.

    ``api_key``: required as a Bearer token on every route but ``/v1/health`` (and as the UI's login
    password). ``cors_origins``: browser origins allowed to call the API (none by default).
    """
    service = Service(qa, workers=workers)
    app = FastAPI(title="报告问答 API", version="1", summary="Cited answers from Chinese analyst reports",
                  description="REST 与 OpenAI 兼容接口。错误一律为 JSON："
                              "`{\"error\": {\"message\": \"中文 / English\", …}}`。",
                  docs_url="/docs", redoc_url=None, openapi_url="/openapi.json")
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"])

    bearer = HTTPBearer(auto_error=False, description=f"${API_KEY_ENV}")

    def require_key(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        given = credentials.credentials if credentials else ""
        if api_key is not None and not hmac.compare_digest(given.encode(), api_key.encode()):
            raise ApiError(401, headers={"WWW-Authenticate": "Bearer"})

    public = APIRouter(prefix=f"/{API_VERSION}")
    guarded = APIRouter(prefix=f"/{API_VERSION}", dependencies=[Depends(require_key)] if api_key else [],
                        responses=_responses(401) if api_key else {})

    @public.get("/health", response_model=Health, tags=["index"], summary="存活与就绪 / liveness and readiness")
    async def health() -> Health:
        message = await anyio.to_thread.run_sync(qa.index_status)
        return Health(status="ok", ready=message is None, building=qa.building)

    @guarded.post("/search", response_model=SearchJSON, tags=["questions"], responses=_responses(400, 404, 413, 503),
                  summary="检索段落 / ranked, cited passages (the `rag search --json` object)")
    async def search(request: SearchRequest) -> SearchJSON:
        return (await service.search(request)).to_json()

    @guarded.post("/ask", response_model=AskJSON, tags=["questions"], responses={
        **_responses(400, 404, 413, 503),
        200: {"description": "`rag ask --json` 的对象；`stream: true` 时为 SSE：`hits`、若干 `delta`、`result`、`done` "
                             "/ the `rag ask --json` object, or with `stream: true` server-sent events",
              "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
        summary="抽取式回答 / extractive answer with [n] markers")
    async def ask(request: AskRequest):
        result = await service.answer(request.query, request.top_k, request.mode, request.sources,
                                      generate=request.generate)
        payload = result.to_json()
        # With generate, only the checked generated text is streamed (never the model's unchecked draft).
        shown = payload["generated"]["text"] if "generated" in payload and payload["generated"]["shown"] else None
        if not request.stream:
            return payload

        async def events() -> AsyncIterator[bytes]:
            found: dict[str, Any] = {"query": payload["query"], "hits": payload["hits"]}
            if "warning" in payload:
                found["warning"] = payload["warning"]
            yield sse_event(found, "hits")
            for piece in pieces(shown or payload["answer"]):
                yield sse_event({"text": piece}, "delta")
            yield sse_event(payload, "result")
            yield sse_event({}, "done")

        return EventSourceResponse(events(), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @guarded.get("/citations/{citation}", response_model=CitationJSON, tags=["citations"],
                 responses=_responses(400, 404, 503), summary="引用查询（含上下文） / look a citation up, with context")
    async def citation(citation: str = PathParam(description="引用编号 / citation ID, e.g. "  # noqa: B008
                                                 "004_e0d667138c034a95.txt:L66-L81"),
                       context: int = Query(CONTEXT_CHARS, ge=0, le=MAX_CONTEXT_CHARS,  # noqa: B008
                                            description="上下文字数 / context characters each side")) -> CitationJSON:
        def look_up() -> CitationJSON:
            service.require_index()
            return qa.cite(citation).to_json(context)  # NotFoundError → 404, other RagError → 400

        return await service.compute(look_up)

    @guarded.get("/reports", response_model=ReportList, tags=["reports"], responses=_responses(503),
                 summary="已索引的报告 / indexed reports")
    async def reports() -> ReportList:
        def listing() -> ReportList:
            service.require_index()
            return ReportList(reports=[
                ReportEntry(name=source, label=doc.label, title=doc.info.title, institution=doc.info.institution,
                            date=doc.info.date, also_in=doc.duplicates)
                for source, doc in sorted(qa.store.documents.items())])

        return await service.compute(listing)

    @guarded.post("/reports", response_model=ReportChange, status_code=201, tags=["reports"],
                  responses=_responses(400, 409, 413), summary="上传报告并增量建索引 / upload a report and index it")
    async def add_report(file: UploadFile = File(description="TXT、Markdown 或 PDF，不超过 20 MB")) -> ReportChange:  # noqa: B008
        if file.size is not None and file.size > MAX_UPLOAD_BYTES:
            raise ApiError(413, f"文件超过 {MAX_UPLOAD_BYTES // (1024 * 1024)} MB / file too large")
        name = safe_file_name(file.filename or "")  # RagError → 400
        service.builds.begin("upload")
        folder = Path(tempfile.mkdtemp(prefix="rag-upload-"))

        def work(progress: Callable[[int, int], None]) -> BuildReport:
            path = folder / name  # the report's own name: its type is read from the suffix
            with path.open("wb") as target:
                shutil.copyfileobj(file.file, target)
            return qa.add_report(path, name=name, progress=progress)

        try:
            report = await anyio.to_thread.run_sync(service.builds.run, work)  # RagError → 400
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return ReportChange(name=name, build=BuildSummary.of(report))

    @guarded.delete("/reports/{name}", response_model=ReportChange, tags=["reports"],
                    responses=_responses(400, 404, 409), summary="删除报告并重建索引 / remove a report and rebuild")
    async def remove_report(name: str) -> ReportChange:
        service.builds.begin("delete")
        report = await anyio.to_thread.run_sync(  # NotFoundError → 404, other RagError → 400
            service.builds.run, lambda progress: qa.remove_report(name, progress=progress))
        return ReportChange(name=name, build=BuildSummary.of(report))

    @guarded.get("/index", response_model=IndexStatus, tags=["index"],
                 summary="索引状态与建索引进度 / index and build status")
    async def index_status() -> IndexStatus:
        return await service.index_status()

    @guarded.post("/index", response_model=IndexStatus, status_code=202, tags=["index"], responses=_responses(409),
                  summary="后台重建索引 / rebuild the index in the background")
    async def rebuild(request: IndexRequest | None = None) -> IndexStatus:
        service.builds.start(force=bool(request and request.force))
        return await service.index_status()

    def model_card() -> ModelCard:
        return ModelCard(id=MODEL_ID, created=0, owned_by="report-qa")

    @guarded.get("/models", response_model=ModelList, tags=["openai"], summary="OpenAI: 模型列表 / list models")
    async def models() -> ModelList:
        return ModelList(data=[model_card()])

    @guarded.get("/models/{model}", response_model=ModelCard, tags=["openai"], responses=_responses(404),
                 summary="OpenAI: 模型信息 / retrieve a model")
    async def model(model: str) -> ModelCard:
        if model != MODEL_ID:
            raise ApiError(404, f"未知模型 {model}，可用：{MODEL_ID} / unknown model")
        return model_card()

    @guarded.post("/chat/completions", response_model=ChatCompletion, tags=["openai"], responses={
        **_responses(400, 404, 413, 503),
        200: {"description": "`chat.completion`，或 `stream: true` 时为 `chat.completion.chunk` 的 SSE 流"
                             "（以 `[DONE]` 结束）",
              "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
        summary="OpenAI 兼容对话 / OpenAI-compatible chat completion")
    async def chat(request: ChatRequest):
        question, history = chat_turns(request.messages)
        if len(question) > MAX_QUESTION_CHARS:
            raise ApiError(400, f"问题超过 {MAX_QUESTION_CHARS} 字 / question too long")
        result = await service.answer(question, request.top_k, "hybrid", request.sources, history)
        content = answer_markdown(result)
        identity = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": MODEL_ID}
        if not request.stream:
            return {**identity, "object": "chat.completion", "report_qa": result.to_json(),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": "stop"}]}

        def chunk(delta: dict, finish: str | None = None, **extra: Any) -> bytes:
            return sse_event({**identity, "object": "chat.completion.chunk",
                              "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})

        async def events() -> AsyncIterator[bytes]:
            yield chunk({"role": "assistant", "content": ""})
            for piece in pieces(content):
                yield chunk({"content": piece})
            yield chunk({}, "stop", report_qa=result.to_json())
            yield sse_event("[DONE]")

        return EventSourceResponse(events(), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    app.include_router(public)
    app.include_router(guarded)
    if ui:
        from . import webui

        @app.get("/", include_in_schema=False)
        async def root() -> RedirectResponse:
            return RedirectResponse(f"{UI_PATH}/")

        app.state.ui = webui.mount(app, qa, UI_PATH, password=api_key)
    return app


# ---------------------------------------------------------------------------------------------
# Serving
# ---------------------------------------------------------------------------------------------

class Server(uvicorn.Server):
    """uvicorn's server for this app: on stop, the UI's long-lived event streams (a browser tab's
    heartbeat) are ended first, so stopping neither waits for them nor cancels them with a traceback."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Close the mounted UI, then shut down as uvicorn does."""
        ui = getattr(getattr(self.config.app, "state", None), "ui", None)
        if ui is not None:
            ui.close(verbose=False)
        await super().shutdown(sockets)


def make_server(app: FastAPI, host: str = "127.0.0.1", port: int = DEFAULT_PORT, log_level: str = "info") -> Server:
    """The uvicorn server of ``rag serve`` (no Server header, no proxy headers trusted); tests and the
    load script run the same one (``run(sockets=[bound_socket()])``)."""
    return Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, server_header=False,
                                 proxy_headers=False, timeout_graceful_shutdown=5))


def check_binding(host: str, api_key: str | None) -> None:
    """Refuse (``RagError``) to listen beyond loopback without an API key."""
    if not _is_loopback(host) and not api_key:
        raise RagError(f"监听 {host} 会让其他机器访问本服务，请先设置环境变量 {API_KEY_ENV}（API 密钥）/ "
                       f"listening on {host} needs an API key: set {API_KEY_ENV}")


def startup_lines(host: str, port: int, api_key: str | None, cors_origins: Sequence[str]) -> list[str]:
    """What ``rag serve`` says at start: where it listens, and whether a key is required."""
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{port}"
    lines = [f"报告问答服务 / serving: 界面 UI {base}{UI_PATH}/ · API {base}/{API_VERSION} · 文档 docs {base}/docs"]
    if api_key:
        lines.append(f"需要 API 密钥：除 /{API_VERSION}/health 外的请求须带 Authorization: Bearer ${API_KEY_ENV}；"
                     f"界面登录密码同为该密钥 / an API key is required on every route but /{API_VERSION}/health")
    else:
        lines.append("仅本机可访问，未设置 API 密钥 / loopback only, no API key")
    if not _is_loopback(host):
        lines.append(f"警告：监听 {host}，其他机器可以访问 / warning: listening on {host}, "
                     "reachable from other machines")
    if cors_origins:
        lines.append(f"允许跨域来源 / CORS origins: {', '.join(cors_origins)}")
    return lines


def serve(qa: ReportQA, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, api_key: str | None = None,
          cors_origins: Sequence[str] = (), echo: Callable[[str], None] = print) -> None:
    """Run ``rag serve`` until interrupted: load the model and index first, then serve UI and API.

    ``api_key`` defaults to ``$RAG_API_KEY``; binding a non-loopback ``host`` without one raises ``RagError``.
    """
    check_binding(host, api_key)
    status = qa.index_status()  # loads the model (and the index) before the first request
    if status:
        echo(f"注意 / note: {status}")
    app = create_app(qa, api_key=api_key, cors_origins=cors_origins)
    for line in startup_lines(host, port, api_key, cors_origins):
        echo(line)
    make_server(app, host, port).run()


def bound_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (port 0: a free one), for ``uvicorn.Server.run(sockets=…)``:
    tests and the load script bind first, so no other process can take the port in between."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock
