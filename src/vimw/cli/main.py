"""``vimw``: the command line. Each sub-command lives in its own file in this folder.

Start-up stays light: ``vimw --help``, ``vimw zoo list`` and ``vimw data list`` import
neither torch, transformers nor matplotlib (``tests/test_cli_startup.py`` checks). So:

- a command's file imports only the standard library and light vimw modules at module
  level; heavy imports (torch, backbones, training, data loading, plotting) go inside its
  ``run`` functions, or inside ``register`` when an option's default must be read from a
  config dataclass;
- ``vimw --help`` lists the commands from ``COMMANDS`` without importing their files; only
  the command being run builds its parser (its file's ``register``). A new top-level
  command needs a row in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from vimw.cli.options import Parser
from vimw.errors import ImageReadError, VimwError
from vimw.version import __version__

# command -> (its file in vimw.cli, its one-line summary in ``vimw --help``; the file's own
# ``add_parser(..., help=...)`` is what ``vimw COMMAND --help`` shows).
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "run the end-to-end demo (zoo, aggregation, baselines, transfer)"),
    "backbones": ("backbones", "list backbones with their sites and parameter counts"),
    "data": ("data", "built-in datasets and tasks"),
    "predict": ("predict", "print the top-5 classes of images"),
    "zoo": ("zoo", "build and inspect a module zoo"),
    "aggregate": ("aggregate", "learn per-site gates over a zoo + a head for a downstream task"),
    "evaluate": ("aggregate", "evaluate a downstream model on a task's test split"),
    "transfer": ("transfer", "TransMiter: extract an adaptation and move it to a stronger model"),
    "export": ("export", "write a downstream model as one file for deployment"),
    "serve": ("serve", "serve downstream models over HTTP, one backbone, batching across models"),
    "report": ("report", "write a static HTML report (tables, gate heatmaps, plots)"),
}


def _command_of(argv: list[str]) -> str | None:
    """The command ``argv`` runs (its first word that is not an option), if it is one of ours."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``: full options for the command it runs, one-line entries for the rest.

    ``argv=None`` builds every command's parser (what tests and documentation tools want).
    """
    import importlib

    wanted = None if argv is None else _command_of(argv)
    parser = Parser(
        prog="vimw",
        description="Vision Middleware: plug-in module zoos on frozen vision backbones, "
        "and weak-to-strong adaptation transfer.",
    )
    parser.add_argument("--version", action="version", version=f"vimw {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    registered: set[str] = set()
    for name, (module_name, help_text) in COMMANDS.items():
        if name in registered:
            continue
        if argv is None or COMMANDS.get(wanted, ("",))[0] == module_name:
            module = importlib.import_module(f"vimw.cli.{module_name}")
            before = set(commands.choices)
            module.register(commands)
            registered |= set(commands.choices) - before
        else:
            commands.add_parser(name, help=help_text)
            registered.add(name)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``vimw`` command line on ``argv``; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["zoo", "list"]:
        # Listing reads index.json only: skip the other zoo actions' option defaults.
        from vimw.cli.zoo import list_parser

        parser, argv = list_parser(), argv[2:]
    else:
        parser = build_parser(argv)
    args = None
    try:
        args = parser.parse_args(argv)
        return int(args.handler(args) or 0)
    except VimwError as exc:
        return _error(str(exc) + _skip_bad_hint(exc, args))
    except OSError as exc:  # what the checks before it did not foresee: name the path, not a traceback
        return _error(_os_error_message(exc))
    except KeyboardInterrupt:
        print("vimw: interrupted", file=sys.stderr)
        return 130


def _error(message: str) -> int:
    """Print the one line a refusal gets; its exit status."""
    print(f"vimw: error: {message}", file=sys.stderr)
    return 2


def _skip_bad_hint(exc: VimwError, args) -> str:
    """For an unreadable image, the flag that leaves such files out, when this command has it."""
    if isinstance(exc, ImageReadError) and getattr(args, "skip_bad_images", True) is False:
        return "; pass --skip-bad-images to leave unreadable files out"
    return ""


def _os_error_message(exc: OSError) -> str:
    """An ``OSError`` as one line with its path(s): ``PATH: No such file or directory``."""
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


if __name__ == "__main__":
    sys.exit(main())
