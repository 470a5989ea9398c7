"""A large message, for real: 20 MB sent with smtplib through ``wildboar serve --lmtp``
reaches a private Dovecot's Maildir byte for byte, under wildboar's Received field. The
content goes through every stage that could cut, reorder or re-stuff it: the session's
spill to a temp file past ``sessions.content_memory``, the read back for the handoff, the
LMTP client's dot-stuffing, Dovecot's DATA and its Maildir (``mail_save_crlf = yes``)."""

from __future__ import annotations

import base64
import random
import smtplib
import time
from pathlib import Path

from tests.system.harness import serving

from .dovecot import Dovecot
from .stored import handed_over, queued_id

DOMAIN = "example.org"
TWENTY_MB = 20 * 1000 * 1000
#: The limit the server runs with (``[limits] message_size``, RFC 1870 SIZE): the default,
#: 10,240,000, would refuse the message with 552 5.3.4.
LIMIT = 25 * 1024 * 1024


def big_message(size: int, seed: int) -> bytes:
    """``size`` octets of RFC 5322 message, CRLF line ends, no line over 998 octets:
    random base64 lines (so that a lost, doubled or moved piece shows), with lines that
    start with a dot (and one that is only a dot: the end of DATA if not stuffed) and
    8-bit ones scattered among them."""
    rng = random.Random(seed)
    head = (
        f"Message-ID: <twenty-mb-{seed}@test>\r\nSubject: 20 MB\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    ).encode()
    encoded = base64.encodebytes(rng.randbytes(size * 3 // 4))
    lines = encoded.replace(b"\n", b"\r\n").splitlines(keepends=True)
    specials = [b".\r\n", b"..\r\n", b".leading dot\r\n", "€ 8-bit ünïcödé\r\n".encode(), b"\r\n"]
    for index in range(0, len(lines), 997):
        lines[index] = specials[index % len(specials)]
    lines[len(lines) // 2] = b"x" * 998 + b"\r\n"  # the longest line SMTP takes
    body = b"".join(lines)[: size - len(head) - 2]
    if body.endswith(b"\r"):
        body = body[:-1] + b"x"
    return head + body + b"\r\n"


def test_a_20_mb_message_arrives_byte_for_byte(spool_dir: Path) -> None:
    message = big_message(TWENTY_MB, seed=20)
    assert len(message) == TWENTY_MB and message.endswith(b"\r\n")
    assert b"\r\n.\r\n" in message and b"\r\n..\r\n" in message
    with Dovecot(quotas={}) as dovecot:
        host, port = dovecot.lmtp_address
        env = {
            "WILDBOAR_RECIPIENTS_DOMAINS": DOMAIN,
            "WILDBOAR_LIMITS_MESSAGE_SIZE": str(LIMIT),
        }
        with serving(spool_dir, "--lmtp", f"lmtp:{host}:{port}", workers=1, env=env) as server:
            started = time.monotonic()
            with smtplib.SMTP("127.0.0.1", server.port, timeout=120) as client:
                client.ehlo("client.example")
                assert client.esmtp_features["size"] == str(LIMIT)
                assert client.mail("a@example.net", ["BODY=8BITMIME", f"SIZE={len(message)}"]) == (
                    250,
                    b"2.1.0 Ok",
                )
                assert client.rcpt(f"alice@{DOMAIN}")[0] == 250
                code, text = client.data(message)
            took = time.monotonic() - started
        assert code == 250, (code, text)
        [stored] = dovecot.maildir_messages("alice")
    wildboar_id, content = handed_over(stored)
    assert wildboar_id == queued_id(text)
    assert len(content) == len(message), (len(content), len(message))
    assert content == message, next(
        i for i, (a, b) in enumerate(zip(content, message, strict=False)) if a != b
    )
    print(f"20 MB through wildboar into Dovecot in {took:.1f} s")
