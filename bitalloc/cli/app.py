"""The `bitalloc` command. Bad input: one line on stderr, exit 2 (traceback only with --debug)."""
from __future__ import annotations

import argparse
import sys

from bitalloc.errors import BitallocError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        raise BitallocError(f"{self.prog}: {message}")


# One module per subcommand in bitalloc/cli/, each with add_parser(sub); listed in help order.
COMMANDS = (
    "solve",
    "profile",
    "scorecard",
    "mcu",
    "measure",
    "pareto",
    "report",
    "apply",
    "verify",
    "export",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    p = _Parser(prog="bitalloc", description="Choose a bit-width per layer/group/channel under hardware budgets.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"bitalloc.cli.{name}").add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except BitallocError as e:
        if debug:
            raise
        print(f"bitalloc: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # a message, if any, says what was kept (e.g. a resumable study)
        print(f"bitalloc: interrupted{f': {e}' if str(e) else ''}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
