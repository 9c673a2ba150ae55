"""Serving a model over HTTP: ``create_app(model)`` gives the FastAPI app, ``serve(model)``
runs it with uvicorn. FastAPI, uvicorn and python-multipart are the ``serve`` extra
(``pip install 'imagezoo[serve]'``); ``make`` installs them."""
from __future__ import annotations

from torch import nn

from ..errors import ImagezooError

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000


def require_server_packages() -> None:
    """A clear error, instead of an ImportError deep in a traceback, when the extra is missing."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (FastAPI's form parser)
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise ImagezooError(f"serving needs FastAPI, uvicorn and python-multipart "
                            f"({error.name} is missing): pip install 'imagezoo[serve]'") from None


def create_app(model: nn.Module, **options):
    """The FastAPI app for ``model``; see ``imagezoo.serve.app.create_app`` for the options."""
    require_server_packages()
    from .app import create_app as build
    return build(model, **options)


def serve(model: nn.Module, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          log_level: str = "info", **options) -> None:
    """Serve ``model`` until interrupted (Ctrl-C). The default host only answers this machine;
    ``host="0.0.0.0"`` exposes the server to the network (it has no authentication)."""
    app = create_app(model, **options)
    import uvicorn
    uvicorn.run(app, host=host, port=port, log_level=log_level)
