"""The reference deployment in deploy/ is checked by real tools: nginx, a Kubernetes schema validator, shellcheck."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from benchmarks.peers.routers import render_nginx_conf
from tests.fakes import FakeEngine
from tests.gateway_app import running_gateway
from tests.servers import Nginx, nginx_test

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
VALIDATOR = Path(sys.executable).parent / "kubernetes-validate"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def cloud_init_files() -> dict[str, str]:
    return {f["path"]: f["content"] for f in load_yaml(DEPLOY / "cloud-init.yaml")["write_files"]}


def test_the_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    result = nginx_test(render_nginx_conf(tmp_path, 8080, [9001, 9002]), tmp_path)
    assert result.returncode == 0, result.stderr


def test_the_nginx_config_streams_and_forwards_disconnects() -> None:
    conf = (DEPLOY / "nginx" / "chatstream.conf").read_text()
    directives = {line.strip().rstrip(";") for line in conf.splitlines() if not line.strip().startswith("#")}
    assert "proxy_buffering off" in directives
    assert "proxy_ignore_client_abort off" in directives
    assert "proxy_http_version 1.1" in directives
    assert re.search(r"proxy_read_timeout (\d+h|\d{3,}s)", conf)


def test_the_nginx_config_pins_spills_over_and_balances_new_conversations_by_load() -> None:
    conf = (DEPLOY / "nginx" / "chatstream.conf").read_text()
    directives = {line.strip().rstrip(";") for line in conf.splitlines() if not line.strip().startswith("#")}
    assert "proxy_pass http://$chatstream_upstream" in directives
    assert "proxy_next_upstream error timeout http_429 http_503 non_idempotent" in directives
    pools = nginx_pools(conf)
    assert "least_conn" in pools["chatstream_least_busy"].directives


@dataclass
class Pool:
    directives: set[str]
    primaries: list[str]
    backups: list[str]


def nginx_pools(conf: str) -> dict[str, Pool]:
    """Each upstream block of the nginx config: its directives, its primary and backup replicas."""
    pools = {}
    for name, body in re.findall(r"(?ms)^upstream (\w+) \{(.*?)^\}", conf):
        lines = [line.strip().rstrip(";") for line in body.splitlines() if line.strip()]
        servers = [line.split()[1:] for line in lines if line.startswith("server ")]
        pools[name] = Pool(
            set(lines),
            [s[0].removesuffix(":8000") for s in servers if "backup" not in s],
            [s[0].removesuffix(":8000") for s in servers if "backup" in s],
        )
    return pools


def test_the_vm_nginx_site_passes_nginx_t(tmp_path: Path) -> None:
    site = cloud_init_files()["/etc/nginx/sites-available/chatstream.conf"]
    site = site.replace("listen 80;", "listen 127.0.0.1:8080;")
    (tmp_path / "site.conf").write_text(site)
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"pid {tmp_path}/nginx.pid;\nevents {{}}\nhttp {{\n  access_log off;\n  include {tmp_path}/site.conf;\n}}\n"
    )
    result = nginx_test(conf, tmp_path)
    assert result.returncode == 0, result.stderr


def validate(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    command = [str(VALIDATOR), "--strict", *map(str, paths)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_the_kubernetes_manifests_match_the_api_schema() -> None:
    manifests = sorted((DEPLOY / "k8s").glob("*.yaml"))
    assert manifests
    result = validate(manifests)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_validator_rejects_a_broken_manifest(tmp_path: Path) -> None:
    # Guards the check above: a validator that accepts anything would pass it too.
    text = (DEPLOY / "k8s" / "gateway.yaml").read_text().replace("containerPort: 8000", "containerPort: eight")
    broken = tmp_path / "broken.yaml"
    broken.write_text(text)
    assert validate([broken]).returncode != 0


def test_the_gateway_pods_drain_before_they_are_killed() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "gateway.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget"} <= set(kinds)
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    drain = float(args[args.index("--drain-timeout") + 1])
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1


def test_the_compose_file_runs_gpu_replicas_redis_and_nginx() -> None:
    compose = load_yaml(DEPLOY / "compose.yaml")
    services = compose["services"]
    gateways = {name: s for name, s in services.items() if name.startswith("gateway-")}
    assert len(gateways) >= 2 and {"redis", "nginx"} <= set(services)
    gpus = []
    for service in gateways.values():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]
        gpus += device["device_ids"]
        assert "redis://redis:6379/0" in service["command"]
        drain = float(service["command"][service["command"].index("--drain-timeout") + 1])
        assert float(service["stop_grace_period"].removesuffix("s")) > drain
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    assert len(set(gpus)) == len(gpus), "two replicas share a GPU"
    # nginx routes over exactly the replicas compose runs, each pinned by the name it gives itself.
    conf = (DEPLOY / "nginx" / "chatstream.conf").read_text()
    pools = nginx_pools(conf)
    pins = dict(re.findall(r"(?m)^\s+(gateway-\d+)\s+(chatstream_gateway_\d+);", conf))
    assert sorted(pins) == sorted(gateways)
    for name, service in gateways.items():
        assert service["environment"]["CHATSTREAM_REPLICA_ID"] == name
        pool = pools[pins[name]]
        assert pool.primaries == [name]
        assert sorted(pool.backups) == sorted(set(gateways) - {name})
    for shared in ("chatstream_least_busy", "chatstream_by_conversation"):
        assert sorted(pools[shared].primaries) == sorted(gateways)
    mounts = services["nginx"]["volumes"]
    assert any(m.startswith("./nginx/chatstream.conf:") for m in mounts)


def test_the_dockerfile_builds_on_vllms_cuda_image() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"(?m)^ARG VLLM_IMAGE=vllm/vllm-openai:", text)
    assert re.search(r"(?m)^FROM \$\{VLLM_IMAGE\}$", text)
    assert re.search(r'(?m)^ENTRYPOINT \["chatstream-gateway", "serve"', text)


def unit_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_the_systemd_unit_drains_and_the_vm_installs_the_same_unit() -> None:
    unit = (DEPLOY / "systemd" / "chatstream-gateway.service").read_text()
    lines = unit_lines(unit)
    assert "KillSignal=SIGTERM" in lines and "KillMode=mixed" in lines
    stop = next(int(line.split("=")[1]) for line in lines if line.startswith("TimeoutStopSec="))
    env = cloud_init_files()["/etc/chatstream/gateway.env"]
    drain = float(re.findall(r"CHATSTREAM_DRAIN_TIMEOUT=(\d+)", env)[0])
    assert stop > drain
    assert unit_lines(cloud_init_files()["/etc/systemd/system/chatstream-gateway.service"]) == lines


def shell_scripts(tmp_path: Path) -> list[Path]:
    scripts = sorted(REPO.glob("deploy/**/*.sh")) + sorted(REPO.glob(".ci/*.sh"))
    for path, content in cloud_init_files().items():
        if path.endswith(".sh"):
            extracted = tmp_path / Path(path).name
            extracted.write_text(content)
            scripts.append(extracted)
    return scripts


def test_every_shell_script_passes_shellcheck(tmp_path: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed (bash .ci/system-deps.sh)")
    scripts = shell_scripts(tmp_path)
    assert any(s.name == "install.sh" for s in scripts)
    result = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout


async def test_the_nginx_config_refuses_a_flood_from_one_client_with_429(tmp_path: Path) -> None:
    # Issue 13: nothing in front of the gateway limited what one client could send (sessions, generations).
    async with running_gateway(FakeEngine()) as gateway:
        port = int(gateway.url.rsplit(":", 1)[1])
        nginx = Nginx(tmp_path, [port, port])  # both replicas of the deploy config: this one gateway
        nginx.start()
        try:
            async with httpx.AsyncClient(base_url=nginx.url, timeout=30) as client:
                started = time.monotonic()
                answers = await asyncio.gather(*(client.get("/get_load") for _ in range(200)))
                elapsed = time.monotonic() - started
            await gateway.handled.wait_handled()
        finally:
            nginx.stop()
    statuses = Counter(r.status_code for r in answers)
    assert set(statuses) == {200, 429}, statuses
    # Let through: the burst (40) and the first, and what the rate (20/s) adds while the flood lasts.
    assert statuses[200] <= 41 + 20 * elapsed + 1, (statuses, elapsed)
    assert gateway.handled.finished == statuses[200]  # the refused ones never reached the replica
