"""An admission coordinator on a unix socket, and front-end clients of it, in the test's event loop."""

from __future__ import annotations

import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from gateway.core.admission import AdmissionController
from gateway.processes.coordinator import AdmissionCoordinator
from gateway.processes.remote import RemoteAdmission

Connect = Callable[[], Awaitable[RemoteAdmission]]


@pytest.fixture
def link_path() -> Iterator[str]:
    # Not tmp_path: a unix socket's path must stay under 108 bytes.
    with tempfile.TemporaryDirectory(prefix="cs-") as directory:
        yield str(Path(directory) / "admission.sock")


@pytest.fixture
async def coordinator(link_path: str) -> AsyncIterator[AdmissionCoordinator]:
    """The coordinator of a gateway with 2 slots and 2 queue places."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(link_path)
    sock.listen()
    coordinator = AdmissionCoordinator(AdmissionController(2, 2))
    await coordinator.serve(sock)
    try:
        yield coordinator
    finally:
        await coordinator.close()


@pytest.fixture
async def connect(coordinator: AdmissionCoordinator, link_path: str) -> AsyncIterator[Connect]:
    """Connects another front end (index 0, 1, ...) to the coordinator; all are closed at the end."""
    opened: list[RemoteAdmission] = []

    async def open_one() -> RemoteAdmission:
        admission = RemoteAdmission(link_path, len(opened), 2, 2)
        await admission.start()
        opened.append(admission)
        return admission

    try:
        yield open_one
    finally:
        for admission in opened:
            await admission.stop()
