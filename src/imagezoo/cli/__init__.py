"""The ``imagezoo`` command: one thin subcommand per task (parse -> call the API -> print).

Exit status: 0 when everything worked, 1 when some inputs failed (the others were still
processed and printed), 2 for usage errors (bad options, unknown model, unusable weights) and
for runs in which nothing could be processed.

The grammar (``parser.py``) imports no PyTorch; a subcommand's handler, and what it needs, is
imported when it runs, so ``imagezoo --help`` and ``imagezoo models`` answer at once.
"""
from __future__ import annotations

import os
import sys
from importlib import import_module

__all__ = ["build_parser", "main", "run"]


def __getattr__(name: str):
    if name == "build_parser":   # imported on use: ``imagezoo --help`` may never need it
        from .parser import build_parser
        return build_parser
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> int:
    from .parser import build_parser
    args = build_parser().parse_args(argv)
    # Imported after parsing: --help and usage errors exit before paying for them.
    from ..errors import ImagezooError
    from .output import EXIT_OK, EXIT_USAGE, configure_logging
    configure_logging(args.verbose)
    try:
        module_name, function_name = args.handler.split(":")
        handler = getattr(import_module(f"imagezoo.cli.{module_name}"), function_name)
        return handler(args)
    except ImagezooError as error:
        print(f"imagezoo: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("imagezoo: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (head, less) has gone; stop quietly like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def run() -> None:
    """The ``imagezoo`` command and ``python -m imagezoo``: ``main`` and exit with its status."""
    if sys.argv[1:] in (["--help"], ["-h"]):   # the kept text: no grammar to build
        from .help_text import print_top_level_help
        sys.exit(print_top_level_help())
    code = main()
    if "torch" in sys.modules:  # only a command that ran PyTorch can be a torchrun worker
        from ..tasks.distributed import is_torchrun_worker
    if "torch" in sys.modules and is_torchrun_worker():
        # Every file is written and closed by now. Skipping the interpreter's shutdown avoids
        # a race in PyTorch's gloo backend, whose threads can abort a finalising worker (see
        # tasks/distributed.py), which torchrun would report as a failed run.
        import logging
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError:  # the reader has gone (| head): nothing more to deliver
                pass
        os._exit(code)
    sys.exit(code)
