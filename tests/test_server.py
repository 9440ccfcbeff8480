"""The HTTP API on a real uvicorn server over loopback, called the way its users call it: httpx for
REST and server-sent events, the official ``openai`` client for the chat endpoint, ``gradio_client``
for the UI mounted in the same process.

Servers run in a thread of this process on a socket bound to a free loopback port (stopped at the
end of their module); ``rag serve`` itself is started once as a subprocess. The seed reports indexed
with the tiny model serve the read-only routes; uploads, deletions and builds get a writable
``ReportQA`` of their own. Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
from conftest import ROOT, SEED_FILES, copy_corpus
from gradio_client import Client

from rag import server
from rag.api import MAX_UPLOAD_BYTES, ReportQA
from rag.cite import CitationJSON
from rag.errors import NotFoundError, RagError
from rag.results import AskJSON, HitJSON, SearchJSON

QUESTION = "GPT-3 的参数量是多少？"
M6_REPORT = "004_e0d667138c034a95.txt"
KEY = "test-key"
STAR_REPORT = ("# 星河大模型专题报告\n\n示例证券 2024年6月1日\n\n"
               "星河大模型由北辰科技于2024年5月20日正式发布，参数量为七千亿。\n\n"
               "北辰科技表示，星河大模型将首先用于智能客服和代码生成。\n").encode()


@contextmanager
def running(app) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on a free loopback port; yields its base URL."""
    sock = server.bound_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    instance = server.make_server(app, "127.0.0.1", port, log_level="warning")
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not instance.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        instance.should_exit = True
        thread.join(timeout=30)
        sock.close()
        assert not thread.is_alive(), "server did not stop"


def chat_client(url: str, key: str = "unused") -> openai.OpenAI:
    # No retries: a refused request must surface at once (the client retries 5xx by default).
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def sse_events(response: httpx.Response) -> list[tuple[str | None, str]]:
    """(event, data) pairs of a server-sent event stream."""
    events, event, data = [], None, []
    for line in response.iter_lines():
        if not line:
            if data:
                events.append((event, "\n".join(data)))
            event, data = None, []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
    return events


