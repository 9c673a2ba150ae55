"""Serving a model over HTTP: ``create_app(model)`` gives the FastAPI app, ``serve(model)``
runs it with uvicorn. FastAPI, uvicorn and python-multipart are the ``serve`` extra
(``pip install 'imagezoo[serve]'``); ``make`` installs them."""
from __future__ import annotations

import socket

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

from ..errors import ImagezooError

from ..choices import DEFAULT_HOST, DEFAULT_PORT  # noqa: E402,F401 (defined once)
# Host header names a server on the loopback address answers to (see create_app).
LOOPBACK_NAMES = {"127.0.0.1": ["127.0.0.1", "localhost"], "localhost": ["127.0.0.1", "localhost"]}


def require_server_packages() -> None:
    """A clear error, instead of an ImportError deep in a traceback, when the extra is missing."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (FastAPI's form parser)
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise ImagezooError(f"serving needs FastAPI, uvicorn and python-multipart "
                            f"({error.name} is missing): pip install 'imagezoo[serve]'") from None


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


def serve(model: "nn.Module", host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          sock: socket.socket | None = None, log_level: str = "info", **options) -> None:
    """Serve ``model`` until interrupted (Ctrl-C), on ``sock`` or a socket bound to
    ``host:port``. The default host only answers this machine, and then only requests
    addressed to 127.0.0.1 or localhost; ``host="0.0.0.0"`` exposes the server to the network
    (it has no authentication)."""
    sock = sock or listening_socket(host, port)
    bound_host = sock.getsockname()[0]
    options.setdefault("allowed_hosts", LOOPBACK_NAMES.get(host) or LOOPBACK_NAMES.get(bound_host))
    app = create_app(model, **options)
    import uvicorn
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
    with sock:
        server.run(sockets=[sock])
