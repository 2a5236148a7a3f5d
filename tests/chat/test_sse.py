"""`/chat_stream`'s delta event, spelled by hand per token, is the event sse-starlette would encode."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from sse_starlette import JSONServerSentEvent

from gateway.chat.sse import delta_event


@given(st.text())
def test_delta_event_is_the_json_server_sent_event(text: str) -> None:
    assert delta_event(text) == JSONServerSentEvent({"text": text}, event="delta").encode()
