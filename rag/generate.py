"""Generated answers: ask an OpenAI-compatible LLM, then keep only what the checker verifies.

``generate_answer`` streams the model's answer (``on_text`` sees it grow, for the chat UI), checks
every sentence (``rag.checker``), renumbers the passages the verified sentences cite, and returns a
``GeneratedAnswer``. Any failure of the endpoint or an answer with nothing verified yields
``shown=False`` with a one-line notice: the caller then shows the extractive answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from .checker import CheckerSettings, check_sentences, fabricated_numbers
from .llm import NOT_IN_REPORTS, LLMClient, LLMError, StreamTiming, build_messages
from .query import Query
from .results import GeneratedAnswer, GeneratedSentence, Hit
from .textnorm import fold

log = logging.getLogger(__name__)

PASSAGES_FOR_LLM = 5
NOTHING_VERIFIED = "生成的回答未能通过核实，以下为抽取式答案。"
MODEL_REFUSED = "大模型认为报告中没有答案，以下为抽取式答案。"


def is_refusal(text: str) -> bool:
    """True when the model said the reports do not contain the answer."""
    key = fold(text).replace(" ", "")
    return fold(NOT_IN_REPORTS) in key or "未找到" in key or "没有找到" in key


def generate_answer(query: Query, hits: list[Hit], client: LLMClient, encode: Callable[[list[str]], np.ndarray],
                    settings: CheckerSettings | None = None,
                    on_text: Callable[[str], None] | None = None) -> GeneratedAnswer:
    """The checked generated answer to ``query`` from the top ``hits`` (never raises for LLM failures)."""
    passages = hits[:PASSAGES_FOR_LLM]
    model = client.config.model
    if not passages:
        return GeneratedAnswer(shown=False, notice=MODEL_REFUSED, model=model)
    timing = StreamTiming()
    try:
        raw = client.complete(build_messages(query.text, passages), on_text=on_text, timing=timing)
    except LLMError as exc:
        log.warning("generated answer failed: %s", exc)
        return GeneratedAnswer(shown=False, notice=exc.notice, model=model,
                               first_token_seconds=timing.first_token, total_seconds=timing.total)
    return checked_answer(query, passages, raw, encode, settings, model=model, timing=timing)


def checked_answer(query: Query, passages: list[Hit], raw: str, encode: Callable[[list[str]], np.ndarray],
                   settings: CheckerSettings | None = None, model: str = "",
                   timing: StreamTiming | None = None) -> GeneratedAnswer:
    """The ``GeneratedAnswer`` for the model's text ``raw`` about ``passages``: only verified sentences shown.

    Separate from asking the model so a recorded answer can be checked again when the checker changes
    (``eval/recheck_generated.py``).
    """
    timing = timing or StreamTiming()
    answer = GeneratedAnswer(shown=False, model=model, raw=raw, first_token_seconds=timing.first_token,
                             total_seconds=timing.total, fabricated_numbers=fabricated_numbers(raw, passages, query))
    if is_refusal(raw) and len(raw) < 40:
        answer.notice = MODEL_REFUSED
        return answer
    checks = check_sentences(query, passages, raw, encode, settings)
    used: list[int] = []
    for check in checks:
        if check.verified and is_refusal(check.text):  # "not in the reports" is no fact to cite
            check.verified, check.supporting, check.reason = False, [], "refusal"
        for index in check.supporting:
            if index not in used:
                used.append(index)
        answer.sentences.append(GeneratedSentence(text=check.text,
                                                  markers=[used.index(i) + 1 for i in check.supporting],
                                                  verified=check.verified, reason=check.reason))
    answer.sources = [passages[i] for i in used]
    answer.shown = any(s.verified for s in answer.sentences)
    if not answer.shown:
        answer.notice = NOTHING_VERIFIED
    return answer
