"""Mixed results after the end of data (RFC 5321 §4.4): the client gets 250 once what is
still owed is durable: a retry record for recipients the MDA deferred, a bounce (RFC 3464)
for those it refused; the retry delivers once the MDA takes it, never twice."""

from __future__ import annotations

import email
import email.policy
import smtplib
import time
from pathlib import Path

import msgspec

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


def send_big(port: int) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        return client.sendmail("sender@example.net", [f"alice@{DOMAIN}", f"carol@{DOMAIN}"], BIG)


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
            server.wait_for("lmtp_retry_later", timeout=30)  # still full: tried, kept
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
