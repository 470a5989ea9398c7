"""Typed configuration: built-in defaults < TOML file < ``WILDBOAR_*`` environment < flags.

Owns: the ``Config`` schema, reading and merging its sources, and reporting every error
with the key it concerns (``wildboar check-config``).
Must not know: sockets, processes, handoff internals.
Security: the file and environment are trusted input from the operator, but are still
validated completely before anything starts; a bad value stops the start with a message,
never a traceback.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import socket
import tomllib
import urllib.parse
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

from .message import new_urn
from .smtp import Extensions, Limits

DEFAULT_CONFIG_FILE = "/etc/wildboar/wildboar.toml"
ENV_PREFIX = "WILDBOAR_"

Positive = Annotated[int, msgspec.Meta(ge=1)]
# At most a day, as the supervisor's --drain-timeout: a longer wait is a typo.
Seconds = Annotated[float, msgspec.Meta(gt=0, le=86400)]
_LISTEN = re.compile(
    r"(?:(?P<name>[a-z][a-z0-9-]*)=)?(?P<host>\[[0-9A-Fa-f:.]+\]|[0-9.]+):(?P<port>[0-9]{1,5})"
)


class Listener(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A listening socket: ``name`` (smtp, submission, submissions, ...), host and port."""

    host: str
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)]
    name: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9-]*$")] = "smtp"

    def __post_init__(self) -> None:
        # An IP literal: the supervisor binds as root and resolves no names while privileged.
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            raise ValueError(f"host {self.host!r} is not an IP address") from None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.name}={host}:{self.port}"


def default_hostname() -> str:
    """The machine's fully qualified name; its plain host name when the resolver only
    knows it as ``localhost`` (an /etc/hosts that maps the name to 127.0.0.1 makes
    ``getfqdn`` answer that), which no server should greet with."""
    fqdn = socket.getfqdn()
    if fqdn.lower().split(".")[0] != "localhost":
        return fqdn
    return socket.gethostname() or fqdn


#: Where ``wildboar serve`` listens when nothing says otherwise (and systemd passes none).
DEFAULT_LISTEN = (Listener(host="127.0.0.1", port=2525),)


def parse_listener(text: str) -> Listener:
    """``[NAME=]HOST:PORT``, IPv6 hosts in brackets: ``submission=[::]:587``."""
    match = _LISTEN.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not [NAME=]HOST:PORT")
    fields = {
        "host": match.group("host").strip("[]"),
        "port": int(match.group("port")),
        "name": match.group("name") or "smtp",
    }
    return msgspec.convert(fields, Listener)


