from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from shared.text import MAX_NAME_LENGTH, is_clean, shown


def test_plain_model_names_are_clean() -> None:
    for name in ("llama3.1:8b", "qwen2.5-coder:32b-instruct-q4_K_M", "échos", "模型 🙂", "a b"):
        assert is_clean(name)


def test_unclean_names_are_refused() -> None:
    lone_surrogate = json.loads('"x\\udcff"')
    for name in ("", lone_surrogate, "a\nb", "a\x00", "tab\there", "a\u2028b", "a\u200bb", "\x7f"):
        assert not is_clean(name), repr(name)
    assert not is_clean(None)
    assert not is_clean(42)
    assert not is_clean("x" * (MAX_NAME_LENGTH + 1))
    assert is_clean("x" * MAX_NAME_LENGTH)


@given(st.text())
def test_a_clean_name_always_encodes_and_stays_on_one_line(text: str) -> None:
    if is_clean(text):
        text.encode("utf-8")
        assert "\n" not in text and "\r" not in text


@given(st.text(max_size=300))
def test_shown_is_ascii_and_bounded(text: str) -> None:
    out = shown(text)
    assert out.isascii() or out.endswith("…")
    assert len(out) <= 80
    out.encode("utf-8")
