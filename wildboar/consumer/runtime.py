"""The consumer runtime: one queue in, a handler, the next stage's exchange out.

Owns: what happens to each delivery (docs/consumers.md "Guarantees"):

1. decoded with the message schema by its content type; a body that does not decode is
   dead-lettered at once (retrying would not change it), with why;
2. a record whose id this process already saw through (its output confirmed) within its
   window of ``dedupe`` ids is acked without running the handler again: a redelivery, or
   a duplicate from upstream;
3. ``handler(event, context)``, within ``timeout`` seconds; its result published with
   confirms (``invoke.route``), and the delivery acked only once the broker confirmed it;
4. a handler that raises or overruns, or a publish the broker refuses, is tried again
   after ``backoff`` seconds, doubling, ``retries`` times; then the delivery is
   dead-lettered to ``dead.<stage>`` with the error's type and text in headers, and acked
   once that is confirmed. Nothing is acked before its outcome is on the broker;
5. a delivery whose connection was lost before its outcome was acked is left alone: the
   broker gives it again (to this process, after it reconnects, or another).

Also: reconnection across ``[amqp] urls`` with back-off, the stop on TERM/INT (no more
deliveries, in-flight handlers finish and are published and acked, the ones not started
go back to the queue), progress in the log every ``progress`` seconds and in systemd's
``STATUS=``, and every record's log line naming its URN.
Must not know: what the handler does.
Security: handlers are the operator's code; their exceptions are logged and put in
dead-letter headers (the broker is trusted), never anywhere a mail sender sees them.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pika

from ..config import Amqp
from ..message import CONTENT_TYPE_JSON, Message, decode, new_urn
from ..pika_link import BrokerError
from ..worker import logs
from . import invoke
from .broker import Broker, Delivery
from .context import Function, LambdaContext, describe_function
from .topology import Stage

#: A connection lost sooner than this after it opened does not reset the back-off.
STABLE_AFTER = 10.0
#: The longest wait between two tries of publishing a dead letter.
DEAD_LETTER_RETRY_MAX = 60.0
#: Exit status when as many sync handlers as ``concurrency`` overran and still run: only
#: a new process can take their threads back (systemd restarts it, ``Restart=on-failure``).
EXIT_STUCK = 75
#: Most text of an exception that goes into a dead letter's headers and the log.
MAX_ERROR_TEXT = 1000


@dataclasses.dataclass(frozen=True)
class Options:
    """``wildboar consume``'s flags (see its ``--help``)."""

    handler: str
    concurrency: int = 4
    prefetch: int = 0  # 0: twice the concurrency
    timeout: float = 30.0
    retries: int = 3
    backoff: float = 1.0
    dedupe: int = 10_000
    progress: float = 10.0
    hostname: str = "localhost"

    @property
    def window(self) -> int:
        return self.prefetch or 2 * self.concurrency


@dataclasses.dataclass(frozen=True)
class Failure:
    type: str
    text: str


@dataclasses.dataclass
class Statistics:
    received: int = 0
    passed: int = 0
    rejected: int = 0
    dropped: int = 0
    duplicates: int = 0
    retries: int = 0
    dead_lettered: int = 0
    requeued: int = 0

    @property
    def handled(self) -> int:
        return self.passed + self.rejected + self.dropped + self.duplicates + self.dead_lettered