class Timeouts(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """RFC 5321 §4.5.3.2 timeouts, in seconds."""

    command: Seconds = 300.0  # waiting for the next command (§4.5.3.2.7)
    data_block: Seconds = 180.0  # waiting for the next piece of DATA/BDAT content
    handoff: Seconds = 540.0  # making a message durable, under the client's 10 min (§4.5.3.2.6)
    drain: Seconds = 30.0  # graceful stop: how long sessions may finish


class Sessions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    per_worker: Positive = 1000
    per_client_ip: Positive = 50


class Spool(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: str = "./spool"
    #: Largest number of messages made durable by one group commit.
    batch: Positive = 64


#: AMQP 0-9-1 short strings (exchange and queue names) hold at most 255 octets.
MAX_AMQP_NAME = 255
#: The exchanges the AMQP handoff declares, before ``amqp.prefix``.
EXCHANGE_NAMES = (
    "accepted.inbound.email",
    "rejected.inbound.email",
    "accepted.outbound.email",
    "rejected.outbound.email",
)


class Amqp(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The AMQP handoff (RabbitMQ): where to publish and what to do when the broker is away."""

    #: Broker URLs (pika's URL syntax), tried in order: the first that answers is used.
    urls: list[str] = msgspec.field(
        default_factory=lambda: ["amqp://guest:guest@127.0.0.1:5672/%2F"]
    )
    #: Prepended to every exchange and queue name (``prod.`` -> ``prod.accepted.inbound.email``).
    prefix: str = ""
    #: Routing key of accepted and rejected messages: the stage they leave.
    routing_key: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] = "after.smtp"
    #: Declare a default queue per exchange (``quorum``, recommended, or ``classic`` lazy).
    declare_queues: bool = True
    queue_type: Literal["quorum", "classic"] = "quorum"
    #: The record's encoding: ``application/json`` or ``application/msgpack``.
    format: Literal["json", "msgpack"] = "json"
    #: Publish connection, transaction and rejection events to the topic exchange ``events``.
    events: bool = True
    #: The largest record the broker takes (RabbitMQ's ``max_message_size``: 16 MiB by
    #: default since 4.0, 128 MiB before). A larger one would close the channel every
    #: session shares; it is refused with 552 5.3.4 instead.
    max_message_size: Annotated[int, msgspec.Meta(ge=1024, le=536_870_912)] = 16 * 1024 * 1024
    #: A publish not confirmed within this time is a failure (451 or store-and-forward).
    confirm_timeout: Seconds = 30.0
    connect_timeout: Seconds = 10.0
    reconnect_min: Seconds = 0.5
    reconnect_max: Seconds = 30.0
    heartbeat: Annotated[int, msgspec.Meta(ge=0)] = 60
    #: While the broker cannot take a message, spool it (250) and publish it once it is back.
    store_and_forward: bool = False
    #: The store-and-forward spool; empty: ``<spool.path>/amqp``.
    buffer: str = ""
    #: Without store-and-forward, a broker outage refuses sessions at ``connect`` (421 4.3.2)
    #: or transactions at ``mail`` (451 4.3.0).
    when_down: Literal["connect", "mail"] = "connect"

    def __post_init__(self) -> None:
        for url in self.urls:
            _check_url(url)
        longest = max(len(name) for name in (*EXCHANGE_NAMES, "events"))
        if len((self.prefix).encode()) + longest > MAX_AMQP_NAME:
            raise ValueError(
                f"prefix: at most {MAX_AMQP_NAME - longest} octets (exchange and queue names"
                f" are at most {MAX_AMQP_NAME})"
            )
        if not self.urls:
            raise ValueError("urls: at least one broker URL is needed")

    def exchange(self, name: str) -> str:
        return self.prefix + name


#: Per recipient, what a record can hold besides the content: the address twice (``to``
#: and ``recipients``, up to 256 octets each, escaped), an ORCPT of up to 500, NOTIFY, keys.
RECORD_PER_RECIPIENT = 2048
#: The rest of a record's envelope: ids, times, HELO name, sender, ENVID, Received field.
RECORD_ENVELOPE = 64 * 1024


def _largest_record(message_size: int, recipients: int, encoding: str) -> int:
    """A bound on the encoded record of a message of ``message_size`` octets with
    ``recipients`` recipients: the content (base64 in JSON) and the envelope."""
    data = 4 * -(-message_size // 3) if encoding == "json" else message_size
    return data + RECORD_ENVELOPE + recipients * RECORD_PER_RECIPIENT


def _check_url(url: str) -> None:
    scheme, _, rest = url.partition("://")
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if "@" in rest and "@" not in authority:
        # "amqp://user:pa/ss@host/": the password's "/" ends the authority, so the URL
        # would name host "user", port "pa" (and the log would show the rest).
        raise ValueError(
            f"{_without_password(url)!r}: a '/', '?' or '#' in the user or password must be"
            " percent-encoded (%2F, %3F, %23)"
        )
    parsed = urllib.parse.urlsplit(url)
    if scheme not in ("amqp", "amqps") or not parsed.hostname:
        raise ValueError(f"{_without_password(url)!r} is not an amqp:// or amqps:// URL")
    try:
        parsed.port  # noqa: B018 (raises for a port that is not a number in range)
    except ValueError:
        raise ValueError(f"{_without_password(url)!r} has a bad port") from None
    if parsed.username is not None and parsed.password is None:
        raise ValueError(f"{url!r} names a user without a password (amqp://USER:PASSWORD@HOST/)")


def _without_password(url: str) -> str:
    """``url`` with everything between the user's ``:`` and the last ``@`` masked: also
    right for a URL whose password holds a character that ends the authority."""
    scheme, separator, rest = url.partition("://")
    if not separator or "@" not in rest:
        return url
    userinfo, _, after = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{after}"


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: This configuration's identity, new at every load.
    id: str = msgspec.field(default_factory=new_urn)
    hostname: str = msgspec.field(default_factory=default_hostname)
    listen: list[Listener] = msgspec.field(default_factory=lambda: list(DEFAULT_LISTEN))
    workers: Positive = msgspec.field(default_factory=lambda: os.cpu_count() or 1)
    user: str = "wildboar"
    group: str = "wildboar"
    handoff: list[Literal["spool", "amqp", "discard"]] = msgspec.field(
        default_factory=lambda: ["spool"]
    )
    spool: Spool = Spool()
    amqp: Amqp = Amqp()
    limits: Limits = Limits()
    extensions: Extensions = Extensions()
    timeouts: Timeouts = Timeouts()
    sessions: Sessions = Sessions()
    log_format: Literal["auto", "json", "journal"] = "auto"

    def __post_init__(self) -> None:
        if "amqp" in self.handoff:
            limits = self.limits
            largest = _largest_record(limits.message_size, limits.recipients, self.amqp.format)
            if largest > self.amqp.max_message_size:
                raise ValueError(
                    f"limits.message_size {limits.message_size} with limits.recipients"
                    f" {limits.recipients} makes {self.amqp.format} records of up to"
                    f" ~{largest} octets, over amqp.max_message_size"
                    f" {self.amqp.max_message_size}: lower the one or raise the other"
                )
        if os.path.abspath(self.amqp_buffer) == os.path.abspath(self.spool.path):
            # The buffer's drain would publish (and remove) the spool handoff's messages.
            raise ValueError(
                f"amqp.buffer {self.amqp_buffer!r} is spool.path: give the AMQP buffer a"
                " directory of its own (the default is <spool.path>/amqp)"
            )

    @property
    def amqp_buffer(self) -> str:
        """The AMQP store-and-forward spool: ``amqp.buffer``, else ``<spool.path>/amqp``."""
        return self.amqp.buffer or os.path.join(self.spool.path, "amqp")


class ConfigError(Exception):
    """One or more configuration errors, each ``key: why``."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


_SECTIONS: dict[str, type[msgspec.Struct]] = {
    "spool": Spool,
    "amqp": Amqp,
    "limits": Limits,
    "extensions": Extensions,
    "timeouts": Timeouts,
    "sessions": Sessions,
}
_FIELDS = {f.name: f for f in msgspec.structs.fields(Config)}


def read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as error:
        raise ConfigError([f"{path}: cannot read: {error.strerror}"]) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"{path}: not valid TOML: {error}"]) from None


def from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """``WILDBOAR_WORKERS=4``, ``WILDBOAR_LIMITS_MESSAGE_SIZE=...``, ``WILDBOAR_LISTEN=a,b``.

    ``WILDBOAR_SPOOL`` is short for ``WILDBOAR_SPOOL_PATH``; list values are comma-separated.
    """
    raw: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key == "WILDBOAR_CONFIG":
            continue
        name = key.removeprefix(ENV_PREFIX).lower()
        if name == "spool":
            name = "spool_path"
        section = next((s for s in _SECTIONS if name.startswith(s + "_")), None)
        if section is not None:
            raw.setdefault(section, {})[name.removeprefix(section + "_")] = value
        elif name in ("listen", "handoff"):
            raw[name] = [item.strip() for item in value.split(",") if item.strip()]
        else:
            raw[name] = value
    return raw


def merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Later layers win; sections merge key by key."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if (
                key in _SECTIONS
                and isinstance(value, Mapping)
                and isinstance(merged.get(key), dict)
            ):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    return merged


