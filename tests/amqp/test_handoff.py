"""The AMQP handoff against the machine's real RabbitMQ: confirms, topology, faults,
store-and-forward. Each test publishes under its own name prefix (see ``broker.py``)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
import signal
import subprocess
import time
from pathlib import Path

import jsonschema
import msgspec
import pytest

from tests.amqp.broker import DEAD_URL, URL, Broker, broker, close_connections
from tests.amqp.nodes import RabbitNode, private_node
from tests.records import NOW, make_message, run
from wildboar import message as M
from wildboar.config import Amqp, ConfigError, load
from wildboar.handoff import LOCAL_PROBLEM, HandoffStartError, Spool
from wildboar.handoff.amqp import ACCEPTED, REJECTED, AmqpHandoff, Pacing

__all__ = ["broker", "private_node"]  # fixtures
SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "message.schema.json").read_text())


def handoff(
    b: Broker, tmp_path: Path, pacing: Pacing | None = None, **overrides: object
) -> AmqpHandoff:
    return AmqpHandoff(
        b.settings(**overrides),
        buffer=str(tmp_path / "buffer"),
        connection_name=b.prefix,
        pacing=pacing,
    )


async def started(amqp: AmqpHandoff) -> AmqpHandoff:
    """Start, and wait until the broker is usable: on a machine busy with other tests,
    declaring the topology can take longer than ``start`` waits."""
    await amqp.start()
    await usable(amqp)
    return amqp


async def usable(amqp: AmqpHandoff) -> None:
    for _ in range(600):
        if amqp.usable:
            return
        await asyncio.sleep(0.1)


def test_messages_arrive_byte_for_byte_as_persistent_urn_identified_json(
    broker: Broker, tmp_path: Path
) -> None:
    contents = [b"Subject: one\r\n\r\nfirst\r\n", b"Subject: two\r\n\r\n\x00\xff binary\r\n"]
    messages = [make_message(content=c) for c in contents]

    async def main() -> list[bool]:
        amqp = handoff(broker, tmp_path)
        await started(amqp)
        try:
            return [(await amqp.deliver(m)).ok for m in messages]
        finally:
            await amqp.close()

    assert run(main()) == [True, True]
    got = broker.get(broker.name(ACCEPTED), 2)
    for message, content, item in zip(messages, contents, got, strict=True):
        assert item.properties.delivery_mode == 2
        assert item.properties.message_id == message.email.id
        assert item.properties.message_id.startswith("urn:uuid:")
        assert item.properties.content_type == "application/json"
        record = json.loads(item.body)
        jsonschema.validate(record, SCHEMA)
        assert M.decode(item.body) == message
        assert base64.b64decode(record["email"]["data"]).endswith(content)


def test_msgpack_when_configured(broker: Broker, tmp_path: Path) -> None:
    message = make_message()

    async def main() -> bool:
        amqp = handoff(broker, tmp_path, format="msgpack")
        await started(amqp)
        try:
            return (await amqp.deliver(message)).ok
        finally:
            await amqp.close()

    assert run(main())
    [item] = broker.get(broker.name(ACCEPTED), 1)
    assert item.properties.content_type == "application/msgpack"
    assert M.decode(item.body, "application/msgpack") == message


def test_topology_durable_exchanges_and_quorum_queues(broker: Broker, tmp_path: Path) -> None:
    async def main() -> None:
        amqp = handoff(broker, tmp_path)
        await started(amqp)
        await amqp.close()

    run(main())
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "type", "durable", "--formatter", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    ours = {q["name"]: q for q in json.loads(listing) if q["name"].startswith(broker.prefix)}
    assert set(ours) == {
        broker.name(n)
        for n in (ACCEPTED, REJECTED, "accepted.outbound.email", "rejected.outbound.email")
    }
    assert all(q["type"] == "quorum" and q["durable"] for q in ours.values())


def test_an_unroutable_message_is_a_failure_not_a_silent_drop(
    broker: Broker, tmp_path: Path
) -> None:
    async def main() -> object:
        amqp = handoff(broker, tmp_path, declare_queues=False)  # no queue: nowhere to go
        await started(amqp)
        try:
            return await amqp.deliver(make_message())
        finally:
            await amqp.close()

    delivery = run(main())
    assert not delivery.ok and delivery.reply == LOCAL_PROBLEM  # 451 4.3.0


def test_a_full_queue_that_rejects_publishes_makes_the_sender_see_451(
    broker: Broker, tmp_path: Path
) -> None:
    async def main() -> list[int]:
        amqp = handoff(broker, tmp_path, declare_queues=False)
        await started(amqp)
        queue = broker.declare_queue(
            # A classic queue: a quorum queue applies its length limit a little late.
            "full",
            {"x-max-length": 2, "x-overflow": "reject-publish", "x-queue-type": "classic"},
        )
        broker.bind(queue, broker.name(ACCEPTED), "after.smtp")
        try:
            outcomes = [await amqp.deliver(make_message()) for _ in range(3)]
        finally:
            await amqp.close()
        return [d.reply.code if d.reply else 250 for d in outcomes]

    assert run(main()) == [250, 250, 451]


def test_a_connection_closed_by_the_broker_loses_nothing(broker: Broker, tmp_path: Path) -> None:
    """Publishing in 20 concurrent streams while the broker closes the connection: every
    publish is answered once; every one answered ok is in the queue; publishing resumes.

    A publish answered 451 may be in the queue too (the broker stored it, its confirm was
    lost with the connection): the sender retries, and consumers de-duplicate on
    ``message_id``. Nothing else can be promised across a lost connection."""
    outcomes: dict[str, bool] = {}

    async def stream(amqp: AmqpHandoff, stop: asyncio.Event) -> None:
        while not stop.is_set():
            message = make_message()
            outcomes[message.email.id] = (await amqp.deliver(message)).ok
            if not outcomes[message.email.id]:
                await asyncio.sleep(0.05)

    async def main() -> int:
        amqp = handoff(broker, tmp_path)
        await started(amqp)
        stop = asyncio.Event()
        streams = [asyncio.create_task(stream(amqp, stop)) for _ in range(20)]
        await asyncio.sleep(0.5)
        closed = await asyncio.to_thread(close_connections, broker.prefix)
        before = sum(outcomes.values())
        for _ in range(200):  # until publishing works again
            await asyncio.sleep(0.05)
            if sum(outcomes.values()) > before + 100:
                break
        stop.set()
        await asyncio.gather(*streams)
        await amqp.close()
        return closed

    assert run(main()) == 1
    accepted = {urn for urn, ok in outcomes.items() if ok}
    refused = set(outcomes) - accepted
    queued = [g.properties.message_id for g in broker.drain(broker.name(ACCEPTED))]
    assert accepted <= set(queued), "a confirmed message is missing"
    assert set(queued) <= set(outcomes)
    assert len(queued) == len(set(queued))
    assert refused, "the close came while nothing was in flight: the test proved nothing"


def test_without_a_broker_sessions_are_refused_where_configured(
    broker: Broker, tmp_path: Path
) -> None:
    async def main() -> tuple[object, ...]:
        at_connect = handoff(broker, tmp_path, urls=[DEAD_URL], connect_timeout=1.0)
        at_mail = handoff(broker, tmp_path, urls=[DEAD_URL], when_down="mail")
        await at_connect.start()
        await at_mail.start()
        try:
            return (
                at_connect.refusal("connect"),
                at_connect.refusal("mail"),
                at_mail.refusal("connect"),
                at_mail.refusal("mail"),
                await at_connect.deliver(make_message()),
            )
        finally:
            await at_connect.close()
            await at_mail.close()

    connect, connect_mail, mail_connect, mail, delivery = run(main())
    assert (connect.code, connect.status) == (421, "4.3.2") and connect_mail is None  # type: ignore[attr-defined]
    assert mail_connect is None and (mail.code, mail.status) == (451, "4.3.0")  # type: ignore[attr-defined]
    assert not delivery.ok and delivery.reply == LOCAL_PROBLEM  # type: ignore[attr-defined]


def test_failover_to_the_next_url_in_order(broker: Broker, tmp_path: Path) -> None:
    async def main() -> tuple[bool, str]:
        amqp = handoff(broker, tmp_path, urls=[DEAD_URL, URL])
        await started(amqp)
        try:
            return (await amqp.deliver(make_message())).ok, amqp.broker
        finally:
            await amqp.close()

    assert run(main()) == (True, "127.0.0.1:5672")
    assert len(broker.get(broker.name(ACCEPTED), 1)) == 1


def test_store_and_forward_publishes_every_buffered_message_once_in_order(
    broker: Broker, tmp_path: Path
) -> None:
    messages = [
        make_message(
            content=f"Subject: {i}\r\n\r\n{i}\r\n".encode(),
            when=NOW + datetime.timedelta(microseconds=i),
        )
        for i in range(30)
    ]

    async def down() -> list[bool]:
        amqp = handoff(broker, tmp_path, urls=[DEAD_URL], store_and_forward=True)
        await amqp.start()
        assert amqp.refusal("connect") is None and amqp.refusal("mail") is None
        try:
            return [(await amqp.deliver(m)).ok for m in messages]
        finally:
            await amqp.close()

    async def back() -> int:
        amqp = handoff(broker, tmp_path, store_and_forward=True)
        await started(amqp)
        try:
            for _ in range(300):
                if Spool(tmp_path / "buffer").count() == 0:
                    break
                await asyncio.sleep(0.05)
            return amqp.drained
        finally:
            await amqp.close()

    assert run(down()) == [True] * 30
    assert Spool(tmp_path / "buffer").count() == 30
    assert run(back()) == 30
    got = broker.get(broker.name(ACCEPTED), 30)
    assert [g.properties.message_id for g in got] == [m.email.id for m in messages]


def test_rejections_and_events_are_published(broker: Broker, tmp_path: Path) -> None:
    events = broker.declare_queue("events-tap")
    message = make_message()
    refused = msgspec.structs.replace(
        message, rejection=M.Rejection(code=552, enhanced="5.3.4", text="Message too big")
    )

    async def main() -> None:
        amqp = handoff(broker, tmp_path)
        await started(amqp)
        broker.bind(events, broker.name("events"), "connection.*")
        try:
            amqp.rejected(refused)
            amqp.event("connection_open", {"connection": message.connection.id})
            await asyncio.sleep(0.5)
        finally:
            await amqp.close()

    run(main())
    [rejected] = broker.get(broker.name(REJECTED), 1)
    record = M.decode(rejected.body)
    assert record.rejection is not None and record.rejection.code == 552
    assert rejected.properties.type == "rejected"
    [event] = broker.get(events, 1)
    assert json.loads(event.body)["connection"] == message.connection.id


def test_a_bad_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="'http://x' is not an amqp:// or amqps:// URL"):
        load(environ={"WILDBOAR_AMQP_URLS": "amqp://127.0.0.1/,http://x"})


def test_a_url_the_client_cannot_use_stops_the_start_with_a_message(tmp_path: Path) -> None:
    bad = "amqp://guest:guest@127.0.0.1:5672/%2F?heartbeat=x"

    async def main() -> None:
        amqp = AmqpHandoff(Amqp(urls=[bad]), buffer=str(tmp_path), connection_name="t")
        await amqp.start()

    with pytest.raises(HandoffStartError, match="bad broker URL"):
        run(main())


def test_a_broker_alarm_blocks_publishing_with_451_until_it_clears(
    private_node: RabbitNode, tmp_path: Path
) -> None:
    settings = Amqp(urls=[private_node.url], reconnect_min=0.1, confirm_timeout=5.0)

    async def main() -> list[int]:
        amqp = AmqpHandoff(settings, buffer=str(tmp_path / "buffer"), connection_name="alarm")
        await started(amqp)
        codes = [(await amqp.deliver(make_message())).ok]
        # A memory alarm: the broker blocks every connection that publishes.
        # RabbitMQ blocks a connection when it next publishes; the sender waits no longer
        # than it takes the broker to say so (not the 5 s confirm timeout), and while the
        # alarm lasts the next one is refused without publishing.
        await asyncio.to_thread(private_node.ctl, "set_vm_memory_high_watermark", "0")
        for _ in range(2):
            began = time.monotonic()
            codes.append((await amqp.deliver(make_message())).ok)
            assert time.monotonic() - began < 2.0, "the sender waited for the timeout"
        assert not amqp.usable
        await asyncio.to_thread(private_node.ctl, "set_vm_memory_high_watermark", "0.4")
        for _ in range(100):
            if amqp.usable:
                break
            await asyncio.sleep(0.05)
        codes.append((await amqp.deliver(make_message())).ok)
        await amqp.close()
        return codes

    assert run(main()) == [True, False, False, True]


def test_a_broker_that_hangs_gets_451_after_the_confirm_timeout(
    private_node: RabbitNode, tmp_path: Path
) -> None:
    settings = Amqp(urls=[private_node.url], reconnect_min=0.1, confirm_timeout=1.0)

    async def main() -> tuple[list[bool], float]:
        amqp = AmqpHandoff(settings, buffer=str(tmp_path / "buffer"), connection_name="hang")
        await started(amqp)
        outcomes = [(await amqp.deliver(make_message())).ok]
        private_node.signal_beam(signal.SIGSTOP)  # the broker stops answering
        try:
            began = time.monotonic()
            outcomes.append((await amqp.deliver(make_message())).ok)
            waited = time.monotonic() - began
        finally:
            private_node.signal_beam(signal.SIGCONT)
        outcomes.append((await amqp.deliver(make_message())).ok)
        await amqp.close()
        return outcomes, waited

    outcomes, waited = run(main())
    assert outcomes == [True, False, True]
    assert 1.0 <= waited < 3.0


def test_a_channel_closed_by_the_broker_gets_451_then_the_topology_is_declared_again(
    broker: Broker, tmp_path: Path
) -> None:
    async def main() -> list[bool]:
        amqp = await started(handoff(broker, tmp_path))
        outcomes = [(await amqp.deliver(make_message())).ok]
        # An operator deletes the exchange: the next publish closes the channel (404).
        broker.channel.exchange_delete(broker.name(ACCEPTED))
        outcomes.append((await amqp.deliver(make_message())).ok)
        for _ in range(300):  # reconnected, exchange declared and bound again
            await asyncio.sleep(0.05)
            if amqp.usable:
                break
        outcomes.append((await amqp.deliver(make_message())).ok)
        await amqp.close()
        return outcomes

    assert run(main()) == [True, False, True]
    assert len(broker.get(broker.name(ACCEPTED), 2)) == 2


def test_a_broker_restart_gets_451_then_mail_flows_again(
    private_node: RabbitNode, tmp_path: Path
) -> None:
    settings = Amqp(urls=[private_node.url], reconnect_min=0.1, reconnect_max=0.5)

    async def main() -> list[bool]:
        amqp = AmqpHandoff(settings, buffer=str(tmp_path / "buffer"), connection_name="restart")
        await started(amqp)
        outcomes = [(await amqp.deliver(make_message())).ok]
        await asyncio.to_thread(private_node.stop)
        outcomes.append((await amqp.deliver(make_message())).ok)
        outcomes.append(amqp.refusal("connect") is not None)  # new sessions: 421 meanwhile
        await asyncio.to_thread(private_node.start)  # a fresh node: no queues, no exchanges
        await asyncio.to_thread(private_node.wait_ready)
        await usable(amqp)
        outcomes.append((await amqp.deliver(make_message())).ok)
        await amqp.close()
        return outcomes

    assert run(main()) == [True, False, True, True]


def test_a_record_too_big_for_the_broker_gets_552_and_harms_no_other_message(
    broker: Broker, tmp_path: Path
) -> None:
    big = make_message(content=b"Subject: big\r\n\r\n" + b"x" * 4000 + b"\r\n")

    async def main() -> list[object]:
        # Without the check the broker would close the channel every session shares.
        amqp = await started(
            handoff(broker, tmp_path, max_message_size=2048, store_and_forward=True)
        )
        outcomes: list[object] = []
        for delivery in await asyncio.gather(
            amqp.deliver(big), *(amqp.deliver(make_message()) for _ in range(5))
        ):
            outcomes.append(delivery.reply.code if delivery.reply else 250)
        await amqp.close()
        return outcomes

    assert run(main()) == [552, 250, 250, 250, 250, 250]
    assert Spool(tmp_path / "buffer").count() == 0  # never buffered: it can never go out
    assert len(broker.get(broker.name(ACCEPTED), 5)) == 5


def test_a_corrupt_buffered_record_is_set_aside_and_the_rest_published(
    broker: Broker, tmp_path: Path
) -> None:
    messages = [make_message(when=NOW + datetime.timedelta(microseconds=i)) for i in range(3)]

    async def down() -> None:
        amqp = handoff(broker, tmp_path, urls=[DEAD_URL], store_and_forward=True)
        await amqp.start()
        assert [(await amqp.deliver(m)).ok for m in messages] == [True] * 3
        await amqp.close()

    async def back() -> int:
        amqp = await started(handoff(broker, tmp_path, store_and_forward=True))
        for _ in range(300):
            if Spool(tmp_path / "buffer").count() == 0:
                break
            await asyncio.sleep(0.05)
        await amqp.close()
        return amqp.drained

    run(down())
    junk = tmp_path / "buffer" / "msg" / "0f0f0f0f-0f0f-4f0f-8f0f-0f0f0f0f0f0f.msgpack"
    junk.write_bytes(b"not a record")
    assert run(back()) == 3
    got = broker.get(broker.name(ACCEPTED), 3)
    assert [g.properties.message_id for g in got] == [m.email.id for m in messages]
    assert (tmp_path / "buffer" / "corrupt" / junk.name).read_bytes() == b"not a record"


@pytest.mark.parametrize("what", ["events", "rejected"])
def test_a_refused_event_or_rejected_record_never_touches_mail(
    broker: Broker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    what: str,
) -> None:
    """The broker refusing a publish on the side channel (here: its exchange was deleted,
    404; a user without write permission on it gets 403 the same way) closes that channel
    only: mail goes on on the confirm channel, nothing reconnects, and after a back-off the
    side channel is opened and its exchanges declared again."""
    events = broker.declare_queue("events-tap")
    refused = msgspec.structs.replace(
        make_message(), rejection=M.Rejection(code=550, enhanced="5.5.2", text="bare LF")
    )

    async def main() -> list[bool]:
        amqp = await started(handoff(broker, tmp_path, Pacing(side_retry_min=0.3)))
        broker.bind(events, broker.name("events"), "#")
        exchange = broker.name("events") if what == "events" else broker.name(REJECTED)
        broker.channel.exchange_delete(exchange)
        if what == "events":
            amqp.event("connection_open", {"connection": "first"})  # 404: channel closed
        else:
            amqp.rejected(refused)
        outcomes = [(await amqp.deliver(make_message())).ok for _ in range(5)]
        for _ in range(100):  # the side channel comes back, with its exchanges declared
            await asyncio.sleep(0.05)
            if any(r.getMessage() == "amqp_side_channel_reopened" for r in caplog.records):
                break
        await asyncio.sleep(0.3)
        if what == "events":
            broker.bind(events, broker.name("events"), "#")  # the exchange is new
            amqp.event("connection_open", {"connection": "second"})
        else:
            broker.bind(broker.name(REJECTED), broker.name(REJECTED), "after.smtp")
            amqp.rejected(refused)
        outcomes.append((await amqp.deliver(make_message())).ok)
        await asyncio.sleep(0.5)
        await amqp.close()
        return outcomes

    with caplog.at_level(logging.INFO, logger="wildboar.handoff"):
        assert run(main()) == [True] * 6
    names = [r.getMessage() for r in caplog.records]
    assert names.count("amqp_connected") == 1 and "amqp_connection_lost" not in names
    assert names.count("amqp_side_channel_closed") == 1
    assert "amqp_side_channel_reopened" in names
    assert broker.depth(broker.name(ACCEPTED)) == 6
    if what == "events":
        [event] = broker.get(events, 1)
        assert json.loads(event.body)["connection"] == "second"
    else:
        [record] = broker.get(broker.name(REJECTED), 1)
        assert M.decode(record.body).email.id == refused.email.id


def test_the_drain_backs_off_while_the_broker_refuses_and_keeps_the_buffer(
    broker: Broker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A queue that rejects every publish (full, reject-publish): the drain tries again
    after a wait that doubles (from DRAIN_IDLE, shortened here), not every DRAIN_IDLE,
    and keeps every buffered message."""
    messages = [make_message() for _ in range(2)]

    async def down() -> list[bool]:
        amqp = handoff(broker, tmp_path, urls=[DEAD_URL], store_and_forward=True)
        await amqp.start()
        try:
            return [(await amqp.deliver(m)).ok for m in messages]
        finally:
            await amqp.close()

    async def refused() -> None:
        queue = broker.declare_queue(
            "full", {"x-max-length": 0, "x-overflow": "reject-publish", "x-queue-type": "classic"}
        )
        amqp = handoff(
            broker, tmp_path, Pacing(drain_idle=0.2), store_and_forward=True, declare_queues=False
        )
        await started(amqp)
        broker.bind(queue, broker.name(ACCEPTED), "after.smtp")
        try:
            await asyncio.sleep(3.2)  # tries at ~0, 0.2, 0.6, 1.4, 3.0 s; 16 without back-off
        finally:
            await amqp.close()

    assert run(down()) == [True, True]
    with caplog.at_level(logging.INFO, logger="wildboar.handoff"):
        run(refused())
    stopped = [r for r in caplog.records if r.getMessage() == "amqp_drain_stopped"]
    assert 3 <= len(stopped) <= 7, len(stopped)
    assert Spool(tmp_path / "buffer").count() == 2
