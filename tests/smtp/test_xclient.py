"""XCLIENT in the core (Postfix's XCLIENT_README, as nginx's mail proxy sends it): offered
and asked only when the I/O layer trusts the client with it, refused with ``550 5.7.0``
otherwise; every attribute decoded and checked, a malformed one named in a ``501 5.5.4``;
an accepted XCLIENT greets again and the session starts over."""

from __future__ import annotations

import pytest

from wildboar import smtp

from .client import Client, statuses

S = smtp.State
U = smtp.Unavailable
KEYWORD = b"250-XCLIENT ADDR PORT NAME HELO PROTO LOGIN\r\n"
MESSAGE = b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"


def proxy(bytewise: bool = False, **kwargs: object) -> Client:
    """A trusted proxy's session, greeted and after its own EHLO (as nginx does)."""
    client = Client(bytewise=bytewise, xclient=True, **kwargs)  # type: ignore[arg-type]
    assert KEYWORD in client.send(b"EHLO proxy.example\r\n")
    return client


def xclient_event(client: Client) -> smtp.Xclient:
    found = [e for e in client.events if isinstance(e, smtp.Xclient)]
    assert found, client.events
    return found[-1]


def send_message(client: Client) -> smtp.Envelope:
    assert client.round(b"EHLO client.example\r\n") == ["250"]
    for line in MESSAGE.split(b"\r\n")[:-1]:
        client.send(line + b"\r\n")
    assert client.round(b"Subject: x\r\n\r\nhi\r\n.\r\n") == ["250 2.0.0"]
    return client.accepted[-1].envelope


# --- who may send it -------------------------------------------------------------------


def test_a_client_not_trusted_with_xclient_is_refused_550() -> None:
    client = Client(limits=smtp.Limits(errors=3))
    assert b"XCLIENT" not in client.send(b"EHLO client.example\r\n")
    out = client.send(b"XCLIENT ADDR=192.0.2.1\r\n")
    assert out == (
        b"550 5.7.0 Error: insufficient authorization: XCLIENT is not allowed from this client\r\n"
    )
    assert client.conn.state is S.READY
    assert not any(isinstance(e, smtp.Xclient) for e in client.events)
    # Refused before its arguments are read: a malformed one gets the same answer.
    assert client.round(b"XCLIENT FOO\r\n") == ["550 5.7.0"]
    # Each refusal is a client error, counted against the session's budget.
    assert client.round(b"XCLIENT ADDR=192.0.2.1\r\n") == ["550 5.7.0", "421 4.7.0"]
    assert client.closed


def test_before_ehlo_too_an_untrusted_client_gets_550() -> None:
    assert Client().round(b"XCLIENT NAME=a.example\r\n") == ["550 5.7.0"]


def test_it_is_offered_to_a_trusted_client_after_ehlo_only() -> None:
    client = Client(xclient=True)
    assert client.send(b"HELO proxy.example\r\n") == b"250 mx.example.org\r\n"
    ehlo = client.send(b"EHLO proxy.example\r\n")
    # Before HELP, which stays last.
    assert ehlo.endswith(KEYWORD + b"250 HELP\r\n")


# --- accepted: greeted again ---------------------------------------------------------


def test_an_accepted_xclient_greets_again_and_the_session_starts_over(bytewise: bool) -> None:
    client = proxy(bytewise)
    out = client.send(b"XCLIENT ADDR=192.0.2.7 PORT=40000 NAME=client.example.net\r\n")
    assert out == b"220 mx.example.org ESMTP\r\n"
    assert xclient_event(client) == smtp.Xclient(
        addr="192.0.2.7", port=40000, name="client.example.net"
    )
    assert client.conn.state is S.CONNECTED
    # The proxy's EHLO is forgotten, as after STARTTLS: MAIL needs a new one.
    assert client.round(b"MAIL FROM:<a@example.net>\r\n") == ["503 5.5.1"]
    envelope = send_message(client)
    assert envelope.helo == "client.example" and envelope.protocol == "ESMTP"


def test_the_greeting_text_may_come_from_the_caller() -> None:
    def policy(question: smtp.Question) -> smtp.Answer:
        return smtp.Accept("ESMTP ready for the real client")

    client = proxy(policy=policy)
    out = client.send(b"XCLIENT ADDR=192.0.2.7\r\n")
    assert out == b"220 mx.example.org ESMTP ready for the real client\r\n"


