"""One client for every LLM: the OpenAI-compatible chat API, through the ``openai`` library.

Configured by ``RAG_LLM_BASE_URL`` (or ``--llm-url``), ``RAG_LLM_MODEL``, ``RAG_LLM_API_KEY``,
``RAG_LLM_TIMEOUT`` (seconds without any new text: before the first token and between tokens, default
60), ``RAG_LLM_MAX_SECONDS`` (the whole answer, default 300: a small local model on a busy CPU writes a
few tokens a second, and the chat shows the text while it grows, so a long answer is no hang) and
``RAG_LLM_MAX_TOKENS`` (answer length cap, default 384). Works
with DeepSeek, Qwen through an API, Ollama, vLLM and the local llama-cpp-python server started by
``rag llm``. Every failure (endpoint down, timeout, refusal by the endpoint, empty output) becomes an
``LLMError`` so the caller can fall back to the extractive answer with a one-line notice.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .errors import RagError
from .results import Hit

if TYPE_CHECKING:
    from openai.types.chat import (
        ChatCompletionMessageParam,
        ChatCompletionSystemMessageParam,
        ChatCompletionUserMessageParam,
    )

DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_SECONDS = 300.0
DEFAULT_MAX_TOKENS = 384
PASSAGE_CHARS = 700
NOT_IN_REPORTS = "报告中未找到相关内容"

SYSTEM_PROMPT = (
    "你是研究报告问答助手。只根据用户给出的编号段落回答问题，不要使用段落以外的知识。"
    "用简洁的中文回答，每句话后面用 [编号] 标出依据的段落。数字、日期、金额必须与段落原文一致。"
    f"如果段落中没有答案，只回答“{NOT_IN_REPORTS}”。"
)


class LLMError(RagError):
    """The LLM could not give an answer (down, timeout, refused, garbage); ``notice`` is for users."""

    def __init__(self, message: str, notice: str):
        super().__init__(message)
        self.notice = notice


@dataclass(frozen=True)
class LLMConfig:
    """Where the OpenAI-compatible endpoint is and how long to wait for it."""

    base_url: str
    model: str = "local"
    api_key: str = "not-needed"
    timeout: float = DEFAULT_TIMEOUT
    max_tokens: int = DEFAULT_MAX_TOKENS
    max_seconds: float = DEFAULT_MAX_SECONDS

    @classmethod
    def from_env(cls, base_url: str | None = None, model: str | None = None,
                 timeout: float | None = None) -> LLMConfig | None:
        """The configuration from arguments and ``RAG_LLM_*`` variables; None when no URL is set."""
        url = base_url or os.environ.get("RAG_LLM_BASE_URL")
        if not url:
            return None
        if timeout is None:
            timeout = _seconds("RAG_LLM_TIMEOUT", DEFAULT_TIMEOUT)
        max_seconds = max(_seconds("RAG_LLM_MAX_SECONDS", DEFAULT_MAX_SECONDS), timeout)
        try:
            max_tokens = int(os.environ.get("RAG_LLM_MAX_TOKENS") or DEFAULT_MAX_TOKENS)
        except ValueError:
            raise RagError("RAG_LLM_MAX_TOKENS 应为整数 / RAG_LLM_MAX_TOKENS must be an integer") from None
        return cls(base_url=url.rstrip("/"), model=model or os.environ.get("RAG_LLM_MODEL") or "local",
                   api_key=os.environ.get("RAG_LLM_API_KEY") or "not-needed", timeout=timeout, max_tokens=max_tokens,
                   max_seconds=max_seconds)


def _seconds(variable: str, default: float) -> float:
    try:
        value = float(os.environ.get(variable) or default)
    except ValueError:
        raise RagError(f"{variable} 应为秒数 / {variable} must be a number of seconds") from None
    if value <= 0:
        raise RagError(f"{variable} 应为正数 / {variable} must be positive")
    return value


def build_messages(question: str, hits: list[Hit]) -> list[ChatCompletionMessageParam]:
    """The chat messages: instructions, then the numbered passages and the question."""
    passages = []
    for number, hit in enumerate(hits, start=1):
        text = hit.chunk.text[:PASSAGE_CHARS]
        header = hit.chunk.table_header.strip()
        if hit.chunk.kind == "table" and header:
            text = f"{header}\n{text}"
        passages.append(f"[{number}] {text}")
    return _chat(SYSTEM_PROMPT, "段落：\n" + "\n\n".join(passages) + f"\n\n问题：{question}\n回答：")


def _chat(instructions: str, user: str) -> list[ChatCompletionMessageParam]:
    """A system message with ``instructions``, then the user's message."""
    system: ChatCompletionSystemMessageParam = {"role": "system", "content": instructions}
    asking: ChatCompletionUserMessageParam = {"role": "user", "content": user}
    return [system, asking]


