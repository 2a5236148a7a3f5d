"""The stream's JSON strings: orjson's spelling must be `json`'s, byte for byte, or answers would change."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.http.sse import json_string


@given(st.text())
def test_json_string_spells_every_text_as_json_does(text: str) -> None:
    assert json_string(text) == json.dumps(text, ensure_ascii=False).encode()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('\x00\x1f\x7f\b\f\n\r\t"\\/', id="controls-and-escapes"),
        pytest.param("\u2028\u2029\ufeff", id="line-separators"),
        pytest.param("é😀\U0010ffff", id="non-ascii"),
    ],
)
def test_json_string_spells_escapes_as_json_does(text: str) -> None:
    assert json_string(text) == json.dumps(text, ensure_ascii=False).encode()


def test_a_lone_surrogate_is_refused_as_json_refuses_it() -> None:
    with pytest.raises(UnicodeEncodeError):
        json_string("\ud800")
