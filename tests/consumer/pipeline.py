"""The whole stack on one machine, as an operator runs it: ``wildboar serve`` with the AMQP
handoff in front, the pipeline ``scam -> spf -> deliver`` as three ``wildboar consume``
processes behind it, a private Dovecot (users ``alice`` and ``bob`` at ``example.org``) as
the mail store and a private NSD serving the SPF records of ``spf.test``.

Owns: starting them in the order docs/consumers.md asks (the stages before the server, the
server with ``declare_queues = false`` so that the first stage's queue takes its mail), a
queue of the test's bound to ``rejected.inbound.email`` for every stage, sending a mix of
mail (smtplib and Postfix's ``smtp-source``) whose every message is known by its id, and
reading back what came out: the ids in the Maildirs, the rejected records, the bounces.
Every process is a child of the test, stopped by its pid.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import re
import smtplib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.amqp.broker import Broker
from tests.lmtp.dovecot import Dovecot
from tests.system.harness import Server
from wildboar import message as M
from wildboar.consumer.topology import REJECTED
from wildboar.handoff.spool import Spool

from .dns import Nsd
from .harness import Consumer, declare_exchanges

STAGES = ("scam", "spf", "deliver")
PIPELINE = ",".join(("smtp", *STAGES))
USERS = ("alice", "bob")
#: SPF for the senders: the client (127.0.0.1) may send for pass.spf.test, not for fail.
SPF_ZONE = """\
pass        IN TXT "v=spf1 ip4:127.0.0.1 -all"
fail        IN TXT "v=spf1 ip4:192.0.2.1 -all"
"""
SENDER = "alice@pass.spf.test"
FORGER = "mallory@fail.spf.test"
HELO = "client.example"
SCAM = (
    b"Subject: an offer\r\n\r\nI am an African prince. Send me the number of your\r\n"
    b"bank account and you will have one million dollars.\r\n"
)
#: wildboar's trace field names the message's id (``Received: ... by HOST with PROTO id ID``).
RECEIVED_ID = re.compile(
    rb"\r\n\tby mx\.test\.example with [A-Z]+ id ([0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12})"
)
QUEUED = re.compile(rb"queued as (urn:uuid:[0-9a-f-]{36})")


@dataclasses.dataclass
class Sent:
    """What a test sent, by kind: each kind's message URNs, as the server's 250 named them
    (smtp-source's are the server's accepted ones that smtplib did not send)."""

    clean: list[str] = dataclasses.field(default_factory=list)
    scam: list[str] = dataclasses.field(default_factory=list)
    forged: list[str] = dataclasses.field(default_factory=list)
    unknown: list[str] = dataclasses.field(default_factory=list)
    #: The recipients of each message of ours that should reach a Maildir.
    recipients: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


def zones() -> dict[str, str]:
    return {"spf.test": SPF_ZONE}


class Stack:
    """The pipeline and the server against ``broker`` (its prefix, its URL)."""

    def __init__(
        self, broker: Broker, dovecot: Dovecot, nsd: Nsd, spool: Path, bounces: Path
    ) -> None:
        self.broker = broker
        self.dovecot = dovecot
        self.nsd = nsd
        self.spool = spool
        self.bounces = bounces
        #: Every consumer process of each stage, the ones killed and restarted included.
        self.stages: dict[str, list[Consumer]] = {stage: [] for stage in STAGES}
        self.server: Server | None = None
        self.rejected = ""

    # --- starting and stopping -------------------------------------------------------

    def start(self, *server_args: str, **server_env: str) -> None:
        declare_exchanges(self.broker)
        self.rejected = self.broker.declare_queue("rejected", {"x-queue-type": "quorum"})
        for stage in ("smtp", *STAGES):
            self.broker.bind(self.rejected, self.broker.name(REJECTED), f"after.{stage}")
        for stage in STAGES:
            self.start_stage(stage, wait=False)
        for stage in STAGES:
            self.consumer(stage).connected()
        self.server = self.start_server(*server_args, **server_env)

    def stage_env(self) -> dict[str, str]:
        host, port = self.nsd.address
        return {
            "WILDBOAR_AMQP_DECLARE_QUEUES": "false",
            "WILDBOAR_SPF_NAMESERVER": f"{host}:{port}",
            "WILDBOAR_SPF_TIMEOUT": "5",
            "WILDBOAR_DELIVER_LMTP": f"lmtp:127.0.0.1:{self.dovecot.port}",
            "WILDBOAR_DELIVER_LHLO": "deliver.test.example",
            "WILDBOAR_DELIVER_BOUNCES": str(self.bounces),
        }

    def start_stage(self, stage: str, *, wait: bool = True) -> Consumer:
        args = ("--pipeline", PIPELINE, "--progress", "1")
        running = Consumer(self.broker, stage, stage, *args, env=self.stage_env())
        self.stages[stage].append(running)
        return running.connected() if wait else running

    def consumer(self, stage: str) -> Consumer:
        """The stage's current process."""
        return self.stages[stage][-1]

    def start_server(self, *args: str, **env: str) -> Server:
        environ = {
            "WILDBOAR_AMQP_URLS": self.broker.url,
            "WILDBOAR_AMQP_PREFIX": self.broker.prefix,
            "WILDBOAR_AMQP_DECLARE_QUEUES": "false",
            "WILDBOAR_AMQP_RECONNECT_MIN": "0.1",
            "WILDBOAR_AMQP_RECONNECT_MAX": "1",
            "WILDBOAR_RECIPIENTS_DOMAINS": "example.org",
            **env,
        }
        server = Server(self.spool, "--handoff", "amqp", *args, workers=1, env=environ)
        server.wait_ready()
        server.wait_for("amqp_connected", timeout=60)
        return server

    def close(self) -> None:
        try:
            if self.server is not None and self.server.proc.poll() is None:
                try:
                    self.server.stop(timeout=60)
                finally:
                    self.server.kill()
        finally:
            for running in (c for stage in self.stages.values() for c in stage):
                running.kill()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    # --- sending ---------------------------------------------------------------------

    def send(self, sender: str, to: tuple[str, ...], content: bytes) -> str:
        """One message over smtplib; its URN from the server's 250."""
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
            client.ehlo(HELO)
            assert client.mail(sender)[0] == 250
            for address in to:
                assert client.rcpt(address)[0] == 250, address
            code, text = client.data(content)
        assert code == 250, (code, text)
        match = QUEUED.search(text)
        assert match is not None, text
        return match[1].decode()

    def send_mix(self, sent: Sent, clean: int = 10, scam: int = 20, forged: int = 20) -> None:
        """Over smtplib: ``clean`` messages to both users, ``scam`` scams, ``forged``
        from a sender whose SPF fails, and five to users the mail store does not have."""
        both = tuple(f"{user}@example.org" for user in USERS)
        for n in range(clean):
            urn = self.send(SENDER, both, message(f"clean-{n}", b"Hello, both.\r\n"))
            sent.clean.append(urn)
            sent.recipients[urn] = USERS
        for n in range(scam):
            sent.scam.append(self.send(SENDER, both[:1], message(f"scam-{n}", SCAM)))
        for n in range(forged):
            content = message(f"forged-{n}", b"Trust me.\r\n")
            sent.forged.append(self.send(FORGER, both[1:], content))
        for n in range(5):
            to = (f"nobody-{n}@example.org",)
            sent.unknown.append(self.send(SENDER, to, message(f"unknown-{n}", b"?\r\n")))

    def smtp_source(self, messages: int, sessions: int = 5) -> None:
        """``messages`` clean messages from Postfix's smtp-source to bob."""
        done = subprocess.run(
            ["smtp-source", "-c", "-d", "-s", str(sessions), "-m", str(messages), "-l", "1024",
             "-M", HELO, "-f", SENDER, "-t", "bob@example.org", f"127.0.0.1:{self.port}"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0 and "fatal" not in done.stderr, done.stderr

    def accepted(self) -> list[str]:
        """Every URN the server answered 250 for, in order."""
        assert self.server is not None
        return [r["message"] for r in self.server.events("message_accepted")]

    def from_smtp_source(self, sent: Sent) -> list[str]:
        """The accepted messages smtplib did not send: smtp-source's, to bob."""
        ours = {*sent.clean, *sent.scam, *sent.forged, *sent.unknown}
        return [urn for urn in self.accepted() if urn not in ours]

    # --- what came out ---------------------------------------------------------------

    def in_maildirs(self) -> collections.Counter[tuple[str, str]]:
        """(user, message URN) of every message in the users' Maildirs, counted."""
        found: collections.Counter[tuple[str, str]] = collections.Counter()
        for user in USERS:
            for stored in self.dovecot.maildir_messages(user):
                match = RECEIVED_ID.search(stored)
                assert match is not None, stored[:600]
                found[user, f"urn:uuid:{match[1].decode()}"] += 1
        return found

    def handled(self, stage: str, event: str) -> set[str]:
        """The URNs of ``event`` records of every process the stage had."""
        return {r["message"] for c in self.stages[stage] for r in c.events(event)}

    def wait_until(self, done: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            for stage in STAGES:
                died = self.consumer(stage).proc.poll()
                assert died is None, f"{stage} exited {died}: {self.tail(stage)}"
            assert time.monotonic() < deadline, f"not {what} within {timeout:.0f} s"
            time.sleep(0.2)

    def tail(self, stage: str) -> str:
        return "".join(self.consumer(stage).stderr)[-3000:]

    def rejections(self) -> list[M.Message]:
        """Every record on the test's rejected queue (taken off it)."""
        got = self.broker.drain(self.rejected)
        return [M.decode(g.body, g.properties.content_type) for g in got]

    def bounces_kept(self) -> list[M.Message]:
        if not self.bounces.exists():
            return []
        with Spool(self.bounces) as spool:
            return [spool.load(uuid) for uuid in spool.uuids()]


def message(tag: str, body: bytes) -> bytes:
    head = f"Message-ID: <{tag}@client.example>\r\nFrom: <{SENDER}>\r\n".encode()
    if not body.startswith(b"Subject:"):
        head += f"Subject: {tag}\r\n\r\n".encode()
    return head + body


@contextlib.contextmanager
def stack(
    broker: Broker, dovecot: Dovecot, nsd: Nsd, spool: Path, bounces: Path
) -> Iterator[Stack]:
    running = Stack(broker, dovecot, nsd, spool, bounces)
    try:
        yield running
    finally:
        running.close()
