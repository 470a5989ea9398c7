"""Building the message record: the one place a ``message.Message`` is assembled from what
a session knows.

Owns: the ``server`` and ``connection`` records with their ``urn:uuid:`` ids and creation
times, and ``build_message``: the whole record of a transaction from the server and
connection records, the transaction's id and start, the envelope and the content, with the
Received header prepended (by the server's host name, from the connection's remote
address, with the message's id) and, for a message refused after its content, the
``Rejection``. The worker's sessions, ``wildboar replay`` and the tests all build records
here, so they cannot drift apart.
Must not know: sockets, handoffs, sessions, the event loop.
Security: the envelope and content come from a client; they are carried as they are (the
schema's types bound them, the Received header is built by ``wildboar.smtp``).
"""

from __future__ import annotations

import datetime
from typing import Literal

from . import message as M
from . import smtp

Family = Literal["ipv4", "ipv6", "unix"]
#: An endpoint as the socket says it: an address and, for IP, a port.
Endpoint = tuple[str, int | None]
#: A transaction's id and when it began (at MAIL).
TransactionStart = tuple[str, datetime.datetime]


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def start_transaction() -> TransactionStart:
    return M.new_urn(), now()


def build_server(
    hostname: str, *, id: str | None = None, when: datetime.datetime | None = None
) -> M.Server:
    return M.Server(id=id or M.new_urn(), creation_time=when or now(), hostname=hostname)


def build_connection(
    family: Family,
    remote: Endpoint,
    local: Endpoint,
    *,
    id: str | None = None,
    when: datetime.datetime | None = None,
) -> M.Connection:
    return M.Connection(
        id=id or M.new_urn(),
        creation_time=when or now(),
        remote=M.Remote(family=family, address=remote[0], port=remote[1]),
        local=M.Local(address=local[0], port=local[1]),
    )


def build_message(
    envelope: smtp.Envelope,
    content: bytes,
    *,
    server: M.Server,
    connection: M.Connection,
    transaction: TransactionStart,
    message_id: str | None = None,
    when: datetime.datetime | None = None,
    rejection: M.Rejection | None = None,
) -> M.Message:
    """The record of the message ``envelope`` + ``content``, created ``when`` (now)."""
    message_id = message_id or M.new_urn()
    when = when or now()
    received = smtp.received_header(
        envelope,
        by=server.hostname,
        client_address=connection.remote.address,
        client_name=connection.remote.name,
        when=when,
        id=message_id.removeprefix("urn:uuid:"),
        tls=(connection.tls_version or "", connection.tls_cipher or "") if connection.tls else None,
    )
    txn_id, txn_time = transaction
    return M.Message(
        server=server,
        connection=connection,
        transaction=M.Transaction(
            id=txn_id, creation_time=txn_time, helo_name=envelope.helo, protocol=envelope.protocol
        ),
        email=M.build_email(
            envelope, id=message_id, creation_time=when, received=received, content=content
        ),
        rejection=rejection,
    )
