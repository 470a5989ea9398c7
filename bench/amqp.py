"""End-to-end messages per second into RabbitMQ (``make bench``, after ``bench.server``).

In one run, for 4 KB and 100 KB messages:

- **raw**: the publish-with-confirms rate of a plain pika asyncio publisher keeping 256
  messages in flight into a quorum queue (``bench.amqp_raw``): the AMQP leg alone, the
  yardstick;
- **python floor amqp x1 / x2**: smtp-source through ``bench/floor_peer.py --amqp-url``,
  canned SMTP replies that publish each message's content with confirms before its
  ``250``: what the AMQP leg costs a Python SMTP server that does nothing else;
- **wildboar amqp x1 / x2**: Postfix's ``smtp-source`` (20 and 200 sessions, many messages
  per connection) through ``wildboar serve --handoff amqp`` with 1 and 2 workers into the
  default quorum queue of a private exchange prefix. Every ``250`` waited for the broker's
  confirm. After each cell the queue must hold exactly the messages smtp-source counted
  (else the cell says "mismatch"), then it is purged.

Target (issue "AMQP handoff"): wildboar's rate at least 0.7 times the raw rate. The broker
is the machine's RabbitMQ on 127.0.0.1:5672, on the same two CPUs as the load generator and
the server, as a consumer of its CPU like them.

Output: a table on stdout and ``bench/results/amqp.{csv,json,png}``.

    python -m bench.amqp
    python -m bench.amqp --sizes 4096 --sessions 20
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika

from . import amqp_raw, output
from .server import (
    BUDGET,
    MAX_MESSAGES,
    RESULTS,
    TIMEOUT,
    Options,
    Scenario,
    environment,
    measure,
)
from .targets import Floor, TargetError, Wildboar

URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
KB = 1024
SIZES = (4 * KB, 100 * KB)
SESSIONS = (20, 200)
WORKERS = (1, 2)
#: The raw publisher's window of unconfirmed messages.
RAW_IN_FLIGHT = 256
TARGET_VS_RAW = 0.7
SECONDS = 3.0


@dataclass(frozen=True)
class Result:
    target: str
    workers: int | None
    size: int
    sessions: int | None
    messages: int
    seconds: float
    msg_per_s: float | None
    vs_raw: float | None
    server_cpu_us_per_msg: float | None
    status: str
    note: str


def _check_and_purge(queue: str, expected: int) -> str | None:
    """The queue must hold what smtp-source counted since the last purge; then empty it."""
    with pika.BlockingConnection(pika.URLParameters(URL)) as connection:
        channel = connection.channel()
        held = channel.queue_declare(queue, passive=True).method.message_count
        channel.queue_purge(queue)
    if held != expected:
        return f"{expected:,} counted by smtp-source, {held:,} in the queue"
    return None


def _delete(queues: Sequence[str], exchanges: Sequence[str]) -> None:
    with pika.BlockingConnection(pika.URLParameters(URL)) as connection:
        channel = connection.channel()
        for queue in queues:
            channel.queue_delete(queue)
        for exchange in exchanges:
            channel.exchange_delete(exchange)


class WildboarAmqp(Wildboar):
    """``wildboar serve --handoff amqp`` publishing under a prefix of its own."""

    def __init__(self, workers: int) -> None:
        super().__init__("amqp", workers)
        self.prefix = f"wbbench-{uuid.uuid4().hex[:10]}."
        self.queue = self.prefix + "accepted.inbound.email"
        self.counted = 0  # messages smtp-source counted before the last purge

    def _env(self) -> dict[str, str]:
        env = super()._env()
        env.update(WILDBOAR_AMQP_URLS=URL, WILDBOAR_AMQP_PREFIX=self.prefix)
        env.update({k: v for k, v in os.environ.items() if k.startswith("WILDBOAR_AMQP_")})
        return env

    def check_and_purge(self) -> str | None:
        mismatch = _check_and_purge(self.queue, self.delivered - self.counted)
        self.counted = self.delivered
        return mismatch

    def remove_topology(self) -> None:
        names = [
            f"{self.prefix}{n}.{w}.email"
            for n in ("accepted", "rejected")
            for w in ("inbound", "outbound")
        ]
        _delete(queues=names, exchanges=[*names, self.prefix + "events"])


class FloorAmqp(Floor):
    """The Python floor (``bench/floor_peer.py``) publishing each message's content, with
    confirms, before its ``250``: the least a Python SMTP server does to hand mail durably
    to RabbitMQ. Into a quorum queue of its own, like wildboar's."""

    name = "python floor amqp"

    def __init__(self, processes: int) -> None:
        super().__init__(processes)
        self.queue = f"wbbench-floor-{uuid.uuid4().hex[:10]}"
        self.counted = 0

    def start(self) -> None:
        with pika.BlockingConnection(pika.URLParameters(URL)) as connection:
            channel = connection.channel()
            channel.exchange_declare(self.queue, "direct", durable=True)
            channel.queue_declare(self.queue, durable=True, arguments={"x-queue-type": "quorum"})
            channel.queue_bind(self.queue, self.queue, "after.smtp")
        super().start()

    def _argv(self) -> list[str]:
        return [*super()._argv(), "--amqp-url", URL, "--exchange", self.queue]

    def check_and_purge(self) -> str | None:
        mismatch = _check_and_purge(self.queue, self.delivered - self.counted)
        self.counted = self.delivered
        return mismatch

    def remove_topology(self) -> None:
        _delete(queues=[self.queue], exchanges=[self.queue])


