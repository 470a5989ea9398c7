"""Beyond one host: two wildboar servers (two "hosts") publish into one three-node RabbitMQ
cluster with quorum queues; one node stops under load; no message that got 250 is missing.

The cluster is private (``nodes.py``): three nodes on this machine, on their own ports.
Three, because a quorum queue needs a majority: with two nodes, stopping one stops the
queue."""

from __future__ import annotations

import base64
import collections
import re
import time
import uuid
from pathlib import Path

import pika

from tests.amqp.nodes import ClusterFactory, rabbit_cluster
from tests.amqp.test_serve_amqp import connected
from tests.system.harness import Server, serving
from tests.system.test_serve import Load

__all__ = ["rabbit_cluster"]  # the fixture


def wait_accepted(loads: list[Load], at_least: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while any(len(load.accepted) < at_least for load in loads):
        assert time.monotonic() < deadline, [len(load.accepted) for load in loads]
        time.sleep(0.1)


def subjects_in(url: str, queue: str) -> list[str]:
    found: list[str] = []
    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        channel = connection.channel()
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < 1.0:
            method, _, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                connection.sleep(0.05)
                continue
            idle_since = time.monotonic()
            match = re.search(rb'"data":"([^"]*)"', body)
            assert match is not None
            data = base64.b64decode(match.group(1))
            subject = re.search(rb"\r\nSubject: ([^\r]*)\r\n", data)
            assert subject is not None
            found.append(subject.group(1).decode())
    return found


def test_two_hosts_lose_no_250_when_a_cluster_node_stops(
    rabbit_cluster: ClusterFactory, spool_dir: Path
) -> None:
    first, second, third = rabbit_cluster(3)
    prefix = f"wbt-{uuid.uuid4().hex[:12]}."
    common = {"WILDBOAR_AMQP_PREFIX": prefix, "WILDBOAR_AMQP_RECONNECT_MIN": "0.1"}
    host_a = {**common, "WILDBOAR_AMQP_URLS": ",".join(n.url for n in (first, second, third))}
    host_b = {**common, "WILDBOAR_AMQP_URLS": ",".join(n.url for n in (second, first, third))}
    with (
        serving(spool_dir, "--handoff", "amqp", workers=2, env=host_a) as a,
        serving(spool_dir, "--handoff", "amqp", workers=2, env=host_b) as b,
    ):
        servers: list[Server] = [a, b]
        for server in servers:
            connected(server, 2)
        with Load(a.port) as load_a, Load(b.port) as load_b:
            loads = [load_a, load_b]
            wait_accepted(loads, 50)
            first.stop()  # the node host A's workers publish through
            before = [len(load.accepted) for load in loads]
            try:
                wait_accepted(loads, max(before) + 50)
            except AssertionError as stalled:  # say what the brokers did, for the next look
                # Every connection event, and how many publishes each host had refused.
                events = [
                    (name, {k: v for k, v in r.items() if k not in ("time", "level")})
                    for name, server in (("A", a), ("B", b))
                    for r in server.logs
                    if str(r.get("event", "")).startswith("amqp_")
                    and r.get("event") != "amqp_not_published"
                ]
                refused = {
                    name: collections.Counter(
                        str(r.get("why"))
                        for r in server.logs
                        if r.get("event") == "amqp_not_published"
                    )
                    for name, server in (("A", a), ("B", b))
                }
                raise AssertionError(
                    f"{stalled}; before the stop {before}; {events[-60:]}; refused {refused}"
                ) from stalled
        accepted = load_a.accepted + load_b.accepted
        lost = [r for s in servers for r in s.logs if r.get("event") == "amqp_connection_lost"]
        assert lost, "no worker lost its broker: the test proved nothing"
    queued = subjects_in(third.url, prefix + "accepted.inbound.email")
    missing = set(accepted) - set(queued)
    assert not missing, f"{len(missing)} of {len(accepted)} messages that got 250 are missing"
    # A message answered 451 may be there too (stored, its confirm lost): never twice.
    assert len(queued) == len(set(queued))
