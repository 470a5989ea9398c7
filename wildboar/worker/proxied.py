"""The PROXY protocol header of an accepted connection, read off its socket before the
session begins (docs/proxy.md).

Owns: ``read_header``: the octets of the header and not one more, under a deadline, so
that what follows it (an SMTP command, or a TLS ClientHello on an implicit-TLS listener)
is still in the socket for the transport the session gets next; ``trusted``, whether a
peer may send a header at all.
Must not know: SMTP, TLS, what the addresses are used for (the session decides).
Security: only a peer in the listener's ``trusted_proxies`` is read at all; the parser's
size cap bounds what is held (``proxy.ProxyParser``), and the deadline what is waited
for. Octets are peeked, handed to the parser, then consumed only as far as they belong to
the header: while the header is incomplete every octet received is the header's (it comes
first), so a slow proxy costs no busy loop; once it is complete, exactly its length is
taken.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

from .. import proxy
from .host import IPNetwork


def trusted(peer: str, networks: Sequence[IPNetwork]) -> bool:
    """Whether ``peer`` (an address as ``getpeername`` gives it) is one of ``networks``."""
    try:
        ip = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


async def read_header(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    *,
    timeout: float,
    max_size: int = proxy.DEFAULT_MAX_SIZE,
) -> proxy.ProxyHeader | proxy.ProxyError:
    """The header at the start of ``sock`` (non-blocking), or why there is none.

    The header's octets are consumed from the socket; ``ProxyHeader.rest`` holds what was
    seen after them, which stays in the socket. A header not complete within ``timeout``
    seconds is a ``ProxyError``."""
    parser = proxy.ProxyParser(max_size=max_size)
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    seen = sock.recv(max_size, socket.MSG_PEEK)
                except (BlockingIOError, InterruptedError):
                    await _readable(loop, sock)
                    continue
                parser.receive_data(seen)
                event = parser.next_event()
                if event is proxy.NEED_DATA:
                    sock.recv(len(seen))  # all of it is the header's (see the module)
                    continue
                assert not isinstance(event, proxy.NeedData)
                # A header: its octets. Not one: what was seen, so that closing the
                # connection is an orderly end, not a reset for unread input.
                rest = len(event.rest) if isinstance(event, proxy.ProxyHeader) else 0
                _consume(sock, len(seen) - rest)
                return event
    except TimeoutError:
        return proxy.ProxyError("no PROXY header in time")
    except OSError as error:
        why = error.strerror or type(error).__name__
        return proxy.ProxyError(f"connection failed before the header: {why}")


def _consume(sock: socket.socket, octets: int) -> None:
    """Take ``octets`` already peeked (they are in the socket's buffer) off ``sock``."""
    while octets > 0:
        octets -= len(sock.recv(octets)) or octets
