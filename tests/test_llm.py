"""Generated answers against a real llama-cpp-python server with the bundled 0.5B model.

The server is started once per session on a free loopback port and stopped by its PID. Nothing
about the LLM is mocked: streaming, checking, fallback on timeout and on a killed server all go
through the ``openai`` client against the real server. Retrieval uses the tiny embedding model
(mechanics only); the checker's number rule does not depend on it.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
from click.testing import CliRunner

from rag.checker import numbers_of, passage_units
from rag.cli import main
from rag.llm import LLMClient, LLMConfig, build_messages
from rag.model_fetch import QWEN_05B, is_ready

pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (make llm)")
if not is_ready(QWEN_05B):
    pytest.skip("0.5B model not fetched (make llm)", allow_module_level=True)

QUESTION = "GPT-3 的参数量是多少？"


@pytest.fixture(scope="module")
def llm_server():
    """llama-cpp-python's server with the 0.5B model on a free loopback port."""
    from rag.llm_server import start_local_llm

    server = start_local_llm("qwen-0.5b")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def llm(llm_server) -> LLMConfig:
    """A client configuration for the session's server (short answers keep the tests lean)."""
    return LLMConfig(base_url=llm_server.base_url, timeout=300, max_tokens=96)


def _source_numbers(hits) -> str:
    return "".join(u.folded for index, hit in enumerate(hits) for u in passage_units(hit, index))


def test_stream_yields_pieces(tiny_qa, llm):
    found = tiny_qa.search(QUESTION, top_k=3)
    pieces = list(LLMClient(llm).stream(build_messages(QUESTION, found.hits)))
    assert len(pieces) > 1 and "".join(pieces).strip()


def test_generated_answer_shows_only_verified_cited_sentences(tiny_qa, llm):
    grown: list[str] = []
    result = tiny_qa.ask(QUESTION, generate=True, llm=llm, on_text=grown.append)
    generated = result.generated
    assert generated is not None and generated.raw
    assert len(grown) > 1 and grown[-1] == generated.raw  # streamed as it was generated
    cited_text = _source_numbers(generated.sources)
    for sentence in generated.displayed:
        assert sentence.verified and sentence.markers
        for number in numbers_of(sentence.text):
            assert number in cited_text or number in numbers_of(QUESTION)
    for number in generated.fabricated_numbers:
        assert number not in numbers_of(generated.text)
    assert result.answer  # the extractive answer is always there as the fallback


def test_timeout_falls_back_to_extractive(tiny_qa, llm_server):
    # No text within the wait (the client's timeout), and an answer longer than the whole-answer cap.
    for config in (LLMConfig(base_url=llm_server.base_url, timeout=0.01),
                   LLMConfig(base_url=llm_server.base_url, timeout=300, max_seconds=0.05)):
        result = tiny_qa.ask(QUESTION, generate=True, llm=config)
        assert result.generated is not None and not result.generated.shown
        assert "超时" in (result.generated.notice or "")
        assert result.answer and not result.generated.text


def test_chat_streams_the_draft_then_the_checked_answer(tiny_qa, llm):
    from rag.present import generated_html
    from rag.webui import generated_events

    def render(on_text):
        return generated_html(tiny_qa, tiny_qa.ask(QUESTION, generate=True, llm=llm, on_text=on_text))

    events = list(generated_events(render))
    drafts = [content for kind, content in events if kind == "text"]
    assert drafts and [kind for kind, _ in events][-1] == "done" and [k for k, _ in events].count("done") == 1
    assert all(later.startswith(earlier) for earlier, later in zip(drafts, drafts[1:], strict=False))
    final = events[-1][1]
    assert "已对照所引段落核实" in final or "抽取式答案" in final


def test_chat_shows_a_notice_when_rendering_fails():
    from rag.present import notice_html
    from rag.webui import generated_events

    def render(on_text):
        on_text("草稿")
        raise RuntimeError("boom")

    assert list(generated_events(render))[-1] == ("done", notice_html("内部错误，请重试"))


def test_endpoint_refusing_the_request_falls_back(tiny_qa, llm_server):
    # The real server answers an unknown route with an HTTP error: the endpoint refused the request.
    refused = LLMConfig(base_url=llm_server.base_url.replace("/v1", "/no-such-api"), timeout=60)
    result = tiny_qa.ask(QUESTION, generate=True, llm=refused)
    assert result.generated is not None and not result.generated.shown
    assert "拒绝" in (result.generated.notice or "") and result.answer