def raw(size: int, seconds: float) -> Result:
    """The raw publisher, with a probe to size the measured run to about ``seconds``."""
    try:
        probe = amqp_raw.run(size, 500, RAW_IN_FLIGHT, URL)
        count = max(1000, min(MAX_MESSAGES, round(probe.rate * seconds)))
        result = amqp_raw.run(size, count, RAW_IN_FLIGHT, URL)
    except (amqp_raw.BenchError, OSError, pika.exceptions.AMQPError) as error:
        return Result("raw pika", None, size, None, 0, 0.0, None, None, None, "failed", str(error))
    lost = result.messages - result.nacked - result.returned - result.queued
    note = f"{lost} confirmed but not queued" if lost else ""
    return Result(
        target="raw pika",
        workers=None,
        size=size,
        sessions=None,
        messages=result.messages,
        seconds=result.seconds,
        msg_per_s=result.rate,
        vs_raw=1.0,
        server_cpu_us_per_msg=None,
        status="mismatch" if lost else "ok",
        note=note,
    )


def through(
    target: WildboarAmqp | FloorAmqp,
    size: int,
    sessions_list: Sequence[int],
    options: Options,
    raw_rate: float | None,
) -> list[Result]:
    """smtp-source through ``target`` into its queue, each of ``sessions_list``."""
    results = []
    workers = target.workers
    try:
        target.start()
        for sessions in sessions_list:
            cell = measure(target, Scenario(size, sessions, True), options)
            mismatch = target.check_and_purge()
            status = "mismatch" if mismatch and cell.status == "ok" else cell.status
            rate = cell.msg_per_s if status == "ok" else None
            results.append(
                Result(
                    target=target.name,
                    workers=workers,
                    size=size,
                    sessions=sessions,
                    messages=cell.messages,
                    seconds=cell.seconds,
                    msg_per_s=rate,
                    vs_raw=rate / raw_rate if rate and raw_rate else None,
                    server_cpu_us_per_msg=cell.server_cpu_us_per_msg,
                    status=status,
                    note="; ".join(n for n in (cell.note, mismatch or "") if n),
                )
            )
            _progress(results[-1])
    except TargetError as error:
        results.append(
            Result(
                target.name,
                workers,
                size,
                None,
                0,
                0.0,
                None,
                None,
                None,
                "failed",
                str(error).splitlines()[0],
            )
        )
    finally:
        target.stop()
        try:
            target.remove_topology()
        except pika.exceptions.AMQPError as error:
            print(f"warning: clean-up of {target.queue}: {error!r}", file=sys.stderr)
    return results


def _progress(r: Result) -> None:
    rate = f"{r.msg_per_s:9,.0f} msg/s" if r.msg_per_s else f"{r.status:>15}"
    print(f"  {_label(r):<18} {_title(r):<24} {r.messages:>7,} {rate}  {r.note}", flush=True)


def _label(r: Result) -> str:
    return r.target if r.workers is None else f"{r.target} x{r.workers}"


