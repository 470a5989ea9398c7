"""The whole stack end to end (tests/consumer/pipeline.py): smtplib and smtp-source ->
``wildboar serve`` -> RabbitMQ -> ``scam`` -> ``spf`` -> ``deliver`` -> Dovecot, with a mix
of clean mail, scams, mail whose SPF fails and mail to users the mail store does not have;
then the same with a stage killed with SIGKILL mid-batch, and with the broker restarted
mid-batch. Every message is followed by its id: each clean one in its Maildir exactly once,
each refused one on ``rejected.inbound.email`` with the stage and the reason, nothing lost,
nothing doubled where docs/consumers.md "Guarantees" says nothing may be.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pika.exceptions
import pytest

from tests.amqp.broker import Broker, broker
from tests.amqp.nodes import RabbitNode, private_node
from tests.lmtp.dovecot import Dovecot

from .dns import Nsd
from .pipeline import FORGER, SENDER, STAGES, USERS, Sent, Stack, stack, zones

__all__ = ["broker", "private_node"]  # fixtures

SOURCE = 200  # clean messages from smtp-source


@pytest.fixture(scope="module")
def nsd() -> Iterator[Nsd]:
    with Nsd(zones()) as server:
        yield server


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with Dovecot(users=USERS, quotas={}) as server:
        yield server


@pytest.fixture
def running(
    broker: Broker, dovecot: Dovecot, nsd: Nsd, spool_dir: Path, tmp_path: Path
) -> Iterator[Stack]:
    with stack(broker, dovecot, nsd, spool_dir, tmp_path / "bounces") as pipeline:
        pipeline.start()
        yield pipeline


def expected_mail(pipeline: Stack, sent: Sent) -> set[tuple[str, str]]:
    """(user, URN) of every message that must reach a Maildir."""
    ours = {(user, urn) for urn, users in sent.recipients.items() for user in users}
    return ours | {("bob", urn) for urn in pipeline.from_smtp_source(sent)}


def settle(pipeline: Stack, sent: Sent) -> None:
    """Wait until every clean message is in a Maildir and every stage refused what it
    should have."""
    expected = expected_mail(pipeline, sent)
    refused = {"scam": set(sent.scam), "spf": set(sent.forged), "deliver": set(sent.unknown)}
    pipeline.wait_until(
        lambda: (
            expected <= set(pipeline.in_maildirs())
            and all(ids <= pipeline.handled(s, "record_rejected") for s, ids in refused.items())
        ),
        "through the pipeline",
    )


def check(pipeline: Stack, sent: Sent, doubled_rejections: int = 0, doubled_mail: int = 0) -> None:
    """Everything came out once, where it should; at most ``doubled_rejections`` second
    copies of a rejected record (published again by a stage that lost its deliveries
    between a publish and its ack: killed, or its connection lost; docs/consumers.md
    "Guarantees" 4 and 5). Nothing dedupes the rejected queue: its consumer must. At
    most ``doubled_mail`` second copies in the Maildirs (the deliver stage killed)."""
    assert len(pipeline.from_smtp_source(sent)) == SOURCE
    stored = pipeline.in_maildirs()
    assert set(stored) == expected_mail(pipeline, sent)  # nothing lost, nothing extra
    assert sum(stored.values()) - len(stored) <= doubled_mail  # nothing doubled
    rejections = pipeline.rejections()
    by_id = collections.defaultdict(list)
    for record in rejections:
        by_id[record.email.id].append(record)
    assert set(by_id) == {*sent.scam, *sent.forged, *sent.unknown}
    assert len(rejections) - len(by_id) <= doubled_rejections
    for kind, stage, status in (
        (sent.scam, "scam", "5.7.1"),
        (sent.forged, "spf", "5.7.23"),
        (sent.unknown, "deliver", "5.1.1"),
    ):
        for urn in kind:
            for record in by_id[urn]:
                rejection = record.rejection
                assert rejection is not None
                assert (rejection.stage, rejection.code, rejection.enhanced) == (
                    stage,
                    550,
                    status,
                )
    scam = by_id[sent.scam[0]][0].rejection
    assert scam is not None and all(w in scam.text for w in ("account", "african", "prince"))
    spf = by_id[sent.forged[0]][0]
    assert (
        spf.verdicts[-1]
        .details["authentication-results"]
        .endswith(f"spf=fail smtp.mailfrom={FORGER}")
    )
    # The unknown users: refused by the mail store, and a bounce to the sender for each.
    bounces = pipeline.bounces_kept()
    assert sorted(b.email.to for b in bounces) == [[SENDER]] * len(sent.unknown)
    for n in range(len(sent.unknown)):
        assert sum(f"nobody-{n}@example.org".encode() in b.email.data for b in bounces) == 1
    # Nothing is left in a stage's queue, nor in its dead letters.
    for stage in STAGES:
        queue, dead = (pipeline.broker.name(f"{q}.{stage}") for q in ("stage", "dead"))
        assert pipeline.broker.depth(queue) == pipeline.broker.depth(dead) == 0


def test_a_mix_of_mail_goes_through_the_pipeline_once_each(running: Stack) -> None:
    sent = Sent()
    running.send_mix(sent)
    running.smtp_source(SOURCE)
    settle(running, sent)
    check(running, sent)
    # No stage saw a duplicate, retried or dead-lettered anything.
    for stage in STAGES:
        consumer = running.consumer(stage)
        for event in ("record_duplicate", "handler_failed", "record_dead_lettered"):
            assert not consumer.events(event), (stage, event, str(consumer.events(event)[:1]))
    assert len(running.handled("deliver", "record_dropped")) == len(sent.clean) + SOURCE


def kill_mid_batch(running: Stack, stage: str, event: str) -> Sent:
    """Send the mix; SIGKILL ``stage`` once it logged 40 ``event`` records, start another."""
    sent = Sent()
    victim = running.consumer(stage)
    running.send_mix(sent)
    source = threading.Thread(target=running.smtp_source, args=(SOURCE,))
    source.start()
    try:
        victim.wait_for(event, 40, timeout=60)
        victim.kill()  # SIGKILL: deliveries in flight unacked, some already handled
        assert victim.proc.returncode == -9
        running.start_stage(stage)
    finally:
        source.join(120)
    settle(running, sent)
    return sent


def test_a_stage_killed_mid_batch_loses_nothing_and_delivers_once(running: Stack) -> None:
    sent = kill_mid_batch(running, "spf", "record_passed")
    # What the killed process had published but not acked went out again: deliver
    # removed the second copies of what passed (its window), the rejected queue may hold
    # a second copy of what was refused; at most the stage's prefetch window (8) in all.
    window = 8
    check(running, sent, doubled_rejections=window)
    duplicates = running.consumer("deliver").events("record_duplicate")
    assert len(duplicates) <= window
    killed, successor = running.stages["spf"]
    assert successor.events("record_passed")  # it was killed with work left
    passed = [r["message"] for c in (killed, successor) for r in c.events("record_passed")]
    assert len(passed) - len(set(passed)) <= window


def test_the_last_stage_killed_mid_batch_delivers_at_most_a_window_twice(
    running: Stack,
) -> None:
    """The one duplicate the design allows: deliver killed between the mail store's 250
    and its ack. Its successor's ledger and window are empty, so what the killed process
    delivered but had not acked (at most its prefetch window) is delivered again."""
    sent = kill_mid_batch(running, "deliver", "record_dropped")
    check(running, sent, doubled_rejections=8, doubled_mail=8)
    _, successor = running.stages["deliver"]
    assert successor.events("record_dropped")


@pytest.fixture
def on_a_node(
    private_node: RabbitNode, dovecot: Dovecot, nsd: Nsd, spool_dir: Path, tmp_path: Path
) -> Iterator[tuple[RabbitNode, Stack]]:
    """The stack against a private node (the shared one must not restart), the server
    keeping what it takes while the broker is away (``store_and_forward``)."""
    corner = Broker(private_node.url)
    try:
        with stack(corner, dovecot, nsd, spool_dir, tmp_path / "bounces") as pipeline:
            pipeline.start(WILDBOAR_AMQP_STORE_AND_FORWARD="true")
            yield private_node, pipeline
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError):
            corner.connection.close()


def test_a_broker_restart_mid_batch_loses_nothing_and_delivers_once(
    on_a_node: tuple[RabbitNode, Stack],
) -> None:
    """Quorum queues keep what they hold across the restart, the server buffers what it
    takes meanwhile, and every process reconnects."""
    node, pipeline = on_a_node
    sent = Sent()
    pipeline.send_mix(sent)
    pipeline.smtp_source(SOURCE // 2)
    pipeline.consumer("deliver").wait_for("record_dropped", 20, timeout=60)
    # The rest is sent while the broker is away and while it comes back.
    rest = threading.Thread(target=pipeline.smtp_source, args=(SOURCE // 2,))
    node.stop()
    rest.start()
    try:
        node.start(keep_data=True)  # from this thread: the node dies with the one that started it
        node.wait_ready()
    finally:
        rest.join(120)
    pipeline.broker.reconnect()
    for stage in STAGES:
        pipeline.consumer(stage).wait_for("consumer_connected", 2, timeout=60)
    settle(pipeline, sent)
    # A rejection in flight when the connection went is published again: at most a
    # prefetch window (8) of each stage.
    check(pipeline, sent, doubled_rejections=3 * 8)
    # The server lost its connection, kept what it took meanwhile and published it once
    # the broker was back; each stage lost its connection and came back.
    server = pipeline.server
    assert server is not None
    server.wait_for("amqp_connected", 2, timeout=60)
    assert server.events("amqp_connection_lost") and server.events("amqp_buffered")
    assert server.events("amqp_drained")
    for stage in STAGES:
        assert pipeline.consumer(stage).events("amqp_connection_lost"), stage
