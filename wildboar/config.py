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
import stat
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

import msgspec

from .message import new_urn
from .smtp import Extensions, Limits

DEFAULT_CONFIG_FILE = "/etc/wildboar/wildboar.toml"
ENV_PREFIX = "WILDBOAR_"
#: The variables of the shipped consumer stages (docs/consumers.md "Shipped stages"): each
#: stage reads its own, as a Lambda function reads its environment. They are not part of
#: this configuration, so it neither reads nor refuses them (a stage's process, or a
#: server sharing its environment, would otherwise stop at "unknown key").
STAGE_ENV_PREFIXES = ("WILDBOAR_SCAM_", "WILDBOAR_SPF_", "WILDBOAR_DELIVER_", "WILDBOAR_STORE_")

Positive = Annotated[int, msgspec.Meta(ge=1)]
# At most a day, as the supervisor's --drain-timeout: a longer wait is a typo.
Seconds = Annotated[float, msgspec.Meta(gt=0, le=86400)]
_LISTEN = re.compile(
    r"(?:(?P<name>[a-z][a-z0-9-]*)=)?(?P<host>\[[0-9A-Fa-f:.]+\]|[0-9.]+):(?P<port>[0-9]{1,5})"
)


class Listener(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A listening socket: ``name`` (smtp, submission, submissions, ...), host and port."""

    #: An IP address (``0.0.0.0``, ``::``, ``192.0.2.25``): no name is looked up as root.
    host: str
    #: The TCP port (0: any free one, for tests).
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)]
    #: The listener's name in logs and records; under systemd, the FileDescriptorName=
    #: of the socket these settings are for (smtp, submission, smtps).
    name: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9-]*$")] = "smtp"
    #: TLS on this listener: none, starttls (offered after EHLO, RFC 3207) or implicit (a
    #: TLS handshake before the greeting, RFC 8314: submissions on 465).
    tls: Literal["none", "starttls", "implicit"] = "none"
    #: PEM certificate chains (one file each, or a list: an RSA and an ECDSA one, or one
    #: per name, chosen by SNI) and their private keys, in the same order; needed when tls
    #: is not none. Read by the supervisor (so a key may be root's alone) and re-read at
    #: HUP; "credential:NAME" is systemd's LoadCredential=NAME:PATH (docs/tls.md).
    certificate: str | list[str] = ""
    key: str | list[str] = ""  # the private keys of certificate, in its order
    #: The oldest TLS version taken.
    min_tls_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"
    #: With tls = "starttls": every command but EHLO, NOOP, STARTTLS, QUIT and RSET gets
    #: 530 5.7.0 until the client started TLS (for submission; never on an MX's port 25).
    require_tls: bool = False
    #: Every connection begins with a PROXY protocol header (v1 or v2, docs/proxy.md) from
    #: a proxy in trusted_proxies, before the greeting and before TLS; the client it names
    #: is the client (logs, limits, Received, the record). A connection from elsewhere, or
    #: without a valid header, is closed without a reply.
    proxy_protocol: bool = False
    #: The networks the proxies connect from (["10.0.0.0/8", "::1/128"]).
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    #: The networks of the proxies that may say who their client is with XCLIENT
    #: (nginx's mail proxy with "xclient on"; docs/proxy.md): offered to them in EHLO, and
    #: the client it names is the client from then on; anyone else gets 550 5.7.0.
    xclient_hosts: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        self._check_networks()
        if self.proxy_protocol and not self.trusted_proxies:
            raise ValueError(f"listener {self.name}: proxy_protocol needs trusted_proxies")
        try:
            certificates, keys = self.certificates, self.keys
        except ValueError as error:
            raise ValueError(f"listener {self.name}: {error}") from None
        if self.tls != "none" and not certificates:
            raise ValueError(f"listener {self.name}: tls = {self.tls!r} needs a certificate")
        if len(certificates) != len(keys):
            raise ValueError(
                f"listener {self.name}: {len(certificates)} certificate(s) and {len(keys)}"
                " key(s): give one key per certificate"
            )
        if self.require_tls and self.tls != "starttls":
            raise ValueError(f"listener {self.name}: require_tls needs tls = 'starttls'")
        relative = [p for p in (*certificates, *keys) if not os.path.isabs(p)]
        if relative:
            raise ValueError(f"listener {self.name}: {relative[0]!r} is not an absolute path")
        # An IP literal: the supervisor binds as root and resolves no names while privileged.
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            raise ValueError(f"host {self.host!r} is not an IP address") from None

    def _check_networks(self) -> None:
        for key in ("trusted_proxies", "xclient_hosts"):
            try:
                for network in getattr(self, key):
                    ipaddress.ip_network(network, strict=False)
            except ValueError as error:
                raise ValueError(f"listener {self.name}: {key}: {error}") from None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.name}={host}:{self.port}"

    @property
    def certificates(self) -> list[str]:
        return _paths(self.certificate)

    @property
    def keys(self) -> list[str]:
        return _paths(self.key)


#: ``credential:NAME`` in a listener's certificate or key: the file systemd's
#: ``LoadCredential=NAME:PATH`` put in the service's credentials directory.
CREDENTIAL_PREFIX = "credential:"
#: Where systemd puts wildboar.service's credentials, when ``$CREDENTIALS_DIRECTORY`` (set
#: for the service's processes) is not: ``wildboar check-config`` run by hand.
CREDENTIALS_DEFAULT = "/run/credentials/wildboar.service"
_CREDENTIAL = re.compile(r"[A-Za-z0-9_.-]{1,255}")


def credential_path(value: str) -> str:
    """The file a certificate or key setting names (``credential:NAME`` resolved)."""
    if not value.startswith(CREDENTIAL_PREFIX):
        return value
    name = value.removeprefix(CREDENTIAL_PREFIX)
    if not _CREDENTIAL.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"{value!r}: a credential's name is letters, digits, '_', '.', '-'")
    directory = os.environ.get("CREDENTIALS_DIRECTORY") or CREDENTIALS_DEFAULT
    return os.path.join(directory, name)


def _paths(value: str | list[str]) -> list[str]:
    return [credential_path(p) for p in ([value] if isinstance(value, str) else value) if p]


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
    #: A TLS handshake, or a PROXY protocol header, not done within this time: the
    #: connection is dropped without a reply (and logged).
    handshake: Seconds = 10.0
    #: The longest a session may last, whatever the client keeps sending: 421 4.4.2 after.
    session: Seconds = 3600.0
    #: The content rate (octets per second, on average since the content began) below which
    #: the data-block timeout runs out: each octet moves the deadline on by 1/rate seconds,
    #: never beyond ``data_block`` from now. A drip cannot hold a session for ever.
    data_rate: Annotated[int, msgspec.Meta(ge=1, le=1 << 30)] = 1024


_LMTP_URL = re.compile(
    r"lmtp:(?:unix:(?P<path>/\S+)|(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):(?P<port>[0-9]{1,5}))"
)


def parse_lmtp_url(url: str) -> tuple[str, int] | str:
    """``lmtp:unix:/run/dovecot/lmtp`` -> the socket's path; ``lmtp:HOST:PORT`` (an IPv6
    host in brackets) -> (host, port). ``ValueError`` with the reason otherwise."""
    match = _LMTP_URL.fullmatch(url.strip())
    if match is None:
        raise ValueError(f"{url!r} is not lmtp:unix:/PATH or lmtp:HOST:PORT")
    if match.group("path"):
        return match.group("path")
    port = int(match.group("port"))
    if not 0 < port <= 65535:
        raise ValueError(f"{url!r}: port {port} is not 1 to 65535")
    return match.group("host").strip("[]"), port


class Lmtp(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The LMTP handoff (RFC 2033): delivery into an MDA such as Dovecot."""

    #: Where the MDA listens: ``lmtp:unix:/run/dovecot/lmtp`` or ``lmtp:HOST:PORT``.
    url: str = "lmtp:unix:/run/dovecot/lmtp"
    #: The name given in LHLO; empty: ``hostname``.
    lhlo: str = ""
    #: Check each recipient with the MDA at RCPT time, so that an unknown user or a full
    #: mailbox is refused with the MDA's own reply (none: yes, when the handoff is used).
    verify_recipients: bool | None = None
    #: Connections to the MDA a worker keeps at most (each serves one transaction at a time).
    connections: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 16
    connect_timeout: Seconds = 10.0  # an MDA not connected by then: 451 4.3.0
    #: A reply to a command (LHLO, MAIL, RCPT, DATA) not in within this time: a failure.
    command_timeout: Seconds = 60.0
    #: The replies after the content not in within this time: a failure (RFC 5321
    #: §4.5.3.2.6 gives the end of data 10 minutes; the SMTP client waits for ours).
    data_timeout: Seconds = 300.0
    #: Where recipients the MDA answered with a 4xx wait for their retry (empty:
    #: ``<spool.path>/lmtp``), and where bounces (DSNs) wait for the operator (empty:
    #: ``<spool.path>/bounce``).
    retry_spool: str = ""
    bounce_spool: str = ""  # where bounces wait (empty: <spool.path>/bounce)
    #: Seconds between attempts: half the message's age, within these.
    retry_min: Seconds = 300.0
    retry_max: Seconds = 4000.0  # the longest time between two attempts
    #: A recipient still refused this long after the message came gets a bounce (5 days).
    max_retry_age: Annotated[float, msgspec.Meta(gt=0, le=60 * 86400)] = 5 * 86400.0

    def __post_init__(self) -> None:
        parse_lmtp_url(self.url)