def build(raw: Mapping[str, Any]) -> Config:
    """Validate every key of ``raw`` and build the Config, or raise every error at once."""
    errors: list[str] = []
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _FIELDS:
            errors.append(f"{key}: unknown key")
        elif key in _SECTIONS:
            values[key] = _section(key, value, errors)
        elif key == "listen":
            values[key] = _listeners(value, errors)
        else:
            values[key] = _convert(key, value, _FIELDS[key].type, errors)
    if errors:
        raise ConfigError(errors)
    try:
        return msgspec.convert(values, Config, strict=False)
    except msgspec.ValidationError as error:
        raise ConfigError([str(error)]) from None


def _convert(key: str, value: Any, type_: Any, errors: list[str]) -> Any:
    try:
        return msgspec.convert(value, type_, strict=False)
    except msgspec.ValidationError as error:
        errors.append(f"{key}: {str(error).replace(' - at `$`', '')}")
        return None


def _section(name: str, value: Any, errors: list[str]) -> Any:
    if not isinstance(value, Mapping):
        errors.append(f"{name}: expected a table of keys")
        return None
    kind = _SECTIONS[name]
    fields = {f.name: f for f in msgspec.structs.fields(kind)}
    converted: dict[str, Any] = {}
    before = len(errors)
    for key, item in value.items():
        if key not in fields:
            errors.append(f"{name}.{key}: unknown key")
            continue
        raw = item
        if isinstance(item, str) and _is_list(fields[key].type):
            raw = _env_list(item)
        failed = len(errors)
        result = _convert(f"{name}.{key}", raw, fields[key].type, errors)
        if len(errors) == failed:
            converted[key] = result
    # The section's own checks (the RFC floors of limits, broker URLs) run on the keys that
    # converted, even when others did not: every error is reported in one go.
    try:
        section = msgspec.convert(converted, kind, strict=False)
    except msgspec.ValidationError as error:
        errors.append(f"{name}: {error}")
        return None
    return section if len(errors) == before else None


