"""instructor: a pydantic model extracted through JSON (json_schema) and TOOLS modes, with no retries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonschema
import pytest

from tests.clients.schemas import PERSON_SCHEMA
from tests.clients.test_openai_sdk import VLLM_CONTROL_CHARACTERS, VLLM_LOOSE_TOOL_ARGUMENTS

# Mode.JSON (response_format json_object, the schema only in the prompt) is left out: no server can make
# a random-weight model follow a schema it is not given, so it would test the model, not the server.


@pytest.mark.parametrize(
    ("mode", "tool_called"),
    [
        pytest.param("JSON_SCHEMA", False, id="json_schema"),
        pytest.param("TOOLS", True, id="tools", marks=pytest.mark.gateway_only(VLLM_LOOSE_TOOL_ARGUMENTS)),
        pytest.param("TOOLS_STRICT", True, id="tools-strict", marks=pytest.mark.gateway_only(VLLM_CONTROL_CHARACTERS)),
    ],
)
def test_extraction_gives_a_schema_valid_model(run_client: Callable[..., Any], mode: str, tool_called: bool) -> None:
    result = run_client("instructor", "extract", mode=mode)
    jsonschema.validate(result["person"], PERSON_SCHEMA)
    assert result["tool_calls"] == (["Person"] if tool_called else [])
