"""Raw publish-with-confirms rate into a RabbitMQ quorum queue: the yardstick for the AMQP handoff.

What it measures: how many messages per second one plain pika publisher can hand durably
to the broker, that is, published *and* confirmed. This is the ceiling the SMTP server's
end-to-end rate (smtp-source -> wildboar -> RabbitMQ) is later compared with: no SMTP, no
parsing, no spool, only the AMQP leg the server must also pay for.

How: pika's ``AsyncioConnection`` on a uvloop event loop, one connection, one channel in
confirm mode. Each run declares its own durable direct exchange and quorum queue (names
with a uuid suffix), binds them, and deletes both at the end. Every message is the same
random body of ``--size`` bytes, published persistent (``delivery_mode=2``) with
``mandatory=True`` and its own ``message_id``. At most ``--in-flight`` messages are
published but not yet confirmed; the publisher is driven by the broker's confirms (each
Basic.Ack / Basic.Nack, honouring ``multiple``, tops the window up again), so no task or
future is created per message. The clock runs from the first publish to the last confirm;
connecting, declaring and deleting are outside it. Afterwards a passive declare reads how
many messages the queue holds, which must equal those published minus nacked and
returned.

CPU over the timed section, as percent of one CPU: this process's (``time.process_time``);
when the broker runs on this machine, the broker's (the process listening on the URL's
port, ``/proc/PID/stat`` utime + stime); and the rest of the machine's (``/proc/stat``
busy time minus those two), which shows when something else competed for the CPUs.
Runs are separated by a short pause so the broker's background work after one (flushing,
deleting the queue) falls outside the next.

Every run is bounded: ``--count`` messages and a hard ``--timeout`` (which also covers
connecting and declaring; deleting has its own short limit).

    python -m bench.amqp_raw                                  # 4 KB and 100 KB, window 256
    python -m bench.amqp_raw --size 4096 --count 20000 --in-flight 256
    python -m bench.amqp_raw --in-flight 1 --in-flight 16 --in-flight 256 --in-flight 1024
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pika
import uvloop
from pika.adapters.asyncio_connection import AsyncioConnection

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
KB = 1024
DEFAULT_SIZES = (4 * KB, 100 * KB)
DEFAULT_COUNT = 20_000
DEFAULT_IN_FLIGHT = 256
#: Seconds one run may take, connecting and declaring included.
DEFAULT_TIMEOUT = 300.0
#: Seconds the clean-up (deleting the queue and exchange, closing) may take.
TEARDOWN_TIMEOUT = 30.0
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
#: Seconds between runs, for the broker to finish the previous one's work.
PAUSE = 2.0


class BenchError(Exception):
    """The broker or the connection misbehaved: the run has no valid figure."""


@dataclass(frozen=True)
class Result:
    size: int
    in_flight: int
    #: Messages published and settled (acked or nacked) by the broker.
    messages: int
    #: From the first publish to the last confirm.
    seconds: float
    #: messages / seconds.
    rate: float
    nacked: int
    returned: int
    #: Messages in the queue after the run, by a passive declare.
    queued: int
    #: CPU seconds of this process over the timed section.
    cpu_client: float
    #: CPU seconds of the broker over the timed section; None when not measured.
    cpu_broker: float | None
    #: CPU seconds of the whole machine (every CPU, every process) over the timed section.
    cpu_machine: float

    @property
    def expected_queued(self) -> int:
        return self.messages - self.nacked - self.returned


class Settled:
    """Which delivery tags the broker has settled, for a confirm-mode channel.

    Tags are 1, 2, 3, ... in publish order. Every tag at or below ``floor`` is settled;
    ``above`` holds the tags above it settled one by one, out of order.
    """

    def __init__(self) -> None:
        self.floor = 0
        self.above: set[int] = set()
        self.count = 0

    def settle(self, tag: int, multiple: bool, published: int) -> int:
        """Settle ``tag`` (with ``multiple``, also every unsettled tag below it); return how
        many tags this settled. A tag that was never published or is already settled (with
        ``multiple``, one at or below the floor) is a protocol error."""
        if tag > published or tag <= self.floor or (tag in self.above and not multiple):
            raise BenchError(f"confirm for delivery tag {tag} (multiple={multiple}) unexpected")
        if multiple:
            early = {t for t in self.above if t <= tag}
            newly = tag - self.floor - len(early)
            self.above -= early
            self.floor = tag
        else:
            self.above.add(tag)
            newly = 1
        while self.floor + 1 in self.above:
            self.floor += 1
            self.above.remove(self.floor)
        self.count += newly
        return newly


def broker_pid(url: str) -> int | None:
    """The pid of the process listening on ``url``'s port (the local RabbitMQ), when ``url``
    points at this machine; otherwise, or when it cannot be told, None.

    By the listening socket, not by name: other Erlang VMs (``rabbitmqctl``, brokers of
    tests) may run beside the broker."""
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK:
        return None
    port = parts.port or 5672
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text(encoding="ascii").splitlines()[1:]:
                row = line.split()
                if row[3] == "0A" and int(row[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                    sockets.add(f"socket:[{row[9]}]")
    owners = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if any(os.readlink(fd) in sockets for fd in (entry / "fd").iterdir()):
                    owners.add(int(entry.name))
    return owners.pop() if len(owners) == 1 else None


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> float:
    """CPU seconds all CPUs of this machine have been busy so far (not idle, not iowait)."""
    with open("/proc/stat", encoding="ascii") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(
            int, stat.readline().split()[1:9]
        )
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Cpu:
    """CPU seconds used so far: by this process, the broker (when known), the machine."""

    client: float
    broker: float | None
    machine: float

    @classmethod
    def now(cls, broker: int | None) -> Cpu:
        return cls(
            time.process_time(),
            process_cpu(broker) if broker is not None else None,
            machine_cpu(),
        )

    def __sub__(self, other: Cpu) -> Cpu:
        broker = (
            self.broker - other.broker
            if self.broker is not None and other.broker is not None
            else None
        )
        return Cpu(self.client - other.client, broker, self.machine - other.machine)


class Publisher:
    """One run: pika's callbacks drive it, the coroutine methods wait on futures."""

    def __init__(self, url: str, size: int, count: int, in_flight: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.params = pika.URLParameters(url)
        self.count = count
        self.in_flight = in_flight
        tag = uuid.uuid4().hex[:12]
        self.exchange = f"bench.amqp_raw.{tag}"
        self.queue = f"bench.amqp_raw.{tag}"
        self.routing_key = "bench"
        self.id_prefix = f"{tag}-"
        self.body = os.urandom(size)
        self.connection: Any = None
        self.channel: Any = None
        self.declared: list[str] = []  # "exchange", "queue": what teardown must delete
        self.published = 0
        self.settled = Settled()
        self.nacked = 0
        self.returned = 0
        self.blocked = False
        self.pending: set[asyncio.Future[Any]] = set()
        self.error: BaseException | None = None
        self.done: asyncio.Future[None] = self.loop.create_future()
        # A failure before publishing leaves ``done`` unawaited: retrieve it, quietly.
        self.done.add_done_callback(lambda f: f.cancelled() or f.exception())

    # -- futures for pika's callbacks ------------------------------------------------------

    def future(self) -> asyncio.Future[Any]:
        """A future that fails when the connection or channel closes under it."""
        fut: asyncio.Future[Any] = self.loop.create_future()
        if self.error is not None:
            fut.set_exception(self.error)
        self.pending.add(fut)
        fut.add_done_callback(self.pending.discard)
        return fut

    @staticmethod
    def resolver(fut: asyncio.Future[Any]) -> Callable[..., None]:
        """A pika callback that resolves ``fut`` with its last argument."""

        def callback(*args: Any) -> None:
            if not fut.done():
                fut.set_result(args[-1] if args else None)

        return callback

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        for fut in [*self.pending, self.done]:
            if not fut.done():
                fut.set_exception(error)

    # -- pika callbacks --------------------------------------------------------------------

    def on_connection_closed(self, _connection: Any, reason: BaseException) -> None:
        self.fail(BenchError(f"connection closed: {reason!r}"))

    def on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        if channel is self.channel:
            self.fail(BenchError(f"channel closed: {reason!r}"))

    def on_blocked(self, _connection: Any, _frame: Any) -> None:
        self.blocked = True

    def on_unblocked(self, _connection: Any, _frame: Any) -> None:
        self.blocked = False

    def on_return(self, _channel: Any, _method: Any, _properties: Any, _body: bytes) -> None:
        self.returned += 1

    def on_confirm(self, frame: Any) -> None:
        method = frame.method
        try:
            newly = self.settled.settle(method.delivery_tag, method.multiple, self.published)
        except BenchError as error:
            self.fail(error)
            return
        if isinstance(method, pika.spec.Basic.Nack):
            self.nacked += newly
        if self.settled.count == self.count:
            if not self.done.done():
                self.done.set_result(None)
        else:
            self.fill()

    def fill(self) -> None:
        """Publish until the window is full or every message is out."""
        channel = self.channel
        limit = min(self.count, self.settled.count + self.in_flight)
        while self.published < limit:
            self.published += 1
            properties = pika.BasicProperties(
                delivery_mode=2,
                content_type="application/octet-stream",
                message_id=f"{self.id_prefix}{self.published}",
            )
            channel.basic_publish(
                self.exchange, self.routing_key, self.body, properties, mandatory=True
            )

    # -- the steps -------------------------------------------------------------------------

    async def connect(self) -> None:
        fut = self.future()

        def on_open_error(_connection: Any, error: BaseException | str) -> None:
            if not fut.done():
                fut.set_exception(BenchError(f"cannot connect: {error!r}"))

        self.connection = AsyncioConnection(
            self.params,
            on_open_callback=self.resolver(fut),
            on_open_error_callback=on_open_error,
            on_close_callback=self.on_connection_closed,
            custom_ioloop=self.loop,
        )
        await fut
        self.connection.add_on_connection_blocked_callback(self.on_blocked)
        self.connection.add_on_connection_unblocked_callback(self.on_unblocked)

    async def open_channel(self) -> Any:
        fut = self.future()
        self.connection.channel(on_open_callback=self.resolver(fut))
        channel = await fut
        channel.add_on_close_callback(self.on_channel_closed)
        return channel

    async def setup(self) -> None:
        self.channel = await self.open_channel()
        self.channel.add_on_return_callback(self.on_return)
        fut = self.future()
        self.channel.confirm_delivery(
            ack_nack_callback=self.on_confirm, callback=self.resolver(fut)
        )
        await fut
        fut = self.future()
        self.channel.exchange_declare(
            exchange=self.exchange,
            exchange_type="direct",
            durable=True,
            callback=self.resolver(fut),
        )
        await fut
        self.declared.append("exchange")
        fut = self.future()
        self.channel.queue_declare(
            queue=self.queue,
            durable=True,
            arguments={"x-queue-type": "quorum"},
            callback=self.resolver(fut),
        )
        await fut
        self.declared.append("queue")
        fut = self.future()
        self.channel.queue_bind(
            queue=self.queue,
            exchange=self.exchange,
            routing_key=self.routing_key,
            callback=self.resolver(fut),
        )
        await fut

    async def publish(self) -> None:
        self.fill()
        await self.done

    async def queue_depth(self) -> int:
        fut = self.future()
        self.channel.queue_declare(queue=self.queue, passive=True, callback=self.resolver(fut))
        frame = await fut
        return int(frame.method.message_count)

    async def teardown(self) -> None:
        """Delete what was declared (on a fresh channel if the broker closed ours), then
        close the connection."""
        connection = self.connection
        if connection is None or connection.is_closed:
            return
        if connection.is_open and self.declared:
            if self.channel is None or not self.channel.is_open:
                self.error = None  # the failure is recorded; the clean-up needs futures
                self.channel = await self.open_channel()
            if "queue" in self.declared:
                fut = self.future()
                self.channel.queue_delete(queue=self.queue, callback=self.resolver(fut))
                await fut
            fut = self.future()
            self.channel.exchange_delete(exchange=self.exchange, callback=self.resolver(fut))
            await fut
            self.declared.clear()
        closed: asyncio.Future[Any] = self.loop.create_future()
        self.connection.add_on_close_callback(self.resolver(closed))
        if not connection.is_closing:
            connection.close()
        await closed


async def publish_rate(
    url: str,
    size: int,
    count: int,
    in_flight: int,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    broker: int | None = None,
) -> Result:
    """Publish ``count`` messages of ``size`` bytes with at most ``in_flight`` unconfirmed,
    into a fresh quorum queue at ``url``; the rate counts from the first publish to the last
    confirm. ``broker``: the pid of a local broker whose CPU time to measure."""
    if size < 0 or count < 1 or in_flight < 1:
        raise ValueError("size >= 0, count >= 1 and in_flight >= 1 are required")
    run = Publisher(url, size, count, in_flight)
    try:
        async with asyncio.timeout(timeout):
            await run.connect()
            await run.setup()
            cpu_before = Cpu.now(broker)
            start = time.perf_counter()
            await run.publish()
            seconds = time.perf_counter() - start
            cpu = Cpu.now(broker) - cpu_before
            queued = await run.queue_depth()
    except TimeoutError as error:
        blocked = "; the broker was blocking the connection" if run.blocked else ""
        raise BenchError(
            f"timed out after {timeout:g} s: {run.published} published,"
            f" {run.settled.count} settled{blocked}"
        ) from error
    finally:
        try:
            async with asyncio.timeout(TEARDOWN_TIMEOUT):
                await run.teardown()
        except Exception as error:
            print(
                f"warning: clean-up failed ({error!r}); exchange and queue {run.queue} may remain",
                file=sys.stderr,
            )
    return Result(
        size=size,
        in_flight=in_flight,
        messages=run.settled.count,
        seconds=seconds,
        rate=run.settled.count / seconds,
        nacked=run.nacked,
        returned=run.returned,
        queued=queued,
        cpu_client=cpu.client,
        cpu_broker=cpu.broker,
        cpu_machine=cpu.machine,
    )


def run(
    size: int,
    count: int,
    in_flight: int,
    url: str = DEFAULT_URL,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    measure_broker: bool = True,
) -> Result:
    """``publish_rate`` on a fresh uvloop event loop."""
    broker = broker_pid(url) if measure_broker else None
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(publish_rate(url, size, count, in_flight, timeout=timeout, broker=broker))


def percent(cpu: float | None, seconds: float) -> str:
    return "-" if cpu is None else f"{100 * cpu / seconds:.0f}%"


COLUMNS = (
    "size",
    "in flight",
    "messages",
    "seconds",
    "msg/s",
    "MB/s",
    "nacked",
    "returned",
    "queued",
    "cpu py",
    "cpu beam",
    "cpu other",
    "wall s",
)


def table(rows: Sequence[tuple[Result, float]]) -> str:
    cells = [
        (
            f"{r.size // KB} KB" if r.size % KB == 0 else f"{r.size} B",
            str(r.in_flight),
            f"{r.messages:,}",
            f"{r.seconds:.2f}",
            f"{r.rate:,.0f}",
            f"{r.rate * r.size / 1e6:.1f}",
            str(r.nacked),
            str(r.returned),
            f"{r.queued:,}" + ("" if r.queued == r.expected_queued else " MISMATCH"),
            percent(r.cpu_client, r.seconds),
            percent(r.cpu_broker, r.seconds),
            percent(max(0.0, r.cpu_machine - r.cpu_client - (r.cpu_broker or 0)), r.seconds),
            f"{wall:.2f}",
        )
        for r, wall in rows
    ]
    widths = [max(len(c[i]) for c in [COLUMNS, *cells]) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in [COLUMNS, *cells]
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.amqp_raw",
        description="Raw pika publish-with-confirms rate into a RabbitMQ quorum queue.",
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="AMQP URL (default: %(default)s)")
    parser.add_argument(
        "--size",
        type=int,
        action="append",
        help="message body in bytes; repeatable (default: 4096 and 102400)",
    )
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="messages per run")
    parser.add_argument(
        "--in-flight",
        type=int,
        action="append",
        help=f"unconfirmed messages at most; repeatable (default: {DEFAULT_IN_FLIGHT})",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="hard limit per run, seconds"
    )
    args = parser.parse_args(argv)
    sizes: list[int] = args.size or list(DEFAULT_SIZES)
    windows: list[int] = args.in_flight or [DEFAULT_IN_FLIGHT]
    if min(sizes) < 0 or min(windows) < 1 or args.count < 1 or args.timeout <= 0:
        parser.error("sizes must be >= 0; --in-flight, --count and --timeout positive")
    rows: list[tuple[Result, float]] = []
    failed = 0
    for n, (size, in_flight) in enumerate(itertools.product(sizes, windows)):
        if n:
            time.sleep(PAUSE)
        began = time.perf_counter()
        try:
            result = run(size, args.count, in_flight, args.url, timeout=args.timeout)
        except BenchError as error:
            print(f"size {size}, in flight {in_flight}: {error}", file=sys.stderr)
            failed += 1
            continue
        rows.append((result, time.perf_counter() - began))
        print(f"size {size}, in flight {in_flight}: {result.rate:,.0f} msg/s", file=sys.stderr)
    print(
        f"pika {pika.__version__}, uvloop {metadata.version('uvloop')}, quorum queue, persistent,"
        f" mandatory, confirms; {os.cpu_count()} CPUs"
    )
    print(
        "cpu: percent of one CPU over the timed section (py: this process; beam: the broker;"
        " other: the rest of the machine, beam included when it was not found);"
        " wall s: the run with set-up and clean-up"
    )
    print(table(rows))
    mismatched = sum(r.queued != r.expected_queued for r, _ in rows)
    return 1 if failed or mismatched else 0


if __name__ == "__main__":
    sys.exit(main())
