"""guidellm: a short synchronous and a short concurrent benchmark, with no failed request."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.clients.conftest import Target, run_program

OUTPUT_TOKENS = 16


@pytest.mark.parametrize(
    ("profile", "requests"),
    [
        pytest.param("kind=synchronous", 4, id="synchronous"),
        pytest.param("kind=concurrent,streams=4", 12, id="concurrent"),
    ],
)
def test_a_short_run_has_no_failed_request(
    client_bin: Callable[[str], str],
    client_env_for: dict[str, str],
    openai_target: Target,
    tiny_model_dir: Path,
    tmp_path: Path,
    profile: str,
    requests: int,
) -> None:
    out = tmp_path / "report.json"
    command = [
        client_bin("guidellm"),
        "run",
        "--backend",
        f"kind=openai_http,target={openai_target.root_url},model={openai_target.model}",
        "--profile",
        profile,
        "--constraint",
        f"kind=max_requests,count={requests}",
        "--data",
        f"kind=synthetic_text,prompt_tokens=32,output_tokens={OUTPUT_TOKENS}",
        "--tokenizer",
        f"kind=huggingface_auto,model={tiny_model_dir}",
        "--output",
        f"kind=json,path={out}",
        "--disable-progress",
    ]
    # One worker process: more would compete with the server for two cores.
    env = {**client_env_for, "GUIDELLM__MAX_WORKER_PROCESSES": "1"}
    run_program(command, env, tmp_path)
    [benchmark] = json.loads(out.read_text())["benchmarks"]
    totals = benchmark["metrics"]["request_totals"]
    assert totals["errored"] == 0 and totals["incomplete"] == 0
    assert totals["successful"] > 0
    # guidellm counts tokens from the server's usage; it asks for exactly OUTPUT_TOKENS (ignore_eos).
    outputs = benchmark["metrics"]["output_token_count"]["successful"]
    assert outputs["min"] == outputs["max"] == OUTPUT_TOKENS
