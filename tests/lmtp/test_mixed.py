"""Mixed results after the end of data (RFC 5321 §4.4): the client gets 250 once what is
still owed is durable: a retry record for recipients the MDA deferred, a bounce (RFC 3464)
for those it refused; the retry delivers once the MDA takes it, never twice."""

from __future__ import annotations

import datetime
import email
import email.policy
import os
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import msgspec

from tests.amqp.broker import Broker, broker  # noqa: F401 (a fixture)
from tests.amqp.test_serve_amqp import amqp_env
from tests.system.harness import serving, spooled
from wildboar import message as M

from .dovecot import Dovecot

DOMAIN = "example.org"
# 1.5 MB: carol (1 MB quota) is under it at RCPT, over it once this is delivered.
BIG = b"Subject: mixed\r\nMessage-ID: <mixed@test>\r\n\r\n" + (b"m" * 998 + b"\r\n") * 1500


def records(directory: Path) -> list[M.Message]:
    msg = directory / "msg"
    if not msg.exists():
        return []
    return [msgspec.msgpack.decode(p.read_bytes(), type=M.Message) for p in msg.iterdir()]


def send_big(
    port: int, users: tuple[str, ...] = ("alice", "carol")
) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        return client.sendmail("sender@example.net", [f"{u}@{DOMAIN}" for u in users], BIG)


def spool_command(*args: str) -> subprocess.CompletedProcess[str]:
    """``wildboar spool ARGS``, as the operator runs it."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WILDBOAR_")}
    wildboar = str(Path(sys.executable).parent / "wildboar")
    return subprocess.run(
        [wildboar, "spool", *args],
        check=False,
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )


def owner(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_uid, status.st_gid


def tempfail_for(dovecot: Dovecot, user: str) -> None:
    """A full mailbox of ``user`` is a 452 4.2.2 (Dovecot's quota_full_tempfail, set for
    that user alone by a userdb field); the others' stay 552 5.2.2."""
    lines = dovecot.passwd_path.read_text().splitlines()
    lines = [
        f"{x} userdb_quota_full_tempfail=yes" if x.startswith(f"{user}@") else x for x in lines
    ]
    dovecot.passwd_path.write_text("\n".join(lines) + "\n")


