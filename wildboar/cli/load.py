"""The configuration as a command loads it: ``serve`` and ``check-config`` (and the host
name ``spool`` passes when it needs none).

Owns: loading the configuration from a command's flags (``wildboar.config``'s sources:
defaults, file, ``WILDBOAR_*`` environment, flags), every error as one line on stderr,
and ``UNRESOLVED_HOSTNAME``, the host name used where none must be looked up.
Must not know: what the command does with the configuration.
Security: ``serve`` validates the configuration as root, before the privilege drop: the
host name is not looked up there (NSS and DNS as root), but by each worker, unprivileged.
"""

from __future__ import annotations

import argparse
import sys

from .. import config as C

#: The host name of a configuration loaded as root (see above).
UNRESOLVED_HOSTNAME = "hostname.invalid"


def load_config(args: argparse.Namespace, resolve_hostname: bool = True) -> C.Config | None:
    """The configuration ``args`` name, or None after its errors were said on stderr."""
    flags = C.flags_of(args)
    if not resolve_hostname and flags.get("hostname") is None:
        flags["hostname"] = UNRESOLVED_HOSTNAME
    try:
        config = C.load(file=args.config, flags=flags, directory=args.directory)
        errors = C.serving_errors(config, C.config_file(args.config, directory=args.directory))
    except C.ConfigError as error:
        errors = error.errors
    for line in errors:
        print(f"wildboar: config: {line}", file=sys.stderr)
    return None if errors else config
