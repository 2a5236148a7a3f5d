"""CPU of the admission coordinator per request (claim, confirm, slot, release), in a process of its own.

64 concurrent requests from one front-end client; 20,000 requests after 2,000 to warm up.

    PYTHONPATH=. python benchmarks/results/2026-11-30-api-processes/coordinator_cost.py
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import tempfile
import time

import psutil  # type: ignore[import-untyped]

from gateway.core.admission import AdmissionController
from gateway.processes.coordinator import AdmissionCoordinator
from gateway.processes.remote import RemoteAdmission


def serve(path: str) -> None:
    async def run() -> None:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(path)
        sock.listen()
        await AdmissionCoordinator(AdmissionController(256, 512)).serve(sock)
        await asyncio.Event().wait()

    asyncio.run(run())


async def requests(path: str, n: int, concurrency: int) -> float:
    admission = RemoteAdmission(path, 0, 256, 512)
    await admission.start()
    todo = iter(range(n))

    async def user() -> None:
        for _ in todo:
            ticket = await admission.aclaim()
            await ticket.aconfirm(20, 128)
            await ticket.wait(10)
            ticket.release(128)

    started = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await admission.stop()
    return elapsed


def main() -> None:
    path = os.path.join(tempfile.mkdtemp(), "admission.sock")
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(path,))
    server.start()
    while not os.path.exists(path):
        time.sleep(0.05)
    asyncio.run(requests(path, 2000, 64))
    coordinator, me = psutil.Process(server.pid), psutil.Process()
    c0, m0 = sum(coordinator.cpu_times()[:2]), sum(me.cpu_times()[:2])
    n = 20_000
    elapsed = asyncio.run(requests(path, n, 64))
    c1, m1 = sum(coordinator.cpu_times()[:2]), sum(me.cpu_times()[:2])
    print(
        f"{n} requests in {elapsed:.2f} s ({n / elapsed:.0f}/s); coordinator CPU {1e6 * (c1 - c0) / n:.1f} µs/request;"
        f" front-end side {1e6 * (m1 - m0) / n:.1f} µs/request; load average {os.getloadavg()[0]:.2f}"
    )
    server.terminate()
    server.join()


if __name__ == "__main__":
    main()
