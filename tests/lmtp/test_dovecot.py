"""The private Dovecot of tests/lmtp/dovecot.py, checked against itself over raw LMTP: what
the later tests of wildboar's LMTP handoff rely on (its replies, the headers it adds, the
quota refusal at RCPT, stop/start/kill -9) is asserted here as Debian 12's Dovecot 2.3.19
really does it."""

from __future__ import annotations

import os
import re
import secrets
import socket
from pathlib import Path

import pytest

from tests.daemons import alive, process_group

from .dovecot import Dovecot, LMTPClient

SENDER = "sender@client.test"


def message(subject: str) -> bytes:
    """A message with a unique Message-ID, a line that needs dot-stuffing and 8-bit text."""
    return (
        f"From: Sender <{SENDER}>\r\n"
        "To: Alice <alice@example.org>\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <{secrets.token_hex(8)}@client.test>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        "First line.\r\n"
        ".A line that starts with a dot.\r\n"
        "Gr\u00fc\u00dfe, caf\u00e9.\r\n"
    ).encode()


def deliver(
    address: tuple[str, int] | Path, recipients: list[str], body: bytes, sender: str = SENDER
) -> list[tuple[int, list[str]]]:
    """One LMTP transaction; the replies to DATA, one per recipient."""
    with LMTPClient(address) as client:
        client.lhlo()
        assert client.command(f"MAIL FROM:<{sender}> BODY=8BITMIME") == (250, ["2.1.0 OK"])
        for rcpt in recipients:
            assert client.command(f"RCPT TO:<{rcpt}>") == (250, ["2.1.5 OK"])
        return client.data(body, len(recipients))


def received(dovecot: Dovecot, rcpt: str | None, via_unix: bool = False) -> str:
    """A regex for the Received header Dovecot's LMTP adds (``for`` only when the
    transaction had a single recipient)."""
    origin = "" if via_unix else r" \(\[127\.0\.0\.1\]\)"
    for_rcpt = rf"\r\n\tfor <{re.escape(rcpt)}>" if rcpt else ""
    return (
        rf"Received: from client\.test{origin}\r\n"
        rf"\tby {re.escape(dovecot.hostname)} with LMTP\r\n"
        r"\tid [A-Za-z0-9+/]{22}(:\S+)?\r\n"
        rf"\t\(envelope-from <{re.escape(SENDER)}>\){for_rcpt}; "
        r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}\r\n"
    )


def test_greeting_and_lhlo_capabilities(dovecot: Dovecot) -> None:
    with LMTPClient(dovecot.lmtp_address) as client:
        assert client.greeting == (220, [f"{dovecot.hostname} Dovecot (Debian) ready."])
        code, lines = client.command("LHLO client.test")
        # No SMTPUTF8 (nor SIZE, DSN, BINARYMIME, STARTTLS: ssl = no) in Dovecot 2.3.
        assert (code, lines) == (
            250,
            [dovecot.hostname, "8BITMIME", "CHUNKING", "ENHANCEDSTATUSCODES", "PIPELINING"],
        )
        assert client.command(f"MAIL FROM:<{SENDER}> SMTPUTF8") == (
            555,
            ["5.5.4 Unsupported parameters"],
        )
        assert client.command(f"MAIL FROM:<{SENDER}> SIZE=1000") == (
            555,
            ["5.5.4 Unsupported parameters"],
        )
        assert client.command(f"MAIL FROM:<{SENDER}> BODY=BINARYMIME") == (
            555,
            ["5.5.4 Unsupported mail BODY type"],
        )
        assert client.command(f"MAIL FROM:<{SENDER}> BODY=8BITMIME") == (250, ["2.1.0 OK"])
        assert client.command("RCPT TO:<alice@example.org> NOTIFY=NEVER") == (
            555,
            ["5.5.4 Unsupported parameters"],
        )
        # Without SMTPUTF8, a UTF-8 local part is a syntax error.
        assert client.command("RCPT TO:<j\u00f6rg@example.org>") == (
            501,
            ["5.5.4 Invalid TO: Missing '>' at end of path"],
        )
        assert client.command("RCPT TO:<alice@example.org> ORCPT=rfc822;alice@example.org") == (
            250,
            ["2.1.5 OK"],
        )


@pytest.mark.parametrize("via", ["tcp", "unix"])
def test_delivery_is_byte_for_byte(dovecot: Dovecot, via: str) -> None:
    address = dovecot.unix_socket if via == "unix" else dovecot.lmtp_address
    before = len(dovecot.maildir_messages("alice"))
    body = message(f"over {via}")
    [(code, [text])] = deliver(address, ["alice@example.org"], body)
    assert code == 250
    assert re.fullmatch(r"2\.0\.0 <alice@example\.org> [A-Za-z0-9+/]{22}(:\S+)? Saved", text)
    messages = dovecot.maildir_messages("alice")
    assert len(messages) == before + 1
    # Exactly three header fields are prepended, the message follows unchanged (CRLF
    # included: mail_save_crlf = yes).
    expected = (
        re.escape(f"Return-Path: <{SENDER}>\r\nDelivered-To: alice@example.org\r\n")
        + received(dovecot, "alice@example.org", via_unix=via == "unix")
        + re.escape(body.decode())
    )
    assert re.fullmatch(expected, messages[-1].decode()), messages[-1]


