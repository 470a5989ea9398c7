"""An MDA that goes away, for real: a private Dovecot stopped (as ``doveadm stop`` does) or
killed with ``kill -9`` (its sockets left behind, as after a crash), over TCP and over the
unix socket. Before a session: every RCPT gets a temporary refusal (the sender retries),
never 250. During a session, after RCPT was accepted and before the end of data: the
client gets a 4xx after the content, and the message is in no mailbox (nothing half
delivered, nothing kept by wildboar: the sender owns the retry). With Dovecot back, the
same message sent again is delivered once."""

from __future__ import annotations

import contextlib
import os
import signal
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import unprivileged
from tests.system.harness import Server, serving

from .dovecot import USERS, Dovecot
from .stored import handed_over, queued_id

DOMAIN = "example.org"
ENV = {"WILDBOAR_RECIPIENTS_DOMAINS": DOMAIN}
#: What an RCPT may get while the MDA is down: wildboar's own "cannot reach it" (RFC 3463
#: X.3.0), or a mailbox-busy 4.2.0 (neither is 250, both make the sender retry).
DOWN_AT_RCPT = {(451, "4.3.0"), (450, "4.2.0")}


def target(dovecot: Dovecot, transport: str) -> str:
    if transport == "unix":
        return f"lmtp:unix:{dovecot.unix_socket}"
    host, port = dovecot.lmtp_address
    return f"lmtp:{host}:{port}"


@pytest.fixture(scope="module", params=["tcp", "unix"])
def server(request: pytest.FixtureRequest, dovecot_module: Dovecot) -> Iterator[Server]:
    """A server in front of the module's Dovecot, over TCP or over its unix socket."""
    with (
        unprivileged.spool_directory() as spool,
        serving(spool, "--lmtp", target(dovecot_module, request.param), workers=1, env=ENV) as up,
    ):
        yield up


def take_down(dovecot: Dovecot, how: str) -> None:
    if how == "kill -9":
        dovecot.kill9()
    else:
        dovecot.stop()  # SIGTERM to the master, as doveadm stop and Debian's unit do
    assert not dovecot.running and dovecot.processes() == []


def message(tag: str) -> bytes:
    return f"Message-ID: <{tag}@test>\r\nSubject: {tag}\r\n\r\nsent while down\r\n".encode()


def copies(dovecot: Dovecot, tag: str) -> dict[str, int]:
    """How many messages with ``tag`` each user's mailbox holds (users without: left out)."""
    marker = f"<{tag}@test>".encode()
    counts = {u: sum(marker in m for m in dovecot.maildir_messages(u)) for u in USERS}
    return {user: count for user, count in counts.items() if count}


def send_again(server: Server, dovecot: Dovecot, tag: str, user: str) -> None:
    """Dovecot back: the sender's retry of the same message is delivered, once."""
    dovecot.start()
    body = message(tag)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.ehlo("client.example")
        assert client.mail("a@example.net")[0] == 250
        assert client.rcpt(f"{user}@{DOMAIN}")[0] == 250
        code, text = client.data(body)
    assert code == 250, (code, text)
    assert copies(dovecot, tag) == {user: 1}
    [stored] = [m for m in dovecot.maildir_messages(user) if f"<{tag}@test>".encode() in m]
    assert handed_over(stored) == (queued_id(text), body)


def nothing_kept(server: Server) -> None:
    """No retry record, no bounce, no spooled copy: the client was told 4xx, it retries."""
    for sub in ("msg", "lmtp/msg", "bounce/msg"):
        directory = server.spool / sub
        assert not directory.exists() or list(directory.iterdir()) == [], sub


