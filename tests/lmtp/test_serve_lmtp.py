"""``wildboar serve --lmtp`` in front of a real, private Dovecot: mail delivered into
Maildirs byte for byte, recipients checked with Dovecot at RCPT time (its own replies),
foreign domains refused, and an MDA that is down never answered with 250."""

from __future__ import annotations

import smtplib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.harness import Server, serving

from .dovecot import Dovecot

DOMAIN = "example.org"
BODY = b"Subject: to the mailbox\r\n\r\n..a dot line\r\n\xe2\x82\xac 8-bit\r\nend\r\n"


@pytest.fixture
def server(dovecot: Dovecot, spool_dir: Path) -> Iterator[Server]:
    host, port = dovecot.lmtp_address
    env = {"WILDBOAR_RECIPIENTS_DOMAINS": DOMAIN}
    with serving(spool_dir, "--lmtp", f"lmtp:{host}:{port}", workers=1, env=env) as running:
        yield running


def delivered(dovecot: Dovecot, user: str, marker: bytes) -> list[bytes]:
    return [m for m in dovecot.maildir_messages(user) if marker in m]


def after_dovecots_headers(message: bytes) -> bytes:
    """The message as wildboar handed it over: from its own Received field on."""
    start = message.index(b"Received: from client.example")
    return message[start:]


def test_a_message_arrives_in_the_mailbox_byte_for_byte(server: Server, dovecot: Dovecot) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.ehlo("client.example")
        # What Debian 12's Dovecot does not take is not offered (nothing is converted).
        assert "smtputf8" not in client.esmtp_features
        assert "binarymime" not in client.esmtp_features.get("body", "").lower()
        assert "8bitmime" in client.esmtp_features and "chunking" in client.esmtp_features
        body = b"Message-ID: <byte-for-byte@test>\r\n" + BODY
        assert client.sendmail("a@example.net", [f"alice@{DOMAIN}"], body, ["BODY=8BITMIME"]) == {}
    [message] = delivered(dovecot, "alice", b"<byte-for-byte@test>")
    mine = after_dovecots_headers(message)
    assert mine.endswith(b"\r\n" + body)
    assert mine.startswith(b"Received: from client.example (")
    assert message.startswith(b"Return-Path: <a@example.net>\r\n")


def test_recipients_are_checked_with_the_mda_at_rcpt(server: Server, dovecot: Dovecot) -> None:
    """An unknown user gets Dovecot's own refusal, exactly; a foreign domain the relay
    refusal; the message goes to the users that exist, once."""
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.ehlo("client.example")
        assert client.mail("a@example.net")[0] == 250
        assert client.rcpt(f"alice@{DOMAIN}")[0] == 250
        code, text = client.rcpt(f"nobody-here@{DOMAIN}")
        assert (code, text) == (
            550,
            b"5.1.1 <nobody-here@example.org> User doesn't exist: nobody-here@example.org",
        )
        code, text = client.rcpt("bob@example.com")
        assert (code, text[:5]) == (550, b"5.7.1")
        assert client.rcpt(f"BOB@{DOMAIN}")[0] == 250
        body = b"Message-ID: <two-of-three@test>\r\nSubject: x\r\n\r\nhi\r\n"
        assert client.data(body)[0] == 250
    assert len(delivered(dovecot, "alice", b"<two-of-three@test>")) == 1
    assert len(delivered(dovecot, "bob", b"<two-of-three@test>")) == 1


def test_an_over_quota_mailbox_is_refused_with_dovecots_reply(
    fresh_dovecot: Dovecot, spool_dir: Path
) -> None:
    fresh_dovecot.fill_quota("carol")
    host, port = fresh_dovecot.lmtp_address
    env = {"WILDBOAR_RECIPIENTS_DOMAINS": DOMAIN}
    with (
        serving(spool_dir, "--lmtp", f"lmtp:{host}:{port}", workers=1, env=env) as running,
        smtplib.SMTP("127.0.0.1", running.port, timeout=30) as client,
    ):
        client.ehlo("client.example")
        assert client.mail("a@example.net")[0] == 250
        code, text = client.rcpt(f"carol@{DOMAIN}")
    assert code == 552 and text.startswith(b"5.2.2 <carol@example.org> Quota exceeded")


