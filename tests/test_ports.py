"""The loopback ports tests and benchmarks give their servers (benchmarks/peers/process.py `free_port`)."""

from __future__ import annotations

from pathlib import Path

from tests.live import free_port


def test_free_ports_are_distinct_and_below_the_range_outgoing_connections_draw_from() -> None:
    # Regression: a port from bind(0) was taken by a load's outgoing connection while vLLM's
    # server was still starting, which then failed with "address already in use".
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(1024 < port < low for port in ports), ports
