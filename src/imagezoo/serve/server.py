"""uvicorn, with the two limits it lacks: a time limit on request headers, and a shutdown that
ends within a grace period whatever the clients do.

* Headers: uvicorn times out idle keep-alive connections, but not a client that opens a
  connection and sends its headers a byte at a time (or never). ``timed_protocol(timeout)``
  is uvicorn's h11 protocol with a timer running whenever a request's headers are awaited;
  when it fires the connection is closed.
* Shutdown: on SIGTERM or SIGINT the server stops accepting connections, closes the idle ones,
  and lets the requests in hand finish for up to ``grace`` seconds; then it closes the
  connections left (a stalled upload sees its client disconnect), waits a moment for their
  requests to end, and returns. A second signal ends the wait at once. SIGTERM returns
  normally; SIGINT is raised again once the server has stopped (``KeyboardInterrupt``, as with
  uvicorn), for a command line to report. Stock uvicorn waits forever for a stalled client
  unless given a timeout, ignores a second SIGTERM, and re-raises SIGTERM after stopping, so
  the process dies of the signal instead of exiting 0.
"""
from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# How long the requests of connections closed at the end of the grace period get to notice.
CLOSE_WAIT = 1.0


def timed_protocol(timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request headers have not all arrived
    ``timeout`` seconds after it opened (or after the first byte of a keep-alive request)."""

    class HeaderTimedProtocol(H11Protocol):
        header_timeout = timeout
        _header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            no_delay(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:
                self._arm()   # part of a request's headers
            else:
                self._disarm()

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

        def _arm(self):
            if self._header_timer is None and not self.transport.is_closing():
                self._header_timer = self.loop.call_later(self.header_timeout, self._late)

        def _disarm(self):
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _late(self):
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimedProtocol


def no_delay(transport) -> None:
    """Send small writes at once (TCP_NODELAY). asyncio sets it only on sockets whose
    ``proto`` is IPPROTO_TCP, and ``socket.create_server`` (``listening_socket``) makes them
    with proto 0: h11 writes an answer's headers and body separately, and Nagle's algorithm
    held the body until the client's delayed ACK, 40 ms later, on every request."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, grace: float):
        super().__init__(config)
        self.grace = grace
        self.stop_signal: int | None = None

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.stop_signal == signal.SIGINT:
            signal.raise_signal(signal.SIGINT)   # KeyboardInterrupt, under Python's handler

    def handle_exit(self, sig, frame) -> None:
        if self.should_exit:
            self.force_exit = True   # a second signal: stop waiting for anyone
        else:
            self.should_exit = True
            self.stop_signal = sig

    async def _settle(self, seconds: float, forced_too: bool = False) -> None:
        """Wait up to ``seconds`` for the requests and connections to end (cut short by a
        second signal unless ``forced_too``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (self.server_state.tasks or self.server_state.connections) \
                and (forced_too or not self.force_exit) and loop.time() < deadline:
            await asyncio.sleep(0.05)

    async def shutdown(self, sockets=None) -> None:
        for server in self.servers:
            server.close()           # no new connections
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()    # idle ones close now, busy ones after their answer
        await self._settle(self.grace)
        if self.server_state.connections:
            # What is left waits for its clients: closing the connection ends a stalled
            # upload as a disconnect (the request ends without a traceback); cancelling its
            # task is the last resort.
            for connection in list(self.server_state.connections):
                connection.transport.close()
            await self._settle(CLOSE_WAIT, forced_too=True)
            for connection in list(self.server_state.connections):
                connection.transport.abort()   # a client that does not read its answer
        for task in list(self.server_state.tasks):
            task.cancel()
        await self.lifespan.shutdown()   # quick: the app's workers are told to stop, not joined