def test_mail_is_owned_by_the_mail_user(dovecot: Dovecot) -> None:
    deliver(dovecot.lmtp_address, ["bob@example.org"], message("owner"))
    files = list((dovecot.maildir("bob") / "new").iterdir())
    assert files
    for path in [dovecot.maildir("bob"), *files]:
        assert (path.stat().st_uid, path.stat().st_gid) == (dovecot.mail_uid, dovecot.mail_gid)
    if os.geteuid() == 0:
        assert dovecot.mail_user == "nobody"


def test_several_recipients_one_reply_each(dovecot: Dovecot) -> None:
    body = message("to two")
    replies = deliver(dovecot.lmtp_address, ["alice@example.org", "bob@example.org"], body)
    assert [(code, re.sub(r" \S+ Saved$", " Saved", text)) for code, [text] in replies] == [
        (250, "2.0.0 <alice@example.org> Saved"),
        (250, "2.0.0 <bob@example.org> Saved"),
    ]
    # With more than one recipient: no Delivered-To, and no "for" in Received.
    expected = (
        re.escape(f"Return-Path: <{SENDER}>\r\n")
        + received(dovecot, None)
        + re.escape(body.decode())
    )
    for user in ("alice", "bob"):
        assert re.fullmatch(expected, dovecot.maildir_messages(user)[-1].decode())


def test_chunking(dovecot: Dovecot) -> None:
    body = message("in chunks")
    first, second = body[:50], body[50:]
    with LMTPClient(dovecot.lmtp_address) as client:
        client.lhlo()
        assert client.command(f"MAIL FROM:<{SENDER}>")[0] == 250
        assert client.command("RCPT TO:<carol@example.org>")[0] == 250
        client.sock.sendall(f"BDAT {len(first)}\r\n".encode() + first)
        assert client.reply() == (250, [f"2.0.0 Added {len(first)} octets"])
        client.sock.sendall(f"BDAT {len(second)} LAST\r\n".encode() + second)
        code, [text] = client.reply()
        assert code == 250
        assert text.startswith("2.0.0 <carol@example.org> ")
    assert dovecot.maildir_messages("carol")[-1].endswith(b"\r\n\r\n" + body.split(b"\r\n\r\n")[1])


@pytest.mark.parametrize("rcpt", ["nobody-here@example.org", "alice@example.com"])
def test_unknown_user_is_refused_at_rcpt(dovecot: Dovecot, rcpt: str) -> None:
    with LMTPClient(dovecot.lmtp_address) as client:
        client.lhlo()
        assert client.command(f"MAIL FROM:<{SENDER}>") == (250, ["2.1.0 OK"])
        assert client.command(f"RCPT TO:<{rcpt}>") == (
            550,
            [f"5.1.1 <{rcpt}> User doesn't exist: {rcpt}"],
        )
        assert client.command("DATA") == (503, ["5.5.0 No valid recipients"])


def test_recipients_are_case_insensitive(dovecot: Dovecot) -> None:
    with LMTPClient(dovecot.lmtp_address) as client:
        client.lhlo()
        client.command(f"MAIL FROM:<{SENDER}>")
        assert client.command("RCPT TO:<Alice@Example.ORG>") == (250, ["2.1.5 OK"])


def test_over_quota_is_refused_at_rcpt(fresh_dovecot: Dovecot) -> None:
    dovecot = fresh_dovecot
    assert dovecot.quota_storage("carol") == (0, 1 << 20)
    assert dovecot.quota_storage("bob") == (0, None)
    dovecot.fill_quota("carol")
    used, limit = dovecot.quota_storage("carol")
    assert limit is not None
    assert used > limit
    with LMTPClient(dovecot.lmtp_address) as client:
        client.lhlo()
        assert client.command(f"MAIL FROM:<{SENDER}>") == (250, ["2.1.0 OK"])
        assert client.command("RCPT TO:<carol@example.org>") == (
            552,
            ["5.2.2 <carol@example.org> Quota exceeded (mailbox for user is full)"],
        )
        # The transaction goes on for the others.
        assert client.command("RCPT TO:<bob@example.org>") == (250, ["2.1.5 OK"])
        [(code, _)] = client.data(message("bob, not carol"), 1)
        assert code == 250
    # Emptied through Dovecot, carol takes mail again.
    dovecot.expunge("carol")
    assert dovecot.quota_storage("carol") == (0, 1 << 20)
    [(code, _)] = deliver(dovecot.lmtp_address, ["carol@example.org"], message("room again"))
    assert code == 250


