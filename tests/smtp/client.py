"""A scripted SMTP client for the core: feeds bytes whole or one at a time, answers the
core's questions with a policy, and records replies, events and accepted messages.

It uses only the public ``wildboar.smtp`` API, so coverage measured through it is
coverage through the public API.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from wildboar import smtp

Policy = Callable[[smtp.Question], smtp.Answer]
HOST = "mx.example.org"
_REPLY = re.compile(rb"^(\d{3})([ -])(.*)$")


def accept_all(question: smtp.Question) -> smtp.Answer:
    return smtp.Accept()


@dataclass
class Accepted:
    envelope: smtp.Envelope
    content: bytes


@dataclass
class Client:
    bytewise: bool = False
    policy: Policy = accept_all
    limits: smtp.Limits | None = None
    extensions: smtp.Extensions | None = None
    events: list[smtp.Event] = field(default_factory=list)
    accepted: list[Accepted] = field(default_factory=list)
    closed: bool = False
    starttls: bool = False
    xclient: bool = False

    def __post_init__(self) -> None:
        self.conn = smtp.ServerConnection(
            HOST,
            limits=self.limits,
            extensions=self.extensions,
            starttls=self.starttls,
            xclient=self.xclient,
        )
        self._content = bytearray()
        self.greeting = self._pump()

    def send(self, data: bytes) -> bytes:
        """Feed ``data`` and return the reply bytes the server produced meanwhile."""
        if not self.bytewise:
            if data:  # b"" would mean end of input; see eof()
                self.conn.receive_data(data)
            return self._pump()
        out = bytearray()
        for index in range(len(data)):
            self.conn.receive_data(data[index : index + 1])
            out += self._pump()
        return bytes(out)

    def eof(self) -> bytes:
        self.conn.receive_data(b"")
        return self._pump()

    def _pump(self) -> bytes:
        out = bytearray()
        while True:
            event = self.conn.next_event()
            if event is smtp.NEED_DATA or event is smtp.PAUSED:
                break
            self.events.append(event)
            out += self._handle(event)
        out += self.conn.data_to_send()
        return bytes(out)

    def _handle(self, event: smtp.Event) -> bytes:
        if isinstance(event, smtp.MessageData):
            self._content += event.data
        elif isinstance(event, smtp.TransactionAborted):
            self._content.clear()
        elif isinstance(event, smtp.ConnectionClosed):
            self.closed = True
        elif isinstance(event, smtp.StartTls):
            pass  # the test runs the "handshake": conn.tls_started()
        elif isinstance(event, smtp.MessageComplete):
            answer = self.policy(event)
            if isinstance(answer, smtp.Accept):
                self.accepted.append(Accepted(event.envelope, bytes(self._content)))
            self._content.clear()
            return self.conn.send(answer)
        else:
            return self.conn.send(self.policy(event))
        return b""

    def round(self, data: bytes) -> list[str]:
        """Send ``data``; the status ("250 2.1.0") of each complete reply, in order."""
        return statuses(self.send(data))


def replies(data: bytes) -> list[list[bytes]]:
    """Split reply bytes into replies, each a list of its lines (without CRLF)."""
    assert data == b"" or data.endswith(b"\r\n"), data
    result: list[list[bytes]] = []
    current: list[bytes] = []
    for line in data.split(b"\r\n")[:-1]:
        match = _REPLY.match(line)
        assert match is not None, f"malformed reply line {line!r}"
        current.append(line)
        if match.group(2) == b" ":
            result.append(current)
            current = []
    assert not current, f"unterminated multi-line reply {current!r}"
    return result


def statuses(data: bytes) -> list[str]:
    """ "250 2.1.0" for enhanced replies, "354"/"220"/"250" (EHLO) otherwise."""
    out = []
    for reply in replies(data):
        last = reply[-1].decode("ascii")
        code, _, text = last.partition(" ")
        enhanced = text.split(" ", 1)[0]
        out.append(f"{code} {enhanced}" if re.fullmatch(r"[245]\.\d+\.\d+", enhanced) else code)
    return out


def session(bytewise: bool = False, **kwargs: object) -> Client:
    """A client that has been greeted and said EHLO."""
    client = Client(bytewise=bytewise, **kwargs)  # type: ignore[arg-type]
    assert statuses(client.greeting) == ["220"]
    assert client.round(b"EHLO client.example\r\n") == ["250"]
    return client
