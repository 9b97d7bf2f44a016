"""``vimw``: the command line. Each sub-command lives in its own file in this folder."""

from __future__ import annotations

import argparse
import logging
import sys

from vimw.errors import VimwError
from vimw.version import __version__


def build_parser() -> argparse.ArgumentParser:
    from vimw.cli import backbones, data, demo, predict, zoo

    parser = argparse.ArgumentParser(
        prog="vimw",
        description="Vision Middleware: plug-in module zoos on frozen vision backbones, "
        "and weak-to-strong adaptation transfer.",
    )
    parser.add_argument("--version", action="version", version=f"vimw {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for command in (demo, backbones, data, predict, zoo):
        command.register(commands)
    _register_optional(commands)
    return parser


def _register_optional(commands) -> None:
    """Commands of later layers register here when present."""
    import importlib

    for name in ("aggregate", "transfer", "export", "report"):
        try:
            module = importlib.import_module(f"vimw.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"vimw.cli.{name}":
                raise
            continue
        module.register(commands)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["zoo", "list"]:
        # Listing reads index.json only: skip the other commands' imports (torch among them).
        from vimw.cli.zoo import list_parser

        parser, argv = list_parser(), argv[2:]
    else:
        parser = build_parser()
    try:
        if argv[:1] == ["transfer"]:
            from vimw.cli.transfer import expand_recipe_argv

            argv = expand_recipe_argv(argv)
        args = parser.parse_args(argv)
        return int(args.handler(args) or 0)
    except VimwError as exc:
        print(f"vimw: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vimw: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
