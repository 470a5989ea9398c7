"""CHUNKING and BINARYMIME (RFC 3030) in front of a real Dovecot. Debian 12's Dovecot 2.3
LMTP offers CHUNKING but not BINARYMIME (nor SMTPUTF8), so wildboar, which offers only
what every handoff takes (``LmtpHandoff.restrict``), offers CHUNKING and not BINARYMIME;
``BODY=BINARYMIME`` is refused at MAIL with RFC 1869's ``555`` (``5.5.4``, RFC 3463:
invalid command arguments), as Postfix does (``555 5.5.4 Unsupported option``). A message
sent in several BDAT chunks (smtplib has no BDAT: a raw socket client here) is one
message, and reaches the Maildir byte for byte: chunk boundaries anywhere (inside a CRLF,
before a leading dot), 8-bit content, lines that are only a dot (which the LMTP client must
dot-stuff on its way to Dovecot's DATA)."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests import unprivileged
from tests.system.harness import Server, serving

from .dovecot import Dovecot, LMTPClient, read_reply
from .stored import handed_over, queued_id

DOMAIN = "example.org"
ENV = {"WILDBOAR_RECIPIENTS_DOMAINS": DOMAIN}
Reply = tuple[int, list[str]]


class RawClient:
    """An SMTP client on a bare socket: every command and chunk exactly as given, every
    reply exactly as the server sent it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.reader = self.sock.makefile("rb")
        self.greeting = read_reply(self.reader)

    def command(self, line: str) -> Reply:
        self.sock.sendall(line.encode() + b"\r\n")
        return read_reply(self.reader)

    def bdat(self, chunks: Sequence[bytes]) -> list[Reply]:
        """``BDAT <size>`` per chunk, ``LAST`` on the last one, all in one write (RFC 3030
        §4.2 pipelines them); one reply per chunk."""
        wire = b"".join(
            f"BDAT {len(chunk)}{' LAST' if n == len(chunks) - 1 else ''}\r\n".encode() + chunk
            for n, chunk in enumerate(chunks)
        )
        self.sock.sendall(wire)
        return [read_reply(self.reader) for _ in chunks]

    def close(self) -> None:
        self.sock.close()
        self.reader.close()


@pytest.fixture(scope="module")
def server(dovecot_module: Dovecot) -> Iterator[Server]:
    """One server for the module (no test here stops Dovecot or the server)."""
    host, port = dovecot_module.lmtp_address
    with (
        unprivileged.spool_directory() as spool,
        serving(spool, "--lmtp", f"lmtp:{host}:{port}", workers=1, env=ENV) as running,
    ):
        yield running


@pytest.fixture
def client(server: Server) -> Iterator[RawClient]:
    raw = RawClient(server.port)
    try:
        assert raw.greeting[0] == 220
        yield raw
    finally:
        raw.close()


def stored_as(dovecot: Dovecot, user: str, marker: bytes) -> list[bytes]:
    return [m for m in dovecot.maildir_messages(user) if marker in m]


def test_ehlo_offers_chunking_and_not_binarymime(
    dovecot: Dovecot, client: RawClient, spool_dir: Path
) -> None:
    with LMTPClient(dovecot.lmtp_address) as lmtp:
        dovecots = lmtp.lhlo()
    assert "CHUNKING" in dovecots and "BINARYMIME" not in dovecots
    assert "SMTPUTF8" not in dovecots
    code, lines = client.command("EHLO client.example")
    assert code == 250
    assert lines == [
        "mx.test.example",
        "PIPELINING",
        "SIZE 10240000",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "DSN",
        "HELP",
    ]
    # The same server without the LMTP handoff offers both: the MDA is why they are gone.
    with serving(spool_dir, workers=1, env=ENV) as spool_only:
        alone = RawClient(spool_only.port)
        try:
            _, offered = alone.command("EHLO client.example")
        finally:
            alone.close()
    assert "BINARYMIME" in offered and "SMTPUTF8" in offered


@pytest.mark.parametrize(
    "mail",
    [
        "MAIL FROM:<a@example.net> BODY=BINARYMIME",
        "MAIL FROM:<a@example.net> BODY=binarymime",
        "MAIL FROM:<a> BODY=BINARYMIME",
    ],
)
def test_body_binarymime_is_refused_at_mail(client: RawClient, mail: str) -> None:
    client.command("EHLO client.example")
    assert client.command(mail) == (555, ["5.5.4 Error: unsupported or malformed parameter"])
    # Refused, the session goes on: a transaction without it is taken.
    assert client.command("MAIL FROM:<a@example.net> BODY=8BITMIME") == (250, ["2.1.0 Ok"])


CHUNKED = [
    b"Message-ID: <bdat-chunks@test>\r\nSubject: in chunks\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    b".a line with a leading dot\r\n",
    b"..two dots\r\n.\r",  # a line that is only a dot, its CR here
    b"\n",  # and its LF in a chunk of its own
    b".\r\n\xe2\x82\xac 8-bit \xc3\xbc and \xff\xfe octets\r\n",
    b"",  # an empty chunk is legal (RFC 3030 §2)
    b".",  # a chunk that is a dot starting a line...
    b"\r\nend\r\n",  # ...that is the whole line
]


def test_bdat_chunks_arrive_byte_for_byte(client: RawClient, dovecot: Dovecot) -> None:
    message = b"".join(CHUNKED)
    client.command("EHLO client.example")
    assert client.command("MAIL FROM:<a@example.net> BODY=8BITMIME") == (250, ["2.1.0 Ok"])
    assert client.command(f"RCPT TO:<alice@{DOMAIN}>") == (250, ["2.1.5 Ok"])
    replies = client.bdat(CHUNKED)
    received = 0
    for chunk, (code, lines) in zip(CHUNKED[:-1], replies, strict=False):
        received += len(chunk)  # the total so far, as in RFC 3030 §4.2's example
        assert (code, lines) == (250, [f"2.0.0 Ok: {received} octets received"])
    code, lines = replies[-1]
    assert code == 250, lines
    [stored] = stored_as(dovecot, "alice", b"<bdat-chunks@test>")
    wildboar_id, content = handed_over(stored)
    assert wildboar_id == queued_id(lines[0].encode())
    assert content == message


def test_bdat_whose_last_line_has_no_crlf_arrives_byte_for_byte(
    client: RawClient, dovecot: Dovecot
) -> None:
    """BDAT, unlike DATA, can carry a message whose last line has no CRLF, and the core
    takes it (RFC 5322 §3.5 allows such a body; RFC 3030 §2 asks for CRLF-delimited
    lines). What was accepted must be what is stored: not two octets more."""
    chunks = [b"Message-ID: <bdat-no-crlf@test>\r\nSubject: x\r\n\r\nfirst\r\n", b"no CRLF"]
    client.command("EHLO client.example")
    assert client.command("MAIL FROM:<a@example.net>")[0] == 250
    assert client.command(f"RCPT TO:<bob@{DOMAIN}>")[0] == 250
    first, last = client.bdat(chunks)
    assert first[0] == 250
    assert last[0] == 250, last
    [stored] = stored_as(dovecot, "bob", b"<bdat-no-crlf@test>")
    _, content = handed_over(stored)
    assert content == b"".join(chunks)
