"""A stop takes one transaction per session, not the drain deadline: a client pipelining
message after message held a TERM for the whole deadline (docs/security.md)."""

from __future__ import annotations

import signal
import smtplib
import threading
import time
from pathlib import Path

from .harness import serving, spooled

DRAIN = 20.0


def test_term_ends_a_busy_session_after_its_transaction(spool_dir: Path) -> None:
    accepted: list[str] = []
    refusal: list[str] = []
    started = threading.Event()

    def sender(port: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            for n in range(10_000):
                subject = f"busy-{n}"
                body = f"Subject: {subject}\r\n\r\nmessage {n}\r\n".encode()
                try:
                    client.sendmail("a@example.net", ["b@example.org"], body)
                except smtplib.SMTPSenderRefused as error:
                    refusal.append(f"{error.smtp_code} {error.smtp_error.decode()}")
                    return
                accepted.append(subject)
                if n == 20:
                    started.set()

    env = {"WILDBOAR_TIMEOUTS_DRAIN": str(DRAIN)}
    with serving(spool_dir, workers=1, env=env) as server:
        thread = threading.Thread(target=sender, args=(server.port,), daemon=True)
        thread.start()
        assert started.wait(30)
        stopped_at = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.proc.wait(timeout=DRAIN + 30) == 0
        took = time.monotonic() - stopped_at
        thread.join(timeout=10)
    assert took < DRAIN / 2, f"the stop took {took:.1f} s (drain deadline {DRAIN} s)"
    assert refusal and refusal[0].startswith("421 4.3.2"), refusal
    spooled_subjects = {
        line.removeprefix(b"Subject: ").decode()
        for record in spooled(spool_dir)
        for line in record.email.data.split(b"\r\n")
        if line.startswith(b"Subject: busy-")
    }
    assert spooled_subjects == set(accepted)  # every 250 is durable, nothing else is there


def test_term_closes_an_idle_session_that_had_its_messages(spool_dir: Path) -> None:
    """A session between transactions is closed at once (after a short grace for its next
    command), so it does not hold the stop either."""
    env = {"WILDBOAR_TIMEOUTS_DRAIN": str(DRAIN)}
    with serving(spool_dir, workers=1, env=env) as server:
        client = smtplib.SMTP("127.0.0.1", server.port, timeout=30)
        client.sendmail("a@example.net", ["b@example.org"], b"Subject: one\r\n\r\nx\r\n")
        stopped_at = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.proc.wait(timeout=DRAIN + 30) == 0
        took = time.monotonic() - stopped_at
        try:
            code, text = client.noop()
        except smtplib.SMTPServerDisconnected:
            code, text = 421, b"closed"
        client.close()
    assert took < DRAIN / 2, took
    assert code == 421, (code, text)
    assert len(spooled(spool_dir)) == 1
