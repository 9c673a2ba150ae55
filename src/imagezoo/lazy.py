"""Names a package exports, imported from their modules on first use (PEP 562).

``import imagezoo`` (and ``imagezoo.engine``, ``imagezoo.weights``) must not import PyTorch:
the command line's grammar, ``imagezoo models`` and the PyTorch-free classify path only touch
light modules. Each package lists ``name -> module`` and gets its ``__getattr__`` from here."""
from __future__ import annotations

import sys
from importlib import import_module
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], object]:
    """The ``__getattr__`` of ``package``: ``exports`` maps a name to the module defining it
    (absolute, or relative to the package with a leading dot). A name, once imported, is
    stored in the package, so later lookups cost nothing."""
    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value
    return __getattr__