def assert_error(response: httpx.Response, status: int, *parts: str) -> dict:
    """A JSON error with both messages and the expected status; returns its ``error`` object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["status"] == status and error["message"] == f"{error['zh']} / {error['en']}"
    assert any("\u4e00" <= ch <= "\u9fff" for ch in error["zh"]), error
    assert "Traceback" not in response.text
    for part in parts:
        assert part in error["message"], error
    return error


@pytest.fixture(scope="module")
def api(tiny_qa) -> Iterator[str]:
    """The full app (API and UI) over the seed reports, loopback, no key."""
    with running(server.create_app(tiny_qa)) as url:
        yield url


@pytest.fixture(scope="module")
def http(api) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def keyed(tiny_qa) -> Iterator[str]:
    """The same, with an API key."""
    with running(server.create_app(tiny_qa, api_key=KEY)) as url:
        yield url


@pytest.fixture(scope="module")
def writable(tmp_path_factory, tiny_model) -> ReportQA:
    """A ReportQA of its own over copies of two seed reports, for uploads, deletions and builds."""
    base = tmp_path_factory.mktemp("api-writable")
    qa = ReportQA(corpus_dir=copy_corpus(base / "corpus", SEED_FILES[3:5]), index_dir=base / "index",
                  model=tiny_model)
    qa.build()
    return qa


@pytest.fixture(scope="module")
def admin(writable) -> Iterator[httpx.Client]:
    with running(server.create_app(writable, ui=False)) as url, httpx.Client(base_url=url, timeout=120) as client:
        yield client


# --- health, docs, routing ---------------------------------------------------------------------

def test_health_and_ui_share_the_server(http, api):
    assert http.get("/v1/health").json() == {"status": "ok", "ready": True, "building": False}
    root = http.get("/", follow_redirects=False)
    assert root.status_code in (302, 307) and root.headers["location"] == "/ui/"
    assert http.get("/ui/").status_code == 200
    ui = Client(f"{api}/ui/", verbose=False)
    try:
        from_ui = ui.predict(QUESTION, 5, None, api_name="/ask")
    finally:
        ui.close()  # its open event stream would hold the server's shutdown
    from_api = http.post("/v1/ask", json={"query": QUESTION}).json()
    assert from_ui["answer"] == from_api["answer"] and from_ui["hits"] == from_api["hits"]


def test_openapi_publishes_the_cli_contract(http):
    schema = http.get("/openapi.json").json()
    assert {"/v1/search", "/v1/ask", "/v1/citations/{citation}", "/v1/reports", "/v1/reports/{name}", "/v1/index",
            "/v1/health", "/v1/chat/completions", "/v1/models"} <= set(schema["paths"])
    components = schema["components"]["schemas"]
    for contract in (HitJSON, SearchJSON, AskJSON, CitationJSON):
        assert set(components[contract.__name__]["properties"]) == set(contract.__annotations__), contract
    optional = {"error", "warning", "standalone", "generated"}  # NotRequired (generated: AskJSON only)
    assert set(components["AskJSON"]["required"]) == set(AskJSON.__annotations__) - optional
    assert set(components["SearchJSON"]["required"]) == set(SearchJSON.__annotations__) - optional
    ask = schema["paths"]["/v1/ask"]["post"]["responses"]
    assert {"400", "404", "503"} <= set(ask) and "text/event-stream" in ask["200"]["content"]
    assert http.get("/docs").status_code == 200


def test_unknown_routes_and_methods_are_json_errors(http):
    assert_error(http.get("/v1/nothing"), 404)
    assert_error(http.put("/v1/search", json={}), 405)


# --- search and ask ----------------------------------------------------------------------------

def test_search_is_the_cli_json(http, tiny_qa):
    response = http.post("/v1/search", json={"query": QUESTION, "top_k": 3, "mode": "hybrid"})
    assert response.status_code == 200
    assert response.json() == tiny_qa.search(QUESTION, top_k=3).to_json()
    assert len(response.json()["hits"]) == 3


def test_search_filters_by_report(http):
    hits = http.post("/v1/search", json={"query": QUESTION, "sources": [M6_REPORT]}).json()["hits"]
    assert hits and {hit["source"] for hit in hits} == {M6_REPORT}
    assert_error(http.post("/v1/search", json={"query": QUESTION, "sources": ["nope.txt"]}), 404, "nope.txt")


@pytest.mark.parametrize("body", [
    {"query": ""}, {"query": QUESTION, "top_k": 0}, {"query": QUESTION, "top_k": 51},
    {"query": QUESTION, "mode": "magic"}, {"query": QUESTION, "colour": "blue"}, {"top_k": 3},
    {"query": "问" * (server.MAX_QUESTION_CHARS + 1)},
])
def test_bad_requests_are_400(http, body):
    assert_error(http.post("/v1/search", json=body), 400, "请求格式不正确")


def test_unusable_question_and_broken_json_are_400(http):
    assert_error(http.post("/v1/ask", json={"query": "   "}), 400, "问题为空")
    assert_error(http.post("/v1/search", content=b"{not json", headers={"content-type": "application/json"}), 400)


def test_ask_is_the_cli_json(http, tiny_qa):
    response = http.post("/v1/ask", json={"query": QUESTION, "top_k": 3})
    assert response.status_code == 200
    body = response.json()
    assert body == tiny_qa.ask(QUESTION, top_k=3).to_json()
    assert "[1]" in body["answer"] and body["sources"][0]["marker"] == 1


def test_ask_streams_server_sent_events(api, http):
    expected = http.post("/v1/ask", json={"query": QUESTION}).json()
    with httpx.stream("POST", f"{api}/v1/ask", json={"query": QUESTION, "stream": True}, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    names = [name for name, _ in events]
    assert names[0] == "hits" and names[-2:] == ["result", "done"] and "delta" in names
    assert json.loads(events[0][1])["hits"] == expected["hits"]
    assert "".join(json.loads(data)["text"] for name, data in events if name == "delta") == expected["answer"]
    assert json.loads(events[-2][1]) == expected


def test_stream_errors_are_plain_json_before_streaming(api):
    with httpx.stream("POST", f"{api}/v1/ask", json={"query": " ", "stream": True}, timeout=60) as response:
        response.read()
        assert_error(response, 400, "问题为空")


# --- citations and reports ---------------------------------------------------------------------

def test_citation_lookup_with_context(http, tiny_qa):
    hit = http.post("/v1/search", json={"query": "M6-OFA 是什么时候发布的？", "top_k": 1}).json()["hits"][0]
    view = http.get(f"/v1/citations/{hit['citation']}", params={"context": 50}).json()
    assert view == tiny_qa.cite(hit["citation"]).to_json(50)
    assert view["text"] == hit["text"] and view["lines"] == hit["lines"]
    assert 0 < len(view["before"]) <= 50 or view["start"] == 0
    assert http.get(f"/v1/citations/{hit['citation']}", params={"context": 0}).json()["before"] == ""


def test_citation_errors(http):
    assert_error(http.get("/v1/citations/nope.txt:L1-L2"), 404, "未找到报告")
    assert_error(http.get(f"/v1/citations/{M6_REPORT}:L900000-L900001"), 404, "行号超出范围")
    assert_error(http.get("/v1/citations/not-a-citation"), 400, "引用编号格式不正确")
    assert_error(http.get(f"/v1/citations/{M6_REPORT}:L9-L3"), 400)
    assert_error(http.get(f"/v1/citations/{M6_REPORT}:L1-L2", params={"context": -1}), 400)


def test_reports_lists_the_index(http, tiny_qa):
    reports = http.get("/v1/reports").json()["reports"]
    assert [r["name"] for r in reports] == SEED_FILES
    assert {r["name"]: r["label"] for r in reports} == tiny_qa.reports()


# --- limits, CORS --------------------------------------------------------------------------------

def test_oversized_bodies_are_413(http):
    big = json.dumps({"query": "x" * (server.MAX_JSON_BODY + 10)}).encode()
    assert_error(http.post("/v1/search", content=big, headers={"content-type": "application/json"}), 413)

    def chunked():  # no Content-Length: the limit applies while reading
        for _ in range(server.MAX_JSON_BODY // 65536 + 2):
            yield b" " * 65536
    assert_error(http.post("/v1/search", content=chunked(), headers={"content-type": "application/json"}), 413)


def test_no_cors_unless_configured(http, tiny_qa):
    origin = {"Origin": "http://portal.example"}
    assert "access-control-allow-origin" not in http.get("/v1/health", headers=origin).headers
    preflight = {**origin, "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in http.options("/v1/search", headers=preflight).headers
    with running(server.create_app(tiny_qa, ui=False, cors_origins=["http://portal.example"])) as url:
        allowed = httpx.options(f"{url}/v1/search", headers=preflight, timeout=30)
        assert allowed.headers["access-control-allow-origin"] == "http://portal.example"
        other = httpx.options(f"{url}/v1/search", headers={**preflight, "Origin": "http://evil.example"}, timeout=30)
        assert "access-control-allow-origin" not in other.headers


# --- OpenAI-compatible -------------------------------------------------------------------------

def test_models(api):
    client = chat_client(api)
    assert [m.id for m in client.models.list()] == [server.MODEL_ID]
    assert client.models.retrieve(server.MODEL_ID).id == server.MODEL_ID
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_chat_completion(api, tiny_qa):
    completion = chat_client(api).chat.completions.create(
        model=server.MODEL_ID, messages=[{"role": "user", "content": QUESTION}])
    content = completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop" and completion.model == server.MODEL_ID
    expected = tiny_qa.ask(QUESTION)
    assert expected.answer in content and "[1]" in content
    assert "来源：" in content and f"- [1] {expected.sources[0].document.label}" in content
    assert completion.model_extra["report_qa"] == expected.to_json()


def test_chat_completion_streams(api):
    client = chat_client(api)
    messages = [{"role": "user", "content": QUESTION}]
    whole = client.chat.completions.create(model=server.MODEL_ID, messages=messages)
    chunks = list(client.chat.completions.create(model=server.MODEL_ID, messages=messages, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len(chunks) > 3
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks[-1:]] == ["stop"]
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert chunks[-1].model_extra["report_qa"] == whole.model_extra["report_qa"]
    assert len({c.id for c in chunks}) == 1


def test_chat_answers_the_last_user_message(api):
    messages = [{"role": "system", "content": "你是研究助理"},
                {"role": "user", "content": "M6-OFA 是什么时候发布的？"},
                {"role": "assistant", "content": "2022年1月[1]"},
                {"role": "user", "content": [{"type": "text", "text": QUESTION}]}]
    completion = chat_client(api).chat.completions.create(model=server.MODEL_ID, messages=messages,
                                                          extra_body={"top_k": 2, "sources": [M6_REPORT]})
    report = completion.model_extra["report_qa"]
    assert report["query"] == QUESTION
    assert len(report["hits"]) == 2 and {hit["source"] for hit in report["hits"]} == {M6_REPORT}


def test_chat_errors_reach_the_client_in_both_languages(api):
    client = chat_client(api)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=server.MODEL_ID, messages=[{"role": "assistant", "content": "你好"}])
    assert "没有用户问题" in refused.value.message and "no user message" in refused.value.message
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=server.MODEL_ID, messages=[])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=server.MODEL_ID, messages=[{"role": "user", "content": QUESTION}],
                                       extra_body={"sources": ["nope.txt"]})


# --- API key -----------------------------------------------------------------------------------

def test_key_guards_every_route_but_health(keyed):
    assert httpx.get(f"{keyed}/v1/health", timeout=30).status_code == 200
    for method, path, body in [("POST", "/v1/search", {"query": QUESTION}), ("POST", "/v1/ask", {"query": QUESTION}),
                               ("GET", f"/v1/citations/{M6_REPORT}:L1-L2", None), ("GET", "/v1/reports", None),
                               ("DELETE", "/v1/reports/nope.txt", None), ("GET", "/v1/index", None),
                               ("POST", "/v1/index", None), ("GET", "/v1/models", None),
                               ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
            response = httpx.request(method, f"{keyed}{path}", json=body, headers=headers, timeout=30)
            assert_error(response, 401, "API 密钥")
            assert response.headers["www-authenticate"] == "Bearer"
    authorised = {"Authorization": f"Bearer {KEY}"}
    assert httpx.post(f"{keyed}/v1/search", json={"query": QUESTION}, headers=authorised, timeout=30).status_code == 200


def test_key_with_the_openai_client_and_the_ui(keyed):
    assert chat_client(keyed, KEY).chat.completions.create(
        model=server.MODEL_ID, messages=[{"role": "user", "content": QUESTION}]).choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        chat_client(keyed, "wrong").models.list()
    assert httpx.get(f"{keyed}/ui/config", timeout=30).status_code == 401  # the UI wants the key as password
    ui = Client(f"{keyed}/ui/", auth=("anyone", KEY), verbose=False)
    try:
        assert "[1]" in ui.predict(QUESTION, api_name="/ask")["answer"]
    finally:
        ui.close()


def test_non_loopback_binding_needs_a_key():
    with pytest.raises(RagError, match="RAG_API_KEY"):
        server.check_binding("0.0.0.0", None)
    server.check_binding("0.0.0.0", "secret")
    for loopback in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        server.check_binding(loopback, None)
    assert any("API 密钥" in line for line in server.startup_lines("0.0.0.0", 8000, "secret", []))


# --- no index yet ----------------------------------------------------------------------------------

def test_missing_index_is_503(tmp_path, tiny_model):
    qa = ReportQA(corpus_dir=copy_corpus(tmp_path / "corpus", [M6_REPORT]), index_dir=tmp_path / "index",
                  model=tiny_model)
    with running(server.create_app(qa, ui=False)) as url, httpx.Client(base_url=url, timeout=60) as http:
        assert http.get("/v1/health").json() == {"status": "ok", "ready": False, "building": False}
        for response in (http.post("/v1/search", json={"query": QUESTION}),
                         http.post("/v1/ask", json={"query": QUESTION, "stream": True}),
                         http.get(f"/v1/citations/{M6_REPORT}:L1-L2"), http.get("/v1/reports")):
            assert_error(response, 503, "rag index")
        with pytest.raises(openai.InternalServerError) as unavailable:
            chat_client(url).chat.completions.create(model=server.MODEL_ID,
                                                     messages=[{"role": "user", "content": QUESTION}])
        assert unavailable.value.status_code == 503
        status = http.get("/v1/index").json()
        assert not status["ready"] and status["message"] and status["reports"] is None
        assert http.post("/v1/index", json={}).status_code == 202  # the API can build the first index
        wait_for_build(http)
        assert http.post("/v1/search", json={"query": QUESTION}).status_code == 200


# --- uploads, deletions, builds (writable corpus) ------------------------------------------------

def wait_for_build(http: httpx.Client, limit: float = 120) -> dict:
    """Poll GET /v1/index until the API's build has ended; returns the final status."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        status = http.get("/v1/index").json()
        if status["build"]["state"] != "running" and not status["building"]:
            return status
        time.sleep(0.1)
    raise AssertionError("build did not finish")