def test_message_larger_than_the_quota_is_refused_after_data(fresh_dovecot: Dovecot) -> None:
    dovecot = fresh_dovecot
    line = b"y" * 76 + b"\r\n"
    with LMTPClient(dovecot.lmtp_address) as client:
        client.lhlo()
        client.command(f"MAIL FROM:<{SENDER}>")
        # LMTP has no SIZE: the RCPT check can only see that carol is not over quota yet.
        assert client.command("RCPT TO:<carol@example.org>") == (250, ["2.1.5 OK"])
        assert client.command("RCPT TO:<bob@example.org>") == (250, ["2.1.5 OK"])
        replies = client.data(b"Subject: 1.5 MB\r\n\r\n" + line * 20_000, 2)
    assert replies[0] == (
        552,
        ["5.2.2 <carol@example.org> Quota exceeded (mailbox for user is full)"],
    )
    assert replies[1][0] == 250
    # Dovecot's default quota_grace (10 %) lets a last message over the limit in; carol is
    # then over quota, refused at RCPT (the state fill_quota makes without a delivery).
    [(code, _)] = deliver(
        dovecot.lmtp_address, ["carol@example.org"], b"Subject: 1.1 MB\r\n\r\n" + line * 14_000
    )
    assert code == 250
    used, limit = dovecot.quota_storage("carol")
    assert limit is not None
    assert used > limit
    with LMTPClient(dovecot.lmtp_address) as client:
        client.lhlo()
        client.command(f"MAIL FROM:<{SENDER}>")
        assert client.command("RCPT TO:<carol@example.org>")[0] == 552


def _refused(address: tuple[str, int] | Path) -> bool:
    try:
        LMTPClient(address, timeout=2).close()
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    return False


def test_stop_and_start_again(fresh_dovecot: Dovecot) -> None:
    dovecot = fresh_dovecot
    deliver(dovecot.lmtp_address, ["alice@example.org"], message("before the stop"))
    pid, port, path = dovecot.pid, dovecot.port, dovecot.unix_socket
    assert pid is not None
    children = dovecot.processes()
    assert pid in children
    assert len(children) > 1

    dovecot.stop()
    assert not dovecot.running
    assert process_group(pid) == []
    assert not any(alive(child) for child in children)
    assert _refused(dovecot.lmtp_address)
    assert _refused(dovecot.unix_socket)

    dovecot.start()
    assert dovecot.pid != pid
    assert (dovecot.port, dovecot.unix_socket) == (port, path)
    [(code, _)] = deliver(dovecot.unix_socket, ["alice@example.org"], message("after"))
    assert code == 250
    subjects = [
        m.split(b"Subject: ")[1].split(b"\r\n")[0] for m in dovecot.maildir_messages("alice")
    ]
    assert subjects == [b"before the stop", b"after"]


def test_kill9_mid_transaction(fresh_dovecot: Dovecot) -> None:
    dovecot = fresh_dovecot
    deliver(dovecot.lmtp_address, ["bob@example.org"], message("before the kill"))
    pid = dovecot.pid
    assert pid is not None
    with LMTPClient(dovecot.lmtp_address) as client:
        client.lhlo()
        client.command(f"MAIL FROM:<{SENDER}>")
        client.command("RCPT TO:<bob@example.org>")
        assert client.command("DATA")[0] == 354
        client.sock.sendall(b"Subject: never finished\r\n\r\nhalf a mess")
        dovecot.kill9()
        assert process_group(pid) == []
        assert not dovecot.running
        try:
            client.sock.sendall(b"age\r\n.\r\n")
            closed = client.sock.recv(1024) == b""
        except OSError:  # reset by the dead peer
            closed = True
        assert closed
    # Nothing was cleaned up, as after a crash; a start copes with that.
    assert (dovecot.base_dir / "master.pid").exists()
    assert dovecot.unix_socket.exists()
    assert _refused(dovecot.lmtp_address)
    assert _refused(dovecot.unix_socket)
    dovecot.start()
    [(code, _)] = deliver(dovecot.lmtp_address, ["bob@example.org"], message("after the kill"))
    assert code == 250
    assert len(dovecot.maildir_messages("bob")) == 2


def test_the_module_dovecot_comes_back_after_a_kill(dovecot: Dovecot) -> None:
    dovecot.kill9()  # the next test using ``dovecot`` gets it started again


def test_module_dovecot_is_running_again(dovecot: Dovecot) -> None:
    assert dovecot.running
    [(code, _)] = deliver(dovecot.lmtp_address, ["alice@example.org"], message("again"))
    assert code == 250


def test_close_leaves_nothing_behind() -> None:
    with Dovecot() as dovecot:
        pid, directory = dovecot.pid, dovecot.dir
        assert pid is not None
        assert len(dovecot.processes()) > 1
        assert directory.stat().st_mode & 0o777 == 0o755
        assert dovecot.unix_socket.stat().st_mode & 0o777 == 0o666
    assert process_group(pid) == []
    assert not directory.exists()


def test_instances_share_nothing() -> None:
    with Dovecot() as one, Dovecot() as two:
        assert one.port != two.port
        assert one.dir != two.dir
        deliver(one.lmtp_address, ["alice@example.org"], message("to one"))
        assert len(one.maildir_messages("alice")) == 1
        assert two.maildir_messages("alice") == []
        with socket.create_connection(two.lmtp_address) as sock:
            assert two.hostname.encode() in sock.recv(1024)