def test_xclient_before_any_ehlo_is_accepted() -> None:
    client = Client(xclient=True)
    assert client.send(b"XCLIENT ADDR=192.0.2.7\r\n") == b"220 mx.example.org ESMTP\r\n"
    assert client.conn.state is S.CONNECTED


def test_several_xclients_may_follow_each_other() -> None:
    """Postfix: a proxy short of line length sends NAME and ADDR first, then HELO and
    PROTO; XCLIENT is still offered and taken after one."""
    client = proxy()
    assert statuses(client.send(b"XCLIENT NAME=client.example.net ADDR=192.0.2.7\r\n")) == ["220"]
    assert statuses(client.send(b"XCLIENT HELO=client.example PROTO=ESMTP\r\n")) == ["220"]
    assert xclient_event(client) == smtp.Xclient(helo="client.example", proto="ESMTP")
    assert KEYWORD in client.send(b"EHLO client.example\r\n")


def test_what_came_before_the_greeting_is_a_synchronization_error() -> None:
    """Input that arrives while the caller decides is a client speaking before the
    greeting, as at connect (554 5.5.0)."""
    conn = smtp.ServerConnection("mx.example.org", xclient=True)
    assert isinstance(conn.next_event(), smtp.ClientConnected)
    conn.send(smtp.Accept())
    conn.receive_data(b"XCLIENT ADDR=192.0.2.7\r\n")
    assert isinstance(conn.next_event(), smtp.Xclient)
    conn.receive_data(b"EHLO client.example\r\n")
    out = conn.send(smtp.Accept())
    assert out == b"220 mx.example.org ESMTP\r\n554 5.5.0 Error: SMTP protocol synchronization\r\n"
    assert conn.state is S.CLOSED


@pytest.mark.parametrize("behind", [b"EHLO client.example\r\n", b"NOOP\r\n", b"x"])
def test_xclient_ends_a_pipelined_group(behind: bytes) -> None:
    """Like EHLO (RFC 2920 §3.1): with PIPELINING offered, nothing may follow it unread."""
    client = proxy()
    assert client.round(b"XCLIENT ADDR=192.0.2.7\r\n" + behind) == ["554 5.5.0"]
    assert client.closed
    assert not any(isinstance(e, smtp.Xclient) for e in client.events)


# --- refused ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setup",
    [
        [b"MAIL FROM:<a@example.net>\r\n"],
        [b"MAIL FROM:<a@example.net>\r\n", b"RCPT TO:<b@example.org>\r\n"],
        [b"MAIL FROM:<a@example.net>\r\n", b"RCPT TO:<b@example.org>\r\n", b"BDAT 1\r\nx"],
    ],
    ids=["MAIL", "RCPT", "CHUNKING"],
)
def test_not_inside_a_transaction(setup: list[bytes]) -> None:
    client = proxy()
    for line in setup:
        client.send(line)
    state = client.conn.state
    out = client.send(b"XCLIENT ADDR=192.0.2.7\r\n")
    assert out == b"503 5.5.1 Error: MAIL transaction in progress\r\n"
    assert client.conn.state is state
    assert not client.accepted and not client.closed


def test_the_caller_may_refuse_it() -> None:
    refusal = smtp.Reply(550, "5.7.1", "Error: not from there")

    def policy(question: smtp.Question) -> smtp.Answer:
        return refusal if isinstance(question, smtp.Xclient) else smtp.Accept()

    client = proxy(policy=policy)
    assert client.send(b"XCLIENT ADDR=192.0.2.7\r\n") == refusal.to_bytes()
    assert client.conn.state is S.READY  # the proxy's EHLO still holds
    assert client.round(b"MAIL FROM:<a@example.net>\r\n") == ["250 2.1.0"]


def test_a_421_from_the_caller_closes_the_session() -> None:
    full = smtp.Reply(421, "4.7.0", "Error: too many connections, try again later")

    def policy(question: smtp.Question) -> smtp.Answer:
        return full if isinstance(question, smtp.Xclient) else smtp.Accept()

    client = proxy(policy=policy)
    assert client.round(b"XCLIENT ADDR=192.0.2.7\r\n") == ["421 4.7.0"]
    assert client.closed and client.conn.state is S.CLOSED


