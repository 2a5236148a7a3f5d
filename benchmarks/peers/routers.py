"""Routers in front of several gateway replicas, and the Redis they share: how each is started.

The routers run the deploy/ configurations (deploy/nginx/chatstream.conf,
deploy/vllm-router/run-router.sh) pointed at local ports, so the benchmark and
the tests (tests/servers.py) measure exactly what an operator installs. Each
also has a round-robin form, the baseline affinity is measured against.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

REPO = Path(__file__).resolve().parents[2]
NGINX_CONF = REPO / "deploy" / "nginx" / "chatstream.conf"
VLLM_ROUTER_SCRIPT = REPO / "deploy" / "vllm-router" / "run-router.sh"

Routing = Literal["affine", "round_robin"]


def render_nginx_conf(
    prefix: Path, listen_port: int, upstream_ports: Sequence[int], routing: Routing = "affine"
) -> Path:
    """The deploy/ nginx config, pointed at local ports, inside a minimal nginx.conf under `prefix`.

    The deploy config names its replicas `gateway-N:8000`, listens on 80 and logs
    under /var/log/nginx; only those change (gateway-N to 127.0.0.1 and the N-th
    port). `round_robin` sends every request to the next replica in turn instead
    of where its conversation is, with every other directive (spill-over
    included) as shipped.
    """
    site = NGINX_CONF.read_text()
    replicas = sorted({int(n) for n in re.findall(r"\bgateway-(\d+):8000\b", site)})
    assert replicas == list(range(1, len(upstream_ports) + 1)), f"the config has replicas {replicas}"
    for n, port in zip(replicas, upstream_ports, strict=True):
        site = re.sub(rf"\bgateway-{n}:8000\b", f"127.0.0.1:{port}", site)
    site, listens = re.subn(r"(?m)^(\s*)listen 80;", rf"\g<1>listen 127.0.0.1:{listen_port};", site)
    assert listens == 1, "deploy/nginx/chatstream.conf should listen on port 80"
    site = site.replace("/var/log/nginx/", f"{prefix}/")
    if routing == "round_robin":
        servers = "".join(f"    server 127.0.0.1:{port};\n" for port in upstream_ports)
        site += f"\nupstream chatstream_round_robin {{\n{servers}    keepalive 32;\n}}\n"
        site, passes = re.subn(
            r"proxy_pass http://\$chatstream_upstream;", "proxy_pass http://chatstream_round_robin;", site
        )
        assert passes == 1
    (prefix / "chatstream.conf").write_text(site)
    user = "user root root;\n" if os.geteuid() == 0 else ""  # workers must read the (private) temp dirs
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"{user}worker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log info;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        + "".join(
            f"  {kind}_temp_path {prefix}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + f"  include {prefix}/chatstream.conf;\n}}\n"
    )
    return conf


def nginx_command(conf: Path) -> list[str]:
    """nginx in the foreground on `conf` (from `render_nginx_conf`), its files under the conf's directory."""
    prefix = conf.parent
    return ["nginx", "-c", str(conf), "-p", str(prefix), "-e", str(prefix / "error.log"), "-g", "daemon off;"]


def vllm_router_command(
    workers: Sequence[str], port: int, metrics_port: int, routing: Routing = "affine"
) -> tuple[list[str], dict[str, str]]:
    """deploy/vllm-router/run-router.sh and its environment; `round_robin` overrides the script's policy."""
    env = {
        "WORKERS": " ".join(workers),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "METRICS_PORT": str(metrics_port),
        "PYTHON": sys.executable,
    }
    # Its routing decisions (which replica took a new session, health changes) in the log, to explain the figures.
    command = ["sh", str(VLLM_ROUTER_SCRIPT), "--log-level", "info"]
    if routing == "round_robin":
        command += ["--policy", "round_robin"]
    return command, env


def redis_command(port: int) -> list[str]:
    """A redis-server for the replicas' sessions, keeping nothing on disk."""
    return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
