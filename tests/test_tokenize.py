"""Lexical tokens: corpus names and version numbers stay whole enough to match exactly."""

from __future__ import annotations

import pytest

from rag.tokenize import Tokenizer, tokenizer_for

tokens = tokenizer_for().tokens


@pytest.mark.parametrize(("text", "joined"), [
    ("源1.0 参数量", "源1.0"),          # Chinese name written straight before its version
    ("悟道3.0系列", "悟道3.0"),
    ("ERNIE 3.0 TITAN", "ernie3.0"),   # Latin name, a space, then the version
    ("GPT 3.5", "gpt3.5"),
])
def test_name_before_a_version_is_also_one_token(text, joined):
    found = tokens(text)
    assert joined in found
    # the parts still match on their own, so "1.0" or "ERNIE" alone finds the passage too
    assert all(part in found for part in (joined.rstrip("0123456789.v"), joined[len(joined.rstrip("0123456789.v")):]))


@pytest.mark.parametrize("text", ["浪潮，1.0 版本", "收入增长了3.5倍"])
def test_a_number_after_punctuation_or_a_stopword_is_not_joined(text):
    number = "1.0" if "1.0" in text else "3.5"
    assert not any(t.endswith(number) and t != number for t in tokens(text))


@pytest.mark.parametrize("word", ["参数量", "大模型", "英伟达", "智算中心"])
def test_domain_words_are_kept_whole(word):
    assert word in tokens(f"报告中的{word}很重要")


def test_each_index_dictionary_is_its_own():
    """A corpus term taught to one index's tokenizer does not change how another index cuts text."""
    taught, plain = Tokenizer(["智算星河"]), tokenizer_for()
    assert "智算星河" in taught.tokens("智算星河平台")
    assert "智算星河" not in plain.tokens("智算星河平台")
    assert plain.tokens("智算星河平台") == Tokenizer().tokens("智算星河平台")