def test_garbage_model_output_shows_the_extractive_answer(tiny_qa):
    from rag.generate import NOTHING_VERIFIED, checked_answer

    found = tiny_qa.search(QUESTION, top_k=5)
    for garbage in ("！！！###……", "", "GPT-3的参数量为98765亿。98765亿！"):
        generated = checked_answer(found.analysed, found.hits, garbage, tiny_qa.embedder.embed_documents)
        assert not generated.shown and generated.notice == NOTHING_VERIFIED and not generated.text


def test_killed_server_falls_back(tiny_qa):
    from rag.llm_server import start_local_llm

    server = start_local_llm("qwen-0.5b")
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    result = tiny_qa.ask(QUESTION, generate=True, llm=LLMConfig(base_url=server.base_url, timeout=30))
    assert result.generated is not None and not result.generated.shown
    assert "无法连接" in (result.generated.notice or "")
    assert result.answer


def test_cli_ask_generate_json(tiny_qa, tiny_model, llm):
    runner = CliRunner()
    env = {"RAG_LLM_BASE_URL": llm.base_url, "RAG_LLM_TIMEOUT": "300"}
    outcome = runner.invoke(main, ["--corpus", str(tiny_qa.corpus_dir), "--index", str(tiny_qa.index_dir),
                                   "--model", tiny_model, "ask", QUESTION, "--generate", "--json"], env=env)
    assert outcome.exit_code == 0, outcome.output
    payload = json.loads(outcome.output.strip().splitlines()[-1])
    generated = payload["generated"]
    assert {"shown", "text", "sentences", "sources", "raw", "notice"} <= set(generated)
    for sentence in generated["sentences"]:
        assert set(sentence) == {"text", "markers", "citations", "verified", "reason"}
        assert len(sentence["citations"]) == len(sentence["markers"])
        if sentence["verified"]:
            assert sentence["citations"]


def test_cli_answer_eval_records_as_it_goes_and_resumes(tiny_qa, tiny_model, llm, tmp_path):
    questions = tmp_path / "questions.jsonl"
    asked = [(QUESTION, "1750亿"), ("GPT-2 的参数量是多少？", "15亿"), ("华为的火星基地有多少名员工？", "")]
    rows = [{"id": f"q{n}", "question": text, "evidence": [], "docs": [], "type": "numeric", "split": "test",
             "answer": answer} for n, (text, answer) in enumerate(asked)]
    rows[2]["type"] = "unanswerable"
    questions.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    base = ["--corpus", str(tiny_qa.corpus_dir), "--index", str(tiny_qa.index_dir), "--model", tiny_model, "eval",
            "--answers", "extractive,generated", "--questions", str(questions), "--split", "test",
            "--out", str(tmp_path / "out"), "--json"]
    env = {"RAG_LLM_BASE_URL": llm.base_url, "RAG_LLM_MAX_TOKENS": "48"}
    first = CliRunner().invoke(main, [*base, "--limit", "2"], env=env)
    assert first.exit_code == 0, first.output
    records = tmp_path / "out" / "answers-test.records.jsonl"
    assert [json.loads(line)["id"] for line in records.read_text(encoding="utf-8").splitlines()] == ["q0", "q1"]
    resumed = CliRunner().invoke(main, [*base, "--resume"], env=env)
    assert resumed.exit_code == 0, resumed.output
    assert [json.loads(line)["id"] for line in records.read_text(encoding="utf-8").splitlines()] == ["q0", "q1", "q2"]
    assert json.loads(resumed.stdout[resumed.stdout.index("{"):])["questions"]["n"] == 3


def test_cli_generate_without_llm_is_a_clear_error(tiny_qa, tiny_model):
    outcome = CliRunner().invoke(main, ["--corpus", str(tiny_qa.corpus_dir), "--index", str(tiny_qa.index_dir),
                                        "--model", tiny_model, "ask", QUESTION, "--generate"],
                                 env={"RAG_LLM_BASE_URL": ""})
    assert outcome.exit_code == 1 and "RAG_LLM_BASE_URL" in outcome.output


