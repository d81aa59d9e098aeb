"""``lwmm-hub``: one sub-command per module in :mod:`hf_lwmm.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys

from hf_lwmm.errors import LwmmError

#: modules under hf_lwmm.commands, each with ``register(subparsers)``; listed in help order
COMMANDS = ("merge", "align", "eval", "compare", "sweep", "diff", "demo", "push", "reproduce")


def build_parser() -> argparse.ArgumentParser:
    from hf_lwmm import __version__

    parser = argparse.ArgumentParser(prog="lwmm-hub", description="Layer-wise merging of segmentation models from the Hugging Face Hub.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"hf_lwmm.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except LwmmError as err:
        print(f"lwmm-hub {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lwmm-hub {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
