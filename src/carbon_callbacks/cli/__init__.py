"""`carbon-callbacks` command line: one subcommand per module in this package.

User errors (bad numbers, unknown names) print one line naming the field and exit with code 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from carbon_callbacks._errors import CarbonCallbacksError

#: Subcommand modules; each has `register(subparsers)` that adds its parser with `func=run(args) -> exit code`.
COMMANDS = ("paper", "estimate", "tables", "flops", "run", "report", "whatif", "plot", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carbon-callbacks",
        description="Energy and CO2e of neural-network training (Patterson et al. 2021 method).",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"carbon_callbacks.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit code (0 ok, 1 output pipe closed early, 2 user error)."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        try:
            code = int(args.func(args) or 0)
        except CarbonCallbacksError as err:
            print(f"carbon-callbacks {args.command}: error: {err}", file=sys.stderr)
            return 2
        sys.stdout.flush()  # a reader that went away shows here, not as a traceback at exit
        return code
    except BrokenPipeError:  # `carbon-callbacks tables chips | head`: stop quietly, as the Python docs advise
        _discard_stdout()
        return 1


def _discard_stdout() -> None:
    """Points stdout at /dev/null, so the interpreter's final flush does not fail on the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout replaced by an object without a file descriptor
        pass


if __name__ == "__main__":
    sys.exit(main())
