"""One SMTP session: an ``asyncio.Protocol`` that moves bytes between a client socket and a
``wildboar.smtp.ServerConnection``, answers its questions, and hands accepted messages to
the handoffs.

Owns: per-connection I/O, flow control (reading pauses while the core holds a large
backlog, e.g. input pipelined behind a message being made durable, and while the client is
not reading our replies), the session's deadline (checked by the worker's sweeper), the
facts of its message records (built by ``wildboar.record``).
Must not know: how handoffs store messages, how sockets were obtained, the ``Worker``
class (a session sees its worker through ``host.Host`` only).
Security: a client controls everything that arrives here; the core parses it with bounded
memory; this class holds at most ``sessions.content_memory`` octets of message content in
memory (the rest waits in an unnamed temp file, ``content.py``) and reads a message back
whole only for its handoff, under the worker's delivery budget. Time is bounded too: the
data-block deadline moves on with the octets that arrive (``timeouts.data_rate``), not
with each piece, and no session outlives ``timeouts.session``. While the worker drains,
a transaction in progress may finish and the session is then closed with 421, so a stop
waits for one transaction per session, not for the drain deadline. It never writes
anything but the core's replies, and closes only between commands, never with a reply
unsent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from typing import Any, TypeVar, cast

import msgspec

from .. import message as M
from .. import proxy, smtp
from .. import record as R
from ..handoff.base import Delivery, local_failure
from .clients import Client
from .content import Content
from .host import Host, RecipientVerifier
from .logs import log
from .tls import describe as tls_describe

# Read no more while the core holds this much unparsed input (pipelined commands).
BACKLOG_HIGH_WATER = 256 * 1024
# Events handled in one turn of the event loop: a client pipelining thousands of commands
# in one read must not hold the worker (its heartbeat, every other session) for long.
EVENTS_PER_TURN = 64
# A session told to shut down whose connection is still open this much later (the client
# does not read the reply) is aborted.
ABORT_AFTER = 1.0
# Draining, a session between transactions is closed if it sends nothing for this long.
DRAIN_IDLE_GRACE = 1.0
# States in which the session reads message content (the data-block timeout applies).
IN_DATA = smtp.CONTENT
# States without a transaction: a draining session in one of them is closed at once.
IDLE = smtp.IDLE
Wait = smtp.Wait
MessageData = smtp.MessageData
ACCEPT = smtp.Accept()
SHUTDOWN = smtp.Reply(421, "4.3.2", "Service shutting down, try again later")
TIMEOUT = smtp.Reply(421, "4.4.2", "Error: timeout exceeded")
LIFETIME = smtp.Reply(421, "4.4.2", "Error: session lasted too long, reconnect to go on")
TOO_MANY_SESSIONS = smtp.Reply(421, "4.7.0", "Error: too many connections, try again later")
HANDOFF_TIMEOUT = smtp.Reply(451, "4.3.0", "Error: queue timeout, try again later")
LOCAL_ERROR = smtp.Reply(451, "4.3.0", "Error: local problem, try again later")
FAMILIES: dict[int, R.Family] = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}
T = TypeVar("T")


def _endpoint(address: object) -> tuple[str, int | None]:
    if isinstance(address, tuple):
        return str(address[0]), int(address[1])
    return str(address or ""), None


class Session(asyncio.Protocol):
    def __init__(
        self,
        host: Host[Session],
        listener: str,
        refuse: smtp.Reply | None,
        spoke_first: bool = False,
    ) -> None:
        self.host = host
        self.listener = listener
        self.refuse = refuse
        #: Input was waiting before the greeting: greet only once it has been read, so the
        #: core sees it and answers 554 5.5.0 (synchronization), as docs/protocol.md says.
        self.spoke_first = spoke_first
        config = host.config
        tls = host.tls(listener)
        self.tls_mode = tls.mode if tls is not None else "none"
        self.require_tls = tls is not None and tls.require
        self.conn = self._core(tls=self.tls_mode == "implicit")
        #: The TLS session's protocol version and cipher, once there is one.
        self.tls_info: tuple[str, str] | None = None
        #: Behind a proxy: the header the worker read before the connection was made.
        self.relayed: proxy.ProxyHeader | None = None
        #: The networks of the proxies that may name their client with XCLIENT.
        self.xclient_networks = host.xclient_hosts(listener)
        #: The client as the connection (or its PROXY header) gave it, before any XCLIENT.
        self.origin: M.Remote | None = None
        #: The address the worker counts this session under (None: not yet, behind a
        #: proxy until its header), and the client of the per-client limits (None: exempt,
        #: refused, or not known yet).
        self.counted_ip: str | None = None
        self.client: Client | None = None
        self.id = M.new_urn()
        self.created = R.now()
        self.transport: asyncio.Transport | None = None
        self.deadline = host.clock() + config.timeouts.command
        #: The session ends here whatever the client does (``timeouts.session``).
        self.ends_at = host.clock() + config.timeouts.session
        self.client_ip = ""
        self.record: M.Connection | None = None
        self.transaction: R.TransactionStart | None = None
        # One buffer, not a list of pieces: content arriving a byte per read must cost a
        # byte of memory per byte, not a bytes object per byte; beyond a threshold, a file.
        self.content = Content(host.content_directory, config.sessions.content_memory)
        self.octets = 0  # content octets this turn: each moves the data-block deadline on
        self.touched_in_data = False  # whether the deadline is a data-block one
        self.draining = False  # the worker drains: close once the transaction is over
        self.transactions = 0  # transactions ended (delivered, refused, reset) so far
        self.sender: tuple[str, bool] = ("", False)  # of the transaction: address, SMTPUTF8
        self.checking: asyncio.Task[None] | None = None  # a recipient check with the MDA
        self.more = False  # events left for a later turn (EVENTS_PER_TURN)
        self.shutdown_at: float | None = None  # when shutdown() sent its reply
        self.delivering: asyncio.Task[None] | None = None
        self.handoff_expired = False
        self.paused_reasons: set[str] = set()
        self._output: list[bytes] = []
        self.closed = False
        self.messages = 0

    def _core(self, *, tls: bool) -> smtp.ServerConnection:
        return smtp.ServerConnection(
            self.host.config.hostname,
            limits=self.host.config.limits,
            extensions=self.host.extensions,
            tls=tls,
            starttls=self.tls_mode == "starttls",
            require_tls=self.require_tls,
        )

    # --- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = _endpoint(transport.get_extra_info("peername"))
        local = _endpoint(transport.get_extra_info("sockname"))
        sock = transport.get_extra_info("socket")
        family = FAMILIES.get(sock.family, "unix")
        if family == "ipv6" and peer[0].startswith("::ffff:"):
            # An IPv4 client on a dual-stack IPv6 socket: both ends are IPv4 addresses.
            family = "ipv4"
            peer = (peer[0].removeprefix("::ffff:"), peer[1])
            local = (local[0].removeprefix("::ffff:"), local[1])
        relayed = self.relayed
        fields: dict[str, Any] = {}
        if relayed is not None:
            fields["proxy"] = peer[0]
            if relayed.command is proxy.Command.PROXY and relayed.source is not None:
                assert relayed.destination is not None
                # A dual-stack proxy names an IPv4 client as ::ffff:a.b.c.d (TCP6).
                address, family = _plain(relayed.source.ip)
                peer = (address, relayed.source.port)
                local = (_plain(relayed.destination.ip)[0], relayed.destination.port)
        self.client_ip = peer[0]
        self.record = R.build_connection(family, peer, local, id=self.id, when=self.created)
        if self.tls_mode == "implicit":
            self._tls_established(transport)
        elif relayed is not None and relayed.tlvs.ssl is not None and relayed.tlvs.ssl.tls:
            self._tls_relayed(relayed.tlvs.ssl)
        self._trust_xclient()
        self._touch()
        log(
            "connection_open",
            connection=self.id,
            server=self.host.id,
            listener=self.listener,
            remote=peer[0],
            remote_port=peer[1],
            **fields,
        )
        if not self.spoke_first:
            self._process()  # the greeting; else after the first data_received

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self._process()

    def eof_received(self) -> bool:
        self.conn.receive_data(b"")
        self._process()
        return True  # we close once the core says so, after pending replies

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return  # ended already (a stop during a STARTTLS handshake)
        self.closed = True
        if self.delivering is None:
            self.host.session_closed(self)
        log(
            "connection_close",
            connection=self.id,
            server=self.host.id,
            remote=self.client_ip,
            messages=self.messages,
        )

    def pause_writing(self) -> None:
        self._pause("writing")

    def resume_writing(self) -> None:
        self._resume("writing")
        if self.more:  # replies were held back while the client did not read
            self._continue()

    # --- driving the core ---------------------------------------------------------

    def _process(self) -> None:
        """Handle what the core has, at most ``EVENTS_PER_TURN`` events, and none while
        the client does not read our replies (``pause_writing``): replies to pipelined
        commands cannot pile up in memory, and the rest waits for a later turn."""
        conn = self.conn
        self.octets = 0
        progressed = self._handle_events(conn)
        output = self._output
        output.append(conn.data_to_send())
        replies = b"".join(output)
        output.clear()
        in_data = conn.state in IN_DATA
        if progressed or (replies and not self.more) or in_data is not self.touched_in_data:
            # The deadline runs per command, not per read: a client dripping one byte at a
            # time cannot hold a session open for ever. It also switches to the data-block
            # timeout as content begins (BDAT has no reply before its chunk is in).
            self._touch(in_data)
        elif self.octets and in_data:
            self._credit(self.octets)
        if replies and self.transport is not None and not self.closed:
            self.transport.write(replies)
        self._flow(conn)

    def _handle_events(self, conn: smtp.ServerConnection) -> bool:
        """Handle the core's events for this turn; whether the client made progress."""
        paused = self.paused_reasons
        progressed = False
        handled = 0
        self.more = False
        while not self.closed:
            if handled >= EVENTS_PER_TURN or (paused and "writing" in paused):
                self.more = True
                break
            event = conn.next_event()
            if isinstance(event, Wait):  # NEED_DATA or PAUSED
                break
            handled += 1
            if type(event) is MessageData:
                self.octets += len(event.data)
            else:
                progressed = True
            self._handle(event)
        return progressed

    def _flow(self, conn: smtp.ServerConnection) -> None:
        """Pause reading while events wait for a later turn or input piles up."""
        paused = self.paused_reasons
        if self.more:
            self._pause("busy")
            if "writing" not in paused:
                self.host.loop.call_soon(self._continue)
        elif paused:
            self._resume("busy")
        if conn.input_backlog > BACKLOG_HIGH_WATER:
            self._pause("backlog")
        elif paused:
            self._resume("backlog")

    def _continue(self) -> None:
        if not self.closed and self.more and "writing" not in self.paused_reasons:
            self._process()

    def _handle(self, event: smtp.Event) -> None:
        if type(event) is smtp.MessageData:
            self.content.append(event.data)
        elif type(event) is smtp.MessageComplete:
            # No pause_reading here: while the question waits the core consumes nothing,
            # and the backlog mark in _process stops reading if the client sends on.
            self.delivering = self.host.loop.create_task(self._deliver(event))
        elif type(event) is smtp.MailFrom:
            self._mail(event)
        elif type(event) is smtp.RcptTo:
            self._recipient(event.recipient)
        elif type(event) is smtp.TransactionAborted:
            self._aborted(event)
        elif type(event) is smtp.ConnectionClosed:
            self._ended_by_errors()
            self._close()
        elif type(event) is smtp.StartTls:
            self.host.loop.create_task(self._start_tls())
        elif type(event) is smtp.Xclient:
            self._xclient(event)
        elif type(event) is smtp.ClientConnected:
            self._answer(self.refuse or self.host.refusal("connect") or ACCEPT)
        else:
            self._answer(ACCEPT)

    def _mail(self, event: smtp.MailFrom) -> None:
        # Draining, a session gets the transaction it came for, not one more.
        late = self.draining and self.transactions > 0
        refusal = SHUTDOWN if late else self.host.limit(self, "mail")
        refusal = refusal or self.host.refusal("mail")
        if refusal is not None:
            self._answer(refusal)
            return
        self.transaction = R.start_transaction()
        self.sender = (event.sender, event.params.smtputf8)
        self._answer(ACCEPT)

    # --- behind a proxy (XCLIENT) -------------------------------------------------------

    def _trust_xclient(self) -> None:
        """Before the greeting: whether the client (the PROXY header's, if any) is one of
        the listener's xclient_hosts, which the core then offers XCLIENT to."""
        assert self.record is not None
        self.origin = self.record.remote
        networks = self.xclient_networks
        relayed = self.relayed
        if relayed is not None and (
            relayed.command is not proxy.Command.PROXY or relayed.source is None
        ):
            return  # a header that names no client: not the proxy's own session either
        if networks and self.origin.family != "unix":
            ip = ipaddress.ip_address(self.client_ip)
            self.conn.xclient = any(ip in network for network in networks)

    def _xclient(self, event: smtp.Xclient) -> None:
        """A trusted proxy names its client, who is the client from now on (logs, the
        per-IP count, Received, the record), unless its address has its fill of sessions."""
        assert self.record is not None and self.origin is not None
        remote = _xclient_remote(self.record.remote, self.origin, event)
        fields: dict[str, Any] = {
            "connection": self.id,
            "server": self.host.id,
            "proxy": self.client_ip,
        }
        if not self.host.recount(self, remote.address):
            log("xclient_refused", level=30, **fields, remote=remote.address, reason="sessions")
            self._answer(TOO_MANY_SESSIONS)
            return
        login = _said(event.login, self.record.login)
        self.record = msgspec.structs.replace(self.record, remote=remote, login=login)
        self.client_ip = remote.address
        helo, proto = (_said(value, None) for value in (event.helo, event.proto))
        log("xclient", **fields, remote=remote.address, remote_port=remote.port,
            name=remote.name, login=login, helo=helo, proto=proto)  # fmt: skip
        self._answer(ACCEPT)

    # --- behind a proxy (PROXY protocol) ------------------------------------------------

    def proxied(self, header: proxy.ProxyHeader) -> None:
        """The header a trusted proxy sent (read by the worker before the connection is
        made): the client it names is this session's client, for logs, limits, Received
        and the record. A proxy that terminated TLS (an SSL TLV saying the client used it)
        makes the session a TLS one: STARTTLS is not offered, ``require_tls`` is met."""
        self.relayed = header
        if header.command is proxy.Command.PROXY and header.source is not None:
            self.client_ip = _plain(header.source.ip)[0]  # counted and limited, not the proxy
        ssl = header.tlvs.ssl
        if ssl is not None and ssl.tls and self.tls_mode != "implicit":
            self.conn = self._core(tls=True)

    def _tls_relayed(self, ssl: proxy.SslInfo) -> None:
        """TLS between the client and the proxy: its version and cipher as the proxy says."""
        self.tls_info = (ssl.version or "", ssl.cipher or "")
        version, cipher = self.tls_info
        if self.record is not None:
            self.record = msgspec.structs.replace(
                self.record, tls=True, tls_version=version or None, tls_cipher=cipher or None
            )
        log("tls_relayed", connection=self.id, server=self.host.id, version=version,
            cipher=cipher)  # fmt: skip

    async def _start_tls(self) -> None:
        """The handshake after our 220 (the core's StartTls): the same protocol object on
        a TLS transport, then the core starts the session again. A failed handshake drops
        the client, with the reason in the log."""
        transport, tls = self.transport, self.host.tls(self.listener)
        if transport is None or tls is None or self.closed:
            return
        try:
            secure = await self.host.loop.start_tls(
                transport,
                self,
                tls.context,
                server_side=True,
                ssl_handshake_timeout=self.host.config.timeouts.handshake,
            )
        except (OSError, EOFError) as error:  # ssl.SSLError and TimeoutError included
            log(
                "tls_handshake_failed",
                level=30,
                connection=self.id,
                server=self.host.id,
                remote=self.client_ip,
                reason=str(error) or type(error).__name__,
            )
            transport.abort()
            # The event loop does not always report the loss of a connection whose
            # handshake failed (uvloop, on a reset): the session ends here, or its place
            # and its counts would stay taken until the command timeout.
            self.connection_lost(error if isinstance(error, Exception) else None)
            return
        if secure is None or self.closed or self.conn.state is not smtp.State.TLS:
            if secure is not None:
                secure.abort()
            self.connection_lost(None)
            return  # the connection was lost meanwhile
        self.transport = secure
        self._tls_established(secure)
        self.conn.tls_started()
        self._touch()
        self._process()

    def _tls_established(self, transport: asyncio.BaseTransport) -> None:
        self.tls_info = tls_describe(transport.get_extra_info("ssl_object"))
        version, cipher = self.tls_info
        if self.record is not None:
            self.record = msgspec.structs.replace(
                self.record, tls=True, tls_version=version or None, tls_cipher=cipher or None
            )
        log("tls_started", connection=self.id, server=self.host.id, version=version, cipher=cipher)

    def _recipient(self, address: str) -> None:
        """Ours by the domain list, then, with an MDA to ask, deliverable by its word (the
        core waits for the answer meanwhile; <Postmaster> is not asked: RFC 5321 §4.5.1)."""
        limited = self.host.limit(self, "rcpt")
        if limited is not None:
            self._answer(limited)
            return
        policy = self.host.policy
        refusal = policy.check(address)
        verifier = self.host.verifier
        if refusal is not None or verifier is None or policy.is_postmaster(address):
            self._answer(refusal or ACCEPT)
            return
        self.checking = self.host.loop.create_task(self._verify(verifier, address))

    async def _verify(self, verifier: RecipientVerifier, address: str) -> None:
        sender, utf8 = self.sender
        try:
            reply = await verifier.check(sender, address, utf8)
        except Exception as bug:  # a verifier's bug must not leave the RCPT unanswered
            log("recipient_check_error", level=40, recipient=address, error=repr(bug))
            reply = LOCAL_ERROR
        self.checking = None
        if self.closed or self.conn.state is smtp.State.CLOSED:
            return
        self._answer(ACCEPT if reply.code // 100 == 2 else reply)
        self._process()

    def _answer(self, answer: smtp.Answer) -> None:
        # Collected, not written: the replies to a pipelined group leave in one write.
        self._output.append(self.conn.send(answer))

    def _take_output(self) -> bytes:
        self._output.append(self.conn.data_to_send())
        data = b"".join(self._output)
        self._output.clear()
        return data

    def _flush(self) -> None:
        self._write(self._take_output())

    def _write(self, data: bytes) -> None:
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def _aborted(self, event: smtp.TransactionAborted) -> None:
        if event.reply is not None and self.transaction is not None:
            reply = event.reply
            envelope = event.envelope
            fields: dict[str, Any] = {
                "connection": self.id,
                "server": self.host.id,
                "transaction": self.transaction[0],
            }
            message_id = None
            if envelope is not None:  # refused for its content: a message existed
                message_id = M.new_urn()  # also the id of its record on "rejected"
                fields.update(
                    message=message_id,
                    sender=envelope.sender,
                    recipients=len(envelope.recipients),
                    size=envelope.size,
                )
            log("message_refused", **fields, reply=reply.to_bytes().decode().strip())
            if envelope is not None and self.host.records_rejections:
                rejection = M.Rejection(
                    code=reply.code, enhanced=reply.status or "", text=" ".join(reply.lines)
                )
                self._record_rejection(envelope, rejection, message_id)
        self.content.clear()
        if self.transaction is not None:
            self._transaction_ended()
        self.transaction = None

    def _record_rejection(
        self, envelope: smtp.Envelope, rejection: M.Rejection, message_id: str | None
    ) -> None:
        """The rejected record, with its content: read back in a thread when it was
        spilled (the session goes on with a fresh ``Content``)."""
        content = self.content
        if not content.spilled:
            with contextlib.suppress(OSError):
                data = content.read()
                self.host.rejected(self._message(envelope, rejection, message_id, data))
            return
        self.content = Content(self.host.content_directory, content.memory)
        rejected = (envelope, rejection, message_id, self.transaction)
        self.host.loop.create_task(self._reject_spilled(content, *rejected))

    async def _reject_spilled(
        self,
        content: Content,
        envelope: smtp.Envelope,
        rejection: M.Rejection,
        message_id: str | None,
        transaction: R.TransactionStart | None,
    ) -> None:
        try:
            data = await asyncio.to_thread(content.read)
        except OSError:
            return
        finally:
            content.clear()
        self.host.rejected(self._message(envelope, rejection, message_id, data, transaction))

    def _ended_by_errors(self) -> None:
        """The core closed the session for its errors (``limits.errors``): said in the log
        as the per-client limits are."""
        budget = self.host.config.limits.errors
        if self.conn.errors < budget:
            return
        log(
            "client_limited",
            level=30,
            connection=self.id,
            server=self.host.id,
            remote=self.client_ip,
            stage="session",
            limit="errors",
            client=self.client_ip,
            count=self.conn.errors,
            value=budget,
        )

    def _close(self) -> None:
        self._flush()
        if self.transport is not None:
            self.transport.close()

    # --- handoff -------------------------------------------------------------------

    async def _deliver(self, event: smtp.MessageComplete) -> None:
        envelope = event.envelope
        message_id = M.new_urn()
        # The worker's sweeper enforces the handoff timeout (see expired): no timer per
        # message, which a busy worker would feel. Waiting for the budget counts.
        self.deadline = self.host.clock() + self.host.config.timeouts.handoff
        budget = self.host.budget
        taken = 0
        try:
            taken = await budget.acquire(self.content.size)
            delivery = await self._hand_off(envelope, message_id)
        except asyncio.CancelledError:
            if not self.handoff_expired:
                raise
            delivery = Delivery(ok=False, reply=HANDOFF_TIMEOUT)
        except OSError as error:  # the content could not be kept (a full disk)
            log("content_failed", level=40, message=message_id, error=str(error))
            delivery = local_failure(error)
        except Exception as bug:  # a handoff's bug must not leave the client hanging
            log("handoff_error", level=40, message=message_id, error=repr(bug))
            delivery = Delivery(ok=False, reply=LOCAL_ERROR)
        finally:
            budget.release(taken)
            self.content.clear()
        self.handoff_expired = False
        self._delivered(envelope, message_id, delivery)

    async def _hand_off(self, envelope: smtp.Envelope, message_id: str) -> Delivery:
        content = self.content
        data = await asyncio.to_thread(content.read) if content.spilled else content.read()
        record = self._message(envelope, message_id=message_id, content=data)
        del data  # the record holds it; nothing else may
        return await self.host.deliver(record)

    def expire_handoff(self) -> None:
        """The handoff took longer than its timeout: stop waiting, answer 451."""
        if self.delivering is not None and not self.handoff_expired:
            self.handoff_expired = True
            self.delivering.cancel()

    def _delivered(self, envelope: smtp.Envelope, message_id: str, delivery: Delivery) -> None:
        self.delivering = None
        if delivery.ok:
            self.messages += 1
            self.host.messages += 1
            answer: smtp.Answer = smtp.Accept(f"Ok: queued as {message_id}")
        else:
            answer = delivery.reply or HANDOFF_TIMEOUT
        log(
            "message_accepted" if delivery.ok else "message_deferred",
            connection=self.id,
            server=self.host.id,
            transaction=self.transaction[0] if self.transaction else None,
            message=message_id,
            sender=envelope.sender,
            recipients=len(envelope.recipients),
            size=envelope.size,
            reply=None if delivery.ok else answer.to_bytes().decode().strip(),  # type: ignore[union-attr]
        )
        if self.closed:
            self.host.session_closed(self)
            return
        self._answer(answer)
        self.transaction = None
        self._transaction_ended()
        self._touch()
        self._process()

    def _transaction_ended(self) -> None:
        self.transactions += 1
        if self.draining:
            self._close_when_idle()

    def _close_when_idle(self) -> None:
        """Draining: give the client ``DRAIN_IDLE_GRACE`` seconds for its next command (a
        QUIT, usually, or a MAIL that gets 421), then close if it sent none."""
        self.host.loop.call_later(DRAIN_IDLE_GRACE, self._close_if_idle)

    def _close_if_idle(self) -> None:
        if self.delivering is None and self.conn.state in IDLE and not self.closed:
            self.shutdown(SHUTDOWN)

    def _message(
        self,
        envelope: smtp.Envelope,
        rejection: M.Rejection | None = None,
        message_id: str | None = None,
        content: bytes = b"",
        transaction: R.TransactionStart | None = None,
    ) -> M.Message:
        transaction = transaction or self.transaction
        assert self.record is not None and transaction is not None
        return R.build_message(
            envelope,
            content,
            server=self.host.server_record,
            connection=self.record,
            transaction=transaction,
            message_id=message_id,
            rejection=rejection,
        )

    # --- flow control, deadlines, shutdown --------------------------------------------

    def _pause(self, reason: str) -> None:
        if not self.paused_reasons and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.paused_reasons.add(reason)

    def _resume(self, reason: str) -> None:
        if reason not in self.paused_reasons:
            return
        self.paused_reasons.discard(reason)
        if not self.paused_reasons and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _touch(self, in_data: bool | None = None) -> None:
        """Restart the clock for the next command (or the next piece of content)."""
        if in_data is None:
            in_data = self.conn.state in IN_DATA
        timeouts = self.host.config.timeouts
        self.touched_in_data = in_data
        self.deadline = self.host.loop.time() + (
            timeouts.data_block if in_data else timeouts.command
        )

    def _credit(self, octets: int) -> None:
        """Content arrived: each octet moves the data-block deadline on by 1/``data_rate``
        seconds, never beyond ``data_block`` from now. A client must keep an average of
        ``data_rate`` octets a second (with ``data_block`` seconds of slack), however it
        cuts its content into pieces."""
        timeouts = self.host.config.timeouts
        latest = self.host.loop.time() + timeouts.data_block
        self.deadline = min(latest, self.deadline + octets / timeouts.data_rate)

    def expired(self, now: float) -> bool:
        """Past the deadline: of the handoff while a message is being made durable, else
        of the next command or piece of content, or of the session's lifetime."""
        if self.delivering is not None:
            return now >= self.deadline
        return not self.closed and (now >= self.deadline or now >= self.ends_at)

    def timeout_reply(self, now: float) -> smtp.Reply:
        return LIFETIME if now >= self.ends_at else TIMEOUT

    def drain(self) -> None:
        """The worker drains: a transaction in progress finishes; a session that had none
        yet may have the one it came for; then its next MAIL gets 421, and a session that
        sends nothing more is closed with 421 ``DRAIN_IDLE_GRACE`` seconds later."""
        self.draining = True
        idle = self.delivering is None and self.conn.state in IDLE
        if idle and self.transactions > 0:
            self._close_when_idle()

    def shutdown(self, reply: smtp.Reply) -> None:
        """Close now with ``reply`` (timeout, end of drain); a pending handoff finishes first.

        A session whose connection is not made yet is left alone: it is shut down on a
        later call, after its greeting question exists."""
        if self.closed or self.delivering is not None or self.transport is None:
            return
        if self.shutdown_at is not None:
            # Asked again a second or more later: the reply is still not out, the client
            # does not read it. Drop the connection and free its place.
            if self.host.clock() - self.shutdown_at >= ABORT_AFTER:
                self.transport.abort()
            return
        if self.conn.state is smtp.State.TLS:
            # In the middle of a STARTTLS handshake: a reply now would be plaintext where
            # the client expects TLS records. The connection is dropped, as a failed
            # handshake is.
            log("tls_handshake_failed", level=30, connection=self.id, server=self.host.id,
                remote=self.client_ip, reason="shut down during the handshake")  # fmt: skip
            self.transport.abort()
            # The transport belongs to the handshake now, which may not report the loss:
            # the session ends here (``_start_tls`` drops what the handshake returns).
            self.connection_lost(None)
            return
        self.shutdown_at = self.host.clock()
        self.paused_reasons.discard("writing")  # the reply goes out whatever is queued
        if self.conn.state is not smtp.State.CLOSED:
            self._answer(reply)
        self._process()
        if self.transport is not None:
            self.transport.close()


def _plain(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[str, R.Family]:
    """An address as the record and the limits take it: an IPv4-mapped IPv6 address is
    the IPv4 address it maps."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped), "ipv4"
    return str(ip), "ipv4" if ip.version == 4 else "ipv6"


def _said(value: T | smtp.Unavailable | None, before: T | None) -> T | None:
    """An XCLIENT attribute's value: ``before`` when not named, None when unavailable."""
    if value is None:
        return before
    return None if isinstance(value, smtp.Unavailable) else value


def _xclient_remote(current: M.Remote, origin: M.Remote, event: smtp.Xclient) -> M.Remote:
    """The client after ``event``: a new ADDR is a new client (its port and name unknown
    unless named too); ADDR=[UNAVAILABLE] is the connection's own client again."""
    addr = event.addr
    if isinstance(addr, smtp.Unavailable):
        remote = origin
    elif addr is not None:
        remote = M.Remote(family="ipv6" if ":" in addr else "ipv4", address=addr)
    else:
        remote = current
    port, name = _said(event.port, remote.port), _said(event.name, remote.name)
    return msgspec.structs.replace(remote, port=port, name=name)
