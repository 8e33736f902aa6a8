"""uvicorn's h11 connection with a deadline on reading each request (headers and body).

uvicorn bounds the wait between requests on a kept-alive connection, but not a request that is
being sent: a client that sends half its headers (or half its body) and then nothing holds the
connection, and a task, for as long as it likes; a few hundred of them exhaust the server. Here a
connection that is waiting for a request gets ``read_timeout_s`` to deliver all of it, headers and
body, from the moment it connected (or its previous response was sent); past that, if the request
is still incomplete (or never began), the connection is closed. A request that has arrived whole
is not affected, however long its generation takes (``--timeout`` bounds that).

A refusal sent before the request's body was read (413, 401) closes the connection; closing a
socket with unread data makes the kernel answer with a reset, which can destroy the refusal
before the client reads it. So such a close lingers: the server half-closes (the client sees the
response, then end of stream), discards what still arrives for at most ``LINGER_S``, then closes.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

LINGER_S = 2.0


class _LingeringTransport:
    """The connection's transport as uvicorn sees it: ``close`` lingers when the request's body is unread."""

    def __init__(self, transport: asyncio.Transport, protocol: "_ReadDeadlineH11") -> None:
        self._transport, self._protocol = transport, protocol

    def __getattr__(self, name: str):
        return getattr(self._transport, name)

    def close(self) -> None:
        transport, protocol = self._transport, self._protocol
        if protocol.conn.their_state is h11.SEND_BODY and not transport.is_closing() and transport.can_write_eof():
            protocol.lingering = True
            transport.write_eof()
            transport.resume_reading()
            protocol.loop.call_later(LINGER_S, transport.close)
            return
        transport.close()


class _ReadDeadlineH11(H11Protocol):
    read_timeout_s: float = 30.0
    _read_deadline: asyncio.TimerHandle | None = None
    lingering = False

    def _arm_read_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
        self._read_deadline = self.loop.call_later(self.read_timeout_s, self._read_deadline_passed)

    def _read_deadline_passed(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing() or self.lingering:
            return
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY):  # the request is not all here
            self.transport.close()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(_LingeringTransport(transport, self))  # type: ignore[arg-type]
        self._arm_read_deadline()

    def data_received(self, data: bytes) -> None:
        if not self.lingering:  # else: the rest of a refused body, dropped unread
            super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_read_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None
        super().connection_lost(exc)


def read_deadline_protocol(read_timeout_s: float) -> type[H11Protocol]:
    """The protocol class to give ``uvicorn.run(http=...)``, reading each request within ``read_timeout_s``."""
    return type("ReadDeadlineH11", (_ReadDeadlineH11,), {"read_timeout_s": float(read_timeout_s)})
