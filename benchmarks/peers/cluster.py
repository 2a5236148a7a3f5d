"""Gateway replicas sharing one Redis, and the router in front of them, for the routing scenario.

Each replica runs the deploy/ routing settings (`--replica-id gateway-N`,
`--overload-status 503` so that both routers move a refused turn) and, on a
machine with a core per replica, has vLLM's worker bound to a core of its own,
so that two replicas compare like two machines rather than fight over one core.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.peers.commands import GatewayFlags, gateway_command
from benchmarks.peers.process import Server, free_port, running
from benchmarks.peers.routers import (
    Routing,
    nginx_command,
    port_open,
    redis_command,
    render_nginx_conf,
    vllm_router_command,
)

SECRET = "routing-benchmark-secret-0123456789"


@dataclass
class Cluster:
    """Running replicas (by replica id) and where their logs and router files go."""

    replicas: dict[str, Server]
    directory: Path
    env: dict[str, str]

    @contextlib.contextmanager
    def router(self, kind: str, routing: Routing, label: str = "") -> Iterator[Server]:
        """nginx or vllm-router in front of every replica, for the block; `label` tells its log from others'."""
        name = f"{kind}-{routing}{label}".replace("_", "-")
        port = free_port()
        ports = [int(server.url.rsplit(":", 1)[1]) for server in self.replicas.values()]
        if kind == "nginx":
            prefix = self.directory / name
            prefix.mkdir(parents=True, exist_ok=True)
            command, env = nginx_command(render_nginx_conf(prefix, port, ports, routing)), dict[str, str]()
        else:
            urls = [server.url for server in self.replicas.values()]
            command, env = vllm_router_command(urls, port, free_port(), routing)
        with running(name, command, port, self.directory, {**self.env, **env}, timeout=120) as server:
            yield server


@contextlib.contextmanager
def replicas(
    names: list[str], model: str, flags: GatewayFlags, directory: Path, env: dict[str, str]
) -> Iterator[Cluster]:
    """A Redis and one gateway per name, started together; each name is also the replica's --replica-id."""
    with contextlib.ExitStack() as stack:
        redis_port = free_port()
        stack.enter_context(
            running(
                "redis",
                redis_command(redis_port),
                redis_port,
                directory,
                env,
                30,
                ready=lambda _: port_open(redis_port),
            )
        )
        store = ["--session-store", f"redis://127.0.0.1:{redis_port}", "--session-secret", SECRET]
        cores = os.cpu_count() or 1
        servers = {}
        for index, name in enumerate(names):
            own = GatewayFlags(
                concurrency=flags.concurrency,
                queue_size=flags.queue_size,
                max_new_tokens=flags.max_new_tokens,
                extra=[*flags.extra, *store, "--replica-id", name, "--overload-status", "503"],
            )
            # One core each when there are enough: vLLM's default binds every engine to the same one.
            bind = {"VLLM_CPU_OMP_THREADS_BIND": str(index)} if cores >= len(names) else {}
            command = gateway_command(model, own)
            servers[name] = stack.enter_context(running(name, command, own.port, directory, {**env, **bind}))
        yield Cluster(servers, directory, env)
