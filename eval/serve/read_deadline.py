"""uvicorn's h11 connection with a deadline on reading each request (headers and body).

uvicorn bounds the wait between requests on a kept-alive connection, but not a request that is
being sent: a client that sends half its headers (or half its body) and then nothing holds the
connection, and a task, for as long as it likes; a few hundred of them exhaust the server. Here a
connection that is waiting for a request gets ``read_timeout_s`` to deliver all of it, headers and
body, from the moment it connected (or its previous response was sent); past that, if the request
is still incomplete (or never began), the connection is closed. A request that has arrived whole
is not affected, however long its generation takes (``--timeout`` bounds that).
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class _ReadDeadlineH11(H11Protocol):
    read_timeout_s: float = 30.0
    _read_deadline: asyncio.TimerHandle | None = None

    def _arm_read_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
        self._read_deadline = self.loop.call_later(self.read_timeout_s, self._read_deadline_passed)

    def _read_deadline_passed(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY):  # the request is not all here
            self.transport.close()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_read_deadline()

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