def test_a_refusal_after_the_content_bounces_and_the_others_get_it(spool_dir: Path) -> None:
    with Dovecot() as dovecot:
        host, port = dovecot.lmtp_address
        env = {"WILDBOAR_RECIPIENTS_DOMAINS": DOMAIN}
        with serving(spool_dir, "--lmtp", f"lmtp:{host}:{port}", workers=1, env=env) as server:
            assert send_big(server.port) == {}  # 250: alice has it, carol's bounce is kept
            [created] = server.wait_for("dsn_created")
        assert len(dovecot.maildir_messages("alice")) == 1
        assert dovecot.maildir_messages("carol") == []
    [bounce] = records(spool_dir / "bounce")
    assert bounce.email.sender == "" and bounce.email.to == ["sender@example.net"]
    assert created["dsn"] == bounce.email.id
    report = email.message_from_bytes(bounce.email.data, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    status = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    text = status.as_string()
    assert "Final-Recipient: rfc822; carol@example.org" in text
    assert "Action: failed" in text and "Status: 5.2.2" in text
    assert records(spool_dir / "lmtp") == []


def test_a_deferral_after_the_content_is_retried_until_delivered_once(spool_dir: Path) -> None:
    """With Dovecot's quota_full_tempfail, a full mailbox is 452 4.2.2: carol's copy waits
    in the retry spool; once her mailbox has room the retry delivers it, to her only."""
    with Dovecot(extra="quota_full_tempfail = yes\n") as dovecot:
        host, port = dovecot.lmtp_address
        env = {"WILDBOAR_RECIPIENTS_DOMAINS": DOMAIN, "WILDBOAR_LMTP_RETRY_MIN": "1"}
        with serving(spool_dir, "--lmtp", f"lmtp:{host}:{port}", workers=1, env=env) as server:
            assert send_big(server.port) == {}
            [queued] = server.wait_for("lmtp_retry_queued")
            assert queued["recipients"] == [f"carol@{DOMAIN}"]
            [waiting] = records(spool_dir / "lmtp")
            assert waiting.email.to == [f"carol@{DOMAIN}"]
            retry = waiting.retry
            assert retry is not None and retry.attempts == 1
            [owed] = retry.recipients
            assert (owed.address, owed.code, owed.enhanced) == (f"carol@{DOMAIN}", 452, "4.2.2")
            assert "Quota exceeded" in owed.text
            assert retry.next_attempt - retry.last_attempt == datetime.timedelta(seconds=1)
            [later] = server.wait_for("lmtp_retry_later", timeout=30)  # still full: kept
            assert later["attempts"] == 2
            [waiting] = records(spool_dir / "lmtp")
            assert waiting.retry is not None and waiting.retry.attempts >= 2
            shown = spool_command("ls", "--retries", "--spool", str(spool_dir))
            assert shown.returncode == 0, shown.stderr
            head, attempts, reply = shown.stdout.splitlines()
            assert head.startswith(waiting.email.id) and f"-> carol@{DOMAIN}" in head
            assert attempts.startswith("    attempts ") and ", next 20" in attempts
            assert reply.startswith(f"    carol@{DOMAIN}: 452 4.2.2 ")
            (spool_dir / "msg").mkdir(mode=0o700)  # the main spool, unused: empty
            os.chown(spool_dir / "msg", *owner(spool_dir))
            hint = spool_command("count", "--spool", str(spool_dir))
            assert hint.stdout == "0\n", hint.stderr
            assert f"1 more in {spool_dir / 'lmtp'} (wildboar spool ls --retries)" in hint.stderr
            # Room for carol: a larger quota in the userdb (Dovecot rereads the file).
            users = dovecot.passwd_path.read_text().replace("storage=1M", "storage=10M")
            dovecot.passwd_path.write_text(users)
            server.wait_for("lmtp_retried", timeout=60)
            deadline = time.monotonic() + 10
            while records(spool_dir / "lmtp") and time.monotonic() < deadline:
                time.sleep(0.1)
        assert len(dovecot.maildir_messages("alice")) == 1
        assert len(dovecot.maildir_messages("carol")) == 1
    assert records(spool_dir / "lmtp") == []
    assert spooled(spool_dir) == []


def test_a_deferral_and_a_refusal_with_nobody_delivered_is_still_a_250(spool_dir: Path) -> None:
    """bob's full mailbox defers (452), carol's refuses (552): neither is the whole answer,
    so the server owns the message (250), retries bob's copy and bounces carol's."""
    with Dovecot(quotas={"bob": "1M", "carol": "1M"}) as dovecot:
        tempfail_for(dovecot, "bob")
        host, port = dovecot.lmtp_address
        env = {"WILDBOAR_RECIPIENTS_DOMAINS": DOMAIN}
        with serving(spool_dir, "--lmtp", f"lmtp:{host}:{port}", workers=1, env=env) as server:
            assert send_big(server.port, ("bob", "carol")) == {}
            server.wait_for("dsn_created")
            [queued] = server.wait_for("lmtp_retry_queued")
        assert queued["recipients"] == [f"bob@{DOMAIN}"]
        assert dovecot.maildir_messages("bob") == dovecot.maildir_messages("carol") == []
    [waiting] = records(spool_dir / "lmtp")
    assert waiting.email.to == [f"bob@{DOMAIN}"]
    assert waiting.retry is not None and waiting.retry.recipients[0].code == 452
    [bounce] = records(spool_dir / "bounce")
    text = email.message_from_bytes(bounce.email.data, policy=email.policy.default).as_string()
    assert "Final-Recipient: rfc822; carol@example.org" in text
    assert "bob@example.org" not in text.split("message/delivery-status")[1].split("--")[0]
    shown = spool_command("ls", "--bounces", "--spool", str(spool_dir))
    assert shown.returncode == 0, shown.stderr
    [line] = shown.stdout.splitlines()
    assert line.startswith(bounce.email.id) and line.endswith("<> -> sender@example.net")


def test_with_a_broker_bounces_go_to_the_outbound_exchange(
    spool_dir: Path,
    broker: Broker,  # noqa: F811 (the fixture)
) -> None:
    """With AMQP configured beside LMTP, a bounce is published to accepted.outbound.email
    (for an outbound relay) and leaves the bounce spool once the broker confirmed it."""
    queue = broker.name("accepted.outbound.email")
    with Dovecot() as dovecot:
        host, port = dovecot.lmtp_address
        env = {"WILDBOAR_RECIPIENTS_DOMAINS": DOMAIN, **amqp_env(broker)}
        args = ("--handoff", "lmtp", "--handoff", "amqp", "--lmtp", f"lmtp:{host}:{port}")
        with serving(spool_dir, *args, workers=1, env=env) as server:
            assert send_big(server.port) == {}
            [created] = server.wait_for("dsn_created")
            [forwarded] = server.wait_for("dsn_forwarded", timeout=30)
        assert forwarded["dsn"] == created["dsn"]
    [got] = broker.get(queue, 1)
    record = M.decode(got.body, got.properties.content_type)
    assert record.email.id == created["dsn"] and got.properties.message_id == created["dsn"]
    assert record.email.sender == "" and record.email.to == ["sender@example.net"]
    assert b"Final-Recipient: rfc822; carol@example.org" in record.email.data
    assert records(spool_dir / "bounce") == []
    [inbound] = broker.get(broker.name("accepted.inbound.email"), 1)  # the message itself
    assert M.decode(inbound.body, inbound.properties.content_type).email.to == [
        f"alice@{DOMAIN}",
        f"carol@{DOMAIN}",
    ]
