"""Lexical tokens: corpus names and version numbers stay whole enough to match exactly."""

from __future__ import annotations

import pytest

from rag.tokenize import tokens


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


def test_a_version_after_punctuation_is_not_joined():
    assert not any(t.endswith("1.0") and t != "1.0" for t in tokens("浪潮，1.0 版本"))


@pytest.mark.parametrize("word", ["参数量", "大模型", "英伟达", "智算中心"])
def test_domain_words_are_kept_whole(word):
    assert word in tokens(f"报告中的{word}很重要")