def test_api_ask_generate_streams_only_checked_text(tiny_qa, llm, monkeypatch):
    import httpx
    from test_server import running, sse_events

    from rag import server

    monkeypatch.setenv("RAG_LLM_BASE_URL", llm.base_url)
    monkeypatch.setenv("RAG_LLM_TIMEOUT", "300")
    with running(server.create_app(tiny_qa, ui=False)) as url, httpx.Client(base_url=url, timeout=600) as http:
        plain = http.post("/v1/ask", json={"query": QUESTION, "generate": True})
        assert plain.status_code == 200, plain.text
        generated = plain.json()["generated"]
        assert generated["raw"] and {"shown", "text", "sentences"} <= set(generated)
        with http.stream("POST", "/v1/ask", json={"query": QUESTION, "generate": True, "stream": True}) as reply:
            events = sse_events(reply)
    streamed = "".join(json.loads(data)["text"] for event, data in events if event == "delta")
    result = json.loads(next(data for event, data in events if event == "result"))
    expected = result["generated"]["text"] if result["generated"]["shown"] else result["answer"]
    assert streamed == expected


def test_eval_answers_reports_both_kinds(tiny_qa, llm):
    from rag.answer_eval import answers_report, evaluate_answers
    from rag.evaluate import Question

    questions = [Question("t1", QUESTION, ["1750亿"], [], "numeric", answer="1750亿"),
                 Question("t2", "华为的火星基地有多少名员工？", [], [], "unanswerable")]
    numbers = evaluate_answers(tiny_qa, questions, llm)
    assert numbers["questions"] == {"n": 2, "answerable": 1, "unanswerable": 1}
    generated = numbers["generated"]
    assert generated["shown_numbers_not_in_cited"] == 0
    assert generated["shown_sentences_verified"] == 1.0
    assert generated["llm_failures"] == 0 and generated["full_p50"] > 0
    assert "| 展示句已核实比例" in answers_report(numbers, "dev", "inline")
    # A resumed run asks only what is not recorded yet, and sums up the same way.
    first = {numbers["records"][0]["id"]: numbers["records"][0]}
    asked: list[dict] = []
    resumed = evaluate_answers(tiny_qa, questions, llm, done=first, on_record=asked.append)
    assert [r["id"] for r in asked] == ["t2"] and resumed["questions"]["n"] == 2
    assert resumed["generated"]["shown_numbers_not_in_cited"] == 0


def test_llm_rewrites_a_follow_up_or_falls_back(llm_server):
    from rag.llm import REWRITE_MAX_CHARS, rewrite_question

    config = LLMConfig(base_url=llm_server.base_url, timeout=300)
    written = rewrite_question(config, ["GPT-3 的参数量是多少？"], "那GPT-4呢？", "GPT-4 的参数量是多少？")
    assert written and "\n" not in written and len(written) <= REWRITE_MAX_CHARS
    dead = LLMConfig(base_url="http://127.0.0.1:9/v1", timeout=5)
    fallback = "GPT-4 的参数量是多少？"
    assert rewrite_question(dead, ["GPT-3 的参数量是多少？"], "那GPT-4呢？", fallback) == fallback


def test_conversation_eval_measures_the_llm_rewrites(tiny_qa, tiny_model, llm, tmp_path):
    conversation = {"id": "c1", "split": "dev", "turns": [
        {"question": QUESTION, "standalone": QUESTION, "evidence": ["1750亿"], "docs": [], "answer": "1750亿"},
        {"question": "那GPT-2呢？", "standalone": "GPT-2 的参数量是多少？", "evidence": ["15.8亿"], "docs": [],
         "answer": "15.8亿"}]}
    conversations = tmp_path / "conversations.jsonl"
    conversations.write_text(json.dumps(conversation, ensure_ascii=False) + "\n", encoding="utf-8")
    outcome = CliRunner().invoke(main, ["--corpus", str(tiny_qa.corpus_dir), "--index", str(tiny_qa.index_dir),
                                        "--model", tiny_model, "eval", "--conversations", str(conversations),
                                        "--split", "dev", "--out", str(tmp_path / "out"), "--llm-url", llm.base_url])
    assert outcome.exit_code == 0, outcome.output
    assert "| follow-ups rewritten by the LLM | 1 |" in outcome.output
    assert "The LLM's rewrite" in outcome.output
