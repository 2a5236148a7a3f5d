"""Schema fuzzing of every route (schemathesis) against the gateway with the real tiny engine.

Each operation in the app's own OpenAPI schema gets valid and invalid
requests generated from it; every answer must be below 500, carry no
traceback, and match what the schema documents (status, content type, body).
The server runs in the test's event loop; schemathesis's blocking client runs
in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.core.vllm_engine import VLLMEngine
from tests.reliability.conftest import make_settings, rounds, running_gateway

pytestmark = pytest.mark.engine

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
LEAKS = ("Traceback", 'File "', "Error(", "site-packages")


def fuzz_operation(operation: Any, mode: GenerationMode, base_url: str, examples: int) -> int:
    """Run `examples` generated cases of one operation; how many requests were sent."""
    sent = 0

    @hypothesis.settings(
        max_examples=examples, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: schemathesis.Case) -> None:
        nonlocal sent
        response = case.call(base_url=base_url, timeout=60)
        sent += 1
        assert not any(marker in response.text for marker in LEAKS), response.text[:500]
        case.validate_response(response, checks=CHECKS)

    check()
    return sent


def fuzz(schema_dict: dict[str, Any], base_url: str, examples: int) -> Counter[str]:
    """Every operation's positive and negative cases; the requests sent per operation and mode."""
    schema = schemathesis.openapi.from_dict(schema_dict)
    tried: Counter[str] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            label = f"{operation.method.upper()} {operation.path} {mode.value}"
            try:
                tried[label] = fuzz_operation(operation, mode, base_url, examples)
            except hypothesis.errors.Unsatisfiable:
                # An operation without a body or parameters has nothing to make invalid.
                assert mode is GenerationMode.NEGATIVE, label
    return tried


async def test_every_route_survives_schema_fuzzing_with_the_real_engine(real_engine: VLLMEngine) -> None:
    settings = make_settings(max_new_tokens=4, max_input_chars=2000, queue_timeout=30.0)
    async with running_gateway(real_engine, settings, engine_started=True) as gw:
        schema = gw.app.openapi()
        examples = rounds(25, 300)
        async with asyncio.timeout(900):
            tried = await asyncio.to_thread(fuzz, schema, gw.url, examples)
        await gw.wait_idle(real_engine.num_unfinished)
    total = sum(tried.values())
    print(f"\nschema fuzzing: {total} requests over {len(schema['paths'])} paths, 5xx: 0, schema violations: 0")
    for label, count in sorted(tried.items()):
        print(f"  {label}: {count}")
    # every documented operation was exercised
    operations = {f"{method.upper()} {path}" for path, item in schema["paths"].items() for method in item}
    assert {label.rsplit(" ", 1)[0] for label in tried} == operations