def _title(r: Result) -> str:
    sessions = "256 in flight" if r.sessions is None else f"{r.sessions} sessions"
    return f"{r.size // KB} KB, {sessions}"


def table(results: Sequence[Result]) -> str:
    head = ("target", "size", "load", "messages", "seconds", "msg/s", "x raw", "srv us/msg")
    rows = [head] + [
        (
            _label(r),
            f"{r.size // KB} KB",
            "256 in flight" if r.sessions is None else f"{r.sessions} sessions",
            f"{r.messages:,}",
            f"{r.seconds:.2f}",
            f"{r.msg_per_s:,.0f}" if r.msg_per_s else r.status,
            f"{r.vs_raw:.2f}" if r.vs_raw else "-",
            f"{r.server_cpu_us_per_msg:,.0f}" if r.server_cpu_us_per_msg else "-",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdicts(results: Sequence[Result]) -> list[str]:
    lines = []
    for r in results:
        if r.target == "raw pika":
            continue
        if r.vs_raw is None:
            lines.append(f"{_label(r)}, {_title(r)}: no figure ({r.status}: {r.note})")
            continue
        if r.target == FloorAmqp.name:
            lines.append(
                f"{_label(r)}, {_title(r)}: {r.msg_per_s:,.0f} msg/s = {r.vs_raw:.2f}x raw"
                " (the floor: no server of this kind does less)"
            )
            continue
        met = "met" if r.vs_raw >= TARGET_VS_RAW else "MISSED"
        lines.append(
            f"{_label(r)}, {_title(r)}: {r.msg_per_s:,.0f} msg/s = {r.vs_raw:.2f}x raw"
            f" (target >= {TARGET_VS_RAW}x: {met})"
        )
    return lines


def plot(results: Sequence[Result], info: dict[str, object], path: Path) -> Path | None:
    plt = output.pyplot()
    if plt is None:
        return None

    fig, axes = plt.subplots(1, len(SIZES), figsize=(12, 5))
    for ax, size in zip(axes, SIZES, strict=True):
        mine = [r for r in results if r.size == size]
        labels = [f"{_label(r)}\n{_title(r).split(', ')[1]}" for r in mine]
        rates = [r.msg_per_s or 0.0 for r in mine]
        special = {"raw pika": "C0", FloorAmqp.name: "0.6"}
        colours = [special.get(r.target, f"C{r.workers}") for r in mine]
        bars = ax.bar(range(len(mine)), rates, color=colours)
        ax.bar_label(bars, [f"{v:,.0f}" for v in rates], fontsize=7)
        ax.set_xticks(range(len(mine)), labels, fontsize=7, rotation=30, ha="right")
        ax.set_title(f"{size // KB} KB messages")
        ax.set_ylabel("messages/s confirmed by RabbitMQ (quorum queue)")
    fig.suptitle(f"into RabbitMQ: {info.get('python')}, {info.get('nproc')} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.amqp", description=__doc__)
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--sizes", type=int, action="append", choices=SIZES)
    parser.add_argument("--sessions", type=int, action="append", choices=SESSIONS)
    parser.add_argument("--workers", type=int, action="append", choices=WORKERS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-floor", action="store_true", help="without the Python floor")
    args = parser.parse_args(argv)
    options = Options(
        seconds=args.seconds, max_messages=MAX_MESSAGES, timeout=TIMEOUT, budget=BUDGET
    )
    results: list[Result] = []
    for size in args.sizes or SIZES:
        print(f"{size // KB} KB:", flush=True)
        baseline = raw(size, args.seconds)
        _progress(baseline)
        results.append(baseline)
        for workers in args.workers or WORKERS:
            for target in (FloorAmqp(workers), WildboarAmqp(workers)):
                if args.no_floor and isinstance(target, FloorAmqp):
                    continue
                results += through(
                    target, size, args.sessions or SESSIONS, options, baseline.msg_per_s
                )
                time.sleep(1.0)  # let the broker settle (purges, deletions) between servers
    print()
    print(table(results))
    for line in verdicts(results):
        print(line)
    info: dict[str, Any] = {**environment(), "load": os.getloadavg()[0]}
    for path in output.save("amqp", results, info, args.out, lambda p: plot(results, info, p)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