def _env_list(text: str) -> Any:
    """A list from the environment: comma-separated, or a JSON array (for values that may
    hold commas, such as URLs with passwords)."""
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except ValueError:
            return text  # reported by the conversion, with its key
    return [part.strip() for part in text.split(",") if part.strip()]


def _is_list(type_: Any) -> bool:
    return getattr(type_, "__origin__", None) is list


def _listeners(value: Any, errors: list[str]) -> list[Listener]:
    items = value if isinstance(value, list) else [value]
    result: list[Listener] = []
    for index, item in enumerate(items):
        try:
            if isinstance(item, str):
                result.append(parse_listener(item))
            else:
                result.append(msgspec.convert(item, Listener, strict=False))
        except (ValueError, msgspec.ValidationError) as error:
            errors.append(f"listen[{index}]: {error}")
    if not items:
        errors.append("listen: at least one listener is needed")
    return result


def load(
    *,
    file: str | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Defaults < file (``file``, else ``$WILDBOAR_CONFIG``, else the default path if it
    exists) < environment < flags."""
    environ = os.environ if environ is None else environ
    path = file or environ.get("WILDBOAR_CONFIG")
    if path is None and os.path.exists(DEFAULT_CONFIG_FILE):
        path = DEFAULT_CONFIG_FILE
    layers: list[Mapping[str, Any]] = [read_file(path)] if path else []
    layers.append(from_env(environ))
    layers.append({k: v for k, v in (flags or {}).items() if v is not None})
    return build(merge(*layers))


def to_toml_like(config: Config) -> str:
    """The effective configuration as TOML text, for ``check-config``; broker passwords
    are shown as ``***`` (its output ends up in tickets and chat)."""
    data = msgspec.to_builtins(config)
    data["amqp"]["urls"] = [_without_password(url) for url in data["amqp"]["urls"]]
    lines: list[str] = []
    tables: list[str] = []
    for key, value in data.items():
        if key == "listen":
            for listener in value:
                tables.append("[[listen]]\n" + _toml_table(listener))
        elif isinstance(value, dict):
            tables.append(f"[{key}]\n" + _toml_table(value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n\n" + "\n\n".join(tables) + "\n"


def _toml_table(table: Mapping[str, Any]) -> str:
    return "".join(f"{key} = {_toml_value(value)}\n" for key, value in table.items())


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return msgspec.json.encode(value).decode()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def config_flags(parser: argparse.ArgumentParser) -> None:
    """The configuration flags shared by ``wildboar serve``, ``check-config`` and workers."""
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    parser.add_argument("--listen", action="append", metavar="[NAME=]HOST:PORT")
    parser.add_argument("--workers", type=int, metavar="N")
    parser.add_argument("--spool", metavar="DIR", help="spool directory")
    parser.add_argument("--hostname", help="this server's name in replies and headers")
    parser.add_argument(
        "--handoff",
        action="append",
        choices=["spool", "amqp", "discard"],
        help="delivery target (repeatable: every one must take the message)",
    )
    parser.add_argument(
        "--amqp-url",
        action="append",
        metavar="URL",
        help="RabbitMQ URL (repeatable, tried in order); implies --handoff amqp",
    )


def flags_of(args: argparse.Namespace) -> dict[str, object]:
    flags: dict[str, object] = {
        "listen": args.listen,
        "workers": args.workers,
        "hostname": args.hostname,
        "handoff": args.handoff,
    }
    if args.spool is not None:
        flags["spool"] = {"path": args.spool}
    if args.amqp_url:
        flags["amqp"] = {"urls": args.amqp_url}
        if not args.handoff:
            flags["handoff"] = ["amqp"]
    return flags