def test_an_mda_that_is_down_gets_no_250(server: Server, dovecot: Dovecot) -> None:
    """Dovecot stopped before the session: the RCPT gets 451 4.3.0 (the sender retries);
    once it is back, the same mail is delivered."""
    dovecot.stop(graceful=False)
    body = b"Message-ID: <while-down@test>\r\nSubject: x\r\n\r\nhi\r\n"
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.ehlo("client.example")
        assert client.mail("a@example.net")[0] == 250
        code, text = client.rcpt(f"alice@{DOMAIN}")
        assert (code, text[:5]) == (451, b"4.3.0")
    dovecot.start()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        assert client.sendmail("a@example.net", [f"alice@{DOMAIN}"], body) == {}
    assert len(delivered(dovecot, "alice", b"<while-down@test>")) == 1


def test_delivery_over_the_unix_socket_and_into_the_spool_too(
    dovecot: Dovecot, spool_dir: Path
) -> None:
    """Two handoffs: 250 only once both have the message."""
    env = {"WILDBOAR_RECIPIENTS_DOMAINS": DOMAIN}
    target = f"lmtp:unix:{dovecot.unix_socket}"
    args = ("--lmtp", target, "--handoff", "spool", "--handoff", "lmtp")
    with serving(spool_dir, *args, workers=1, env=env) as running:
        body = b"Message-ID: <unix-and-spool@test>\r\nSubject: x\r\n\r\nhi\r\n"
        with smtplib.SMTP("127.0.0.1", running.port, timeout=30) as client:
            assert client.sendmail("a@example.net", [f"bob@{DOMAIN}"], body) == {}
    assert len(delivered(dovecot, "bob", b"<unix-and-spool@test>")) == 1
    assert len(list((spool_dir / "msg").iterdir())) == 1


def test_a_refusal_after_the_content_reaches_the_sender_as_dovecot_gave_it(
    fresh_dovecot: Dovecot, spool_dir: Path
) -> None:
    """Carol is under her 1 MB quota at RCPT, but a 2 MB message does not fit: Dovecot's
    552 5.2.2 after the content is the reply (not a generic 554), and nothing is kept."""
    host, port = fresh_dovecot.lmtp_address
    env = {"WILDBOAR_RECIPIENTS_DOMAINS": DOMAIN}
    body = b"Subject: too big\r\n\r\n" + (b"q" * 998 + b"\r\n") * 2000
    with (
        serving(spool_dir, "--lmtp", f"lmtp:{host}:{port}", workers=1, env=env) as running,
        smtplib.SMTP("127.0.0.1", running.port, timeout=60) as client,
        pytest.raises(smtplib.SMTPDataError) as refused,
    ):
        client.sendmail("a@example.net", [f"carol@{DOMAIN}"], body)
    assert refused.value.smtp_code == 552
    assert refused.value.smtp_error.startswith(b"5.2.2 ")
    assert fresh_dovecot.maildir_messages("carol") == []


def test_what_dovecot_cannot_take_is_refused_at_mail(server: Server) -> None:
    """Debian 12's Dovecot offers neither SMTPUTF8 nor BINARYMIME, so neither does the
    server: a UTF-8 sender and binary content are refused up front (5xx, the sender
    bounces it with a reason), never converted, never accepted and lost."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
        lines = conn.makefile("rb")
        assert lines.readline().startswith(b"220")
        conn.sendall(b"EHLO client.example\r\n")
        while not lines.readline().startswith(b"250 "):
            pass
        utf8 = "MAIL FROM:<zoé@example.net> SMTPUTF8"
        refused = (utf8, "MAIL FROM:<a@example.net> BODY=BINARYMIME")
        for command in refused:
            conn.sendall(command.encode() + b"\r\n")
            reply = lines.readline()
            assert reply[:1] == b"5", (command, reply)
        conn.sendall(b"MAIL FROM:<a@example.net> BODY=8BITMIME\r\n")
        assert lines.readline().startswith(b"250 ")


def test_swaks_and_smtp_source_deliver_into_the_mailbox(server: Server, dovecot: Dovecot) -> None:
    before = len(dovecot.maildir_messages("bob"))
    swaks = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{server.port}", "--from", "s@example.net",
         "--to", f"bob@{DOMAIN}", "--header", "Subject: via swaks", "--body", "swaks body"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert swaks.returncode == 0, swaks.stdout
    source = subprocess.run(
        ["smtp-source", "-c", "-s", "10", "-m", "200", "-l", "1024", "-f", "s@example.net",
         "-t", f"bob@{DOMAIN}", f"127.0.0.1:{server.port}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert source.returncode == 0 and "fatal" not in source.stderr, source.stderr
    messages = dovecot.maildir_messages("bob")[before:]
    assert len(messages) == 201
    assert sum(b"swaks body" in m for m in messages) == 1
