"""Two replicas on the real engine, sharing a real Redis, behind real nginx and vllm-router.

One cluster serves every test of this package (starting two engines is the
slow part). The replicas run the deploy/ settings for routing: `--replica-id
gateway-N`, which deploy/nginx/chatstream.conf pins conversations to. Each has
one generation slot and no queue, so a replica is busy, deterministically,
while its engine is paused with a request admitted (`Gateway.engine_paused`).
gateway-1 answers a full queue with 429 (the default), gateway-2 with 503
(`--overload-status 503`, as vllm-router needs): nginx spills both over.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.routing.cluster import Cluster
from tests.servers import Gateway, Nginx, RedisServer, VllmRouter

SECRET = "replica-test-secret-0123456789abcdef"


@pytest.fixture(scope="package")
def cluster(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("replicas")
    redis = RedisServer(directory)
    redis.start()
    flags = ["--session-store", redis.url, "--session-secret", SECRET, "--ignore-eos", "--max-new-tokens", "200"]
    flags += ["--concurrency", "1", "--queue-size", "0"]
    replicas = [
        Gateway(directory, tiny_model_dir, *flags, "--replica-id", "gateway-1"),
        Gateway(directory, tiny_model_dir, *flags, "--replica-id", "gateway-2", "--overload-status", "503"),
    ]
    nginx = Nginx(directory, [r.port for r in replicas])
    router = VllmRouter(directory, [r.url for r in replicas])
    try:
        for replica in replicas:
            replica.launch()
        for replica in replicas:
            replica.wait_ready()
        nginx.start()
        router.start()
        yield Cluster(redis, replicas, nginx, router, str(tiny_model_dir))
    finally:
        router.stop()
        nginx.stop()
        for replica in replicas:
            replica.stop()
        redis.stop()
