"""Whose mail the server takes: only its domains' (and Postmaster's), the rest refused at
RCPT with 550 5.7.1; the embedded default takes everyone's and says so."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from .harness import serving, spooled


def test_only_our_domains_are_accepted(spool_dir: Path) -> None:
    env = {"WILDBOAR_RECIPIENTS_DOMAINS": "example.org,bücher.example"}
    with serving(spool_dir, workers=1, env=env) as server:
        assert not server.events("config_warning")
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
            client.ehlo("client.example")
            assert client.mail("a@example.net")[0] == 250
            code, text = client.rcpt("x@gmail.com")
            assert (code, text[:5]) == (550, b"5.7.1") and b"gmail.com" in text
            assert client.rcpt("x@EXAMPLE.org")[0] == 250
            assert client.rcpt("kurt@xn--bcher-kva.example")[0] == 250
            assert client.rcpt("Postmaster")[0] == 250
            assert client.rcpt("postmaster@gmail.com")[0] == 550
            assert client.data(b"Subject: ours\r\n\r\nhi\r\n")[0] == 250
            client.rset()
            assert client.mail("a@example.net")[0] == 250
            assert client.rcpt("y@relay.example")[0] == 550
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.data(b"Subject: nobody\r\n\r\nhi\r\n")
            assert refused.value.smtp_code == 554
    [record] = spooled(spool_dir)
    assert record.email.to == ["x@EXAMPLE.org", "kurt@xn--bcher-kva.example", "Postmaster"]


def test_the_embedded_default_takes_every_domain_and_says_so(spool_dir: Path) -> None:
    with serving(spool_dir, workers=1) as server:
        [warning] = server.wait_for("config_warning")
        assert "every domain is accepted" in warning["warning"]
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
            assert (
                client.sendmail("a@example.net", ["x@gmail.com"], b"Subject: s\r\n\r\nx\r\n") == {}
            )
