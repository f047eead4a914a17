"""The `bitalloc` command. Bad input: one line on stderr, exit 2 (traceback only with --debug).

Every command goes through the one handler in `main`: bitalloc's own errors, OS errors (a full
disk, a permission), malformed or too deeply nested JSON, missing optional packages (naming the
`pip install 'bitalloc[extra]'` that brings them) are one line and exit 2; an interrupt is exit
130; anything else is a bug, still one line (exit 1) unless --debug. Outputs are published only
when a command succeeds (bitalloc.fileio), so a failed command leaves no file behind.
"""
from __future__ import annotations

import argparse
import json
import re
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
    except KeyboardInterrupt as e:  # a message, if any, says what was kept (e.g. a resumable study)
        print(one_line(f"bitalloc: interrupted{f': {e}' if str(e) else ''}"), file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:
        if debug:
            raise
        text, rc = describe(e)
        print(one_line(text), file=sys.stderr)
        return rc


def describe(e: BaseException) -> tuple[str, int]:
    """(the one line to print, exit code) for an exception that ended a command."""
    from bitalloc.extras import message

    if isinstance(e, BitallocError):
        return f"bitalloc: error: {e}", 2
    if isinstance(e, ModuleNotFoundError) and e.name:
        return f"bitalloc: error: {message(e.name)}", 2
    if isinstance(e, RecursionError):
        return "bitalloc: error: input nested too deeply to be read", 2
    if isinstance(e, json.JSONDecodeError):
        return f"bitalloc: error: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})", 2
    if isinstance(e, OSError):
        where = f"{e.filename!s}: " if e.filename else ""
        return f"bitalloc: error: {where}{e.strerror or e}", 2
    if isinstance(e, MemoryError):
        return "bitalloc: error: out of memory (a smaller input, budget list or --workers?)", 2
    return (f"bitalloc: internal error: {type(e).__name__}: {e} (a bug; rerun with --debug for the traceback)", 1)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def one_line(text: str, limit: int = 2000) -> str:
    """`text` with control characters (newlines included) escaped, cut to `limit` characters."""
    text = _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


if __name__ == "__main__":
    sys.exit(main())