def test_a_listener_that_requires_tls_wants_it_before_xclient() -> None:
    conn = smtp.ServerConnection("mx.example.org", starttls=True, require_tls=True, xclient=True)
    conn.next_event()
    conn.send(smtp.Accept())
    conn.receive_data(b"XCLIENT ADDR=192.0.2.7\r\n")
    assert conn.next_event() is smtp.NEED_DATA
    assert conn.data_to_send() == b"530 5.7.0 Must issue a STARTTLS command first\r\n"


# --- the attributes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (b"ADDR=192.0.2.1", smtp.Xclient(addr="192.0.2.1")),
        # nginx: "IPV6:" and the address as the socket gave it; canonical form here.
        (b"ADDR=IPV6:2001:DB8:0:0::1", smtp.Xclient(addr="2001:db8::1")),
        (b"ADDR=ipv6:::1", smtp.Xclient(addr="::1")),
        (b"ADDR=IPV6:::ffff:192.0.2.1", smtp.Xclient(addr="192.0.2.1")),
        (b"ADDR=IPV6+3A2001+3Adb8+3A+3A1", smtp.Xclient(addr="2001:db8::1")),  # xtext
        (b"ADDR=[UNAVAILABLE]", smtp.Xclient(addr=U.PERMANENT)),
        (b"PORT=0 NAME=[TEMPUNAVAIL]", smtp.Xclient(port=0, name=U.TEMPORARY)),
        (b"PORT=65535", smtp.Xclient(port=65535)),
        (b"name=Client.Example.NET", smtp.Xclient(name="Client.Example.NET")),
        (b"NAME=[unavailable]", smtp.Xclient(name=U.PERMANENT)),
        (b"HELO=[192.0.2.1]", smtp.Xclient(helo="[192.0.2.1]")),
        (
            b"HELO=[IPv6:2001:db8::1] PROTO=smtp",
            smtp.Xclient(helo="[IPv6:2001:db8::1]", proto="SMTP"),
        ),
        (b"PROTO=ESMTP", smtp.Xclient(proto="ESMTP")),
        (b"LOGIN=alice", smtp.Xclient(login="alice")),
        (b"LOGIN=alice+2Btag+3Dx@example.org", smtp.Xclient(login="alice+tag=x@example.org")),
        (b"LOGIN=j+C3+A9r+C3+B4me", smtp.Xclient(login="j\u00e9r\u00f4me")),
        (b"LOGIN=[UNAVAILABLE]", smtp.Xclient(login=U.PERMANENT)),
        # All of them as nginx sends them (after its EHLO), in one command.
        (
            b"ADDR=127.0.0.2 LOGIN=bob NAME=[UNAVAILABLE]",
            smtp.Xclient(addr="127.0.0.2", login="bob", name=U.PERMANENT),
        ),
        (
            b"ADDR=192.0.2.1 PORT=25 NAME=a.example HELO=b.example PROTO=ESMTP LOGIN=c",
            smtp.Xclient(
                addr="192.0.2.1",
                port=25,
                name="a.example",
                helo="b.example",
                proto="ESMTP",
                login="c",
            ),
        ),
    ],
)
def test_attributes_are_decoded_and_checked(args: bytes, expected: smtp.Xclient) -> None:
    client = proxy()
    assert statuses(client.send(b"XCLIENT " + args + b"\r\n")) == ["220"]
    assert xclient_event(client) == expected