class Window:
    """The last ``size`` message ids whose outcome was confirmed, oldest forgotten first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: collections.OrderedDict[str, None] = collections.OrderedDict()

    def __contains__(self, urn: object) -> bool:
        return urn in self._ids

    def add(self, urn: str) -> None:
        self._ids[urn] = None
        self._ids.move_to_end(urn)
        while len(self._ids) > self.size:
            self._ids.popitem(last=False)


class Consumer:
    """One stage's consumer process; ``run`` until stopped."""

    def __init__(
        self, handler: invoke.Handler, stage: Stage, settings: Amqp, options: Options
    ) -> None:
        self.id = new_urn()
        self.handler = handler
        self.stage = stage
        self.options = options
        self.function: Function = describe_function(
            stage.name, self.id, options.hostname, options.timeout
        )
        name = f"wildboar consumer {stage.name} {options.hostname} pid {os.getpid()}"
        self.broker = Broker(settings, name)
        self.stats = Statistics()
        self.exit_code = 0
        self.in_flight = 0
        self._window = Window(options.dedupe)
        self._busy: dict[str, asyncio.Event] = {}
        self._slots = asyncio.Semaphore(options.concurrency)
        # Room for as many overrunning sync handlers as run normally (see EXIT_STUCK).
        self._threads = concurrent.futures.ThreadPoolExecutor(
            2 * options.concurrency, thread_name_prefix=f"handler-{stage.name}"
        )
        self._overrunning: set[concurrent.futures.Future[Any]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()

    @property
    def stuck(self) -> int:
        """Sync handlers still running past their budget."""
        return len(self._overrunning)

    def log(self, event: str, level: int = logging.INFO, **fields: Any) -> None:
        logs.log(event, level, stage=self.stage.name, consumer=self.id, **fields)

    # --- the process ---------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, self._stop.set)
        self.log(
            "consumer_started",
            handler=self.options.handler,
            queue=self.stage.queue,
            after=self.stage.after,
            concurrency=self.options.concurrency,
            prefetch=self.options.window,
            log_stream=self.function.log_stream_name,
        )
        notify("READY=1")
        background = [
            loop.create_task(self._keep_connected(), name="consumer connection"),
            loop.create_task(self._report_progress(), name="consumer progress"),
        ]
        await self._stop.wait()
        await self._stop_gracefully(background)
        return self.exit_code

    async def _stop_gracefully(self, background: list[asyncio.Task[None]]) -> None:
        notify("STOPPING=1")
        self.log("consumer_stopping", in_flight=self.in_flight, waiting=len(self._tasks))
        await self.broker.cancel()
        while self._tasks:
            await asyncio.wait(set(self._tasks))
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.broker.close()
        self._threads.shutdown(wait=False, cancel_futures=True)
        self.log("consumer_stopped", **self._totals())

    async def _keep_connected(self) -> None:
        delay = self.broker.settings.reconnect_min
        while not self._stop.is_set():
            try:
                await self._connect()
            except (BrokerError, TimeoutError) as error:
                self.broker.disconnect("set-up failed")
                why = str(error) or "timed out"
                self.log("amqp_broker_unusable", logging.WARNING, why=why, retry_in=delay)
                await self._pause(delay)
                delay = min(delay * 2, self.broker.settings.reconnect_max)
                continue
            opened = time.monotonic()
            assert self.broker.lost is not None
            why = await self.broker.lost
            self.log("amqp_connection_lost", logging.WARNING, broker=self.broker.name, why=why)
            self.broker.disconnect(why)
            if time.monotonic() - opened >= STABLE_AFTER:
                delay = self.broker.settings.reconnect_min
            await self._pause(delay)
            delay = min(delay * 2, self.broker.settings.reconnect_max)

    async def _connect(self) -> None:
        await self.broker.connect()
        await self.broker.set_up(self.stage.topology(), self.stage.queue, self.options.window)
        await self.broker.consume(self._on_delivery)
        self.log("consumer_connected", broker=self.broker.name, queue=self.stage.queue)

    async def _pause(self, delay: float) -> bool:
        """Sleep ``delay`` seconds, or less if the consumer is asked to stop: False then."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stop.wait()
        return not self._stop.is_set()

    async def _report_progress(self) -> None:
        seen = dataclasses.replace(self.stats)
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.options.progress)
            now = time.monotonic()
            handled = self.stats.handled - seen.handled
            if handled or self.in_flight or self.stats.retries != seen.retries:
                rate = round(handled / (now - last), 2)
                self.log("consumer_progress", rate=rate, in_flight=self.in_flight, **self._totals())
                notify(
                    f"STATUS={rate}/s, {self.in_flight} in flight, {self.stats.handled} handled,"
                    f" {self.stats.retries} retries, {self.stats.dead_lettered} dead-lettered"
                )
            seen, last = dataclasses.replace(self.stats), now

    def _totals(self) -> dict[str, int]:
        return {**dataclasses.asdict(self.stats), "stuck": self.stuck}

    # --- one delivery ----------------------------------------------------------------

    def _on_delivery(self, delivery: Delivery) -> None:
        self.stats.received += 1
        if self._stop.is_set():
            self.broker.nack(delivery)
            return
        task = asyncio.get_running_loop().create_task(self._handle(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, delivery: Delivery) -> None:
        async with self._slots:
            if self._stop.is_set():  # not started: back to the queue
                self.broker.nack(delivery)
                self.stats.requeued += 1
                return
            self.in_flight += 1
            try:
                await self._process(delivery)
            except Exception as error:  # a bug of ours: the broker gives it again
                self.log("consumer_error", logging.ERROR, why=f"{type(error).__name__}: {error}")
                self.broker.nack(delivery)
            finally:
                self.in_flight -= 1

    async def _process(self, delivery: Delivery) -> None:
        content_type = delivery.properties.content_type or CONTENT_TYPE_JSON
        try:
            message = decode(delivery.body, content_type)
        except (msgspec.MsgspecError, ValueError) as error:
            urn = delivery.properties.message_id or ""
            failure = Failure(type(error).__name__, _text(error))
            self.log("record_undecodable", logging.ERROR, message=urn, why=failure.text)
            await self._dead_letter(delivery, urn, failure, attempts=0)
            return
        urn = message.email.id
        async with self._claim(urn) as fresh:
            if not fresh:
                self.stats.duplicates += 1
                acked = self.broker.ack(delivery)
                self.log(
                    "record_duplicate", message=urn, redelivered=delivery.redelivered, acked=acked
                )
                return
            await self._attempts(delivery, message, content_type)

    @contextlib.asynccontextmanager
    async def _claim(self, urn: str) -> AsyncIterator[bool]:
        """Whether ``urn`` is new to this process, once no other delivery of it is being
        handled (a duplicate arriving meanwhile waits for the first one's outcome)."""
        while urn in self._busy:
            await self._busy[urn].wait()
        if urn in self._window:
            yield False
            return
        done = self._busy[urn] = asyncio.Event()
        try:
            yield True
        finally:
            del self._busy[urn]
            done.set()

    async def _attempts(self, delivery: Delivery, message: Message, content_type: str) -> None:
        urn = message.email.id
        retries, attempt = self.options.retries, 0
        while True:
            attempt += 1
            failure = await self._attempt(delivery, message, content_type)
            if failure is None:
                return
            if attempt > retries:
                break
            delay = self.options.backoff * 2 ** (attempt - 1)
            self.stats.retries += 1
            self.log(
                "handler_failed",
                logging.WARNING,
                message=urn,
                attempt=attempt,
                error_type=failure.type,
                why=failure.text,
                retry_in=delay,
            )
            if not await self._pause(delay):
                self.broker.nack(delivery)
                self.stats.requeued += 1
                self.log("record_requeued", message=urn, why="stopping")
                return
        await self._dead_letter(delivery, urn, failure, attempts=attempt)

    async def _attempt(
        self, delivery: Delivery, message: Message, content_type: str
    ) -> Failure | None:
        """One call of the handler and the publish of its outcome: None when done (acked,
        or left to the broker to give again), else the failure."""
        urn = message.email.id
        if not self.broker.owns(delivery):
            self.log("record_abandoned", logging.WARNING, message=urn, why="connection lost")
            return None
        context = LambdaContext(self.function, urn)
        try:
            result = await invoke.call(
                self.handler,
                msgspec.to_builtins(message),
                context,
                timeout=self.options.timeout,
                threads=self._threads,
                on_overrun=self._overran,
            )
            route = invoke.route(result)
        except invoke.Overran as error:
            return Failure("TimeoutError", _text(error))
        except Exception as error:
            return Failure(type(error).__name__, _text(error))
        if route is None:
            self._done(delivery, urn, "record_dropped")
            self.stats.dropped += 1
            return None
        exchange = self.stage.rejected if route.rejected else self.stage.accepted
        kind = "rejected" if route.rejected else "accepted"
        properties = _properties(content_type, route.message.email.id, kind, {})
        body = route.body(content_type)
        why = await self.broker.publish(exchange, self.stage.routing_key, body, properties)
        if why is not None:
            return Failure("PublishError", why)
        if route.rejected:
            self.stats.rejected += 1
            rejection = route.message.rejection
            assert rejection is not None
            self._done(delivery, urn, "record_rejected", why=rejection.text)
        else:
            self.stats.passed += 1
            self._done(delivery, urn, "record_passed", routing_key=self.stage.routing_key)
        return None

    def _done(self, delivery: Delivery, urn: str, event: str, **fields: Any) -> None:
        """The outcome is on the broker (or there is none): remember, ack."""
        if urn:
            self._window.add(urn)
        acked = self.broker.ack(delivery)
        self.log(event, message=urn, acked=acked, **fields)

    async def _dead_letter(
        self, delivery: Delivery, urn: str, failure: Failure, attempts: int
    ) -> None:
        """To ``dead.<stage>``, the body as it came, until the broker confirms it (or the
        connection is lost: the broker gives the delivery again)."""
        headers = {
            **delivery.headers,
            "x-wildboar-stage": self.stage.name,
            "x-wildboar-queue": self.stage.queue,
            "x-wildboar-error-type": failure.type,
            "x-wildboar-error": failure.text,
            "x-wildboar-attempts": attempts,
        }
        content_type = delivery.properties.content_type or CONTENT_TYPE_JSON
        properties = _properties(content_type, urn, "dead-letter", headers)
        delay = self.options.backoff
        while self.broker.owns(delivery):
            queue = self.stage.dead_letters
            why = await self.broker.publish("", queue, delivery.body, properties)
            if why is None:
                self.stats.dead_lettered += 1
                self._done(
                    delivery,
                    urn,
                    "record_dead_lettered",
                    queue=queue,
                    error_type=failure.type,
                    why=failure.text,
                    attempts=attempts,
                )
                return
            self.log("dead_letter_failed", logging.ERROR, message=urn, why=why, retry_in=delay)
            if not await self._pause(delay):
                self.broker.nack(delivery)
                return
            delay = min(delay * 2, DEAD_LETTER_RETRY_MAX)
        self.log("record_abandoned", logging.WARNING, message=urn, why="connection lost")

    def _overran(self, future: concurrent.futures.Future[Any]) -> None:
        """A sync handler past its budget: its thread runs on; too many, and we stop."""
        loop = asyncio.get_running_loop()
        self._overrunning.add(future)
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(self._overrunning.discard, f))
        if len(self._overrunning) >= self.options.concurrency and not self._stop.is_set():
            self.log("handlers_stuck", logging.ERROR, stuck=len(self._overrunning))
            self.exit_code = EXIT_STUCK
            self._stop.set()


def _properties(
    content_type: str, message_id: str, kind: str, headers: dict[str, Any]
) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type=content_type,
        delivery_mode=2,
        message_id=message_id or None,
        timestamp=int(time.time()),
        app_id="wildboar",
        type=kind,
        headers=headers or None,
    )


def _text(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text[:MAX_ERROR_TEXT]


def notify(state: str) -> None:
    """Tell systemd (``Type=notify``), when it is listening."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    import sdnotify  # noqa: PLC0415 (only under systemd)

    sdnotify.SystemdNotifier().notify(state)
