"""1,000 messages to two or three real mailboxes each, through two workers into a private
Dovecot, with ``kill -9`` of Dovecot once and of a worker once while they are sent, and a
mailbox that defers every copy (so that mixed results go to wildboar's retry spool) until
it gets room after the load. Then, once the retry spool is empty: every message the client
got ``250`` for is in each recipient's mailbox that was accepted at RCPT exactly once, and
in no other; a message refused (``4xx``) is in no mailbox, except where Dovecot had stored
it and was killed before it could say so (its reply lost, RFC 1047: the sender would send
it again), and a message whose session was cut by the worker's death is in a mailbox at
most once. Those exceptions are counted and named in the assertion messages.

Why a Python client and not Postfix's ``smtp-source`` (which ``test_serve_lmtp.py`` uses
for load without faults): this test must know, for every message, what its sender was
told. ``smtp-source`` varies nothing but a ``Message-Id`` of its own making (pid,
descriptor, countdown), reports no result per message (``-v`` prints every reply, from
all sessions interleaved, and only wildboar's ``250`` names its message), and exits at
the first connection it loses (``fatal: lost connection while sending
message``), which is what a worker's ``kill -9`` does to every session on it; its
``-r N`` recipients are N numbered variants of one address. Counting accepted ids in
wildboar's own log instead would check the server against itself: a 250 it gives but does
not log, or logs but never sends, would go unseen. Here each message carries a unique
``Message-ID`` tag, each sender thread records per tag the recipients accepted at RCPT and
the reply after the content (with the id of wildboar's ``250 ... queued as``, which is
also in wildboar's Received field in the mailbox), or that the connection broke and
where, and the Maildirs are read back at the end.

Why carol's mailbox defers: Dovecot 2.3's LMTP answers for all recipients at once, after
the last one is stored (three replies within a millisecond, 0.2 s after the content of a
20 MB message), so a ``kill -9`` of Dovecot mid-transaction loses every reply of it (an
RFC 1047 case: stored, answered 451) and never gives a mixed result. With
``quota_full_tempfail = yes`` and no quota check at RCPT (``lmtp_rcpt_check_quota =
no``), carol over her quota is ``452 4.2.2`` after the content while alice and bob get
it: a mixed result, 250 for the client once carol's copy is in the retry spool. Retries
then run (``[lmtp] retry_min = 1``, ``retry_max = 2``) through both kills; after the load
carol gets room, and the retry spool must drain within ``DRAIN_TIMEOUT``.

A Dovecot killed while it delivers often leaves a ``dovecot-uidlist.lock`` behind, which
the next Dovecot honours for two minutes, holding every delivery to that mailbox (and
wildboar's sessions, which wait for its reply as long as ``[lmtp] data_timeout``): the
test removes such locks before it starts Dovecot again, and names them in its summary.
Senders that are refused wait ``BACKOFF`` and reconnect, as an MTA would, so that the
half second without Dovecot does not turn hundreds of messages into refusals. Last, the
server must stop within ``STOP_TIMEOUT`` of SIGTERM. Runs in some 10 to 20 s.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.system.harness import Server, serving

from .dovecot import Dovecot
from .stored import RECEIVED, queued_id

DOMAIN = "example.org"
MESSAGES = 1000
THREADS = 10
#: Progress (messages done) at which Dovecot is killed, and then a worker.
KILL_DOVECOT_AT, KILL_WORKER_AT = 250, 600
DOVECOT_DOWN = 0.5  # seconds
LOAD_TIMEOUT = 60.0
DRAIN_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
BACKOFF = 0.05  # seconds a sender waits after a message that did not get 250
USERS = ("alice", "bob", "carol")
TAG = re.compile(rb"\r\nMessage-ID: <(load-[0-9]+)@test>\r\n")
#: What wildboar answers when the MDA's connection broke before it replied.
MDA_LOST = ("451 4.3.0 ", "451 4.4.2 ")


@dataclass
class Outcome:
    """What the sender of one message was told."""

    recipients: tuple[str, ...]  # the users it asked for
    accepted: tuple[str, ...] = ()  # the users whose RCPT got 250
    rcpt: tuple[tuple[int, bytes], ...] = ()  # the replies to RCPT
    reply: tuple[int, bytes] | None = None  # after the content (or to MAIL/DATA)
    lost: str = ""  # where the connection broke: "before the content" or "after"

    @property
    def ok(self) -> bool:
        return self.reply is not None and self.reply[0] == 250 and not self.lost


@dataclass
class Load:
    port: int
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_number: int = 0
    deadline: float = 0.0

    @property
    def done(self) -> int:
        with self.lock:
            return len(self.outcomes)

    def take(self) -> int | None:
        with self.lock:
            if self.next_number >= MESSAGES or time.monotonic() > self.deadline:
                return None
            self.next_number += 1
            return self.next_number - 1

    def record(self, tag: str, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes[tag] = outcome

    def sender(self) -> None:
        client: smtplib.SMTP | None = None
        while (number := self.take()) is not None:
            users = ("alice", "bob", "carol") if number % 4 == 0 else ("alice", "bob")
            tag = f"load-{number}"
            outcome = Outcome(users)
            try:
                if client is None:
                    client = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
                    client.ehlo("client.example")
                self.send(client, tag, outcome)
            except OSError:  # smtplib's errors too: the connection broke
                if outcome.reply is None and not outcome.lost:
                    outcome.lost = "before the content"
            self.record(tag, outcome)
            if not outcome.ok and client is not None:
                # Refused or cut: try later, on a new connection, as an MTA would (and
                # without running into the session's error budget, 421 4.7.0).
                client.close()
                client = None
                time.sleep(BACKOFF)
        if client is not None:
            client.quit()

    @staticmethod
    def send(client: smtplib.SMTP, tag: str, outcome: Outcome) -> None:
        code, text = client.mail("sender@example.net")
        if code != 250:
            outcome.reply = (code, text)
            client.rset()
            return
        outcome.rcpt = tuple(client.rcpt(f"{user}@{DOMAIN}") for user in outcome.recipients)
        outcome.accepted = tuple(
            user
            for user, (code, _) in zip(outcome.recipients, outcome.rcpt, strict=True)
            if code == 250
        )
        if not outcome.accepted:
            client.rset()
            return
        body = f"Message-ID: <{tag}@test>\r\nSubject: {tag}\r\n\r\n{tag} body\r\n".encode()
        client.putcmd("DATA")
        code, text = client.getreply()
        if code != 354:
            outcome.reply = (code, text)
            client.rset()
            return
        outcome.lost = "after the content"  # until the reply is read
        client.send(re.sub(rb"(?m)^\.", b"..", body) + b".\r\n")
        outcome.reply = client.getreply()
        outcome.lost = ""


def run_load(server: Server, dovecot: Dovecot) -> tuple[Load, list[Path]]:
    """Send ``MESSAGES`` messages from ``THREADS`` threads, killing Dovecot (and starting
    it again, from this thread) and one worker at the set points of progress; the load
    and the stale locks the killed Dovecot left (see ``Dovecot.remove_stale_locks``)."""
    load = Load(server.port, deadline=time.monotonic() + LOAD_TIMEOUT)
    threads = [threading.Thread(target=load.sender) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: load.done >= KILL_DOVECOT_AT, load.deadline)
        dovecot.kill9()
        time.sleep(DOVECOT_DOWN)
        locks = dovecot.remove_stale_locks()
        dovecot.start()
        wait_until(lambda: load.done >= KILL_WORKER_AT, load.deadline)
        os.kill(server.worker_pids()[0], signal.SIGKILL)
    finally:
        for thread in threads:
            thread.join(timeout=LOAD_TIMEOUT + 30)
    return load, locks


def wait_until(condition: Callable[[], bool], deadline: float) -> None:
    while not condition():
        assert time.monotonic() < deadline, "the load did not get this far in time"
        time.sleep(0.01)


def mailboxes(dovecot: Dovecot) -> dict[str, dict[str, list[str]]]:
    """Per user, per tag: wildboar's ids of the copies in the user's Maildir."""
    found: dict[str, dict[str, list[str]]] = {}
    for user in USERS:
        found[user] = {}
        for message in dovecot.maildir_messages(user):
            tag, received = TAG.search(message), RECEIVED.search(message)
            if tag is None:
                continue  # the filler that put carol over her quota
            assert received is not None, message[:600]
            found[user].setdefault(tag[1].decode(), []).append(received["id"].decode())
    return found


def drained(spool: Path, timeout: float) -> list[str]:
    """The retry records still waiting after at most ``timeout`` seconds."""
    directory = spool / "lmtp" / "msg"
    deadline = time.monotonic() + timeout
    while True:
        waiting = sorted(p.name for p in directory.iterdir()) if directory.exists() else []
        if not waiting or time.monotonic() > deadline:
            return waiting
        time.sleep(0.2)


def test_1000_messages_through_kill_9_of_dovecot_and_of_a_worker(spool_dir: Path) -> None:
    started = time.monotonic()
    extra = "quota_full_tempfail = yes\nlmtp_rcpt_check_quota = no\n"
    with Dovecot(extra=extra) as dovecot:
        dovecot.fill_quota("carol")
        host, port = dovecot.lmtp_address
        env = {
            "WILDBOAR_RECIPIENTS_DOMAINS": DOMAIN,
            "WILDBOAR_LMTP_RETRY_MIN": "1",
            "WILDBOAR_LMTP_RETRY_MAX": "2",
        }
        with serving(spool_dir, "--lmtp", f"lmtp:{host}:{port}", workers=2, env=env) as server:
            load, locks = run_load(server, dovecot)
            loaded = time.monotonic()
            # Room for carol (Dovecot rereads its passwd-file): her retries can succeed.
            users = dovecot.passwd_path.read_text().replace("storage=1M", "storage=1G")
            dovecot.passwd_path.write_text(users)
            waiting = drained(spool_dir, DRAIN_TIMEOUT)
            queued = len(server.events("lmtp_retry_queued"))
            retried = len(server.events("lmtp_retried"))
            deferred = {
                r["message"].removeprefix("urn:uuid:"): r["reply"]
                for r in server.events("message_deferred")
            }
            stopped = stop_within(server, STOP_TIMEOUT)
        found = mailboxes(dovecot)
    took = time.monotonic() - started
    outcomes = load.outcomes
    counts = Counter(
        "250" if o.ok else f"lost {o.lost}" if o.lost else "refused" for o in outcomes.values()
    )
    summary = (
        f"{dict(counts)}; retry records {queued}, retried {retried}; stale locks after the"
        f" kill {[str(p.relative_to(dovecot.mail_dir)) for p in locks]}; load"
        f" {loaded - started:.1f} s, all {took:.1f} s"
    )
    print(summary)

    wrong, reply_lost, cut = checked(outcomes, found, deferred)
    print(f"4xx but stored by Dovecot before its kill: {reply_lost}; cut but stored: {cut}")
    assert len(outcomes) == MESSAGES, f"only {len(outcomes)} sent in {LOAD_TIMEOUT} s: {summary}"
    assert wrong == [], f"{len(wrong)} messages in the wrong mailboxes: {wrong[:20]}; {summary}"
    # Only a transaction in flight at a kill can lose its reply: at most one per thread.
    assert len(reply_lost) <= THREADS, f"4xx, yet stored (RFC 1047): {reply_lost}"
    assert len(cut) <= THREADS, f"cut with the worker, yet stored: {cut}"
    assert waiting == [], f"{len(waiting)} retry records left after {DRAIN_TIMEOUT} s"
    # The faults happened, and did something: refusals while Dovecot was down, sessions
    # cut with the worker, carol's copies through the retry spool.
    assert counts["refused"] >= 1 and counts["250"] >= MESSAGES // 2, summary
    assert any(o.lost for o in outcomes.values()), f"the worker's kill cut nothing: {summary}"
    assert queued >= 1 and retried >= 1, summary
    # With nothing left to do, the server stops at once (its retry runner included).
    assert stopped == 0, f"not stopped {STOP_TIMEOUT} s after SIGTERM (status {stopped})"


def stop_within(server: Server, timeout: float) -> int | None:
    """SIGTERM, then the exit status, or None if it did not exit within ``timeout``
    (``serving`` then kills it, workers included)."""
    server.signal(signal.SIGTERM)
    try:
        return server.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def checked(
    outcomes: dict[str, Outcome], found: dict[str, dict[str, list[str]]], deferred: dict[str, str]
) -> tuple[list[tuple[object, ...]], list[str], list[str]]:
    """Each message's copies against what its sender was told: (the wrong ones, those
    answered 4xx whose copies Dovecot stored before it died, those stored whose session
    was cut after the content)."""
    wrong: list[tuple[object, ...]] = []
    reply_lost, cut = [], []
    for tag, outcome in sorted(outcomes.items()):
        copies = {user: found[user].get(tag, []) for user in USERS}
        stored = {user: ids for user, ids in copies.items() if ids}
        if outcome.ok:
            assert outcome.reply is not None
            wildboar_id = queued_id(outcome.reply[1])
            if stored != {user: [wildboar_id] for user in outcome.accepted}:
                wrong.append((tag, "250", outcome.accepted, stored))
        elif not stored:
            continue
        elif any(len(ids) > 1 for ids in stored.values()) or set(stored) - set(outcome.accepted):
            wrong.append((tag, outcome.reply, outcome.lost, outcome.accepted, stored))
        elif outcome.lost == "after the content":
            cut.append(tag)  # the reply died with the worker
        elif outcome.reply is not None and outcome.reply[0] // 100 == 4:
            ids = {i for ids in stored.values() for i in ids}
            said = [deferred.get(i, "") for i in ids]
            if len(ids) == 1 and all(s.startswith(MDA_LOST) for s in said):
                reply_lost.append(tag)  # Dovecot stored it and died before answering
            else:
                wrong.append((tag, outcome.reply, outcome.accepted, stored, said))
        else:
            wrong.append((tag, outcome.reply, outcome.lost, outcome.accepted, stored))
    return wrong, reply_lost, cut
