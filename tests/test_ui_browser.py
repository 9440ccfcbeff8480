"""End to end in Debian's headless Chromium: ask in Chinese, read the cited answer, open a citation.

Needs ``/usr/bin/chromium`` (``make browser`` installs it with a CJK font); skipped without it.
Playwright drives the system browser only: no browser download. Saves tests/artifacts/ui.png.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_ui import serve

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
QUESTION = "M6-OFA 是什么时候发布的？"
EXPECTED_FILE = "004_e0d667138c034a95.txt"
EXPECTED_LABEL = "中信建投《阿里达摩院通义大模型概述》"

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def app_url(seed_qa):
    app, url = serve(seed_qa)
    yield url
    app.close()


@pytest.fixture()
def page(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium not installed (apt-get install -y chromium fonts-wqy-microhei)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1100}, locale="zh-CN")
        context.set_default_timeout(60_000)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def test_ask_read_sources_and_open_citation(app_url, page):
    page.goto(app_url)
    page.wait_for_selector("#rag-question textarea")
    # First open: the example questions are offered.
    assert page.get_by_text("GPT-3 的参数量是多少？").first.is_visible()

    page.fill("#rag-question textarea", QUESTION)
    page.click("#rag-send")
    answer = page.locator("#rag-chat .rag-answer").last
    answer.locator(".rag-sources").wait_for()
    assert QUESTION in page.locator("#rag-chat").inner_text()

    text = answer.locator(".rag-answer-text").inner_text()
    assert "[1]" in text and "2022年1月" in text
    first = answer.locator(".rag-source").first
    assert EXPECTED_LABEL in first.locator(".rag-source-head").inner_text()
    location = first.locator(".rag-loc").inner_text()
    assert EXPECTED_FILE in location
    citation = re.search(r"\S+\.txt:L\d+-L\d+(?:\.\d+)?", location).group(0)
    assert first.locator(".rag-passage mark").count() > 0   # the question's words are highlighted

    # Expand the context of source [1]: the cited passage shows, marked, inside its surroundings.
    first.locator("details.rag-context summary").click()
    cited = first.locator("details.rag-context .rag-cited")
    cited.wait_for(state="visible")
    assert "M6-OFA发布" in cited.inner_text()

    # A second question in the same session is answered on its own.
    page.fill("#rag-question textarea", "哪些公司是通义大模型的合作伙伴？")
    page.click("#rag-send")
    page.wait_for_function("document.querySelectorAll('#rag-chat .rag-answer').length >= 2")

    # The citation ID shown in the answer opens in the lookup tab.
    page.get_by_role("tab", name="引用查询").click()
    page.fill("#rag-lookup-input textarea", citation)
    page.click("#rag-lookup-btn")
    looked_up = page.locator("#rag-lookup-out .rag-source")
    looked_up.wait_for()
    assert citation in looked_up.inner_text()
    assert "业界首个通用的统一大模型M6-OFA发布" in looked_up.locator(".rag-passage").inner_text()
    page.fill("#rag-lookup-input textarea", "nope.txt:L1-L2")
    page.click("#rag-lookup-btn")
    page.locator("#rag-lookup-out .rag-error").wait_for()

    # Screenshot of the chat with the first answer and its opened context.
    page.get_by_role("tab", name="问答").click()
    first_answer = page.locator("#rag-chat .rag-answer").first
    first_answer.locator("details.rag-context").first.evaluate("node => node.open = true")
    page.locator("#rag-chat .rag-answer-text").first.scroll_into_view_if_needed()
    page.locator("#rag-chat [class*='message']").first.evaluate("node => node.scrollIntoView({block: 'start'})")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui.png"))
    assert (ARTIFACTS / "ui.png").stat().st_size > 10_000


def test_refusal_shows_the_closest_passages(app_url, page):
    page.goto(app_url)
    page.wait_for_selector("#rag-question textarea")
    page.fill("#rag-question textarea", "报告里给金山办公定的目标价是多少？")
    page.click("#rag-send")
    answer = page.locator("#rag-chat .rag-answer").last
    answer.locator(".rag-sources").wait_for()
    assert answer.locator(".rag-answer-text").inner_text().strip() == "在报告中未找到相关内容"
    closest = answer.locator(".rag-sources")
    assert "最接近的段落" in closest.locator(".rag-sources-title").inner_text()
    assert closest.locator(".rag-source").count() == 3
    assert ".txt:L" in closest.locator(".rag-loc").first.inner_text()
    answer.evaluate("node => node.scrollIntoView({block: 'start'})")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui_refusal.png"))


def test_filter_change_reanswers_last_question(app_url, page):
    page.goto(app_url)
    page.wait_for_selector("#rag-question textarea")
    page.fill("#rag-question textarea", QUESTION)
    page.keyboard.press("Enter")
    page.locator("#rag-chat .rag-sources").wait_for()
    page.locator("#rag-reports input").click()
    page.get_by_role("option").filter(has_text="002_f3649e5dfb89d976.txt").click()
    page.keyboard.press("Escape")
    page.locator("#rag-chat .rag-note", has_text="已按新的筛选条件重新回答").wait_for()
    # Only that report is searched now: the M6 passage from 004 can no longer be cited.
    assert EXPECTED_FILE not in page.locator("#rag-chat .rag-answer").last.inner_text()


def test_build_button_when_index_is_missing(tmp_path, page, tiny_model):
    from rag.api import ReportQA
    from tests.conftest import copy_corpus

    qa = ReportQA(corpus_dir=copy_corpus(tmp_path / "corpus", [EXPECTED_FILE]), index_dir=tmp_path / "index",
                  model=tiny_model)
    app, url = serve(qa)
    try:
        page.goto(url)
        status = page.locator("#rag-status")
        status.wait_for()
        assert "索引不存在" in status.inner_text()
        page.get_by_role("button", name="建立索引").click()
        status.wait_for(state="hidden", timeout=300_000)
        assert qa.index_status() is None
        page.fill("#rag-question textarea", QUESTION)
        page.click("#rag-send")
        answer = page.locator("#rag-chat .rag-answer").last
        answer.locator(".rag-sources").wait_for()
        assert "[1]" in answer.locator(".rag-answer-text").inner_text()
    finally:
        app.close()
