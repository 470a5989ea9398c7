"""The worker: accept loops on the inherited listening sockets, sessions, handoffs, the
control channel to the supervisor, graceful drain.

Owns: the event loop's long-lived tasks, connection limits (per worker, per client IP in
the worker, and the per-client limits shared by all workers: ``clients.py``),
the accept loop's resilience (EMFILE/ENFILE back-off), deadlines (one sweeper instead of a
timer per session), heartbeats and the drain sequence.
Must not know: SMTP syntax (``wildboar.smtp``), storage (``wildboar.handoff``).
Security: runs unprivileged; sockets arrive ready-bound. Limits stop one client address
from taking all sessions of a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import os
import signal
import socket
import ssl
from collections import Counter
from collections.abc import Mapping
from typing import Literal

from .. import message as M
from .. import proxy, smtp
from .. import record as R
from ..config import Config, serving_warnings
from ..handoff.base import Delivery, Handoff, combine
from ..handoff.lmtp import LmtpHandoff
from ..policy import RecipientPolicy
from . import proxied, tls
from .clients import ClientLimits, Limited
from .content import Budget, content_directory
from .host import IPNetwork
from .logs import add_sink, flush, log
from .session import SHUTDOWN, TIMEOUT, TOO_MANY_SESSIONS, Session
from .table import SharedTable

# trio's ACCEPT_CAPACITY_ERRNOS: out of descriptors or kernel memory. Back off, retry.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_BACKOFF_MIN = 0.01
ACCEPT_BACKOFF_MAX = 1.0
# Connections taken per wake-up of a listening socket. Small, so that one worker cannot
# starve its open sessions, and so that the other workers, woken by the same readiness of
# the shared socket, get their share of a burst of connections.
ACCEPT_BATCH = 4
HEARTBEAT_INTERVAL = 1.0
SWEEP_INTERVAL = 1.0


class Worker:
    def __init__(
        self,
        config: Config,
        listeners: list[tuple[str, socket.socket]],
        handoffs: list[Handoff],
        control: socket.socket | None,
        table: SharedTable | None = None,
        *,
        files: Mapping[str, int] | None = None,
    ) -> None:
        self.config = config
        self.listeners = listeners
        self.handoffs = handoffs
        self.control = control
        self.id = M.new_urn()
        self.server_record = R.build_server(config.hostname, id=self.id)
        self.sessions: set[Session] = set()
        self.per_ip: Counter[str] = Counter()
        self.messages = 0
        self.draining = asyncio.Event()
        self.drain_deadline = config.timeouts.drain
        self.loop = asyncio.get_running_loop()
        # Content beyond sessions.content_memory waits on the disk that holds the mail.
        self.content_directory = content_directory(os.path.join(config.spool.path, "tmp"))
        self.budget = Budget(config.sessions.delivery_memory)
        # TLS per listener name (docs/tls.md); made again by every worker a HUP starts,
        # from the copies of the files the supervisor read (``files``) where it did.
        self._tls = tls.contexts(config, files or {})
        # The proxies each PROXY protocol listener takes headers from (docs/proxy.md).
        self._proxies = {
            listener.name: tuple(
                ipaddress.ip_network(network, strict=False) for network in listener.trusted_proxies
            )
            for listener in config.listen
            if listener.proxy_protocol
        }
        # The proxies each listener takes XCLIENT from (docs/proxy.md).
        self._xclient_hosts = {
            listener.name: tuple(
                ipaddress.ip_network(network, strict=False) for network in listener.xclient_hosts
            )
            for listener in config.listen
        }
        self.policy = RecipientPolicy(config.recipients.domains)
        # Per-client limits across all workers, in the supervisor's table if it sent one.
        self.shared_table = table is not None
        self.clients = ClientLimits(config.clients, table or SharedTable.private())
        # What every handoff can take is what the sessions offer (asked after start()).
        self.extensions = config.extensions
        for handoff in handoffs:
            self.extensions = handoff.restrict(self.extensions)
        # The recipient check with the MDA at RCPT time (docs/lmtp.md).
        lmtp = [h for h in handoffs if isinstance(h, LmtpHandoff)]
        verify = config.lmtp.verify_recipients is not False
        self.verifier: LmtpHandoff | None = lmtp[0] if lmtp and verify else None
        self._backoff = ACCEPT_BACKOFF_MIN
        self._rejecting = [h for h in handoffs if type(h).rejected is not Handoff.rejected]
        for handoff in handoffs:
            if type(handoff).event is not Handoff.event:
                add_sink(handoff.event)

    def clock(self) -> float:
        return self.loop.time()

    def tls(self, listener: str) -> tls.ListenerTls | None:
        return self._tls.get(listener)

    def xclient_hosts(self, listener: str) -> tuple[IPNetwork, ...]:
        return self._xclient_hosts.get(listener, ())

    # --- running -------------------------------------------------------------------

    async def run(self) -> None:
        for name, sock in self.listeners:
            sock.setblocking(False)
            self._listen(name, sock)
        sweeper = asyncio.create_task(self._sweep())
        heartbeat = asyncio.create_task(self._heartbeat())
        if self.control is not None:
            self.loop.add_reader(self.control.fileno(), self._on_control)
        # The supervisor decides; a terminal's Ctrl-C reaches the whole process group.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.loop.add_signal_handler(signal.SIGTERM, self.draining.set)
        for warning in serving_warnings(self.config):
            log("config_warning", level=30, server=self.id, warning=warning)
        log(
            "worker_ready",
            server=self.id,
            pid=os.getpid(),
            listeners=[n for n, _ in self.listeners],
            content_directory=self.content_directory,
            clients_table="shared" if self.shared_table else "private",
        )
        # The drain deadline of this worker's configuration: after a HUP the supervisor
        # drains it with the reloaded value, not the one it was started with.
        self._send(
            {
                "type": "ready",
                "pid": os.getpid(),
                "drain": self.drain_deadline,
                "handoff": self.config.timeouts.handoff,
            }
        )
        await self.draining.wait()
        await self._drain()
        sweeper.cancel()
        for handoff in self.handoffs:  # heartbeats go on: closing may wait for a broker
            await handoff.close()
        heartbeat.cancel()
        log("worker_stopped", server=self.id, messages=self.messages)
        flush()

    def _listen(self, name: str, sock: socket.socket) -> None:
        """Accept in a reader callback, not a task: stopping (``remove_reader``) can then
        never drop a connection that the kernel already handed over."""
        self.loop.add_reader(sock.fileno(), self._accept, name, sock)

    def _accept(self, name: str, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno in ACCEPT_CAPACITY_ERRNOS:
                    self._back_off(name, sock, error)
                    return
                continue  # ECONNABORTED and the like: that client is gone
            self._backoff = ACCEPT_BACKOFF_MIN
            self._start_session(name, conn)

    def _back_off(self, name: str, sock: socket.socket, error: OSError) -> None:
        log("accept_backoff", level=30, server=self.id, error=os.strerror(error.errno or 0))
        self.loop.remove_reader(sock.fileno())
        self.loop.call_later(self._backoff, self._resume_accepting, name, sock)
        self._backoff = min(self._backoff * 2, ACCEPT_BACKOFF_MAX)

    def _resume_accepting(self, name: str, sock: socket.socket) -> None:
        if not self.draining.is_set():
            self._listen(name, sock)

    def _start_session(self, name: str, conn: socket.socket) -> None:
        conn.setblocking(False)
        full = len(self.sessions) >= self.config.sessions.per_worker
        # A client that talks before the greeting is refused; on a listener that reads a
        # PROXY header or starts with TLS, the first octets are not the client's SMTP.
        early = name not in self._proxies and self._implicit(name) is None and _spoke_first(conn)
        session = Session(self, name, TOO_MANY_SESSIONS if full else None, early)
        self.sessions.add(session)
        session.client_ip = _ip_of(conn)
        if name not in self._proxies:  # behind a proxy: once its header names the client
            session.refuse = session.refuse or self.admit(session)
        self.loop.create_task(self._connect(session, conn))

    def _implicit(self, listener: str) -> ssl.SSLContext | None:
        setup = self._tls.get(listener)
        return setup.context if setup is not None and setup.mode == "implicit" else None

    def admit(self, session: Session) -> smtp.Reply | None:
        """The client of ``session`` is known (the peer, or the one a PROXY header names):
        count it, and say why it may not be served (a limit it reached), if it may not."""
        ip = session.client_ip
        self.per_ip[ip] += 1
        session.counted_ip = ip
        if self.per_ip[ip] > self.config.sessions.per_client_ip:
            return TOO_MANY_SESSIONS
        client = self.clients.client(ip)
        if client is None:  # exempt
            return None
        limited = self.clients.connect(client)
        if limited is not None:
            self._limited(session, limited, "connect")
            return limited.reply
        session.client = client
        return None

    def limit(self, session: Session, stage: Literal["mail", "rcpt"]) -> smtp.Reply | None:
        """The reply to MAIL or RCPT when the client reached a limit of that stage."""
        client = session.client
        if client is None:
            return None
        limited = self.clients.mail(client) if stage == "mail" else self.clients.rcpt(client)
        if limited is None:
            return None
        self._limited(session, limited, stage)
        return limited.reply

    def _limited(self, session: Session, limited: Limited, stage: str) -> None:
        log(
            "client_limited",
            level=30,
            connection=session.id,
            server=self.id,
            remote=session.client_ip,
            stage=stage,
            limit=limited.limit,
            client=limited.client,
            count=limited.count,
            value=limited.value,
            reply=limited.reply.to_bytes().decode().strip(),
        )

    async def _connect(self, session: Session, conn: socket.socket) -> None:
        implicit = self._implicit(session.listener)
        proxies = self._proxies.get(session.listener)
        if proxies is not None and not await self._read_proxy_header(session, conn, proxies):
            self.session_closed(session)
            conn.close()
            return
        try:
            # Implicit TLS (RFC 8314): the handshake before the session, then the greeting.
            await self.loop.connect_accepted_socket(
                lambda: session,
                conn,
                ssl=implicit,
                ssl_handshake_timeout=self.config.timeouts.handshake if implicit else None,
            )
        except OSError as error:  # ssl.SSLError and TimeoutError included
            if implicit is not None:
                log(
                    "tls_handshake_failed",
                    level=30,
                    server=self.id,
                    listener=session.listener,
                    remote=session.client_ip,
                    reason=str(error) or type(error).__name__,
                )
            self.session_closed(session)
            conn.close()

    async def _read_proxy_header(
        self, session: Session, conn: socket.socket, proxies: tuple[IPNetwork, ...]
    ) -> bool:
        """The PROXY header from a trusted proxy, before the greeting and before TLS
        (docs/proxy.md); whether the session goes on. Anything else closes the connection
        with the reason logged and no SMTP reply."""
        peer = _ip_of(conn)
        if not proxied.trusted(peer, proxies):
            header: proxy.ProxyHeader | proxy.ProxyError = proxy.ProxyError("not a trusted proxy")
        else:
            header = await proxied.read_header(
                self.loop, conn, timeout=self.config.timeouts.handshake
            )
        if isinstance(header, proxy.ProxyError):
            log("proxy_refused", level=30, connection=session.id, server=self.id, remote=peer,
                reason=header.reason)  # fmt: skip
            return False
        session.proxied(header)
        # The client it names is the one counted and limited, not the proxy.
        session.refuse = session.refuse or self.admit(session)
        if self._implicit(session.listener) is None:
            session.spoke_first = _spoke_first(conn)
        log(
            "proxy_header",
            connection=session.id,
            server=self.id,
            version=header.version,
            relayed=header.command is proxy.Command.PROXY and header.source is not None,
            remote=str(header.source.ip) if header.source is not None else peer,
            authority=header.tlvs.authority,  # the SNI the client sent a TLS terminator
        )
        return True

    def session_closed(self, session: Session) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            if session.client is not None:
                self.clients.closed(session.client)
                session.client = None
            if session.counted_ip is None:
                return  # behind a proxy, closed before its header: never counted
            # The address it was counted under (a PROXY header or XCLIENT moves it).
            self._uncount(session.counted_ip)

    def recount(self, session: Session, address: str) -> bool:
        """XCLIENT named the session's client: it counts under that address from now on
        (the session cap per address, and the per-client limits), if the address is under
        its limits; False, and nothing changed, if not."""
        if address == session.counted_ip or session not in self.sessions:
            return True
        if self.per_ip[address] >= self.config.sessions.per_client_ip:
            return False
        client = self.clients.client(address)
        if client is not None:
            limited = self.clients.connect(client)
            if limited is not None:
                self._limited(session, limited, "xclient")
                return False
        if session.client is not None:
            self.clients.closed(session.client)
        session.client = client
        if session.counted_ip is not None:
            self._uncount(session.counted_ip)
        self.per_ip[address] += 1
        session.counted_ip = address
        return True

    def _uncount(self, address: str) -> None:
        self.per_ip[address] -= 1
        if self.per_ip[address] <= 0:
            del self.per_ip[address]

    def refusal(self, stage: Literal["connect", "mail"]) -> smtp.Reply | None:
        """Why a new session or transaction cannot be served now (a handoff is down)."""
        for handoff in self.handoffs:
            reply = handoff.refusal(stage)
            if reply is not None:
                return reply
        return None

    @property
    def records_rejections(self) -> bool:
        return bool(self._rejecting)

    def rejected(self, message: M.Message) -> None:
        for handoff in self._rejecting:
            handoff.rejected(message)

    async def deliver(self, message: M.Message) -> Delivery:
        if len(self.handoffs) == 1:
            return await self.handoffs[0].deliver(message)
        results = await asyncio.gather(*(h.deliver(message) for h in self.handoffs))
        return combine(results)

    # --- deadlines, heartbeats, control -----------------------------------------------

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = self.clock()
            for session in [s for s in self.sessions if s.expired(now)]:
                if session.delivering is not None:
                    log("handoff_timeout", level=30, connection=session.id, server=self.id)
                    session.expire_handoff()
                else:
                    reply = session.timeout_reply(now)
                    log(
                        "session_timeout",
                        connection=session.id,
                        server=self.id,
                        lifetime=reply is not TIMEOUT,
                    )
                    session.shutdown(reply)

    async def _heartbeat(self) -> None:
        while True:
            self._send(
                {"type": "heartbeat", "sessions": len(self.sessions), "messages": self.messages}
            )
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    def _send(self, message: dict[str, object]) -> None:
        if self.control is None:
            return
        try:
            self.control.send(json.dumps(message).encode())
        except BlockingIOError:
            pass  # the supervisor is slow to read; the next heartbeat will do
        except OSError:
            self._lost_supervisor()

    def _on_control(self) -> None:
        assert self.control is not None
        try:
            data = self.control.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lost_supervisor()
            return
        with contextlib.suppress(ValueError):
            message = json.loads(data)
            if isinstance(message, dict) and message.get("type") == "drain":
                self.drain_deadline = float(message.get("deadline", self.drain_deadline))
                self.draining.set()

    def _lost_supervisor(self) -> None:
        if self.control is not None:
            self.loop.remove_reader(self.control.fileno())
            self.control.close()
            self.control = None
        log("supervisor_lost", level=30, server=self.id)
        self.draining.set()

    # --- drain -------------------------------------------------------------------------

    async def _drain(self) -> None:
        for _, sock in self.listeners:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(sock.fileno())
            sock.close()
        self._send({"type": "stopping"})
        log(
            "worker_draining",
            server=self.id,
            sessions=len(self.sessions),
            deadline=self.drain_deadline,
        )
        # Idle sessions get 421 now; the others once their transaction is over.
        for session in list(self.sessions):
            session.drain()
        end = self.clock() + self.drain_deadline
        while self.sessions and self.clock() < end:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            session.shutdown(SHUTDOWN)
        # Handoffs in progress finish (their messages may already be durable).
        end = self.clock() + self.config.timeouts.handoff
        while self.sessions and self.clock() < end:
            await asyncio.sleep(0.05)
            for session in list(self.sessions):
                session.shutdown(SHUTDOWN)
        await asyncio.sleep(0)  # let transports flush their last replies


def _spoke_first(conn: socket.socket) -> bool:
    """Whether the client sent something before our greeting (it is waiting in the socket
    already): a sender that does not wait for the 220, which the session refuses."""
    try:
        return bool(conn.recv(1, socket.MSG_PEEK))
    except OSError:  # nothing yet (EAGAIN), or the client is gone: the session will tell
        return False


def _ip_of(conn: socket.socket) -> str:
    try:
        address = conn.getpeername()
    except OSError:
        return ""
    ip = str(address[0]) if isinstance(address, tuple) else ""
    return ip.removeprefix("::ffff:")
