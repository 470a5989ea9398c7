"""The floor for a Python SMTP server: canned replies on uvloop, nothing else.

Not a mail server: it parses nothing but the verb, checks nothing, keeps nothing, writes no
log. It answers smtp-source's dialogue with the replies a server must send, in one write per
read, so its rate is the most any Python ``asyncio.Protocol`` on uvloop can reach here with
one write per reply: the price of the event loop, the callbacks and the socket calls, paid
by wildboar too, before it does any work of its own. ``bench.server`` runs it beside
wildboar (``--processes`` 1 and 2, like ``--workers``) to show how much of wildboar's cost
is its own.

    python -m bench.floor_peer --port 2527 --processes 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from collections.abc import Sequence

import uvloop

GREETING = b"220 floor.example ESMTP\r\n"
EHLO = b"250-floor.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10240000\r\n"
OK = b"250 2.0.0 Ok\r\n"
GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"
BYE = b"221 2.0.0 Bye\r\n"
END_OF_DATA = b"\r\n.\r\n"


class Canned(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending = b""
        self.in_data = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(GREETING)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        buffer = self.pending + data if self.pending else data
        replies: list[bytes] = []
        while buffer:
            if self.in_data:
                end = buffer.find(END_OF_DATA)
                if end < 0:
                    buffer = buffer[-4:]  # the end marker may straddle two reads
                    break
                buffer = buffer[end + len(END_OF_DATA) :]
                self.in_data = False
                replies.append(OK)
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                break
            verb = buffer[:4].upper()
            buffer = buffer[end + 2 :]
            if verb == b"DATA":
                self.in_data = True
                buffer = b"\r\n" + buffer  # so that an empty body's "." is an end marker
                replies.append(GO_AHEAD)
            elif verb in (b"EHLO", b"HELO"):
                replies.append(EHLO)
            elif verb == b"QUIT":
                self.transport.write(b"".join([*replies, BYE]))
                self.transport.close()
                return
            else:
                replies.append(OK)
        self.pending = buffer
        if replies:
            self.transport.write(b"".join(replies))


async def serve(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(Canned, sock=sock, backlog=1024)
    await stop.wait()
    server.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_peer")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args(argv)
    sock = socket.create_server((args.host, args.port), backlog=1024)
    sock.setblocking(False)
    children = []
    for _ in range(args.processes - 1):
        pid = os.fork()
        if pid == 0:
            uvloop.run(serve(sock))
            os._exit(0)
        children.append(pid)
    try:
        uvloop.run(serve(sock))
    finally:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