@pytest.mark.parametrize("how", ["stopped", "kill -9"])
def test_down_before_the_session_no_rcpt_gets_250(
    server: Server, dovecot: Dovecot, how: str
) -> None:
    tag = f"down-before-{how.replace(' ', '')}-{server.port}"
    take_down(dovecot, how)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.ehlo("client.example")
        assert client.mail("a@example.net")[0] == 250
        for user in ("alice", "bob"):
            code, text = client.rcpt(f"{user}@{DOMAIN}")
            assert (code, text[:5].decode()) in DOWN_AT_RCPT, (code, text)
        # Postmaster is taken without asking the MDA (RFC 5321 §4.5.1): the one 250.
        assert client.rcpt(f"postmaster@{DOMAIN}")[0] == 250
        assert client.rset()[0] == 250
        # With no recipient accepted, there is nothing to send.
        assert client.mail("a@example.net")[0] == 250
        assert client.rcpt(f"alice@{DOMAIN}")[0] in (450, 451)
        assert client.docmd("DATA") == (554, b"5.5.1 Error: no valid recipients")
    nothing_kept(server)
    send_again(server, dovecot, tag, "alice")


@pytest.mark.parametrize("how", ["stopped", "kill -9"])
def test_down_during_the_session_the_data_gets_4xx_and_no_mailbox_has_it(
    server: Server, dovecot: Dovecot, how: str
) -> None:
    """RCPT accepted (Dovecot asked and said yes), DATA answered 354; then Dovecot goes
    away before the end of data. The 4xx after the content is wildboar's "cannot reach
    the mail store" (the connection it checked the RCPT on is dead, a new one refused)."""
    tag = f"down-during-{how.replace(' ', '')}-{server.port}"
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.ehlo("client.example")
        assert client.mail("a@example.net")[0] == 250
        assert client.rcpt(f"alice@{DOMAIN}") == (250, b"2.1.5 Ok")
        assert client.rcpt(f"bob@{DOMAIN}") == (250, b"2.1.5 Ok")
        client.putcmd("DATA")
        assert client.getreply()[0] == 354
        take_down(dovecot, how)
        client.send(message(tag) + b".\r\n")
        code, text = client.getreply()
        assert code // 100 == 4, (code, text)
        assert text.startswith(b"4.3.0 "), text
        # The session goes on, and without the MDA no RCPT is accepted.
        assert client.mail("a@example.net")[0] == 250
        assert client.rcpt(f"alice@{DOMAIN}")[0] in (450, 451)
    assert copies(dovecot, tag) == {}
    nothing_kept(server)
    send_again(server, dovecot, tag, "bob")


def test_down_for_one_recipient_check_and_back_for_the_next(
    dovecot: Dovecot, spool_dir: Path
) -> None:
    """Down at the first RCPT, back at the second: the message goes to the one accepted
    recipient only, and the refused one gets nothing (its sender retries it alone)."""
    with serving(spool_dir, "--lmtp", target(dovecot, "tcp"), workers=1, env=ENV) as up:
        with smtplib.SMTP("127.0.0.1", up.port, timeout=30) as client:
            client.ehlo("client.example")
            assert client.mail("a@example.net")[0] == 250
            dovecot.kill9()
            code, text = client.rcpt(f"alice@{DOMAIN}")
            assert (code, text[:5].decode()) in DOWN_AT_RCPT, (code, text)
            dovecot.start()
            assert client.rcpt(f"bob@{DOMAIN}")[0] == 250
            code, _ = client.data(message("down-for-one"))
            assert code == 250
        assert copies(dovecot, "down-for-one") == {"bob": 1}
        nothing_kept(up)


@contextlib.contextmanager
def mda_gone_while_paused(worker: int, dovecot: Dovecot, how: str) -> Iterator[None]:
    """The worker stopped (SIGSTOP) while the body sends to it, then Dovecot goes away
    (``kill -9``, or SIGTERM to all its processes, which also has them say 421: quicker),
    then the worker goes on (SIGCONT) with both waiting for it."""
    os.kill(worker, signal.SIGSTOP)
    try:
        yield
        time.sleep(0.02)
        if how == "kill -9":
            dovecot.kill9()
        else:
            dovecot.stop(graceful=False)
        time.sleep(0.02)
    finally:
        os.kill(worker, signal.SIGCONT)


