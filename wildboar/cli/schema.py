"""``wildboar schema``: the JSON Schema of the message record.

Owns: the ``schema`` command (the schema itself is ``wildboar.message.json_schema``; it is
published as ``docs/message.schema.json``).
Must not know: the schema's contents.
Security: reads nothing, prints a constant.
"""

from __future__ import annotations

import argparse
import json
import sys

from .. import message as M


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    schema = subparsers.add_parser("schema", help="print the JSON Schema of the message record")
    schema.set_defaults(func=cmd_schema)


def cmd_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(json.dumps(M.json_schema(), indent=2, sort_keys=True) + "\n")
    return 0
