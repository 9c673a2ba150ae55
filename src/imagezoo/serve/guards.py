"""ASGI middleware that keeps clients within bounds: where a POST may come from, and how long
its body may take.

* ``OriginCheck``: a web page on another site can make a browser POST a form to a server on
  127.0.0.1 (a "simple" request: no CORS preflight), and the server would classify it. Browsers
  send ``Origin`` with every cross-site POST, so a POST whose ``Origin`` is neither the server's
  own (``scheme://Host``) nor one allowed (``--allow-origin``) is refused with a 403. Requests
  without ``Origin`` (curl, scripts, same-origin navigations of old browsers) pass: they are not
  a browser acting for another site.
* ``TimeLimit``: the request's body must have arrived ``timeout`` seconds after its start (the
  headers' own limit is in the protocol, see ``server.py``); a client that sends half a body and
  stops gets a 408 and the connection is closed, instead of holding a place forever. The
  deadline is left in ``scope["state"]["deadline"]`` (``time.monotonic()``): the rest of the
  request, its wait in the queue included, is held to it too.
"""
from __future__ import annotations

import asyncio
import json
import time

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


async def answer(send, status: int, detail: str, close: bool = False) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


class OriginCheck:
    def __init__(self, app, allow_origins=()):
        self.app = app
        self.allowed = {origin.rstrip("/").lower() for origin in allow_origins}

    def permitted(self, origin: str, scope) -> bool:
        origin = origin.rstrip("/").lower()
        if "*" in self.allowed or origin in self.allowed:
            return True
        host = (header(scope, b"host") or "").lower()
        return bool(host) and origin == f"{scope.get('scheme', 'http')}://{host}"

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            origin = header(scope, b"origin")
            if origin is not None and not self.permitted(origin, scope):
                return await answer(send, 403, f"cross-site request from {origin} refused "
                                               f"(the server allows only its own pages, and "
                                               f"the origins given with --allow-origin)")
        await self.app(scope, receive, send)


class RequestTimedOut(Exception):
    pass


class TimeLimit:
    def __init__(self, app, timeout: float):
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        deadline = time.monotonic() + self.timeout
        scope.setdefault("state", {})["deadline"] = deadline
        body_complete = False
        timed_out = False
        started = False

        async def timed_receive():
            nonlocal body_complete, timed_out
            if body_complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                timed_out = True
                if not started:
                    await answer(send, 408, f"the request's body did not arrive within the "
                                            f"server's time limit of {self.timeout:g} s",
                                 close=True)
                raise RequestTimedOut() from None  # stops the form parser reading on
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_complete = True
            return message

        async def send_unless_timed_out(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            if not timed_out:  # the app's own answer to the cut-off body is dropped
                await send(message)

        try:
            await self.app(scope, timed_receive, send_unless_timed_out)
        except Exception:  # RequestTimedOut, or whatever the app made of the cut-off body
            if not timed_out:
                raise
