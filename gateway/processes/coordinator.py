"""The admission coordinator: the one `AdmissionController` of a gateway of several front-end processes.

It runs in the parent process (gateway/processes/launcher.py) and answers the
front ends over a unix socket (gateway/processes/wire.py): one round trip to
claim a place on arrival and one to confirm it once the prompt is rendered;
a release is a message with no answer. Nothing per token crosses the link.
Every decision is the controller's own, taken synchronously in this one
event loop, so the cap, the queue, the fair share, the key limits, the
Retry-After figures and draining are exactly those of one process.

A front end that goes away (it crashed, or was killed) closes its link: every
place it still held is released then, so a dead process never keeps a slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from gateway.core.admission import AdmissionController, Ticket
from gateway.core.errors import GatewayError
from gateway.processes.wire import (
    LINE_LIMIT,
    Message,
    encode,
    error_to_wire,
    load_to_wire,
    messages,
    principal_from_wire,
)

logger = logging.getLogger(__name__)


class _Link:
    """One front end's connection: the places it holds and the tickets waiting for a slot."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.name = "front end ?"
        self.tickets: dict[int, Ticket] = {}
        self.waiters: dict[int, asyncio.Task[None]] = {}


class AdmissionCoordinator:
    """Serves `admission` to the front-end processes connecting to a unix socket."""

    def __init__(self, admission: AdmissionController) -> None:
        self.admission = admission
        self._links: set[_Link] = set()
        self._server: asyncio.AbstractServer | None = None
        self.connected = asyncio.Event()  # set whenever a front end says hello (tests, logs)

    async def serve(self, sock: socket.socket) -> None:
        """Start answering on `sock` (a bound, listening unix socket)."""
        self._server = await asyncio.start_unix_server(self._connection, sock=sock, limit=LINE_LIMIT)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def front_ends(self) -> int:
        return len(self._links)

    def start_draining(self) -> None:
        """Refuse new requests in every front end from now on (503); what is admitted carries on."""
        if self.admission.draining:
            return
        self.admission.start_draining()
        for link in self._links:
            self._send(link, {"event": "draining"})

    def stop_front_ends(self) -> None:
        """Tell every front end to stop serving now (uvicorn's graceful shutdown: a few seconds' grace)."""
        for link in self._links:
            self._send(link, {"event": "stop"})

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(writer)
        self._links.add(link)
        try:
            async for message in messages(reader):
                self._handle(link, message)
        except (ConnectionError, ValueError) as exc:
            logger.error("%s: the admission link broke (%s)", link.name, exc)
        except Exception:  # a bug: this front end loses its link (and exits); its places come back
            logger.exception("%s: the admission link failed", link.name)
        finally:
            self._links.discard(link)
            for task in link.waiters.values():
                task.cancel()
            held = [t for t in link.tickets.values() if not t.released]
            for ticket in held:
                ticket.release()
            if held:
                logger.warning("%s went away: released the %d places it held", link.name, len(held))
            writer.close()

    def _handle(self, link: _Link, message: Message) -> None:
        op = message["op"]
        if op == "release":
            self._release(link, message["ticket"], message["output_tokens"])
            return
        if op == "drain":
            logger.info("%s was asked to stop: draining the gateway", link.name)
            self.start_draining()
            return
        reply: Message = {"id": message["id"]}
        try:
            if op == "hello":
                link.name = f"front end {message['index']} (pid {message['pid']})"
                logger.info("%s is serving", link.name)
                self.connected.set()
                reply["draining"] = self.admission.draining
            elif op == "claim":
                ticket = self.admission.claim(principal_from_wire(message["principal"]))
                link.tickets[message["id"]] = ticket
            elif op == "confirm":
                reply["state"] = self._confirm(link, message)
            elif op == "holds":
                reply["value"] = self.admission.holds_place(message["user"])
            elif op == "fairness":
                reply["value"] = self.admission.fairness()
            elif op != "load":
                raise ValueError(f"unknown admission op {op!r}")
        except GatewayError as error:
            reply["error"] = error_to_wire(error)
        self._send(link, reply)

    def _confirm(self, link: _Link, message: Message) -> str:
        key = message["ticket"]
        ticket = link.tickets[key]
        ticket.confirm(message["prompt_tokens"], message["max_tokens"], message["priority"], message["user"])
        if ticket.state == "waiting":
            link.waiters[key] = asyncio.create_task(self._await_slot(link, key, ticket))
        return ticket.state

    async def _await_slot(self, link: _Link, key: int, ticket: Ticket) -> None:
        # The front end keeps the queue timeout (and releases on it): no timeout here.
        try:
            await ticket.wait(None)
        except GatewayError as error:  # displaced by a lighter user's arrival
            link.tickets.pop(key, None)
            self._send(link, {"ticket": key, "event": "refused", "error": error_to_wire(error)})
        else:
            self._send(link, {"ticket": key, "event": "admitted"})
        finally:
            link.waiters.pop(key, None)

    def _release(self, link: _Link, key: int, output_tokens: int) -> None:
        ticket = link.tickets.pop(key, None)
        if ticket is None:
            return  # refused (displaced) here already
        ticket.release(output_tokens)
        waiter = link.waiters.pop(key, None)
        if waiter is not None:
            waiter.cancel()  # its wait gives back nothing more: the ticket is released

    def _send(self, link: _Link, message: Message) -> None:
        admission = self.admission
        message["load"] = load_to_wire(admission.load())
        with contextlib.suppress(ConnectionError, RuntimeError):  # a closing link: its reader cleans up
            link.writer.write(encode(message))
