"""The ``wildboar`` command line: one module per command, and the parser that joins them.

Owns: the top-level parser (``wildboar COMMAND``), the order its commands are listed in,
and what ``main`` makes of an error no command handles (one line on stderr, status 1; a
closed stdout, as when piped into ``head``, is not an error). Each command lives in a
module of its own with ``add_parser(subparsers)``: ``serve``, ``check_config``, ``spool``,
``consume``, ``replay``, ``schema``.
Must not know: what a command does.
Security: none of its own; see each command's module.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .. import smtp
from . import check_config, consume, replay, schema, serve, spool

COMMANDS = (serve, check_config, spool, consume, replay, schema)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="wildboar", description="Inbound SMTP server.")
    sub = top.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except smtp.LocalProtocolError as error:
        print(f"wildboar: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. piped into head: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
