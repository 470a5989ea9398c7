"""``wildboar check-config [config flags]``: the effective configuration, or its errors.

Owns: the ``check-config`` command: prints the configuration that ``serve`` would run with
(every source applied), or every error with its key and why, and exits 1.
Must not know: how the configuration is validated (``wildboar.config``).
Security: reads the configuration only; prints no broker password (``to_toml_like`` masks
them).
"""

from __future__ import annotations

import argparse
import sys

from .. import config as C
from .load import load_config


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = subparsers.add_parser(
        "check-config", help="print the effective configuration or its errors"
    )
    C.config_flags(check)
    check.set_defaults(func=cmd_check_config)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args)
    if config is None:
        return 1
    sys.stdout.write(C.to_toml_like(config))
    return 0
