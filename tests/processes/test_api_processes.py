"""`chatstream-gateway serve --api-processes 2` on the real engine: one gateway, whichever process answers.

The CLI starts one engine core and two front-end processes on one port, with
sessions in a real Redis. With 2 slots and 2 queue places and the engine
paused (every admitted request holds its slot), requests spread over both
processes are held, refused, displaced, abandoned and timed out exactly as one
process would; /metrics and /get_load of any process report the gateway's
figures (the inter-token gaps and the engine's figures included); each
completion state reaches the log line of the process that served the request;
a conversation kept in the database (`--conversation-db`) continues in either
process and is locked across both; SIGTERM drains both processes and stops
every child; SIGKILL stops them too (the watchdog does).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from tests.gateway_app import metric
from tests.servers import Gateway, RedisServer
from tests.sse_client import eventually, parse_sse

pytestmark = pytest.mark.engine

SECRET = "api-processes-test-secret-0123456789"
KEYS = "sk-flood flood class=bulk\nsk-light light class=interactive\n"
QUEUE_TIMEOUT = 10
ROUTE = "v1/chat/completions"
_SCRAPE = re.compile(r"\[front end \d pid (\d+)\] gateway\.http\.access_log: request (scrape-\d+) ")
_LINE = re.compile(r"\[front end (\d) pid (\d+)\] gateway\.core\.runner: request (\S+) .* state=(\S+) status=(\d+)")


def chat(max_tokens: int) -> dict[str, object]:
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": max_tokens,
        "stream": True,
    }


@pytest.fixture(scope="module")
def gateway(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("api-processes")
    keys = directory / "keys"
    keys.write_text(KEYS)
    flags = ["--api-processes", "2", "--served-model-name", "tiny", "--keys-file", str(keys)]
    flags += ["--session-store", redis_server.url, "--session-secret", SECRET, "--ignore-eos"]
    flags += ["--enable-prompt-tokens-details"]  # usage counts the prompt tokens the prefix cache served
    flags += ["--conversation-db", f"sqlite:///{directory / 'conversations.db'}"]
    flags += ["--concurrency", "2", "--queue-size", "2", "--queue-timeout", str(QUEUE_TIMEOUT)]
    server = Gateway(directory, tiny_model_dir, *flags)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def served(gateway: Gateway) -> dict[str, tuple[str, str, int]]:
    """The generation log lines so far: request id -> (front end pid, state, status)."""
    lines = (_LINE.search(line) for line in gateway.log.read_text(errors="replace").splitlines())
    return {m[3]: (m[2], m[4], int(m[5])) for m in lines if m is not None}


def scrapes(gateway: Gateway) -> dict[str, str]:
    """The /metrics requests so far: request id -> the pid of the front end that answered."""
    lines = (_SCRAPE.search(line) for line in gateway.log.read_text(errors="replace").splitlines())
    return {m[2]: m[1] for m in lines if m is not None}


def engine_processes(gateway: Gateway) -> list[psutil.Process]:
    """The engine core and its workers (not the front ends): paused, they hold every admitted request."""
    assert gateway.process is not None
    cores = [p for p in psutil.Process(gateway.process.pid).children() if "EngineCore" in p.name()]
    assert cores, "no engine-core process"
    return cores + [child for core in cores for child in core.children(recursive=True)]


@contextlib.contextmanager
def engine_paused(gateway: Gateway) -> Iterator[None]:
    paused = engine_processes(gateway)
    for process in paused:
        process.suspend()
    try:
        yield
    finally:
        for process in paused:
            process.resume()


@contextlib.asynccontextmanager
async def stream(gateway: Gateway, key: str, request_id: str, max_tokens: int) -> AsyncIterator[httpx.Response]:
    """A streamed chat completion on its own connection (so it may reach either process)."""
    headers = {"authorization": f"Bearer {key}", "x-request-id": request_id}
    async with (
        httpx.AsyncClient(base_url=gateway.url, timeout=120) as client,
        client.stream("POST", "/v1/chat/completions", json=chat(max_tokens), headers=headers) as response,
    ):
        yield response


async def call(gateway: Gateway, key: str, request_id: str, max_tokens: int = 16) -> httpx.Response:
    async with stream(gateway, key, request_id, max_tokens) as response:
        await response.aread()
        return response


async def load(gateway: Gateway) -> tuple[int, int]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        figures = (await client.get("/get_load")).json()
    return figures["in_flight"], figures["queued"]


async def until_load(gateway: Gateway, expected: tuple[int, int]) -> None:
    async with asyncio.timeout(30):
        while await load(gateway) != expected:
            await asyncio.sleep(0.05)


async def test_two_processes_admit_refuse_and_report_as_one_gateway(gateway: Gateway) -> None:
    # Both front ends are up (each says hello to the parent's admission coordinator).
    await eventually(lambda: gateway.log.read_text().count(") is serving") == 2, timeout=120)
    async with asyncio.timeout(120):
        with engine_paused(gateway):
            running = [asyncio.create_task(call(gateway, "sk-flood", f"flood-{i}")) for i in (1, 2)]
            await until_load(gateway, (2, 0))
            waiting = []
            for queued, i in enumerate((3, 4), start=1):  # one after the other: flood-4 is the newest
                waiting.append(asyncio.create_task(call(gateway, "sk-flood", f"flood-{i}")))
                await until_load(gateway, (2, queued))  # held: 2 slots, 2 queue places, over both processes

            refused = await call(gateway, "sk-flood", "flood-5")
            assert refused.status_code == 429
            assert int(refused.headers["retry-after"]) >= 1
            # A lighter user's arrival takes the flooder's newest waiting place, in whichever process it was.
            light = asyncio.create_task(call(gateway, "sk-light", "light-1"))
            displaced = await waiting[1]
            assert displaced.status_code == 429 and int(displaced.headers["retry-after"]) >= 1
            await until_load(gateway, (2, 2))
            waiting[0].cancel()  # this client leaves while it waits
            await until_load(gateway, (2, 1))
            async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
                figures = (await client.get("/metrics")).text
            assert metric(figures, "chatstream:num_requests_running") == 2
            assert metric(figures, "chatstream:num_requests_waiting") == 1
            timed_out = await light  # nothing frees a slot while the engine is paused
            assert timed_out.status_code == 503 and "retry-after" in timed_out.headers
        for response in await asyncio.gather(*running):
            assert response.status_code == 200 and response.text.rstrip().endswith("data: [DONE]")

        async with stream(gateway, "sk-light", "cut-1", 900) as cut:
            assert cut.status_code == 200
            async for _ in cut.aiter_bytes():
                break  # the first chunk arrived: this client hangs up mid-answer

    expected = {
        "flood-1": "success",
        "flood-2": "success",
        "flood-3": "client_disconnected_before_streaming",
        "flood-4": "unknown_error_occurred",  # displaced after it had joined the queue: 429
        "light-1": "unknown_error_occurred",  # queue timeout: 503
        "cut-1": "client_disconnected_while_streaming",
    }
    await eventually(lambda: expected.keys() <= served(gateway).keys())
    lines = served(gateway)
    assert {request: lines[request][1] for request in expected} == expected
    assert lines["flood-4"][2] == 429 and lines["light-1"][2] == 503
    # Both processes served generations.
    assert len({lines[request][0] for request in expected}) == 2, lines

    # The counters of both processes, summed, from whichever process answers the scrape:
    # scrape (each on a new connection) until both processes have answered.
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        for i in range(60):
            headers = {"connection": "close", "x-request-id": f"scrape-{i}"}
            text = (await client.get("/metrics", headers=headers)).text
            for state, count in (("success", 2), ("client_disconnected_before_streaming", 1)):
                assert metric(text, "chatstream:requests_total", route=ROUTE, state=state) == count, state
            assert metric(text, "chatstream:requests_total", route=ROUTE, state="unknown_error_occurred") == 2
            assert metric(text, "chatstream:requests_total", route=ROUTE, state="client_disconnected_while_streaming")
            assert metric(text, "chatstream:rejected_requests_total", route=ROUTE, reason="too_many_requests") == 1
            await eventually(lambda i=i: f"scrape-{i}" in scrapes(gateway))
            if len(set(scrapes(gateway).values())) == 2:
                break
    assert len(set(scrapes(gateway).values())) == 2, "one process answered every scrape"


@dataclass
class Streamed:
    """What a client saw of one streamed answer: the engine's outputs' token counts, and the usage."""

    outputs: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0

    @property
    def gaps(self) -> int:
        """The inter-token gaps the gateway observes: every token but those of the first output."""
        tokens = [n for n in self.outputs if n]
        return sum(tokens) - tokens[0]


async def stream_counted(gateway: Gateway, request_id: str, question: str) -> Streamed:
    """A streamed chat completion whose chunks carry their token ids (one chunk per engine output)."""
    body = {**chat(12), "messages": [{"role": "user", "content": question}], "return_token_ids": True}
    body["stream_options"] = {"include_usage": True}
    seen = Streamed()
    headers = {"authorization": "Bearer sk-light", "x-request-id": request_id}
    async with (
        httpx.AsyncClient(base_url=gateway.url, timeout=120) as client,
        client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line.removeprefix("data: "))
            seen.outputs += [len(choice["token_ids"]) for choice in chunk["choices"]]
            if chunk.get("usage"):
                seen.prompt_tokens = chunk["usage"]["prompt_tokens"]
                seen.cached_tokens = chunk["usage"]["prompt_tokens_details"]["cached_tokens"]
    return seen


_FIGURES = (
    "chatstream:inter_token_latency_seconds_count",
    "chatstream:engine_prefix_cache_queries_total",
    "chatstream:engine_prefix_cache_hits_total",
    "chatstream:engine_num_requests_running",
    "chatstream:engine_num_requests_waiting",
    "chatstream:kv_cache_usage_perc",
)


Figures = dict[str, dict[str, float]]


async def figures_of_both(gateway: Gateway, settled: Callable[[Figures], bool], timeout: float = 30) -> Figures:
    """`_FIGURES` as each front end's /metrics shows them: pid -> figures, the latest scrape of each.

    Scrapes (each on a new connection) until both processes have answered and
    `settled` holds of their figures (another process's newest figures reach
    the shared files within a publishing interval), or `timeout` has passed.
    """
    latest: Figures = {}
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        for i in itertools.count():
            request_id = f"scrape-{time.monotonic_ns()}{i}"
            text = (await client.get("/metrics", headers={"connection": "close", "x-request-id": request_id})).text
            await eventually(lambda request_id=request_id: request_id in scrapes(gateway))
            latest[scrapes(gateway)[request_id]] = {name: metric(text, name) for name in _FIGURES}
            if len(latest) == 2 and (settled(latest) or time.monotonic() > deadline):
                return latest
            await asyncio.sleep(0.05)
    raise AssertionError("unreachable")


def agree(figures: Figures) -> bool:
    """Both processes show the same counts (the engine's gauges are NaN until its first report)."""
    a, b = figures.values()
    return all(a[name] == b[name] for name in _FIGURES[:3])


async def test_any_front_end_shows_the_gateways_inter_token_gaps_and_the_engines_figures(gateway: Gateway) -> None:
    # Regression (issue 14): /metrics showed the inter-token gaps and the engine's reports that
    # reached the answering process only; the engine core sends each step's report to one front end.
    await eventually(lambda: gateway.log.read_text().count(") is serving") == 2, timeout=120)
    before = await figures_of_both(gateway, agree)  # the earlier tests' figures (if any), from either process
    assert agree(before), before
    start = next(iter(before.values()))

    question = "a long question about the stream " * 30  # several cache blocks: asked again, found in the cache
    answers: dict[str, Streamed] = {}
    async with asyncio.timeout(120):
        for round_ in range(5):  # until both processes have served some: each connection goes to the less busy
            ids = [f"gaps-{round_}-{i}" for i in range(4)]
            seen = await asyncio.gather(*(stream_counted(gateway, request_id, question) for request_id in ids))
            answers.update(zip(ids, seen, strict=True))
            await eventually(lambda: answers.keys() <= served(gateway).keys())
            if len({served(gateway)[request_id][0] for request_id in answers}) == 2:
                break
    assert len({served(gateway)[request_id][0] for request_id in answers}) == 2, "one process served every request"
    assert any(seen.cached_tokens for seen in answers.values())

    gaps, queries, hits = (start[name] for name in _FIGURES[:3])
    expected = {
        "chatstream:inter_token_latency_seconds_count": gaps + sum(s.gaps for s in answers.values()),
        "chatstream:engine_prefix_cache_queries_total": queries + sum(s.prompt_tokens for s in answers.values()),
        "chatstream:engine_prefix_cache_hits_total": hits + sum(s.cached_tokens for s in answers.values()),
        # The engine is idle now: its newest report says so, whichever process received it.
        "chatstream:engine_num_requests_running": 0,
        "chatstream:engine_num_requests_waiting": 0,
        "chatstream:kv_cache_usage_perc": 0,
    }
    shown = await figures_of_both(gateway, lambda figures: all(f == expected for f in figures.values()))
    assert list(shown.values()) == [expected, expected], shown


async def chat_turn(client: httpx.AsyncClient, request_id: str, text: str, cid: str | None) -> httpx.Response:
    """A /chat_stream turn of the light user's conversation in the database (a new one without `cid`)."""
    headers = {"authorization": "Bearer sk-light", "x-request-id": request_id}
    if cid is not None:
        headers["x-conversation-id"] = cid
    return await client.post("/chat_stream", json={"user_input": text}, headers=headers)


def answer_of(response: httpx.Response) -> str:
    events = parse_sse(response.text)
    assert events[-1][0] == "done", response.text
    return "".join(str(data["text"]) for kind, data in events if kind == "delta" and isinstance(data, dict))


async def test_a_conversation_in_the_database_continues_in_either_process_and_is_locked_across_both(
    gateway: Gateway,
) -> None:
    # --conversation-db: both processes open one SQLite file. Each turn comes on a connection of
    # its own, and every connection stays open, so the next one goes to the process with fewer.
    turns: list[tuple[str, str]] = []
    async with asyncio.timeout(120), contextlib.AsyncExitStack() as connections:
        cid = None
        for i in range(4):
            client = await connections.enter_async_context(httpx.AsyncClient(base_url=gateway.url, timeout=60))
            response = await chat_turn(client, f"db-{i}", f"turn {i}", cid)
            assert response.status_code == 200, response.text
            cid = response.headers["x-conversation-id"]
            turns.append((f"turn {i}", answer_of(response)))
    await eventually(lambda: {f"db-{i}" for i in range(4)} <= served(gateway).keys())
    lines = served(gateway)
    assert len({lines[f"db-{i}"][0] for i in range(4)}) == 2, lines  # both processes served turns of it

    # A turn while another runs is a 409 in the other process: the lock is the database's.
    async with asyncio.timeout(120), httpx.AsyncClient(base_url=gateway.url, timeout=60) as first:
        with engine_paused(gateway):
            running = asyncio.create_task(chat_turn(first, "db-held", "held", cid))
            await until_load(gateway, (1, 0))
            async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as second:
                busy = await chat_turn(second, "db-busy", "too soon", cid)
            assert busy.status_code == 409 and busy.json()["error"]["type"] == "session_busy"
        held = await running
        assert held.status_code == 200
        turns.append(("held", answer_of(held)))
        stored = (await first.get(f"/conversations/{cid}", headers={"authorization": "Bearer sk-light"})).json()
    expected = [
        m
        for user, answer in turns
        for m in ({"role": "user", "content": user}, {"role": "assistant", "content": answer})
    ]
    assert stored["messages"] == expected


async def test_sigterm_drains_both_processes_and_stops_every_child(gateway: Gateway) -> None:
    assert gateway.process is not None
    children = psutil.Process(gateway.process.pid).children(recursive=True)
    async with asyncio.timeout(120):
        async with stream(gateway, "sk-light", "drained-1", 900) as response:
            assert response.status_code == 200
            chunks = response.aiter_bytes()
            body = await anext(chunks)
            gateway.process.send_signal(signal.SIGTERM)  # to the parent only
            async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
                # Both processes refuse new work now, whichever answers.
                for _ in range(4):
                    while (ready := await client.get("/ready", headers={"connection": "close"})).status_code == 200:
                        await asyncio.sleep(0.05)
                    assert ready.json()["status"] == "draining"
                late = await client.post(
                    "/v1/chat/completions", json=chat(4), headers={"authorization": "Bearer sk-flood"}
                )
                assert late.status_code == 503 and "retry-after" in late.headers
            async for chunk in chunks:
                body += chunk
        assert body.rstrip().endswith(b"data: [DONE]")  # the stream ran to its end
        assert await gateway.wait_exit(60) == 0
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, alive
    assert served(gateway)["drained-1"][1] == "success"


async def test_a_gateway_killed_outright_leaves_no_front_end_and_no_engine_process_running(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'sessions.db'}"  # one every process shares
    gateway = Gateway(tmp_path, tiny_model_dir, "--api-processes", "2", "--session-store", store)
    await asyncio.to_thread(gateway.start)
    try:
        stopped = await gateway.kill_outright()
        assert any("EngineCore" in name for name in stopped), stopped
        assert sum("APIServer" in name for name in stopped) == 2, stopped
        assert "ended without stopping its child processes" in gateway.log.read_text()
    finally:
        gateway.stop()