def corpus_names(qa: ReportQA) -> set[str]:
    return {p.name for p in qa.corpus_dir.iterdir()}


def test_upload_indexes_a_report_and_delete_removes_it(admin, writable):
    response = admin.post("/v1/reports", files={"file": ("星河报告.md", STAR_REPORT, "text/markdown")})
    assert response.status_code == 201, response.text
    change = response.json()
    assert change["name"] == "星河报告.md" and change["build"]["documents"] == 3
    assert (writable.corpus_dir / "星河报告.md").is_file()
    status = admin.get("/v1/index").json()["build"]
    assert status["kind"] == "upload" and status["state"] == "succeeded"
    progress = status["progress"]  # passages, then their sentences, were embedded: two phases
    assert (progress["phase"], progress["stage"]) == (2, "sentences") and progress["done"] == progress["total"] > 0
    found = admin.post("/v1/ask", json={"query": "星河大模型是什么时候发布的？", "sources": ["星河报告.md"]}).json()
    assert found["sources"][0]["citation"].startswith("星河报告.md:") and "2024年5月20日" in found["answer"]
    assert "星河报告.md" in [r["name"] for r in admin.get("/v1/reports").json()["reports"]]

    removed = admin.delete("/v1/reports/星河报告.md")
    assert removed.status_code == 200 and removed.json()["build"]["documents"] == 2
    assert not (writable.corpus_dir / "星河报告.md").exists()
    assert "星河报告.md" not in [r["name"] for r in admin.get("/v1/reports").json()["reports"]]
    assert_error(admin.post("/v1/search", json={"query": "星河", "sources": ["星河报告.md"]}), 404)
    assert_error(admin.delete("/v1/reports/星河报告.md"), 404, "未找到报告")


