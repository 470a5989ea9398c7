"""Messages per second, and CPU per message, through the whole pipeline beside the AMQP
handoff alone (``make bench``, after ``bench.amqp``).

In one run, ``--size`` messages (4 KB) from Postfix's ``smtp-source`` (``--sessions`` 20,
many messages per connection):

- **handoff alone**: ``wildboar serve --handoff amqp`` (1 worker) into its default quorum
  queue on the machine's RabbitMQ, under a private prefix; the run ends when smtp-source
  does, and the queue must then hold exactly what smtp-source counted;
- **pipeline**: the same server with ``declare_queues = false`` in front of the shipped
  stages ``scam -> spf -> deliver`` (three ``wildboar consume`` processes, their
  defaults: 4 handlers in flight, a prefetch of 8), a private NSD answering the SPF
  lookups (the sender's domain passes for 127.0.0.1) and a private Dovecot
  (``tests/lmtp/dovecot.py``) as the mail store; the run ends when the Maildir holds
  every message smtp-source counted, and then every stage's queue must be empty and the
  Maildir hold exactly that many.

Figures: ``msg/s``: the messages at the end (in the queue, in the Maildir) over the time
from smtp-source's start to the last one there; ``250/s``: smtp-source's count over its own
wall time (the server answers before the pipeline has delivered); CPU per message (user +
system, from ``/proc``, ``bench.targets.tree_cpu``) of each part: the server's processes,
each stage's process, Dovecot's processes, and the broker's (``beam.smp`` listening on
5672, which serves other clients of the machine too).

``--profile STAGE`` runs that stage under cProfile during the pipeline run and prints
where its time went (a profiled stage is slower: compare its share, not its rate).

Security: run as root (``make bench`` is), wildboar's workers and Dovecot's mail processes
drop to ``nobody``; every process is a child of the benchmark, stopped by its pid, every
directory removed, every queue and exchange of the prefix deleted.

Output: a table on stdout and ``bench/results/pipeline.{csv,json,png}``.

    python -m bench.pipeline
    python -m bench.pipeline --messages 500 --profile spf
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika

from tests.consumer.dns import Nsd
from tests.consumer.pipeline import SENDER, SPF_ZONE
from tests.lmtp.dovecot import Dovecot

from . import output
from .amqp import URL, WildboarAmqp, _delete
from .amqp_raw import broker_pid
from .server import RESULTS, SMTP_SOURCE, environment
from .targets import ROOT, TargetError, tree_cpu

KB = 1024
STAGES = ("scam", "spf", "deliver")
RECIPIENT = "bob@example.org"
#: How long the pipeline may take past smtp-source's end to deliver what it was given.
DRAIN_TIMEOUT = 180.0
PARTS = ("server", *STAGES, "dovecot", "broker")


@dataclass(frozen=True)
class Result:
    route: str
    size: int
    sessions: int
    messages: int
    seconds: float
    msg_per_s: float | None
    accepted_per_s: float | None
    server_us: float | None
    scam_us: float | None
    spf_us: float | None
    deliver_us: float | None
    dovecot_us: float | None
    broker_us: float | None
    total_us: float | None
    status: str
    note: str


@dataclass(frozen=True)
class Source:
    completed: int
    seconds: float
    failure: str


def smtp_source(port: int, messages: int, size: int, sessions: int) -> Source:
    argv = [
        SMTP_SOURCE, "-d", "-c", "-s", str(sessions), "-m", str(messages), "-l", str(size),
        "-M", "client.example", "-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{port}",
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, timeout=300, check=False)
    seconds = time.perf_counter() - start
    numbers = done.stdout.replace(b"\r", b" ").split()
    completed = int(numbers[-1]) if numbers and numbers[-1].isdigit() else 0
    failure = "" if done.returncode == 0 else done.stderr.decode(errors="replace")[-300:]
    return Source(completed, seconds, failure)


class Meter:
    """CPU seconds of each part so far, by the pids that make it up."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids

    def read(self) -> dict[str, float | None]:
        return {part: None if pid is None else tree_cpu(pid) for part, pid in self.pids.items()}

    @staticmethod
    def per_message(
        before: dict[str, float | None], after: dict[str, float | None], messages: int
    ) -> dict[str, float | None]:
        spent: dict[str, float | None] = {}
        for part, start in before.items():
            end = after.get(part)
            if start is None or end is None or not messages:
                spent[part] = None
            else:
                spent[part] = (end - start) / messages * 1e6
        return spent


def result(
    route: str,
    args: argparse.Namespace,
    *,
    source: Source,
    seconds: float,
    cpu: dict[str, float | None],
    status: str,
    note: str,
) -> Result:
    rate = source.completed / seconds if status == "ok" and seconds else None
    known = [v for v in cpu.values() if v is not None]
    return Result(
        route=route,
        size=args.size,
        sessions=args.sessions,
        messages=source.completed,
        seconds=round(seconds, 2),
        msg_per_s=rate,
        accepted_per_s=source.completed / source.seconds if source.seconds else None,
        server_us=cpu.get("server"),
        scam_us=cpu.get("scam"),
        spf_us=cpu.get("spf"),
        deliver_us=cpu.get("deliver"),
        dovecot_us=cpu.get("dovecot"),
        broker_us=cpu.get("broker"),
        total_us=sum(known) if known else None,
        status=status,
        note=note,
    )


