"""Settings of the shipped stages, read from the environment as a Lambda function's are.

Owns: reading and checking ``WILDBOAR_*`` variables (a choice among words, a path, a
number of seconds, a ``HOST:PORT``), each failure one line naming the variable, its value
and what it may be (``SettingError``); the stage name a verdict is stamped with.
Must not know: what a stage does with its settings.
Security: values are checked before any is used; a bad one stops the stage at its first
message with that line, never with a traceback of the stage's own.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping


class SettingError(ValueError):
    """A ``WILDBOAR_*`` variable with a value the stage cannot use; ``str()`` says which."""


def stage_name(context: object, default: str) -> str:
    """The stage the runtime runs this handler as (``context.function_name``), else
    ``default`` (the module's name)."""
    name = getattr(context, "function_name", None)
    return name if isinstance(name, str) and name else default


def choice(environ: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    """``environ[name]`` (lowercased, trimmed) if one of ``allowed``; ``default`` if unset
    or empty."""
    value = environ.get(name, "").strip().lower()
    if not value:
        return default
    if value not in allowed:
        raise SettingError(f"{name}={environ[name]!r}: must be one of {', '.join(allowed)}")
    return value


def text(environ: Mapping[str, str], name: str) -> str | None:
    """``environ[name]`` trimmed, or None if unset or empty."""
    value = environ.get(name, "").strip()
    return value or None


def seconds(
    environ: Mapping[str, str], name: str, default: float, *, low: float, high: float
) -> float:
    """``environ[name]`` as seconds within ``low`` and ``high``; ``default`` if unset."""
    value = text(environ, name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not low <= number <= high:  # NaN fails this too
        raise SettingError(f"{name}={value!r}: must be seconds from {low:g} to {high:g}")
    return number


def endpoint(environ: Mapping[str, str], name: str, default_port: int) -> tuple[str, int] | None:
    """``environ[name]`` as an IP address and port: ``192.0.2.1``, ``192.0.2.1:5353``,
    ``2001:db8::1``, ``[2001:db8::1]:5353``; None if unset."""
    value = text(environ, name)
    if value is None:
        return None
    host, port = _split_host_port(value)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise SettingError(f"{name}={value!r}: not an IP address (and optional :PORT)") from None
    number = int(port) if port.isdigit() else default_port if not port else -1
    if not 0 < number <= 65535:
        raise SettingError(f"{name}={value!r}: port {port!r} is not a number from 1 to 65535")
    return str(address), number


def _split_host_port(value: str) -> tuple[str, str]:
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, rest.removeprefix(":") if rest.startswith(":") else rest or ""
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        return host, port
    return value, ""  # an IPv4 address alone, or an IPv6 address alone