class Recipients(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Whom this server receives mail for (``wildboar.policy``)."""

    #: The domains this server receives mail for (e.g. ``["example.org", "example.net"]``);
    #: ``["*"]`` accepts every one (for trying out, never for an MX). A configuration file
    #: that leaves it unset does not serve; without a file (the embedded default) every
    #: domain is accepted, and the log says so.
    domains: list[str] | None = None


class Sessions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How many sessions a worker serves, and what they may hold."""

    #: Sessions a worker serves at once (capped to what its open-files limit allows); a
    #: client beyond them gets 421 4.3.2.
    per_worker: Positive = 1000
    #: Sessions one client address may have open at once in a worker; more get 421 4.7.0.
    #: An exact safeguard of each worker, exempt networks included; the limits across all
    #: workers are ``clients.connections`` and its siblings.
    per_client_ip: Positive = 50
    #: Octets of one message's content a session holds in memory; the rest goes to an
    #: unnamed temp file in ``<spool.path>/tmp`` until the handoff reads it back, so a
    #: worker's memory does not grow with what unfinished messages hold.
    content_memory: Annotated[int, msgspec.Meta(ge=4096, le=1 << 30)] = 64 * 1024
    #: Octets of content all deliveries of a worker may hold in memory at once (records
    #: being encoded and handed off); a delivery waits its turn beyond it.
    delivery_memory: Annotated[int, msgspec.Meta(ge=1 << 20, le=1 << 40)] = 32 * 1024 * 1024


#: A per-client limit: at most this many (0: no limit).
Limit = Annotated[int, msgspec.Meta(ge=0, le=1 << 30)]


class Clients(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Per-client limits, held across all workers (docs/operations.md): per client address
    and per network (``ipv4_prefix``, ``ipv6_prefix``), what it may have open at once and
    start in the last minute. Beyond one: ``421 4.7.0`` instead of the greeting, or
    ``450 4.7.1`` to MAIL or RCPT, with a text that names the limit. The counts are shared
    by the workers of one supervisor; a collision in the bounded table can only add to a
    count (a client may be limited early, never late). 0 turns a limit off."""

    #: Sessions one client address may have open at once, across all workers.
    connections: Limit = 20
    connections_per_minute: Limit = 120  # new sessions of one address in the last minute
    messages_per_minute: Limit = 300  # transactions (MAIL) of one address in the last minute
    #: RCPT commands of one address in the last minute (accepted or refused).
    recipients_per_minute: Limit = 1500
    #: Sessions one network (see ``ipv4_prefix``) may have open at once, across all workers.
    network_connections: Limit = 100
    network_connections_per_minute: Limit = 600  # new sessions of one network, last minute
    network_messages_per_minute: Limit = 1500  # transactions of one network, last minute
    network_recipients_per_minute: Limit = 6000  # RCPT commands of one network, last minute
    #: The prefix length that makes an IPv4 address's network (24: a /24).
    ipv4_prefix: Annotated[int, msgspec.Meta(ge=8, le=32)] = 24
    ipv6_prefix: Annotated[int, msgspec.Meta(ge=16, le=128)] = 64  # an IPv6 network's prefix
    #: Networks not limited (trusted relays, monitoring): ``["127.0.0.0/8", "::1/128"]``.
    exempt: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])

    def __post_init__(self) -> None:
        for network in self.exempt:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as error:
                raise ValueError(f"exempt: {error}") from None


DEFAULT_SPOOL_PATH = "./spool"


class Spool(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The spool: the ``spool`` handoff's directory, and the parent of the others."""

    #: The spool directory, owned by ``user`` and writable by it alone; the AMQP buffer,
    #: the LMTP retry spool and the bounce spool are in it by default.
    path: str = DEFAULT_SPOOL_PATH
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
    #: A file of broker URLs, one per line (blank lines and ``#`` comments ignored), read
    #: at every load (so by each worker at every HUP); when set it replaces ``urls``. The
    #: place for passwords: not in a command line (``ps``), not in the main file. It must
    #: not be readable by others (0640 root:wildboar, or 0600 owned by the workers' user).
    urls_file: str = ""
    #: Prepended to every exchange and queue name (``prod.`` -> ``prod.accepted.inbound.email``).
    prefix: str = ""
    #: Routing key of accepted and rejected messages: the stage they leave.
    routing_key: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] = "after.smtp"
    #: Declare a default queue per exchange (``quorum``, recommended, or ``classic`` lazy).
    declare_queues: bool = True
    queue_type: Literal["quorum", "classic"] = "quorum"  # of the declared queues
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
    connect_timeout: Seconds = 10.0  # to connect to a broker, before the next is tried
    #: Seconds between reconnection attempts: doubling from the one to the other.
    reconnect_min: Seconds = 0.5
    reconnect_max: Seconds = 30.0  # the longest wait between reconnection attempts
    #: AMQP heartbeat interval proposed to the broker, in seconds (0: none).
    heartbeat: Annotated[int, msgspec.Meta(ge=0)] = 60
    #: While the broker cannot take a message, spool it (250) and publish it once it is back.
    store_and_forward: bool = False
    #: The store-and-forward spool; empty: ``<spool.path>/amqp``.
    buffer: str = ""
    #: Without store-and-forward, a broker outage refuses sessions at ``connect`` (421 4.3.2)
    #: or transactions at ``mail`` (451 4.3.0).
    when_down: Literal["connect", "mail"] = "connect"

    def __post_init__(self) -> None:
        if self.urls_file:
            msgspec.structs.force_setattr(self, "urls", read_urls_file(self.urls_file))
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


def describe_url(url: str) -> str:
    """``host:port/vhost`` of a broker URL: what the log may show. Read from the masked
    URL, so that no shape of URL (a password with ``/`` or ``@``) brings a password here."""
    try:
        parsed = urllib.parse.urlsplit(mask_url(url))
        hostname = parsed.hostname or "?"
    except ValueError:  # never raise while reporting an error
        return "?"
    try:
        port: int | str = parsed.port or (5671 if parsed.scheme == "amqps" else 5672)
    except ValueError:  # not a number: say so
        port = "?"
    vhost = urllib.parse.unquote(parsed.path[1:]) if len(parsed.path) > 1 else "/"
    return f"{hostname}:{port}{'' if vhost == '/' else '/' + vhost}"


def queue_arguments(settings: Amqp) -> dict[str, Any]:
    """The arguments of every queue wildboar declares (the server's default queues, the
    consumers' stage and dead-letter queues): quorum, or classic lazy."""
    if settings.queue_type == "quorum":
        return {"x-queue-type": "quorum"}
    return {"x-queue-type": "classic", "x-queue-mode": "lazy"}


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
    """Refuse what pika would misread or cannot use; every message shows ``mask_url(url)``."""
    shown = repr(mask_url(url))
    scheme, separator, rest = url.partition("://")
    authority = _authority(rest)
    if "@" in rest[len(authority) :]:
        # "amqp://user:pa/ss@host/": the password's "/" ends the authority, so the URL would
        # name host "user", port "pa" (and the log would show the rest as the vhost). An
        # "@" in the vhost is refused too: an "@" is then always the end of the password.
        raise ValueError(
            f"{shown}: a '/', '?' or '#' in the user or password, and an '@' after the host,"
            " must be percent-encoded (%2F, %3F, %23, %40)"
        )
    try:
        parsed = urllib.parse.urlsplit(url)
        hostname = parsed.hostname
    except ValueError:  # an unbalanced "[" of an IPv6 literal, say
        raise ValueError(f"{shown} is not a valid URL") from None
    if not separator or scheme not in ("amqp", "amqps") or not hostname:
        raise ValueError(f"{shown} is not an amqp:// or amqps:// URL")
    try:
        parsed.port  # noqa: B018 (raises for a port that is not a number in range)
    except ValueError:
        raise ValueError(f"{shown} has a bad port") from None
    if parsed.username is not None and parsed.password is None:
        raise ValueError(f"{shown} names a user without a password (amqp://USER:PASSWORD@HOST/)")


#: What stands for a password in every message, log record and ``check-config`` output.
MASK = "***"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_HOST_PORT = re.compile(r"(\[[^\]]*\]|[^:]*)(?::(.*))?", re.DOTALL)


def _authority(rest: str) -> str:
    """What follows ``scheme://`` up to the path, query or fragment (as urllib and pika
    read it)."""
    return re.split(r"[/?#]", rest, maxsplit=1)[0]


def mask_url(url: str) -> str:
    """``url`` fit for a message: whatever its shape, no part of a password is left.

    The password is everything from the user's ``:`` to the last ``@`` (so a password
    holding ``@``, ``:`` or an unencoded ``/`` is masked whole); a URL without ``@`` whose
    port is not a number may be a password cut short, and loses its port; text that is
    not ``scheme://...`` may be anything (a password pasted alone), and is not shown.
    """
    scheme, separator, rest = url.partition("://")
    if not separator or not _SCHEME.fullmatch(scheme):
        return MASK
    if "@" in rest:
        userinfo, _, after = rest.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        return f"{scheme}://{user}{':' + MASK if colon else ''}@{after}"
    host, port = _host_port(rest)
    if port is not None and not port.isdigit():
        return f"{scheme}://{host}:{MASK}"
    return url


def _host_port(rest: str) -> tuple[str, str | None]:
    """Host and port (None: none) of the authority at the start of ``rest``."""
    match = _HOST_PORT.fullmatch(_authority(rest))
    assert match is not None  # the pattern matches any text
    return match.group(1), match.group(2)


def _password_candidates(url: str) -> set[str]:
    """Every stretch of ``url`` that may be a password, as written."""
    found = {url}
    scheme, separator, rest = url.partition("://")
    text = rest if separator and _SCHEME.fullmatch(scheme) else url
    # The password starts after the user's ":" (the first one; in text that is not a URL,
    # any one) and ends at one of the "@" after it (the last one, by our rule; another,
    # if the operator meant another rule): each such stretch is a candidate.
    colons = [i for i, char in enumerate(text) if char == ":"]
    starts = colons if text is url else colons[:1]
    for at in (i for i, char in enumerate(text) if char == "@"):
        found.update(text[start + 1 : at] for start in starts if start < at)
        found.add(text[:at])
    if "@" not in _authority(text):
        host, port = _host_port(text)
        if port is not None and not port.isdigit():  # "amqp://user:password", no "@host"
            after = text[len(host) + 1 :]
            ends = [i for i, char in enumerate(after) if char in "/?#"] + [len(after)]
            found.update(after[:end] for end in ends)
    try:
        as_pika_reads_it = urllib.parse.urlsplit(url).password
    except ValueError:
        as_pika_reads_it = None
    found.add(as_pika_reads_it or "")
    return found


def url_secrets(url: str) -> set[str]:
    """What a text must not show of ``url``: its password as written and as decoded (pika
    percent-decodes it, so an error of its own may hold that form), and the URL itself."""
    secrets: set[str] = set()
    for candidate in _password_candidates(url):
        secrets.update(
            (candidate, urllib.parse.unquote(candidate), urllib.parse.unquote_plus(candidate))
        )
    secrets.discard("")
    return secrets


def mask_secrets(text: str, urls: Iterable[str]) -> str:
    """``text`` (an exception's, a log field's) with each of ``urls`` shown masked and any
    other trace of their passwords replaced by ``***``: for text that comes from elsewhere
    (pika, the broker) and may quote a URL or a password."""
    urls = list(urls)
    for url in urls:
        text = text.replace(url, mask_url(url))
    secrets = {secret for url in urls for secret in url_secrets(url)}
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


#: Where ``WILDBOAR_AMQP_URLS`` is cut first: at a comma that another URL's ``scheme://``
#: follows, so that a comma in a password (``amqp://u:pa,ss@h/``) does not cut it.
_NEXT_URL = re.compile(r",(?=\s*[A-Za-z][A-Za-z0-9+.-]*://)")


def split_urls(text: str) -> Any:
    """Broker URLs from the environment: a JSON array, or URLs separated by commas. A
    comma before ``scheme://`` separates, and so does one after the last ``@`` of its
    URL (so after the password): ``amqp://h1/,h2`` is two URLs, the second one refused,
    not a vhost ``,h2``; a comma in a vhost or query needs the JSON array."""
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except ValueError:
            return text  # reported by the conversion, with its key (never its text)
    parts: list[str] = []
    for chunk in _NEXT_URL.split(text):
        credentials, at, rest = chunk.rpartition("@")
        first, *others = rest.split(",")
        parts += [credentials + at + first, *others]
    return [part.strip() for part in parts if part.strip()]


#: A file of broker URLs is a few lines; anything much larger is not one.
MAX_URLS_FILE = 64 * 1024


def read_urls_file(path: str) -> list[str]:
    """The broker URLs of ``urls_file``, one per line; ``ValueError`` (one line, naming the
    file, never a password) when it cannot be read, is readable by others, holds no URL,
    or holds a bad one."""
    urls: list[str] = []
    for number, line in enumerate(_read_secret_file(path).split("\n"), 1):
        url = line.strip()
        if not url or url.startswith("#"):
            continue
        try:
            _check_url(url)
        except ValueError as error:
            raise ValueError(f"urls_file {path} line {number}: {error}") from None
        urls.append(url)
    if not urls:
        raise ValueError(f"urls_file {path} holds no broker URL (one per line)")
    return urls


def _read_secret_file(path: str) -> str:
    """The text of a file that holds passwords: a regular file (a FIFO would block the
    load), not readable by every user, of a sane size, UTF-8."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as error:
        raise ValueError(f"urls_file {path}: cannot read: {error.strerror}") from None
    try:
        _check_secret_file(path, os.fstat(fd).st_mode)
        data = _read_at_most(fd, MAX_URLS_FILE + 1)
    except OSError as error:
        raise ValueError(f"urls_file {path}: cannot read: {error.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_URLS_FILE:
        raise ValueError(f"urls_file {path} is larger than {MAX_URLS_FILE} octets")
    try:
        return data.decode("utf-8-sig")  # a BOM an editor wrote is not the URL's
    except UnicodeDecodeError:
        raise ValueError(f"urls_file {path} is not UTF-8 text") from None


def _check_secret_file(path: str, mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise ValueError(f"urls_file {path} is not a regular file")
    if mode & 0o004:
        raise ValueError(
            f"urls_file {path} is readable by every user (mode {stat.S_IMODE(mode):04o})"
            " and holds broker passwords: chmod 0640 it (owner root, group of the"
            " workers' user) or 0600 (owned by the workers' user)"
        )


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole configuration (``wildboar.toml(5)``)."""

    #: This configuration's identity, new at every load.
    id: str = msgspec.field(default_factory=new_urn)
    #: This server's name: in the greeting, the EHLO reply, Received fields and bounces.
    hostname: str = msgspec.field(default_factory=default_hostname)
    #: Where to listen when systemd passes no sockets (under systemd they come from
    #: wildboar.socket and wildboar-submission.socket): ``[NAME=]HOST:PORT`` strings, IPv6
    #: hosts in brackets (``["smtp=0.0.0.0:25", "submission=[::]:587"]``), or
    #: ``[[listen]]`` tables of ``name``, ``host`` and ``port``.
    listen: list[Listener] = msgspec.field(default_factory=lambda: list(DEFAULT_LISTEN))
    #: Worker processes; each serves any number of sessions (a restart changes it).
    workers: Positive = msgspec.field(default_factory=lambda: os.cpu_count() or 1)
    #: TTIN never takes the worker count past this (none: 4 per CPU, at least ``workers``).
    workers_max: Positive | None = None
    #: The unprivileged user and group every process runs as once the sockets are bound.
    user: str = "wildboar"
    group: str = "wildboar"  # the workers' group (see user)
    #: Where accepted messages go: ``spool``, ``amqp``, ``lmtp`` (several: every one must
    #: have the message before the client gets 250), or ``discard`` (benchmarks only).
    handoff: list[Literal["spool", "amqp", "lmtp", "discard"]] = msgspec.field(
        default_factory=lambda: ["spool"]
    )
    spool: Spool = Spool()
    amqp: Amqp = Amqp()
    limits: Limits = Limits()
    extensions: Extensions = Extensions()
    timeouts: Timeouts = Timeouts()
    sessions: Sessions = Sessions()
    clients: Clients = Clients()
    recipients: Recipients = Recipients()
    lmtp: Lmtp = Lmtp()
    #: ``journal`` (native journald fields), ``json`` (one object a line on stderr), or
    #: ``auto``: the journal when stderr is journald's, else JSON.
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
        if self.workers_max is not None and self.workers_max < self.workers:
            raise ValueError(f"workers_max {self.workers_max} is less than workers {self.workers}")
        self._check_spools_apart()

    def _check_spools_apart(self) -> None:
        """Each spool a directory of its own: one's drain or runner would otherwise take the
        other's records (the AMQP buffer's drain would publish the spool handoff's
        messages, the LMTP retry runner deliver them)."""
        spools = [
            ("spool.path", self.spool.path, ""),
            ("amqp.buffer", self.amqp_buffer, "<spool.path>/amqp"),
            ("lmtp.retry_spool", self.lmtp_retry_spool, "<spool.path>/lmtp"),
            ("lmtp.bounce_spool", self.lmtp_bounce_spool, "<spool.path>/bounce"),
        ]
        seen: dict[str, str] = {}
        for key, path, default in spools:
            where = os.path.abspath(path)
            if where in seen:
                raise ValueError(
                    f"{key} {path!r} is {seen[where]}: give it a directory of its own"
                    f" (the default is {default})"
                )
            seen[where] = key

    @property
    def lmtp_retry_spool(self) -> str:
        return self.lmtp.retry_spool or os.path.join(self.spool.path, "lmtp")

    @property
    def lmtp_bounce_spool(self) -> str:
        return self.lmtp.bounce_spool or os.path.join(self.spool.path, "bounce")

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
    "clients": Clients,
    "recipients": Recipients,
    "lmtp": Lmtp,
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
    ``WILDBOAR_AMQP_URLS`` is cut only at a comma before another ``scheme://`` (see
    ``split_urls``), or is a JSON array; set without ``WILDBOAR_AMQP_URLS_FILE``, it also
    overrides a ``urls_file`` of the file, as any higher source overrides a lower one.
    """
    raw: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key == "WILDBOAR_CONFIG":
            continue
        if key.startswith(STAGE_ENV_PREFIXES):
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
    if isinstance(raw.get("amqp"), dict) and "urls" in raw["amqp"]:
        raw["amqp"]["urls"] = split_urls(raw["amqp"]["urls"])
        raw["amqp"].setdefault("urls_file", "")
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
    """``list[...]``, or ``list[...] | None``."""
    options = typing.get_args(type_) if isinstance(type_, types.UnionType) else (type_,)
    return any(getattr(option, "__origin__", None) is list for option in options)


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


#: The keys that name files or directories: a relative value is taken from ``directory``.
PATH_KEYS = (
    ("spool", "path"),
    ("amqp", "buffer"),
    ("amqp", "urls_file"),
    ("lmtp", "retry_spool"),
    ("lmtp", "bounce_spool"),
)


def _absolute_paths(raw: dict[str, Any], directory: str) -> dict[str, Any]:
    """``raw`` with every relative path of ``PATH_KEYS`` (the default spool path included)
    joined to ``directory``: the processes run in ``/``, whatever directory ``wildboar
    serve`` was started in."""
    spool = raw.setdefault("spool", {})
    if isinstance(spool, dict):
        spool.setdefault("path", DEFAULT_SPOOL_PATH)
    for section, key in PATH_KEYS:
        table = raw.get(section)
        value = table.get(key) if isinstance(table, dict) else None
        if isinstance(table, dict) and isinstance(value, str) and value:
            table[key] = os.path.normpath(os.path.join(directory, value))
    return raw


def config_file(
    file: str | None = None, environ: Mapping[str, str] | None = None, directory: str | None = None
) -> str | None:
    """The file ``load`` reads: ``file``, else ``$WILDBOAR_CONFIG``, else the default path if
    it exists; absolute (relative to ``directory``). None: no file, the embedded default."""
    environ = os.environ if environ is None else environ
    path = file or environ.get("WILDBOAR_CONFIG")
    if path is None and os.path.exists(DEFAULT_CONFIG_FILE):
        path = DEFAULT_CONFIG_FILE
    if path is not None and not os.path.isabs(path):
        path = os.path.join(directory or os.getcwd(), path)
    return path


def serving_errors(config: Config, file: str | None) -> list[str]:
    """What stops ``config`` (read from ``file``, None for none) from serving mail: a
    configuration file that does not say which domains are ours."""
    if file is not None and config.recipients.domains is None:
        return [
            f"recipients.domains: not set in {file}: list the domains this server receives"
            ' mail for (["*"] accepts every domain: for trying out, never for an MX)'
        ]
    return []


def serving_warnings(config: Config) -> list[str]:
    """What ``check-config`` and a worker's start-up log say about a configuration that
    serves, but not as an MX should."""
    domains = config.recipients.domains
    if domains is None or "*" in domains:
        return [
            'recipients.domains: every domain is accepted (the embedded default, or "*"):'
            " this server takes mail for anyone, fine for trying it out, never for an MX"
        ]
    return []


def load(
    *,
    file: str | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    directory: str | None = None,
) -> Config:
    """Defaults < file (``file``, else ``$WILDBOAR_CONFIG``, else the default path if it
    exists) < environment < flags. Relative paths are taken from ``directory`` (default:
    the current one), so a configuration means the same in every process."""
    environ = os.environ if environ is None else environ
    directory = directory or os.getcwd()
    path = config_file(file, environ, directory)
    layers: list[Mapping[str, Any]] = [read_file(path)] if path else []
    layers.append(from_env(environ))
    layers.append({k: v for k, v in (flags or {}).items() if v is not None})
    return build(_absolute_paths(merge(*layers), directory))


def to_toml_like(config: Config) -> str:
    """The effective configuration as TOML text, for ``check-config``; broker passwords
    are shown as ``***`` (its output ends up in tickets and chat). A key left unset (TOML
    has no null) is shown as a comment saying so; warnings come first, as comments."""
    data = msgspec.to_builtins(config)
    data["amqp"]["urls"] = [mask_url(url) for url in data["amqp"]["urls"]]
    lines: list[str] = []
    tables: list[str] = []
    for key, value in data.items():
        if key == "listen":
            for listener in value:
                tables.append("[[listen]]\n" + _toml_table(listener))
        elif isinstance(value, dict):
            tables.append(f"[{key}]\n" + _toml_table(value))
        else:
            lines.append(_toml_line(key, value))
    warnings = "".join(f"# warning: {warning}\n" for warning in serving_warnings(config))
    return warnings + "\n".join(lines) + "\n\n" + "\n\n".join(tables) + "\n"


def _toml_line(key: str, value: Any) -> str:
    return f"# {key} is not set" if value is None else f"{key} = {_toml_value(value)}"


def _toml_table(table: Mapping[str, Any]) -> str:
    return "".join(_toml_line(key, value) + "\n" for key, value in table.items())


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
    parser.add_argument(
        "--directory",
        metavar="DIR",
        help="where relative paths of the configuration start (default: the current directory)",
    )
    parser.add_argument(
        "--listen",
        action="append",
        metavar="[NAME=]HOST:PORT",
        help="listen there (repeatable; ignored when systemd passes the sockets)",
    )
    parser.add_argument("--workers", type=int, metavar="N", help="worker processes")
    parser.add_argument("--spool", metavar="DIR", help="spool directory")
    parser.add_argument("--hostname", help="this server's name in replies and headers")
    parser.add_argument(
        "--handoff",
        action="append",
        choices=["spool", "amqp", "lmtp", "discard"],
        help="delivery target (repeatable: every one must take the message)",
    )
    brokers = parser.add_mutually_exclusive_group()
    brokers.add_argument(
        "--amqp-url",
        action="append",
        metavar="URL",
        help="RabbitMQ URL (repeatable, tried in order); implies --handoff amqp. Any local"
        " user sees a command line (ps): give a URL with a password in --amqp-url-file",
    )
    brokers.add_argument(
        "--amqp-url-file",
        metavar="FILE",
        help="file of RabbitMQ URLs, one per line, mode 0640 root:wildboar (read by"
        " the workers, never on a command line: the place for passwords); implies"
        " --handoff amqp",
    )
    parser.add_argument(
        "--lmtp",
        metavar="URL",
        help="deliver over LMTP: lmtp:unix:/run/dovecot/lmtp or lmtp:HOST:PORT; implies"
        " --handoff lmtp",
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
    urls_file = args.amqp_url_file  # argparse refuses it with --amqp-url
    if args.amqp_url:
        flags["amqp"] = {"urls": args.amqp_url, "urls_file": ""}  # over a file's urls_file
    elif urls_file:
        flags["amqp"] = {"urls_file": urls_file}
    implied = ["amqp"] if args.amqp_url or urls_file else []
    if getattr(args, "lmtp", None):
        flags["lmtp"] = {"url": args.lmtp}
        implied.append("lmtp")
    if implied and not args.handoff:
        flags["handoff"] = implied
    return flags