@pytest.mark.parametrize("how", ["stopped", "kill -9"])
def test_an_mda_gone_while_the_worker_is_busy_is_still_a_4xx_at_rcpt(
    dovecot: Dovecot, spool_dir: Path, how: str
) -> None:
    """A busy worker reads the next RCPT and the news that the MDA went away in one go:
    the pooled connection it checked the last RCPT on has Dovecot's parting words in it
    (``421 4.3.2 <its hostname> Shutting down`` when stopped, the end of the connection
    when killed), not yet looked at. The RCPT must still get a temporary refusal, its own:
    not a 5xx (the sender would bounce a good address for an outage), not the MDA's 421
    (which tells the SMTP client that wildboar is closing the channel, RFC 5321 §3.8).

    The worker is made busy by SIGSTOP while the RCPT is sent and Dovecot goes away, then
    SIGCONT; which of the two it then handles first varies, so this is tried a few times."""
    replies = []
    with serving(spool_dir, "--lmtp", target(dovecot, "tcp"), workers=1, env=ENV) as up:
        [worker] = up.worker_pids()
        for _ in range(8):
            if not dovecot.running:
                dovecot.start()
            with smtplib.SMTP("127.0.0.1", up.port, timeout=30) as client:
                client.ehlo("client.example")
                assert client.mail("a@example.net")[0] == 250
                assert client.rcpt(f"bob@{DOMAIN}")[0] == 250  # a link in the pool now
                with mda_gone_while_paused(worker, dovecot, how):
                    client.putcmd("RCPT", f"TO:<alice@{DOMAIN}>")
                replies.append(client.getreply())
    wrong = [r for r in replies if not (r[0] in (450, 451) and r[1][:2] == b"4.")]
    assert wrong == [], f"{len(wrong)} of {len(replies)} wrong: {sorted(set(wrong))}"


@pytest.mark.parametrize("how", ["stopped", "kill -9"])
def test_an_mda_gone_while_the_worker_is_busy_is_still_a_4xx_after_the_content(
    dovecot: Dovecot, spool_dir: Path, how: str
) -> None:
    """As above, at the end of data: the pooled connection the RCPTs were checked on has
    Dovecot's parting words in it when the worker, busy, reads the content and them in one
    go. The reply after the content must be a 4xx of wildboar's own (not Dovecot's 421:
    the client would take it that wildboar is closing), nothing may be delivered, and no
    handoff may fail with an error of its own (``handoff_error`` in the log)."""
    replies = []
    with serving(spool_dir, "--lmtp", target(dovecot, "tcp"), workers=1, env=ENV) as up:
        [worker] = up.worker_pids()
        for attempt in range(8):
            if not dovecot.running:
                dovecot.start()
            with smtplib.SMTP("127.0.0.1", up.port, timeout=30) as client:
                client.ehlo("client.example")
                assert client.mail("a@example.net")[0] == 250
                assert client.rcpt(f"bob@{DOMAIN}")[0] == 250  # a link in the pool now
                client.putcmd("DATA")
                assert client.getreply()[0] == 354
                with mda_gone_while_paused(worker, dovecot, how):
                    client.send(message(f"busy-{attempt}") + b".\r\n")
                replies.append(client.getreply())
        errors = up.events("handoff_error")
    wrong = [r for r in replies if not (r[0] in (450, 451) and r[1][:2] == b"4.")]
    assert wrong == [], f"{len(wrong)} of {len(replies)} wrong: {sorted(set(wrong))}"
    assert errors == [], f"{len(errors)} of {len(replies)}: {sorted({e['error'] for e in errors})}"
    dovecot.start()
    assert all(copies(dovecot, f"busy-{attempt}") == {} for attempt in range(8))
