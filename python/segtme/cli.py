"""`segtme` command line: thin argument parsing; every command calls the package API.

Subcommands live in ``segtme.commands.<module>`` (see that package's docstring).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from .version import __version__
from .errors import SegTMEError


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line error style (``error: ...``, exit 2) instead of the usage
    block, for every subcommand (``--mpp abc``, a missing argument, an unknown flag)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import commands

    p = _Parser(prog="segtme", description="SegTME: nuclei, cell types and TME reports for H&E")
    p.add_argument("--version", action="version", version=f"segtme {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for m in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        mod = importlib.import_module(f"{commands.__name__}.{m.name}")
        if hasattr(mod, "register"):
            mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SegTMEError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
