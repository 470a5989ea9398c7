"""wildboar behind nginx's mail proxy (``xclient on``, ``smtp_auth none``): nginx says who
its client is with XCLIENT on a listener whose xclient_hosts name it. The client's real
address (127.0.0.2 here; nginx connects from 127.0.0.1) is what the record, the Received
field and the logs show; an XCLIENT from a host the listener does not name gets
``550 5.7.0``, and nginx passes that on."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from .. import nginx
from .harness import Server, serving, spooled

CLIENT = "127.0.0.2"
PROXY = "127.0.0.1"


@pytest.fixture
def server(spool_dir: Path) -> Iterator[Server]:
    config = spool_dir.parent / "wildboar.toml"
    config.write_text(
        '[recipients]\ndomains = ["example.org"]\n\n'
        '[[listen]]\nname = "smtp"\nhost = "127.0.0.1"\nport = 0\n'
        'xclient_hosts = ["127.0.0.1/32"]\n\n'
        '[[listen]]\nname = "elsewhere"\nhost = "127.0.0.1"\nport = 0\n'
        'xclient_hosts = ["192.0.2.0/24"]\n'
    )
    with serving(spool_dir, "--config", str(config), listen=(), workers=2) as up:
        yield up


def port(server: Server, name: str) -> int:
    found = server.wait_for("listening", 2, component="supervisor")
    return int(next(e["port"] for e in found if e["name"] == name))


def client(address: tuple[str, int]) -> smtplib.SMTP:
    smtp = smtplib.SMTP(timeout=30, source_address=(CLIENT, 0), local_hostname="client.example")
    smtp.connect(*address)
    return smtp


def test_the_client_behind_nginx_is_the_client(server: Server) -> None:
    with nginx.Nginx(("127.0.0.1", port(server, "smtp"))) as proxy:
        with client(proxy.address) as smtp:
            body = b"Subject: through nginx\r\n\r\nhello\r\n"
            assert smtp.sendmail("a@example.net", ["b@example.org"], body) == {}
        [asked] = proxy.auth.requests
    assert asked["Client-IP"] == CLIENT and asked["Auth-Protocol"] == "smtp"
    [record] = spooled(server.spool)
    remote = record.connection.remote
    assert (remote.family, remote.address, remote.name) == ("ipv4", CLIENT, None)
    assert record.transaction.helo_name == "client.example"  # the EHLO nginx relays
    assert record.email.received.startswith(f"Received: from client.example ([{CLIENT}])\r\n")
    [said] = server.wait_for("xclient")
    assert said["proxy"] == PROXY and said["remote"] == CLIENT
    assert server.wait_for("message_accepted")
    assert not nginx.debian_service_running()


def test_an_xclient_from_a_host_not_named_gets_550(server: Server) -> None:
    with nginx.Nginx(("127.0.0.1", port(server, "elsewhere"))) as proxy:
        with client(proxy.address) as smtp, pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            smtp.sendmail("a@example.net", ["b@example.org"], b"Subject: x\r\n\r\nx\r\n")
        [(code, text)] = refused.value.recipients.values()
        assert code == 550 and text.startswith(b"5.7.0 Error: insufficient authorization")
        assert "upstream sent invalid response" in proxy.log
    assert spooled(server.spool) == []
    assert not server.events("xclient")


def test_a_client_that_is_not_an_xclient_host_gets_550(server: Server) -> None:
    with client(("127.0.0.1", port(server, "smtp"))) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("xclient")
        code, text = smtp.docmd("XCLIENT", "ADDR=192.0.2.1")
        assert code == 550 and text.startswith(b"5.7.0 ")
