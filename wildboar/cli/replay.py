"""``wildboar replay FILE [--hostname NAME] [--msgpack]``: a client transcript through the
SMTP core.

Owns: the ``replay`` command: it plays a client's side of an SMTP conversation (one line
per line of the file, sent with CRLF) through the SMTP core, accepting everything, prints
the transcript, and prints each accepted message as the record a handoff would receive
(JSON, or msgpack as hex), built by ``wildboar.record`` as a worker builds it.
Must not know: the internals of the core; it uses only the public ``wildboar.smtp`` API.
Security: reads only the file it is given; errors are one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import TextIO

import msgspec

from .. import message as M
from .. import record as R
from .. import smtp


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    replay = subparsers.add_parser("replay", help="play a client transcript through the SMTP core")
    replay.add_argument("file", help="client lines, one per line (sent with CRLF)")
    replay.add_argument("--hostname", default="mx.example.org", help="the server's name")
    replay.add_argument("--msgpack", action="store_true", help="print records as msgpack hex")
    replay.set_defaults(func=cmd_replay)


# A documentation address (RFC 5737) stands for the simulated client.
REPLAY_CLIENT = ("192.0.2.10", 49152)
REPLAY_SERVER = ("127.0.0.1", 2525)


class Replay:
    """Drives one ``ServerConnection`` with a scripted client, accepting everything."""

    def __init__(self, hostname: str, out: TextIO, content_type: str) -> None:
        self.conn = smtp.ServerConnection(hostname)
        self.out = out
        self.content_type = content_type
        self.server = R.build_server(hostname)
        self.connection = R.build_connection("ipv4", REPLAY_CLIENT, REPLAY_SERVER)
        self.transaction: R.TransactionStart | None = None
        self.content: list[bytes] = []
        self.messages: list[M.Message] = []
        self.closed = False

    def run(self, lines: Iterable[bytes]) -> None:
        self.pump()
        for line in lines:
            if self.closed:
                break
            self.out.write(f"C: {line.decode('utf-8', 'replace')}\n")
            self.conn.receive_data(line + b"\r\n")
            self.pump()
        if not self.closed:
            self.conn.receive_data(b"")
            self.pump()

    def pump(self) -> None:
        while True:
            event = self.conn.next_event()
            if event is smtp.NEED_DATA or event is smtp.PAUSED:
                break
            self.handle(event)
        self.show(self.conn.data_to_send())

    def show(self, replies: bytes) -> None:
        for line in replies.decode("ascii").splitlines():
            self.out.write(f"S: {line}\n")

    def handle(self, event: smtp.Event | smtp.Wait) -> None:
        if isinstance(event, smtp.MailFrom):
            self.transaction = R.start_transaction()
        if isinstance(event, smtp.MessageData):
            self.content.append(event.data)
        elif isinstance(event, smtp.TransactionAborted):
            self.content.clear()
        elif isinstance(event, smtp.ConnectionClosed):
            self.closed = True
        elif isinstance(event, smtp.MessageComplete):
            self.show(self.conn.send(smtp.Accept(f"Ok: queued as {self.accept(event)}")))
        elif isinstance(event, smtp.Question):
            self.show(self.conn.send(smtp.Accept()))

    def accept(self, event: smtp.MessageComplete) -> str:
        assert self.transaction is not None
        record = R.build_message(
            event.envelope,
            b"".join(self.content),
            server=self.server,
            connection=self.connection,
            transaction=self.transaction,
        )
        self.content.clear()
        self.messages.append(record)
        return record.email.id


def _read_lines(path: str) -> list[bytes]:
    with open(path, "rb") as handle:
        data = handle.read()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line.removesuffix(b"\r") for line in lines]


def cmd_replay(args: argparse.Namespace) -> int:
    try:
        lines = _read_lines(args.file)
    except OSError as error:
        print(f"wildboar replay: cannot read {args.file}: {error.strerror}", file=sys.stderr)
        return 1
    content_type = M.CONTENT_TYPE_MSGPACK if args.msgpack else M.CONTENT_TYPE_JSON
    replay = Replay(args.hostname, sys.stdout, content_type)
    replay.run(lines)
    for record in replay.messages:
        sys.stdout.write("\n")
        if args.msgpack:
            sys.stdout.write(M.encode(record, content_type).hex() + "\n")
        else:
            sys.stdout.write(msgspec.json.format(M.encode(record), indent=2).decode() + "\n")
    return 0
