"""Serving a model over HTTP: ``create_app(model)`` gives the FastAPI app, ``serve(model)``
runs it with uvicorn. FastAPI, uvicorn, python-multipart, prometheus-client and
fastapi-offline (Swagger UI without a CDN) are the ``serve`` extra
(``pip install 'imagezoo[serve]'``); ``make`` installs them."""
from __future__ import annotations

import socket

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from torch import nn

from ..errors import ImagezooError

from ..choices import DEFAULT_HOST, DEFAULT_PORT  # noqa: E402,F401 (defined once)
from .limits import (GRACE_PERIOD, MAX_PIXELS_IN_FLIGHT, MAX_QUEUE, MAX_WAIT_MS,  # noqa: E402
                     REQUEST_TIMEOUT)
# Host header names a server on the loopback address answers to (see create_app).
LOOPBACK_NAMES = {"127.0.0.1": ["127.0.0.1", "localhost"], "localhost": ["127.0.0.1", "localhost"]}


def require_server_packages() -> None:
    """A clear error, instead of an ImportError deep in a traceback, when the extra is missing."""
    try:
        import fastapi  # noqa: F401
        import fastapi_offline  # noqa: F401  (Swagger UI and ReDoc assets, served offline)
        import prometheus_client  # noqa: F401  (/metrics)
        import python_multipart  # noqa: F401  (FastAPI's form parser)
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise ImagezooError(f"serving needs FastAPI, uvicorn, python-multipart, "
                            f"prometheus-client and fastapi-offline ({error.name} is missing): "
                            f"pip install 'imagezoo[serve]'") from None


def listening_socket(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> socket.socket:
    """The server's socket, bound and listening; taken before the model is loaded so that a
    port in use is reported at once (port 0: any free port, see ``getsockname()``)."""
    try:
        return socket.create_server((host, port), reuse_port=False)
    except OSError as error:
        reason = error.strerror or str(error)
        raise ImagezooError(f"cannot listen on {host}:{port}: {reason}"
                            + (" (another server? choose another --port)"
                               if "in use" in reason else "")) from None


def create_app(model: "nn.Module", **options):
    """The FastAPI app for ``model``; see ``imagezoo.serve.app.create_app`` for the options."""
    require_server_packages()
    from .app import create_app as build
    return build(model, **options)


def serve(model, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          sock: socket.socket | None = None, log_level: str = "info", *,
          top: int = 5, ten_crop: bool = False, max_batch: int | None = None,
          max_wait_ms: float = MAX_WAIT_MS, max_queue: int = MAX_QUEUE,
          max_pixels_in_flight: int = MAX_PIXELS_IN_FLIGHT, timeout: float = REQUEST_TIMEOUT,
          grace: float = GRACE_PERIOD, allow_origins: Sequence[str] = (),
          access_log: bool = True, **options) -> None:
    """Serve ``model`` (or several: a list, or a dict name -> model; see ``create_app``) on
    ``sock`` or a socket bound to ``host:port``, until SIGTERM or SIGINT (Ctrl-C).

    The default host only answers this machine, and then only requests addressed to
    127.0.0.1 or localhost; ``host="0.0.0.0"`` exposes the server to the network (it has no
    authentication). Request headers and bodies must arrive within ``timeout`` seconds. On
    SIGTERM or SIGINT the server stops accepting connections, gives the requests in hand up
    to ``grace`` seconds, closes what is left and returns (a second signal: at once); after
    SIGINT it then raises ``KeyboardInterrupt``, as uvicorn does. ``access_log`` writes one
    line per request to stderr (client, method, path, status, milliseconds, image size). The
    other options are ``create_app``'s."""
    sock = sock or listening_socket(host, port)
    bound_host = sock.getsockname()[0]
    options.setdefault("allowed_hosts", LOOPBACK_NAMES.get(host) or LOOPBACK_NAMES.get(bound_host))
    app = create_app(model, top=top, ten_crop=ten_crop, max_batch=max_batch,
                     max_wait_ms=max_wait_ms, max_queue=max_queue,
                     max_pixels_in_flight=max_pixels_in_flight, timeout=timeout,
                     allow_origins=allow_origins, **options)
    if access_log:
        show_access_log()
    server = build_server(app, timeout=timeout, grace=grace, log_level=log_level)
    with sock:
        server.run(sockets=[sock])


def build_server(app, timeout: float = REQUEST_TIMEOUT, grace: float = GRACE_PERIOD,
                 log_level: str = "info", **config):
    """The uvicorn server ``serve`` runs ``app`` with: its own access log instead of
    uvicorn's, a time limit on request headers and a bounded shutdown (see ``server.py``).
    ``server.run(sockets=[sock])`` runs it; ``server.should_exit = True`` stops it."""
    import uvicorn
    from .server import GracefulServer, timed_protocol
    return GracefulServer(uvicorn.Config(app, log_level=log_level, access_log=False,
                                         http=timed_protocol(timeout), lifespan="on", **config),
                          grace=grace)


def show_access_log() -> None:
    """Send the access log (logger ``imagezoo.serve.access``) to stderr, once."""
    import logging
    import sys
    logger = logging.getLogger("imagezoo.serve.access")
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("imagezoo: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
