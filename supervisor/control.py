"""The control channel between the supervisor and one worker (docs/architecture.md).

Owns: the ``AF_UNIX``/``SOCK_SEQPACKET`` socketpair, the encoding of the supervisor's messages
(``sockets`` with the listening sockets as ``SCM_RIGHTS``, then the descriptors its
``descriptors`` field names: ``clients``, the shared table of per-client counts, and
``file.N``, the sealed copies of the ``--pass-file`` files;
``drain``) and the parsing of the worker's (``ready`` with its pid and drain deadline,
``heartbeat``, ``stopping``) into frozen values. One message is one JSON object of at most
64 KiB.
Must not know: what the supervisor does with a message.
SECURITY: the worker is unprivileged and not trusted. A message that is too long, nested
deeper than ``MAX_DEPTH`` (checked before it is parsed: the parser recurses), not JSON, not
an object, of an unknown type or with a field of the wrong type becomes ``Malformed``, and
so does anything else the parser raises;
unknown extra fields are ignored (forward compatible). At most ``MAX_BATCH`` messages are read
per wake-up so that one chatty worker cannot starve the loop. Sending never blocks: the
supervisor's end is non-blocking and a full or broken channel is reported, not waited on.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

MAX_MESSAGE: Final = 64 * 1024
MAX_BATCH: Final = 64
#: Every message of the protocol is one flat object; a little room for later versions.
MAX_DEPTH: Final = 4


#: The longest drain a worker may ask for, as ``--drain-timeout`` allows.
MAX_DRAIN: Final = 86400.0


@dataclass(frozen=True)
class Ready:
    pid: int
    #: The drain deadline of the configuration the worker started with (seconds), if it
    #: says: after a HUP it may differ from the supervisor's ``--drain-timeout``.
    drain: float | None = None
    #: How long, after the drain deadline, it lets messages being made durable finish.
    handoff: float | None = None


@dataclass(frozen=True)
class Heartbeat:
    sessions: int
    messages: int


@dataclass(frozen=True)
class Stopping:
    pass


@dataclass(frozen=True)
class Malformed:
    reason: str


Message = Ready | Heartbeat | Stopping | Malformed


def socketpair() -> tuple[socket.socket, socket.socket]:
    """(supervisor's end, non-blocking; worker's end, to pass with ``pass_fds``)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    return ours, theirs


def _encode(message: dict[str, object]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Descriptor:
    """A descriptor sent after the listening sockets: its ``name`` in the message's
    ``descriptors`` list, and ``about`` it, the message's field of that same name."""

    name: str
    fd: int
    about: Mapping[str, object]


def send_sockets(
    channel: socket.socket,
    names: Sequence[str],
    fds: Sequence[int],
    worker: int,
    extra: Sequence[Descriptor] = (),
) -> None:
    """The first message: socket names, with the sockets in the same order as SCM_RIGHTS;
    then, after them in the same order, the descriptors ``descriptors`` names (a worker
    that knows none of them takes the sockets as before)."""
    message: dict[str, object] = {"type": "sockets", "names": list(names), "worker": worker}
    if extra:
        message["descriptors"] = [descriptor.name for descriptor in extra]
        message.update({descriptor.name: dict(descriptor.about) for descriptor in extra})
    socket.send_fds(channel, [_encode(message)], [*fds, *(d.fd for d in extra)])


def send_drain(channel: socket.socket, deadline: float) -> bool:
    """Tell the worker to drain within ``deadline`` seconds; False if it cannot be told."""
    try:
        channel.send(_encode({"type": "drain", "deadline": deadline}))
    except OSError:
        return False
    return True


def _count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _parse_object(message: dict[str, object]) -> Message:
    kind = message.get("type")
    if kind == "heartbeat":
        sessions, messages = _count(message.get("sessions")), _count(message.get("messages"))
        if sessions is None or messages is None:
            return Malformed("heartbeat without counts")
        return Heartbeat(sessions, messages)
    if kind == "ready":
        pid = _count(message.get("pid"))
        if pid is None:
            return Malformed("ready without pid")
        seconds: dict[str, float | None] = {}
        for key in ("drain", "handoff"):
            value = message.get(key)
            if value is not None and (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not 0 <= value <= MAX_DRAIN  # also refuses NaN
            ):
                return Malformed(f"ready with a {key} that is not 0 to 86400 seconds")
            seconds[key] = None if value is None else float(value)
        return Ready(pid, seconds["drain"], seconds["handoff"])
    if kind == "stopping":
        return Stopping()
    return Malformed(f"unknown message type {str(kind)[:40]!r}")


def _bracket_depths(data: bytes) -> Iterator[int]:
    """The nesting depth after each bracket of JSON text outside strings."""
    depth = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            escaped, in_string = (False, True) if escaped else (byte == 0x5C, byte != 0x22)
        elif byte == 0x22:  # a quote opens a string
            in_string = True
        elif byte in b"[{]}":
            depth += 1 if byte in b"[{" else -1
            yield depth


def too_deep(data: bytes) -> bool:
    """Whether the arrays and objects of JSON text ``data`` nest deeper than ``MAX_DEPTH``
    (brackets inside strings do not count), found without parsing it."""
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return False
    return any(depth > MAX_DEPTH for depth in _bracket_depths(data))


def parse(data: bytes) -> Message:
    if len(data) > MAX_MESSAGE:
        return Malformed(f"message over {MAX_MESSAGE} bytes")
    if too_deep(data):
        return Malformed(f"nested deeper than {MAX_DEPTH}")
    try:
        message = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return Malformed("not JSON")
    if not isinstance(message, dict):
        return Malformed("not a JSON object")
    return _parse_object(message)


def receive(channel: socket.socket) -> tuple[list[Message], bool]:
    """The messages waiting on ``channel``, and whether the worker closed it (end of file)."""
    messages: list[Message] = []
    while len(messages) < MAX_BATCH:
        try:
            data = channel.recv(MAX_MESSAGE + 1)
        except BlockingIOError:
            return messages, False
        except OSError:
            return messages, True
        if not data:
            return messages, True
        try:
            messages.append(parse(data))
        except Exception as error:  # a worker's bytes must never stop the loop
            messages.append(Malformed(f"unparseable: {type(error).__name__}"))
    return messages, False