def failed(route: str, args: argparse.Namespace, why: str) -> Result:
    return result(
        route, args, source=Source(0, 0, ""), seconds=0, cpu={}, status="failed", note=why
    )


# --- the handoff alone ------------------------------------------------------------------


def handoff_alone(args: argparse.Namespace, broker: int | None) -> Result:
    server = WildboarAmqp(1)
    try:
        server.start()
        assert server.proc is not None
        meter = Meter({"server": server.proc.pid, "broker": broker})
        before = meter.read()
        source = smtp_source(server.port, args.messages, args.size, args.sessions)
        cpu = Meter.per_message(before, meter.read(), source.completed)
        server.delivered = source.completed
        mismatch = server.check_and_purge()
    except TargetError as error:
        return failed("handoff alone", args, str(error))
    finally:
        server.stop()
        server.remove_topology()
    status = "failed" if source.failure else "mismatch" if mismatch else "ok"
    note = source.failure or mismatch or ""
    return result(
        "handoff alone",
        args,
        source=source,
        seconds=source.seconds,
        cpu=cpu,
        status=status,
        note=note,
    )


# --- the pipeline -----------------------------------------------------------------------


class Stage:
    """One ``wildboar consume`` process, its log in a file."""

    def __init__(
        self, stage: str, prefix: str, env: dict[str, str], log: Path, profile: Path | None
    ) -> None:
        python = [sys.executable]
        if profile is not None:
            python += ["-m", "cProfile", "-o", str(profile)]
        argv = [*python, "-m", "wildboar.cli", "consume", stage, "--pipeline"]
        argv += ["smtp," + ",".join(STAGES), "--log-format", "json", "--progress", "5"]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("WILDBOAR_")}
        environ.update(
            WILDBOAR_CONFIG="/dev/null",
            WILDBOAR_AMQP_URLS=URL,
            WILDBOAR_AMQP_PREFIX=prefix,
            WILDBOAR_AMQP_DECLARE_QUEUES="false",
            **env,
        )
        self.log = log
        with log.open("wb") as stderr:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                cwd=ROOT, env=environ, start_new_session=True,
            )  # fmt: skip

    def wait_connected(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while b'"consumer_connected"' not in self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise TargetError(f"stage did not connect: {self.log.read_text()[-500:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def maildir_count(dovecot: Dovecot) -> int:
    total = 0
    for sub in ("new", "cur"):
        with contextlib.suppress(FileNotFoundError):
            total += sum(1 for entry in os.scandir(dovecot.maildir("bob") / sub))
    return total


def wait_delivered(
    dovecot: Dovecot, count: int, started: float, alive: Callable[[], bool]
) -> float:
    """Seconds from ``started`` to the moment the Maildir held ``count`` messages."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while maildir_count(dovecot) < count:
        if not alive() or time.monotonic() > deadline:
            raise TargetError(f"{maildir_count(dovecot)} of {count} in the Maildir")
        time.sleep(0.02)
    return time.perf_counter() - started


def queue_depths(prefix: str) -> int:
    with pika.BlockingConnection(pika.URLParameters(URL)) as connection:
        channel = connection.channel()
        return sum(
            channel.queue_declare(prefix + f"{kind}.{stage}", passive=True).method.message_count
            for stage in STAGES
            for kind in ("stage", "dead")
        )


class PipelineServer(WildboarAmqp):
    """The server in front of a pipeline: no default queues (the first stage's takes it)."""

    def __init__(self) -> None:
        super().__init__(1)
        self.settings.update(
            WILDBOAR_AMQP_DECLARE_QUEUES="false", WILDBOAR_RECIPIENTS_DOMAINS="example.org"
        )


@contextlib.contextmanager
def pipeline_stack(
    args: argparse.Namespace, base: Path
) -> Iterator[tuple[PipelineServer, list[Stage], Dovecot]]:
    server = PipelineServer()
    stages: list[Stage] = []
    with Nsd({"spf.test": SPF_ZONE}) as nsd, Dovecot(users=("bob",), quotas={}) as dovecot:
        env = {
            "WILDBOAR_SPF_NAMESERVER": f"127.0.0.1:{nsd.port}",
            "WILDBOAR_DELIVER_LMTP": f"lmtp:127.0.0.1:{dovecot.port}",
            "WILDBOAR_DELIVER_LHLO": "deliver.bench.example",
        }
        try:
            for stage in STAGES:
                profile = base / f"{stage}.prof" if stage == args.profile else None
                stages.append(Stage(stage, server.prefix, env, base / f"{stage}.log", profile))
            for running in stages:
                running.wait_connected()
            server.start()
            yield server, stages, dovecot
        finally:
            server.stop()
            for running in stages:
                running.stop()
            queues = [server.prefix + f"{k}.{s}" for s in STAGES for k in ("stage", "dead")]
            _delete(queues, [server.prefix + n for n in _exchanges()])


def _exchanges() -> list[str]:
    names = [f"{n}.{w}.email" for n in ("accepted", "rejected") for w in ("inbound", "outbound")]
    return [*names, "events"]


def through_pipeline(args: argparse.Namespace, broker: int | None) -> Result:
    base = Path(tempfile.mkdtemp(prefix="wildboar-bench-pipeline-"))
    try:
        with pipeline_stack(args, base) as (server, stages, dovecot):
            assert server.proc is not None
            pids = {
                "server": server.proc.pid,
                **{s: r.proc.pid for s, r in zip(STAGES, stages, strict=True)},
            }
            meter = Meter({**pids, "dovecot": dovecot.pid, "broker": broker})
            before = meter.read()
            started = time.perf_counter()
            source = smtp_source(server.port, args.messages, args.size, args.sessions)
            alive = lambda: all(r.proc.poll() is None for r in stages)  # noqa: E731
            seconds = wait_delivered(dovecot, source.completed, started, alive)
            cpu = Meter.per_message(before, meter.read(), source.completed)
            time.sleep(0.5)
            left, stored = queue_depths(server.prefix), maildir_count(dovecot)
        if args.profile:
            print_profile(base / f"{args.profile}.prof", args.profile)
    except TargetError as error:
        return failed("pipeline", args, str(error))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    mismatch = ""
    if left or stored != source.completed:
        mismatch = f"{source.completed} sent, {stored} in the Maildir, {left} left in queues"
    status = "failed" if source.failure else "mismatch" if mismatch else "ok"
    route = "pipeline" + (f" ({args.profile} profiled)" if args.profile else "")
    note = source.failure or mismatch
    return result(route, args, source=source, seconds=seconds, cpu=cpu, status=status, note=note)


def print_profile(path: Path, stage: str, lines: int = 30) -> None:
    if not path.exists():
        print(f"no profile of {stage} (did it stop on TERM?)", file=sys.stderr)
        return
    text = io.StringIO()
    stats = pstats.Stats(str(path), stream=text).strip_dirs()
    stats.sort_stats("cumulative").print_stats(r"runtime|invoke|broker|deliver|scam|spf", lines)
    stats.sort_stats("tottime").print_stats(lines // 2)
    print(f"\n{stage} under cProfile (its event loop's thread), cumulative then own time:")
    print(text.getvalue())


# --- output -----------------------------------------------------------------------------


def _us(value: float | None) -> str:
    return f"{value:,.0f}" if value is not None else "-"


def table(results: Sequence[Result]) -> str:
    head: tuple[str, ...] = ("route", "size", "sessions", "messages", "seconds", "msg/s")
    head += ("250/s",)
    head += (*(f"{p} us" for p in PARTS), "total us", "status")
    rows = [head] + [
        (
            r.route, f"{r.size // KB} KB", str(r.sessions), f"{r.messages:,}", f"{r.seconds:.2f}",
            f"{r.msg_per_s:,.0f}" if r.msg_per_s else "-",
            f"{r.accepted_per_s:,.0f}" if r.accepted_per_s else "-",
            *(_us(getattr(r, f"{p}_us")) for p in PARTS), _us(r.total_us), r.status,
        )
        for r in results
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(results: Sequence[Result], info: dict[str, Any], path: Path) -> Path | None:
    plt = output.pyplot()
    if plt is None:
        return None
    fig, (rates, costs) = plt.subplots(1, 2, figsize=(12, 5))
    labels = [r.route for r in results]
    for offset, (name, values) in enumerate(
        (
            ("msg/s at the end", [r.msg_per_s or 0.0 for r in results]),
            ("250/s", [r.accepted_per_s or 0.0 for r in results]),
        )
    ):
        xs = [i + offset * 0.4 for i in range(len(results))]
        bars = rates.bar(xs, values, width=0.4, label=name)
        rates.bar_label(bars, [f"{v:,.0f}" for v in values], fontsize=8)
    rates.set_xticks([i + 0.2 for i in range(len(results))], labels, fontsize=8)
    rates.set_ylabel("messages/s")
    rates.legend(fontsize=8)
    bottom = [0.0] * len(results)
    for part in PARTS:
        values = [getattr(r, f"{part}_us") or 0.0 for r in results]
        costs.bar(range(len(results)), values, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    costs.set_xticks(range(len(results)), labels, fontsize=8)
    costs.set_ylabel("CPU us per message")
    costs.legend(fontsize=8)
    size = results[0].size // KB
    fig.suptitle(f"{size} KB through the pipeline: {info.get('python')}, {info.get('nproc')} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=4 * KB)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--profile", choices=STAGES, help="run this stage under cProfile")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    broker = broker_pid(URL)
    results = [handoff_alone(args, broker)]
    print(table(results[-1:]), flush=True)
    time.sleep(1.0)
    results.append(through_pipeline(args, broker))
    print()
    print(table(results))
    for r in results:
        if r.note:
            print(f"{r.route}: {r.note}")
    info: dict[str, Any] = {**environment(), "load": os.getloadavg()[0]}
    for path in output.save("pipeline", results, info, args.out, lambda p: plot(results, info, p)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