@dataclass
class StreamTiming:
    """When the first token and the last token arrived (seconds after the request was sent)."""

    first_token: float | None = None
    total: float | None = None


class LLMClient:
    """Streams chat completions from an OpenAI-compatible endpoint."""

    def __init__(self, config: LLMConfig):
        from openai import OpenAI

        self.config = config
        # No retries: a dead endpoint must fall back at once, not after three attempts.
        self._client = OpenAI(base_url=config.base_url, api_key=config.api_key, timeout=config.timeout,
                              max_retries=0)

    def stream(self, messages: list[ChatCompletionMessageParam], timing: StreamTiming | None = None) -> Iterator[str]:
        """Yield the answer's text pieces as they arrive; raise ``LLMError`` on any failure."""
        import openai

        started = time.monotonic()
        # The client's timeout bounds each wait for text; the deadline bounds the whole answer.
        deadline = started + self.config.max_seconds
        received = False
        try:
            response = self._client.chat.completions.create(
                model=self.config.model, messages=messages, stream=True,
                temperature=0.0, max_tokens=self.config.max_tokens)
            for chunk in response:
                if time.monotonic() > deadline:
                    response.close()
                    raise LLMError("LLM stream exceeded the timeout", "大模型响应超时，以下为抽取式答案。")
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                if choice.finish_reason == "content_filter":
                    raise LLMError("LLM refused (content filter)", "大模型拒绝回答，以下为抽取式答案。")
                piece = choice.delta.content if choice.delta else None
                if piece:
                    if timing is not None and timing.first_token is None:
                        timing.first_token = time.monotonic() - started
                    received = True
                    yield piece
        except openai.APITimeoutError as exc:
            raise LLMError(f"LLM timeout: {exc}", "大模型响应超时，以下为抽取式答案。") from exc
        except openai.APIConnectionError as exc:
            raise LLMError(f"LLM unreachable: {exc}", "无法连接大模型服务，以下为抽取式答案。") from exc
        except openai.APIStatusError as exc:
            raise LLMError(f"LLM refused: HTTP {exc.status_code}", "大模型服务拒绝了请求，以下为抽取式答案。") from exc
        except openai.OpenAIError as exc:
            raise LLMError(f"LLM error: {exc}", "大模型服务出错，以下为抽取式答案。") from exc
        except (OSError, ValueError) as exc:  # a broken connection mid-stream, a malformed event
            raise LLMError(f"LLM stream broken: {exc}", "大模型服务中断，以下为抽取式答案。") from exc
        finally:
            if timing is not None:
                timing.total = time.monotonic() - started
        if not received:
            raise LLMError("LLM returned no text", "大模型没有给出回答，以下为抽取式答案。")

    def complete(self, messages: list[ChatCompletionMessageParam], on_text: Callable[[str], None] | None = None,
                 timing: StreamTiming | None = None) -> str:
        """The whole answer text; ``on_text`` receives the text so far after every piece."""
        text = ""
        for piece in self.stream(messages, timing):
            text += piece
            if on_text is not None:
                on_text(text)
        return text


REWRITE_PROMPT = (
    "你负责改写对话中的追问。根据前面的问题，把最后一个问题改写成一个不依赖上文、意思完全相同的独立问题："
    "把代词（它、这家公司、该模型、上面提到的）和省略（那……呢）换成上文所指的对象。"
    "只输出改写后的一个问题，不要回答它，不要解释。"
)
# A standalone question is short; a longer reply is an answer or an explanation, not a rewrite.
REWRITE_MAX_CHARS = 120
REWRITE_MAX_TOKENS = 96


def rewrite_question(config: LLMConfig, history: list[str], question: str, fallback: str) -> str:
    """The standalone form of ``question`` after the earlier turns ``history``, written by the LLM; ``fallback``
    (the deterministic rewrite, ``rag.followup``) when the endpoint fails or replies with something else."""
    earlier = "\n".join(f"{number}. {turn}" for number, turn in enumerate(history, start=1))
    messages = _chat(REWRITE_PROMPT, f"前面的问题：\n{earlier}\n\n最后一个问题：{question}\n\n独立问题：")
    try:
        reply = "".join(LLMClient(replace(config, max_tokens=REWRITE_MAX_TOKENS)).stream(messages))
    except LLMError:
        return fallback
    lines = [line.strip().strip("\"'“”「」") for line in reply.strip().splitlines() if line.strip()]
    rewritten = lines[0] if lines else ""
    if not rewritten or len(rewritten) > REWRITE_MAX_CHARS:
        return fallback
    return rewritten
