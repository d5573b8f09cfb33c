"""Form fields without escapes skip unquote_plus: the same text either way."""

from __future__ import annotations

from urllib.parse import unquote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.providers.bodies import _unescape, declared_charset


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(alphabet=st.characters(blacklist_characters="%")), st.sampled_from(["utf-8", "gbk"]))
def test_a_field_without_escapes_reads_as_unquote_plus_reads_it(text: str, charset: str) -> None:
    assert _unescape(text, (charset,)) == unquote_plus(text, encoding=charset, errors="strict")


def test_no_charset_reads_nothing() -> None:
    assert _unescape("a+b", ()) is None


@pytest.mark.parametrize(
    ("content_type", "charset"),
    [
        ("application/json;charset=UTF-8", "utf-8"),
        ('text/plain; charset="GBK"', "gbk"),
        ("application/json", None),
        ("text/plain; charset=", None),
    ],
)
def test_declared_charset(content_type: str, charset: str | None) -> None:
    assert declared_charset(content_type) == charset
    assert declared_charset(content_type) == charset  # cached: the same answer
