"""Two gateway replicas behind real nginx (deploy/nginx/chatstream.conf), sessions in a real redis-server: streaming,
disconnects, restarts and a Redis outage (the routing itself: test_nginx_routing.py)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.gateway_app import metric
from tests.routing.cluster import Cluster
from tests.sse_client import parse_sse

pytestmark = pytest.mark.engine


async def turn(client: httpx.AsyncClient, url: str, text: str, cookie: str | None) -> tuple[str, str | None]:
    """One chat turn; the answer text and the session cookie to use next."""
    headers = {"cookie": f"chatstream_session={cookie}"} if cookie else {}
    r = await client.post(f"{url}/chat_stream", json={"user_input": text}, headers=headers)
    assert r.status_code == 200, r.text
    events = parse_sse(r.text)
    assert events[-1][0] == "done", events[-1]
    answer = "".join(data["text"] for kind, data in events if kind == "delta")
    return answer, r.cookies.get("chatstream_session") or cookie


async def short_answers(client: httpx.AsyncClient, url: str) -> str:
    """A new session whose answers are 4 tokens long (keeps the history test light)."""
    r = await client.post(f"{url}/set_generation_params", json={"max_new_tokens": 4})
    assert r.status_code == 200
    cookie = r.cookies.get("chatstream_session")
    assert cookie
    return cookie


async def test_a_conversation_alternating_between_replicas_keeps_its_full_history(cluster: Cluster) -> None:
    one, two = (r.url for r in cluster.replicas)
    async with asyncio.timeout(120), httpx.AsyncClient(timeout=60) as client:
        cookie: str | None = await short_answers(client, one)
        answers = []
        for i, url in enumerate([one, two, one, two]):
            answer, cookie = await turn(client, url, f"question {i}", cookie)
            answers.append(answer)
        r = await client.get(f"{cluster.nginx.url}/get_prompt", headers={"cookie": f"chatstream_session={cookie}"})
    messages = r.json()["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == [f"question {i}" for i in range(4)]
    assert [m["content"] for m in messages if m["role"] == "assistant"] == answers


async def test_sse_arrives_through_nginx_unbuffered(cluster: Cluster) -> None:
    reads: list[bytes] = []
    async with asyncio.timeout(120), httpx.AsyncClient(timeout=60) as client:
        request = client.build_request("POST", f"{cluster.nginx.url}/chat_stream", json={"user_input": "stream"})
        response = await client.send(request, stream=True)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for chunk in response.aiter_raw():
            reads.append(chunk)
        await response.aclose()
    with_deltas = [i for i, chunk in enumerate(reads) if b"event: delta" in chunk]
    with_done = [i for i, chunk in enumerate(reads) if b"event: done" in chunk]
    # 200 deltas buffered by nginx would come in a few large reads (its buffers hold ~100 events).
    assert len(with_deltas) >= 20
    assert with_done and with_deltas[0] < with_done[0]
    assert b"event: done" not in reads[with_deltas[0]]


async def test_a_client_disconnect_at_nginx_aborts_the_generation_on_the_replica(cluster: Cluster) -> None:
    async def disconnects() -> float:
        total = 0.0
        async with httpx.AsyncClient(timeout=10) as client:
            for replica in cluster.replicas:
                text = (await client.get(f"{replica.url}/metrics")).text
                total += metric(
                    text, "chatstream:requests_total", route="chat_stream", state="client_disconnected_while_streaming"
                )
        return total

    before = await disconnects()
    async with asyncio.timeout(120):
        async with httpx.AsyncClient(timeout=60) as client:
            request = client.build_request("POST", f"{cluster.nginx.url}/chat_stream", json={"user_input": "leave"})
            response = await client.send(request, stream=True)
            async for chunk in response.aiter_raw():
                if b"event: delta" in chunk:
                    break
            await response.aclose()  # closes the connection to nginx mid-stream
        while await disconnects() == before:
            await asyncio.sleep(0.2)
        async with httpx.AsyncClient(timeout=10) as client:
            for replica in cluster.replicas:
                while metric((await client.get(f"{replica.url}/metrics")).text, "chatstream:num_requests_running"):
                    await asyncio.sleep(0.2)
    assert await disconnects() == before + 1


async def test_restarting_a_replica_keeps_the_redis_sessions(cluster: Cluster) -> None:
    two = cluster.replicas[1]
    async with asyncio.timeout(400), httpx.AsyncClient(timeout=60) as client:
        cookie: str | None = await short_answers(client, two.url)
        first, cookie = await turn(client, two.url, "before the restart", cookie)
        assert two.stop() == 0
        # While it is down, nginx sends the conversation to the other replica.
        second, cookie = await turn(client, cluster.nginx.url, "while it is down", cookie)
        await asyncio.to_thread(two.start)
        third, cookie = await turn(client, two.url, "after the restart", cookie)
        r = await client.get(f"{two.url}/get_prompt", headers={"cookie": f"chatstream_session={cookie}"})
    assert r.json()["messages"] == [
        {"role": "user", "content": "before the restart"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "while it is down"},
        {"role": "assistant", "content": second},
        {"role": "user", "content": "after the restart"},
        {"role": "assistant", "content": third},
    ]


async def test_a_redis_outage_is_a_quick_503_and_recovers_by_itself(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        cookie = await short_answers(client, cluster.nginx.url)
        cluster.redis.stop()
        try:
            # Bounded well below nginx's and the client's timeouts: a hang fails here.
            async with asyncio.timeout(15):
                r = await client.post(
                    f"{cluster.nginx.url}/chat_stream",
                    json={"user_input": "is anyone there"},
                    headers={"cookie": f"chatstream_session={cookie}"},
                )
            assert r.status_code == 503
            assert r.json()["error"]["type"] == "session_store_unavailable"
            assert "retry-after" in r.headers
        finally:
            cluster.redis.start()
        # The store reconnects on its own (this Redis keeps nothing on disk, so it is a new session).
        async with asyncio.timeout(120):
            answer, _ = await turn(client, cluster.nginx.url, "back again", cookie)
    assert answer