@pytest.mark.parametrize(
    ("args", "attribute"),
    [
        (b"ADDR=192.0.2", "ADDR"),
        (b"ADDR=192.0.2.256", "ADDR"),
        (b"ADDR=192.000.2.1", "ADDR"),
        (b"ADDR=2001:db8::1", "ADDR"),  # IPv6 takes its prefix
        (b"ADDR=IPV6:192.0.2.1", "ADDR"),
        (b"ADDR=IPV6:fe80::1%eth0", "ADDR"),
        (b"ADDR=[192.0.2.1]", "ADDR"),
        (b"ADDR=", "ADDR"),
        (b"ADDR", "ADDR"),
        (b"ADDR=1+2", "ADDR"),  # not xtext
        (b"ADDR=1+3a", "ADDR"),  # xtext hex digits are upper case
        (b"PORT=65536", "PORT"),
        (b"PORT=-1", "PORT"),
        (b"PORT=123456", "PORT"),
        (b"PORT=", "PORT"),
        (b"NAME=under_score.example", "NAME"),
        (b"NAME=[192.0.2.1]", "NAME"),
        (b"NAME=a..example", "NAME"),
        (b"NAME=caf+C3+A9.example", "NAME"),
        (b"NAME=" + b"a" * 64 + b".example", "NAME"),
        (b"HELO=a..example", "HELO"),
        (b"HELO=[192.0.2.300]", "HELO"),
        (b"HELO=example.org+20", "HELO"),
        (b"PROTO=LMTP", "PROTO"),
        (b"PROTO=", "PROTO"),
        (b"LOGIN=", "LOGIN"),
        (b"LOGIN=a+00b", "LOGIN"),  # a control character
        (b"LOGIN=a+0Db", "LOGIN"),
        (b"LOGIN=+FF", "LOGIN"),  # not UTF-8
        (b"LOGIN=" + b"x" * 256, "LOGIN"),
        (b"ADDR=192.0.2.1 PORT=x", "PORT"),
    ],
)
def test_a_malformed_attribute_is_named_in_501(args: bytes, attribute: str) -> None:
    client = proxy()
    out = client.send(b"XCLIENT " + args + b"\r\n")
    assert out == f"501 5.5.4 Error: bad XCLIENT {attribute} value\r\n".encode()
    assert client.conn.state is S.READY
    assert not any(isinstance(e, smtp.Xclient) for e in client.events)


@pytest.mark.parametrize(
    ("args", "reply"),
    [
        (b"", b"501 5.5.4 Syntax: XCLIENT attribute=value ...\r\n"),
        (b"ADDR=192.0.2.1  NAME=a.example", b"501 5.5.4 Syntax: XCLIENT attribute=value ...\r\n"),
        (b"=1", b"501 5.5.4 Syntax: XCLIENT attribute=value ...\r\n"),
        (b"DESTADDR=192.0.2.2", b"501 5.5.4 Error: unknown XCLIENT attribute DESTADDR\r\n"),
        (b"foo=1", b"501 5.5.4 Error: unknown XCLIENT attribute FOO\r\n"),
        # An odd name is not repeated back.
        (b"A\x01B=1", b"501 5.5.4 Syntax: XCLIENT attribute=value ...\r\n"),
        (b"X" * 40 + b"=1", b"501 5.5.4 Syntax: XCLIENT attribute=value ...\r\n"),
        (b"ADDR=192.0.2.1 addr=192.0.2.2", b"501 5.5.4 Error: XCLIENT ADDR given twice\r\n"),
    ],
)
def test_the_command_itself_must_be_well_formed(args: bytes, reply: bytes) -> None:
    client = proxy()
    line = b"XCLIENT " + args if args else b"XCLIENT"
    assert client.send(line + b"\r\n") == reply


def test_a_non_ascii_command_is_refused_before_it_is_read() -> None:
    client = proxy()
    assert client.round(b"XCLIENT NAME=caf\xc3\xa9.example\r\n") == ["501 5.5.2"]


# --- LOGIN: an authenticated session ---------------------------------------------------


def test_a_login_makes_the_protocol_esmtpa_until_it_is_withdrawn() -> None:
    client = proxy()
    assert statuses(client.send(b"XCLIENT ADDR=192.0.2.7 LOGIN=alice\r\n")) == ["220"]
    assert client.conn.login == "alice"
    assert send_message(client).protocol == "ESMTPA"  # RFC 3848 §2
    # An XCLIENT that does not name LOGIN leaves it as it was.
    assert statuses(client.send(b"XCLIENT NAME=client.example.net\r\n")) == ["220"]
    assert send_message(client).protocol == "ESMTPA"
    assert statuses(client.send(b"XCLIENT LOGIN=[UNAVAILABLE]\r\n")) == ["220"]
    assert client.conn.login is None
    assert send_message(client).protocol == "ESMTP"


def test_a_login_over_tls_is_esmtpsa() -> None:
    client = proxy(starttls=True)
    client.send(b"STARTTLS\r\n")
    client.conn.tls_started()
    assert KEYWORD in client.send(b"EHLO proxy.example\r\n")
    assert statuses(client.send(b"XCLIENT LOGIN=alice\r\n")) == ["220"]
    assert client.conn.tls  # TLS is not undone by XCLIENT
    assert send_message(client).protocol == "ESMTPSA"
