"""``wildboar consume`` against the machine's RabbitMQ: real processes, real signals, each
test in its own corner of the broker (a random prefix), records counted by id."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import time
import uuid

from tests.amqp.broker import DEAD_URL, Broker, broker, close_connections
from tests.records import make_message
from wildboar import message as M
from wildboar.consumer.topology import REJECTED

from .harness import ROOT, Consumer, collect, consuming, publish, publish_body

__all__ = ["broker"]  # the fixture


def ids(got: list) -> list[str]:
    return [M.decode(g.body, g.properties.content_type).email.id for g in got]


def messages(count: int) -> list[M.Message]:
    return [
        make_message(content=f"Subject: {i}\r\n\r\nbody {i}\r\n".encode()) for i in range(count)
    ]


def test_records_move_from_stage_to_stage_sync_then_async(broker: Broker) -> None:
    out = collect(broker, "second")
    sent = messages(10)
    with (
        consuming(broker, "passthrough", "first") as first,
        consuming(broker, "passthrough_async", "second", "--after", "first") as second,
    ):
        publish(broker, sent[:5])
        publish(broker, sent[5:], M.CONTENT_TYPE_MSGPACK)
        got = broker.get(out, 10)
        second.wait_for("record_passed", 10)
    assert sorted(ids(got)) == sorted(m.email.id for m in sent)
    for item in got:
        record = M.decode(item.body, item.properties.content_type)
        assert item.properties.message_id == record.email.id
        assert item.properties.delivery_mode == 2
        assert [v.stage for v in record.verdicts] == ["first", "second"]
        assert record.verdicts[1].details == {"kind": "async"}
        original = next(m for m in sent if m.email.id == record.email.id)
        assert record.email == original.email
    # Each keeps the content type it was given.
    assert collections.Counter(g.properties.content_type for g in got) == {
        M.CONTENT_TYPE_JSON: 5,
        M.CONTENT_TYPE_MSGPACK: 5,
    }
    passed = first.events("record_passed")
    assert {r["message"] for r in passed} == {m.email.id for m in sent}
    assert all(r["stage"] == "first" and r["routing_key"] == "after.first" for r in passed)
    assert (
        broker.depth(broker.name("stage.first")) == broker.depth(broker.name("stage.second")) == 0
    )


def test_the_handler_gets_a_lambda_context(broker: Broker) -> None:
    out = collect(broker, "ctx")
    [message] = messages(1)
    with consuming(broker, "context_echo", "ctx", "--timeout", "7") as running:
        publish(broker, [message])
        [item] = broker.get(out, 1)
    details = M.decode(item.body).verdicts[0].details
    urn = message.email.id
    assert details["request_id"] == urn
    assert details["version"] == "$LATEST"
    assert details["arn"] == "arn:wildboar:lambda:local:consumer.test.example:function:ctx"
    assert int(details["memory"]) > 0
    assert 6000 < int(details["remaining"]) <= 7000
    assert details["group"] == "wildboar-consumer@ctx.service"
    consumer_urn = running.events("consumer_started")[0]["consumer"]
    assert details["stream"] == f"consumer.test.example/{running.proc.pid}/{consumer_urn}"
    assert (details["identity"], details["client_context"]) == ("None", "None")


def test_a_rejection_lands_on_the_rejected_exchange_with_its_reason(broker: Broker) -> None:
    out = collect(broker, "scam")
    sent = messages(3)
    with consuming(broker, "rejecting", "scam") as running:
        publish(broker, sent)
        got = broker.get(broker.name(REJECTED), 3)
        running.wait_for("record_rejected", 3)
    assert sorted(ids(got)) == sorted(m.email.id for m in sent)
    record = M.decode(got[0].body)
    assert record.rejection == M.Rejection(
        code=550, enhanced="5.7.1", text="3 scam words", stage="scam"
    )
    assert record.verdicts[0].details == {"words": "3"}
    assert got[0].properties.type == "rejected"
    assert broker.drain(out) == []
    assert running.events("record_rejected")[0]["why"] == "3 scam words"


def test_none_drops_the_record_and_says_so(broker: Broker) -> None:
    out = collect(broker, "sink")
    sent = messages(3)
    with consuming(broker, "dropping", "sink") as running:
        publish(broker, sent)
        dropped = running.wait_for("record_dropped", 3)
    assert {r["message"] for r in dropped} == {m.email.id for m in sent}
    assert broker.drain(out) == []
    assert broker.depth(broker.name("dead.sink")) == broker.depth(broker.name("stage.sink")) == 0


def test_a_raising_handler_is_retried_then_dead_lettered_with_headers(broker: Broker) -> None:
    out = collect(broker, "boom")
    [message] = messages(1)
    with consuming(broker, "raising", "boom", "--retries", "2") as running:
        publish(broker, [message])
        [dead] = broker.get(broker.name("dead.boom"), 1)
        failures = running.wait_for("handler_failed", 2)
        running.wait_for("record_dead_lettered")
    urn = message.email.id
    assert dead.body == M.encode(message)  # as it came
    assert dead.properties.message_id == urn
    headers = dead.properties.headers
    assert headers["x-wildboar-error-type"] == "RuntimeError"
    assert headers["x-wildboar-error"] == f"no luck with {urn}"
    assert headers["x-wildboar-attempts"] == 3
    assert headers["x-wildboar-stage"] == "boom"
    assert [f["retry_in"] for f in failures] == [0.05, 0.1]  # doubling
    assert all(f["message"] == urn for f in failures)
    assert broker.drain(out) == []
    assert broker.depth(broker.name("stage.boom")) == 0


def test_a_handler_that_fails_once_passes_on_its_retry(broker: Broker) -> None:
    out = collect(broker, "flaky")
    sent = messages(4)
    with consuming(broker, "flaky", "flaky") as running:
        publish(broker, sent)
        got = broker.get(out, 4)
    assert sorted(ids(got)) == sorted(m.email.id for m in sent)
    assert len(running.events("handler_failed")) == 4
    assert broker.depth(broker.name("dead.flaky")) == 0


def test_a_handler_past_its_budget_counts_as_failed(broker: Broker) -> None:
    out = collect(broker, "slow")
    [message] = messages(1)  # to both stages: each is bound to after.smtp
    with (
        consuming(broker, "slow", "slow", "--timeout", "0.3", "--retries", "1") as sync,
        consuming(broker, "slow_async", "slower", "--timeout", "0.3", "--retries", "0") as nosync,
    ):
        publish(broker, [message])
        [dead] = broker.get(broker.name("dead.slow"), 1, timeout=30)
        [dead_async] = broker.get(broker.name("dead.slower"), 1, timeout=30)
        sync.wait_for("record_dead_lettered")
        nosync.wait_for("record_dead_lettered")
    for item, attempts in ((dead, 2), (dead_async, 1)):
        assert item.properties.headers["x-wildboar-error-type"] == "TimeoutError"
        assert item.properties.headers["x-wildboar-error"] == "ran past its 0.3 s budget"
        assert item.properties.headers["x-wildboar-attempts"] == attempts
    assert broker.drain(out) == []


def test_an_undecodable_body_is_dead_lettered_and_the_next_one_passes(broker: Broker) -> None:
    out = collect(broker, "strict")
    [good] = messages(1)
    with consuming(broker, "passthrough", "strict") as running:
        publish(broker, [])  # the exchanges
        publish_body(broker, b'{"not": "a record"}', M.CONTENT_TYPE_JSON, "urn:uuid:bad")
        publish_body(broker, b"\xff\x00", "text/plain", "")
        publish(broker, [good])
        [item] = broker.get(out, 1)
        dead = broker.get(broker.name("dead.strict"), 2)
        running.wait_for("record_dead_lettered", 2)
        assert running.proc.poll() is None
    assert ids([item]) == [good.email.id]
    first, second = sorted(dead, key=lambda d: d.body)
    assert first.body == b'{"not": "a record"}'
    assert first.properties.headers["x-wildboar-error-type"] == "ValidationError"
    assert first.properties.headers["x-wildboar-attempts"] == 0
    assert second.properties.headers["x-wildboar-error-type"] == "ValueError"
    assert "unknown content type" in second.properties.headers["x-wildboar-error"]


def test_a_result_the_schema_refuses_is_a_failure(broker: Broker) -> None:
    collect(broker, "wrong")
    [message] = messages(1)
    with consuming(broker, "wrong_result", "wrong", "--retries", "0") as running:
        publish(broker, [message])
        [dead] = broker.get(broker.name("dead.wrong"), 1)
        running.wait_for("record_dead_lettered")
    assert dead.properties.headers["x-wildboar-error-type"] == "ValidationError"


def test_a_duplicate_within_the_window_is_acked_without_a_second_publish(broker: Broker) -> None:
    out = collect(broker, "once")
    [message] = messages(1)
    with consuming(broker, "passthrough", "once") as running:
        publish(broker, [message, message, message])
        got = broker.get(out, 1)
        duplicates = running.wait_for("record_duplicate", 2)
    assert ids(got) == [message.email.id]
    assert all(d["message"] == message.email.id for d in duplicates)
    assert broker.depth(broker.name("stage.once")) == 0


def test_term_finishes_the_handlers_in_flight_and_requeues_the_rest(broker: Broker) -> None:
    out = collect(broker, "term")
    sent = messages(8)
    env = {"TEST_HANDLER_SLEEP": "1.5"}
    running = Consumer(
        broker, "tests.consumer.handlers:sleepy", "term", "--concurrency", "3", env=env
    ).connected()
    try:
        publish(broker, sent)
        time.sleep(0.7)  # three handlers are running, five deliveries wait
        started = time.monotonic()
        assert running.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 5
    finally:
        running.kill()
    passed = running.events("record_passed")
    assert len(passed) == 3
    assert all(r["acked"] for r in passed)
    got = broker.get(out, 3)
    assert sorted(ids(got)) == sorted(r["message"] for r in passed)
    assert broker.depth(broker.name("stage.term")) == 5  # back in the queue, none lost
    [stopped] = running.events("consumer_stopped")
    # Six were delivered (the prefetch window: twice the concurrency), three not started.
    assert stopped["passed"] == 3 and stopped["requeued"] == 3


def test_kill_9_mid_batch_loses_nothing_and_the_next_stage_removes_the_duplicates(
    broker: Broker,
) -> None:
    out = collect(broker, "after")
    sent = messages(150)
    window = 8
    env = {"TEST_HANDLER_SLEEP": "0.04"}
    args = ("--concurrency", "4", "--prefetch", str(window))
    with consuming(broker, "passthrough", "after", "--after", "killed") as downstream:
        victim = Consumer(broker, "tests.consumer.handlers:sleepy", "killed", *args, env=env)
        victim.connected()
        publish(broker, sent)
        victim.wait_for("record_passed", 40)
        victim.kill()  # SIGKILL: no goodbye, deliveries in flight unacked
        assert victim.proc.returncode == -signal.SIGKILL
        with consuming(broker, "sleepy", "killed", *args, env=env):
            got = broker.get(out, 150, timeout=120)
    counts = collections.Counter(ids(got))
    assert set(counts) == {m.email.id for m in sent}  # nothing lost
    assert max(counts.values()) == 1  # nothing doubled downstream
    # What the killed consumer published without acking, its successor published again;
    # at most a prefetch window of them, and the next stage's window took them out.
    duplicates = downstream.events("record_duplicate")
    assert len(duplicates) <= window
    assert broker.depth(broker.name("stage.killed")) == 0


def test_check_prints_the_pipeline_without_connecting(broker: Broker) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wildboar.cli", "consume", "--check", "--pipeline",
         "smtp,scam,spf,deliver", "--amqp-url", DEAD_URL],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
        env={"WILDBOAR_AMQP_PREFIX": "p.", "WILDBOAR_CONFIG": "/dev/null", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "exchange p.accepted.inbound.email type=direct durable" in lines
    assert "binding p.accepted.inbound.email -[after.smtp]-> p.stage.scam" in lines
    assert "binding p.accepted.inbound.email -[after.scam]-> p.stage.spf" in lines
    assert "binding p.accepted.inbound.email -[after.spf]-> p.stage.deliver" in lines
    assert "binding p.rejected.inbound.email -[after.spf]-> p.rejected.inbound.email" in lines
    assert 'queue p.dead.spf durable x-queue-type="quorum"' in lines
    assert (
        'queue p.stage.spf durable x-queue-type="quorum" x-dead-letter-exchange=""'
        ' x-dead-letter-routing-key="p.dead.spf" x-delivery-limit=20'
        ' x-dead-letter-strategy="at-least-once" x-overflow="reject-publish"'
    ) in lines
    assert sum(line.startswith("queue ") for line in lines) == 7  # 3 stages, 3 dead, rejected


def test_a_stage_declares_what_check_prints(broker: Broker) -> None:
    args = ["--after", "smtp", "--amqp-url", "amqp://guest:guest@127.0.0.1:5672/%2F"]
    env = {"WILDBOAR_AMQP_PREFIX": broker.prefix, "WILDBOAR_CONFIG": "/dev/null"}
    check = subprocess.run(
        [sys.executable, "-m", "wildboar.cli", "consume", "passthrough", "--stage", "decl",
         "--check", *args], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True,
        env={**env, "PATH": "/usr/bin:/bin"},
    ).stdout  # fmt: skip
    with consuming(broker, "passthrough", "decl"):
        for line in check.splitlines():
            if line.startswith("queue "):
                name = line.split()[1]
                declared = broker.channel.queue_declare(name, passive=True)
                assert declared.method.queue == name


def test_a_bad_handler_or_stage_is_one_line(broker: Broker) -> None:
    for argv, says in (
        (["nosuch"], "cannot import wildboar.consumer.nosuch"),
        (["tests.consumer.handlers:nosuch", "--stage", "x"], "has no nosuch"),
        (["tests.consumer.handlers:passthrough"], "--stage is needed"),
        (["tests.consumer.handlers:passthrough", "--stage", "Bad Name"], "stage 'Bad Name'"),
        (["--check", "--stage", "x", "--pipeline", "smtp,y"], "not one of the pipeline"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "wildboar.cli", "consume", *argv],
            capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
            env={"WILDBOAR_CONFIG": "/dev/null", "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        assert result.returncode == 1, argv
        assert says in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr


def test_credentials_are_never_in_the_log(broker: Broker) -> None:
    secret = "s3cr3t-pw"
    url = f"amqp://guest:{secret}@127.0.0.1:1/%2F"
    running = Consumer(broker, "tests.consumer.handlers:passthrough", "pw", "--amqp-url", url)
    try:
        running.wait_for("amqp_broker_unusable", 2)
    finally:
        running.kill()
    text = "".join(running.stderr)
    assert secret not in text and "127.0.0.1:1" in text
    assert json.loads(running.stderr[-1])["event"] == "amqp_broker_unusable"


def test_a_lost_connection_loses_nothing_and_doubles_nothing_past_the_next_stage(
    broker: Broker,
) -> None:
    stage = f"bounce{uuid.uuid4().hex[:8]}"  # its connection's name is this test's alone
    out = collect(broker, "past")
    sent = messages(60)
    env = {"TEST_HANDLER_SLEEP": "0.05"}
    with (
        consuming(broker, "passthrough", "past", "--after", stage) as downstream,
        consuming(broker, "sleepy", stage, "--concurrency", "4", env=env) as bounced,
    ):
        publish(broker, sent)
        bounced.wait_for("record_passed", 15)
        assert close_connections(f"wildboar consumer {stage} ") == 1
        bounced.wait_for("amqp_connection_lost")
        bounced.wait_for("consumer_connected", 2)
        got = broker.get(out, 60, timeout=120)
        assert downstream.proc.poll() is None
    counts = collections.Counter(ids(got))
    assert set(counts) == {m.email.id for m in sent} and max(counts.values()) == 1
    # What was in flight when the connection went is handled again after the reconnect.
    abandoned = {r["message"] for r in bounced.events("record_abandoned")}
    handled = [r["message"] for r in bounced.events("record_passed")]
    handled += [r["message"] for r in bounced.events("record_duplicate")]
    assert abandoned <= set(handled)
    assert broker.depth(broker.name(f"stage.{stage}")) == 0