@pytest.mark.parametrize(("name", "body", "status", "message"), [
    ("report.exe", b"MZ\x90\x00 not a report", 400, "不支持的文件类型"),
    ("empty.txt", b"", 400, "文件为空"),
    ("..", b"text", 400, "文件名无效"),
    ("broken.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >>\nnot a pdf\n%%EOF", 400, "PDF"),
])
def test_unusable_uploads_are_refused(admin, writable, name, body, status, message):
    before = corpus_names(writable)
    assert_error(admin.post("/v1/reports", files={"file": (name, body, "application/octet-stream")}), status, message)
    assert corpus_names(writable) == before
    assert admin.post("/v1/search", json={"query": QUESTION}).status_code == 200


def test_oversized_upload_is_413(admin, writable):
    before = corpus_names(writable)
    assert_error(admin.post("/v1/reports", files={"file": ("big.txt", b"x" * (MAX_UPLOAD_BYTES + 1))}), 413)
    assert corpus_names(writable) == before


def test_announced_oversized_body_is_refused_before_it_is_sent(admin):
    # Raw HTTP: only the headers go out, announcing more than the upload limit; the reply comes at once.
    host, port = admin.base_url.host, admin.base_url.port
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(f"POST /v1/reports HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                     f"Content-Length: {server.MAX_UPLOAD_BODY + 1}\r\n\r\n".encode())
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["error"]["type"] == "too_large"


def test_upload_names_cannot_leave_the_corpus(admin, writable):
    corpus = writable.corpus_dir.resolve()
    body = "# 越界测试报告\n\n天枢大模型由示例科技于2024年5月发布，用于路径安全测试。\n".encode()
    for hostile in ("../../evil.txt", "..\\..\\evil2.txt", "/etc/evil3.txt"):
        response = admin.post("/v1/reports", files={"file": (hostile, body, "text/plain")})
        assert response.status_code == 201, response.text
        assert "/" not in response.json()["name"] and "\\" not in response.json()["name"]
        assert (corpus / response.json()["name"]).is_file()
    assert not any(p.name.startswith("evil") for p in (*corpus.parent.iterdir(), *corpus.parent.parent.iterdir()))
    for name in ("evil.txt", "evil2.txt", "evil3.txt"):
        assert admin.delete(f"/v1/reports/{name}").status_code == 200
    assert_error(admin.delete("/v1/reports/metadata.json"), 404)
    assert (corpus / "metadata.json").is_file()


def test_remove_report_validates_names(tmp_path, tiny_model):
    qa = ReportQA(corpus_dir=copy_corpus(tmp_path / "corpus", [M6_REPORT]), index_dir=tmp_path / "index",
                  model=tiny_model)
    with pytest.raises(RagError, match="文件名无效"):
        qa.remove_report(f"../corpus/{M6_REPORT}")
    with pytest.raises(NotFoundError):
        qa.remove_report("other.txt")
    with pytest.raises(RagError, match="唯一的报告"):
        qa.remove_report(M6_REPORT)
    assert (qa.corpus_dir / M6_REPORT).is_file()


def test_rebuild_in_background_with_status(admin, writable):
    started = admin.post("/v1/index", json={"force": True})
    assert started.status_code == 202
    assert started.json()["build"]["kind"] == "rebuild" and started.json()["build"]["state"] in ("running",
                                                                                                  "succeeded")
    status = wait_for_build(admin)
    assert status["ready"] and status["build"]["state"] == "succeeded"
    assert status["build"]["result"]["documents"] == len([n for n in corpus_names(writable) if n.endswith(".txt")])
    assert status["build"]["finished_at"] >= status["build"]["started_at"]


def test_a_running_build_refuses_others_and_questions_go_on(admin, writable):
    # A build started outside the API (as the UI would), held open inside its logging callback.
    release, entered = threading.Event(), threading.Event()

    def held(_message: str) -> None:
        entered.set()
        release.wait(30)

    builder = threading.Thread(target=writable.build, kwargs={"force": True, "log": held}, daemon=True)
    builder.start()
    try:
        assert entered.wait(30)
        assert admin.get("/v1/index").json()["building"] is True
        assert_error(admin.post("/v1/index", json={"force": True}), 409)
        assert_error(admin.post("/v1/reports", files={"file": ("星河报告.md", STAR_REPORT)}), 409)
        assert_error(admin.delete(f"/v1/reports/{M6_REPORT}"), 409)
        assert admin.post("/v1/ask", json={"query": QUESTION}).status_code == 200  # the previous index answers
    finally:
        release.set()
        builder.join(60)
    assert not admin.get("/v1/index").json()["building"]


def test_questions_during_an_api_build_all_succeed(admin):
    statuses: list[int] = []

    def ask_some() -> None:
        for _ in range(5):
            statuses.append(admin.post("/v1/ask", json={"query": QUESTION}).status_code)

    assert admin.post("/v1/index", json={"force": True}).status_code == 202
    askers = [threading.Thread(target=ask_some) for _ in range(4)]
    for thread in askers:
        thread.start()
    for thread in askers:
        thread.join(120)
    assert wait_for_build(admin)["build"]["state"] == "succeeded"
    assert statuses == [200] * 20


# --- rag serve ---------------------------------------------------------------------------------------

def test_rag_serve_command(tiny_qa, tmp_path):
    env = {**os.environ, "RAG_API_KEY": KEY, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "rag.cli", "--corpus", str(tiny_qa.corpus_dir), "--index", str(tiny_qa.index_dir),
               "--model", tiny_qa.model]
    refused = subprocess.run([*command, "serve", "--host", "0.0.0.0"], env={**env, "RAG_API_KEY": ""},
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert refused.returncode == 1 and "RAG_API_KEY" in refused.stderr and "Traceback" not in refused.stderr

    sock = server.bound_socket()  # find a free port, then hand it to the child
    port = sock.getsockname()[1]
    sock.close()
    log = (tmp_path / "serve.log").open("w+")
    process = subprocess.Popen([*command, "serve", "--port", str(port)], env=env, stdout=log,
                               stderr=subprocess.STDOUT, cwd=ROOT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None and time.monotonic() < deadline, Path(log.name).read_text()
            try:
                if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert_error(httpx.get(f"{url}/v1/reports", timeout=30), 401)
        reports = httpx.get(f"{url}/v1/reports", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        assert [r["name"] for r in reports.json()["reports"]] == SEED_FILES
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl+C
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    output = Path(log.name).read_text()
    assert process.returncode == 0, output
    assert "需要 API 密钥" in output and f"http://127.0.0.1:{port}/ui/" in output and "已停止" in output
    assert "Traceback" not in output and "错误" not in output
