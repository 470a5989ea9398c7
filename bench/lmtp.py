"""Messages per second, and CPU per message, from an SMTP client into a Maildir over LMTP
(``make bench``, after ``bench.amqp``).

Postfix's ``smtp-source`` sends to one user of a private Dovecot (``tests/lmtp/dovecot.py``:
passwd-file users, Maildirs, LMTP on 127.0.0.1), through, in one run:

- **dovecot lmtp** (the floor): ``smtp-source -L`` straight into Dovecot's LMTP: what
  delivery into the Maildir costs with no MTA in front;
- **postfix lmtp**: a private Postfix (``tests/postfix.py``): ``smtpd`` checks the
  recipient in its own table, ``cleanup`` writes the queue file (fsync) and ``250``; then
  ``qmgr`` and Postfix's ``lmtp`` client deliver it (``virtual_transport =
  lmtp:inet:...``);
- **wildboar lmtp x1 / x2**: ``wildboar serve --lmtp lmtp:127.0.0.1:PORT`` with 1 and 2
  workers, ``WILDBOAR_RECIPIENTS_DOMAINS`` the test domain: each RCPT checked with Dovecot,
  the message delivered by Dovecot before the ``250``;
- **wildboar lmtp, no rcpt check** x1: the same with ``WILDBOAR_LMTP_VERIFY_RECIPIENTS=false``
  (RCPT answered from the domain list alone), to show what the check costs.

Scenarios: 1 KB and 100 KB (``smtp-source -l``), 20 sessions (``--sessions 200`` too),
many messages per connection (``-d``). Each cell is sized by probe runs to take about
``--seconds`` (at most ``--max-messages`` messages; smtp-source killed at ``--timeout``),
and run ``--rounds`` times, round after round of the whole matrix so that another load on
the machine falls on every route alike; the table gives the median of each figure over a
cell's rounds, and the lowest and highest msg/s. A run ends when every message
smtp-source counted is a file in the Maildir (Postfix's ``250`` comes before the delivery,
wildboar's after it), or at the timeout; its figures:

- msg/s: the messages in the Maildir / the time from smtp-source's start to the last one
  there; ``250/s``: smtp-source's count / its own wall time;
- ``srv us/msg``: user + system CPU of the server's processes per message, from
  ``/proc``, the exited ones included (``bench.targets.tree_cpu``): wildboar's supervisor
  and workers, or Postfix's master and every daemon it ran (smtpd, cleanup, qmgr,
  trivial-rewrite, lmtp, ...); ``mda us/msg`` the same for Dovecot's master and its
  processes; ``cli us/msg`` smtp-source's. Counted over the same interval for every cell,
  up to the last message in the Maildir, so Postfix's queue run is in it;
- ``others``: the CPUs that the rest of the machine kept busy meanwhile, on average
  (``/proc/stat``'s busy time less all of the above and the benchmark's own): another
  job's contention, which the load average does not show here (Dovecot's processes
  waiting for fsync count in it).

A cell fails when smtp-source does (``bench.server.Run.failure``); it is a ``mismatch``
when the Maildir does not hold exactly the messages smtp-source counted (or Postfix's
queue is not empty). The Maildir is removed after each run.

Security: run as root (``make bench`` is), as the postfix route needs (Postfix's master
runs as root; its daemons as ``postfix``); wildboar's workers drop to ``nobody``, as in
``bench.server``, and so do Dovecot's mail processes (the fixture's choice). Every server
is a child of the benchmark in a directory of its own, stopped by its pid (and
its process group or tree killed if anything is left), the directory removed; Debian's own
Postfix and Dovecot services are never started.

Every directory is made under ``$TMPDIR`` (/tmp when unset): the Maildir, Postfix's queue
and wildboar's spool are measured on that filesystem, as in ``bench.server``.

Output: a table on stdout, ``bench/results/lmtp.{csv,json,png}`` and every round's figures
in ``bench/results/lmtp-rounds.{csv,json}``.

    python -m bench.lmtp
    python -m bench.lmtp --sizes 1024 --only wildboar --only postfix --rounds 1
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from tests.daemons import free_port
from tests.lmtp.dovecot import Dovecot, DovecotError
from tests.postfix import Postfix, PostfixError

from . import output
from .server import (
    BUDGET,
    PROBE_SECONDS,
    RERUNS,
    RESULTS,
    SHORTEST,
    SMTP_SOURCE,
    TIMEOUT,
    Interrupted,
    Run,
    Scenario,
    environment,
    smtp_source,
)
from .targets import TargetError, Wildboar, busy_cpu, tree_cpu

KB = 1024
SIZES = (KB, 100 * KB)
SESSIONS = (20, 200)
DOMAIN = "example.org"
USER = "rcpt"
RECIPIENT = f"{USER}@{DOMAIN}"
SECONDS = 3.0
#: Every cell is run this many times, round after round, and its figures are the medians:
#: one run of a few hundred messages on a shared 2-CPU machine is noisy.
ROUNDS = 3
#: Dovecot delivers some hundreds of messages a second here: a cell holds far fewer.
MAX_MESSAGES = 20_000
#: How often the Maildir is counted while messages are still on their way.
POLL = 0.01
START_TIMEOUT = 20.0
#: Where the Maildir, Postfix's queue and wildboar's spool are: the filesystem measured.
TMP = Path(tempfile.gettempdir())
TARGET_KEYS = ("dovecot", "postfix", "wildboar", "no-check")


class Route(Protocol):
    """One way into Dovecot: where smtp-source connects and in which protocol, and which
    process tree's CPU is the server's (none for the floor)."""

    name: str
    workers: int | None
    lmtp: bool

    @property
    def label(self) -> str: ...
    @property
    def port(self) -> int: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def alive(self) -> bool: ...
    def root(self) -> int | None:
        """The pid whose process tree is the server, or None."""

    def queued(self) -> int:
        """Messages the server holds for later delivery."""


class Direct:
    """smtp-source speaking LMTP straight to Dovecot: the floor."""

    name = "dovecot lmtp"
    workers: int | None = None
    lmtp = True

    def __init__(self, dovecot: Dovecot) -> None:
        self.dovecot = dovecot

    label = name

    @property
    def port(self) -> int:
        return self.dovecot.port

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def alive(self) -> bool:
        return self.dovecot.running

    def root(self) -> int | None:
        return None

    def queued(self) -> int:
        return 0


class ViaPostfix:
    """smtp-source into a private Postfix (``tests/postfix.py``) delivering over LMTP."""

    name = "postfix lmtp"
    workers: int | None = None
    lmtp = False
    label = name

    def __init__(self, dovecot: Dovecot) -> None:
        self.dovecot = dovecot
        self.postfix: Postfix | None = None

    @property
    def port(self) -> int:
        assert self.postfix is not None
        return self.postfix.port

    def start(self) -> None:
        host, port = self.dovecot.lmtp_address
        # smtpd refuses unknown users at RCPT from its own table (the counterpart of
        # wildboar's RCPT check with the MDA); every message goes to Dovecot over LMTP.
        settings = {
            "myhostname": "postfix.bench.example",
            "virtual_mailbox_domains": DOMAIN,
            "virtual_mailbox_maps": "texthash:$config_directory/vmailbox",
            "virtual_transport": f"lmtp:inet:{host}:{port}",
        }
        tables = {"vmailbox": f"{USER}@{DOMAIN} {USER}/\n"}
        self.postfix = Postfix(free_port(), settings, tables)
        try:
            self.postfix.start()
            self.postfix.wait_serving(START_TIMEOUT)
        except PostfixError as error:
            raise TargetError(str(error)) from None

    def stop(self) -> None:
        postfix, self.postfix = self.postfix, None
        if postfix is not None:
            postfix.close()

    def alive(self) -> bool:
        return self.postfix is not None and self.postfix.running

    def root(self) -> int | None:
        return None if self.postfix is None else self.postfix.pid

    def queued(self) -> int:
        return 0 if self.postfix is None else self.postfix.queued()


class WildboarLmtp(Wildboar):
    """``wildboar serve --lmtp lmtp:HOST:PORT`` for the test domain; with ``verify`` off,
    ``WILDBOAR_LMTP_VERIFY_RECIPIENTS=false``."""

    lmtp = False

    def __init__(self, dovecot: Dovecot, workers: int, verify: bool = True) -> None:
        super().__init__("lmtp", workers)
        self.dovecot = dovecot
        self.verify = verify
        if not verify:
            self.name = "wildboar lmtp, no rcpt check"

    def _handoff_args(self) -> list[str]:
        host, port = self.dovecot.lmtp_address
        return ["--lmtp", f"lmtp:{host}:{port}"]

    def _env(self) -> dict[str, str]:
        env = super()._env()
        env["WILDBOAR_RECIPIENTS_DOMAINS"] = DOMAIN
        if not self.verify:
            env["WILDBOAR_LMTP_VERIFY_RECIPIENTS"] = "false"
        return env

    def root(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def queued(self) -> int:
        return 0


@dataclass(frozen=True)
class Result:
    target: str
    workers: int | None
    size: int
    sessions: int
    #: Counted by smtp-source, and the files that arrived in the Maildir.
    messages: int
    in_maildir: int
    #: smtp-source's wall time; from its start to the last message in the Maildir.
    accept_seconds: float
    seconds: float
    msg_per_s: float | None
    accept_per_s: float | None
    server_cpu_us_per_msg: float | None
    mda_cpu_us_per_msg: float | None
    client_cpu_us_per_msg: float | None
    #: CPUs (of the machine's) that other processes kept busy meanwhile, on average.
    others_cpus: float | None
    load: float
    status: str  # ok, failed, mismatch, skipped
    note: str
    #: The rounds this cell's figures come from (the median of each over the ok ones),
    #: and the lowest and highest msg/s among them.
    rounds: int = 1
    msg_per_s_low: float | None = None
    msg_per_s_high: float | None = None

    @property
    def label(self) -> str:
        return self.target if self.workers is None else f"{self.target} x{self.workers}"

    @property
    def title(self) -> str:
        return f"{self.size // KB} KB, {self.sessions} sessions"


@dataclass(frozen=True)
class Options:
    seconds: float
    max_messages: int
    timeout: float
    budget: float
    rounds: int


# --- one run -----------------------------------------------------------------------------


def in_maildir(dovecot: Dovecot) -> int:
    """The messages in the user's Maildir (``new/`` and ``cur/``)."""
    count = 0
    for sub in ("new", "cur"):
        with contextlib.suppress(FileNotFoundError):
            count += len(os.listdir(dovecot.maildir(USER) / sub))
    return count


def _cpu(pid: int | None) -> float:
    return 0.0 if pid is None else tree_cpu(pid)


@dataclass(frozen=True)
class Delivery:
    """One smtp-source run and what reached the Maildir."""

    run: Run
    arrived: int
    queued: int
    seconds: float  # smtp-source's start to the last arrival (or to giving up)
    server_cpu: float
    mda_cpu: float
    #: CPU seconds the rest of the machine used meanwhile (another job's contention).
    other_cpu: float

    def mismatch(self) -> str | None:
        if self.arrived == self.run.completed and not self.queued:
            return None
        queued = f", {self.queued:,} still in the queue" if self.queued else ""
        return (
            f"{self.run.completed:,} counted by smtp-source, {self.arrived:,} in the"
            f" Maildir{queued}"
        )


def deliver(
    route: Route, dovecot: Dovecot, scenario: Scenario, count: int, timeout: float
) -> Delivery:
    """smtp-source through ``route``, then wait (up to ``timeout`` more) until every message
    it counted is in the Maildir; the Maildir is removed afterwards."""
    shutil.rmtree(dovecot.maildir(USER), ignore_errors=True)
    root, mda = route.root(), dovecot.pid
    server_cpu, mda_cpu, busy = _cpu(root), _cpu(mda), busy_cpu()
    start = time.perf_counter()
    run = smtp_source(route.port, scenario, count, timeout, recipient=RECIPIENT, lmtp=route.lmtp)
    deadline = time.perf_counter() + timeout
    while (arrived := in_maildir(dovecot)) < run.completed or route.queued():
        if time.perf_counter() > deadline:
            break
        time.sleep(POLL)
    seconds = time.perf_counter() - start
    server_cpu, mda_cpu, busy = _cpu(root) - server_cpu, _cpu(mda) - mda_cpu, busy_cpu() - busy
    done = Delivery(
        run=run,
        arrived=arrived,
        queued=route.queued(),
        seconds=seconds,
        server_cpu=server_cpu,
        mda_cpu=mda_cpu,
        other_cpu=max(0.0, busy - server_cpu - mda_cpu - run.client_cpu),
    )
    shutil.rmtree(dovecot.maildir(USER), ignore_errors=True)
    return done


# --- one cell ----------------------------------------------------------------------------


def _least(scenario: Scenario) -> int:
    return max(2 * scenario.sessions, 200)


def _run_timeout(options: Options) -> float:
    # Sized to take options.seconds: five times that (at least 15 s) means it is stuck.
    return min(options.timeout, max(15.0, 5 * options.seconds))


def calibrate(route: Route, dovecot: Dovecot, scenario: Scenario, options: Options) -> int | str:
    """Messages that take about ``options.seconds``; or why a probe run failed."""
    count = _least(scenario)
    while True:
        probe = deliver(route, dovecot, scenario, count, _run_timeout(options))
        failure = probe.run.failure or probe.mismatch()
        if failure is not None:
            return f"probe: {failure}"
        if probe.seconds >= PROBE_SECONDS or count >= options.max_messages:
            break
        count = min(count * 4, options.max_messages)
    wanted = round(count / probe.seconds * options.seconds)
    return max(_least(scenario), min(wanted, options.max_messages))


def _blank(route: Route, scenario: Scenario, status: str, note: str) -> Result:
    return Result(
        target=route.name,
        workers=route.workers,
        size=scenario.size,
        sessions=scenario.sessions,
        messages=0,
        in_maildir=0,
        accept_seconds=0.0,
        seconds=0.0,
        msg_per_s=None,
        accept_per_s=None,
        server_cpu_us_per_msg=None,
        mda_cpu_us_per_msg=None,
        client_cpu_us_per_msg=None,
        others_cpus=None,
        load=os.getloadavg()[0],
        status=status,
        note=note,
    )


def timed(
    route: Route, dovecot: Dovecot, scenario: Scenario, count: int, options: Options
) -> Result:
    result = _blank(route, scenario, "ok", "")
    done = deliver(route, dovecot, scenario, count, _run_timeout(options))
    run = done.run
    if run.failure is not None:
        return replace(result, status="failed", note=run.failure)
    mismatch = done.mismatch()
    per = 1e6 / max(run.completed, 1)
    return replace(
        result,
        messages=run.completed,
        in_maildir=done.arrived,
        accept_seconds=run.seconds,
        seconds=done.seconds,
        msg_per_s=None if mismatch else done.arrived / done.seconds,
        accept_per_s=run.completed / run.seconds,
        server_cpu_us_per_msg=done.server_cpu * per if route.root() else None,
        mda_cpu_us_per_msg=done.mda_cpu * per,
        client_cpu_us_per_msg=run.client_cpu * per,
        others_cpus=done.other_cpu / done.seconds,
        status="mismatch" if mismatch else "ok",
        note=mismatch or "",
    )


def measure(route: Route, dovecot: Dovecot, scenario: Scenario, options: Options) -> Result:
    count = calibrate(route, dovecot, scenario, options)
    if isinstance(count, str):
        return _blank(route, scenario, "failed", count)
    result = timed(route, dovecot, scenario, count, options)
    for _ in range(RERUNS):  # the probes were slower than the server: again, with more
        short = result.seconds < options.seconds * SHORTEST
        if result.status != "ok" or not short or result.messages >= options.max_messages:
            break
        wanted = round(result.messages / result.seconds * options.seconds)
        result = timed(route, dovecot, scenario, min(wanted, options.max_messages), options)
    if not route.alive():
        note = f"{result.note}; server exited during the run".lstrip("; ")
        result = replace(result, status="failed", msg_per_s=None, note=note)
    return result


# --- the matrix --------------------------------------------------------------------------


def routes(keys: Sequence[str], workers: Sequence[int], dovecot: Dovecot) -> Iterator[Route]:
    factories: dict[str, Callable[[], list[Route]]] = {
        "dovecot": lambda: [Direct(dovecot)],
        "postfix": lambda: [ViaPostfix(dovecot)],
        "wildboar": lambda: [WildboarLmtp(dovecot, n) for n in workers],
        "no-check": lambda: [WildboarLmtp(dovecot, 1, verify=False)],
    }
    for key in TARGET_KEYS:
        if key in keys:
            yield from factories[key]()


def _progress(r: Result) -> None:
    rate = f"{r.msg_per_s:7,.0f} msg/s" if r.msg_per_s else f"{r.status:>13}"
    cpu = "".join(
        f"  {name} {value:,.0f} us/msg"
        for name, value in (("srv", r.server_cpu_us_per_msg), ("mda", r.mda_cpu_us_per_msg))
        if value is not None
    )
    print(f"  {r.label:<32} {r.title:<20} {r.messages:>7,} {rate}{cpu}  {r.note}", flush=True)


def run_route(
    route: Route,
    dovecot: Dovecot,
    scenarios: Sequence[Scenario],
    options: Options,
    deadline: float,
) -> list[Result]:
    """Every scenario through one server, started once (again after a failed cell)."""
    results: list[Result] = []
    try:
        for scenario in scenarios:
            if time.monotonic() > deadline:
                result = _blank(route, scenario, "skipped", "time budget used up")
            else:
                result = _cell(route, dovecot, scenario, options)
            _progress(result)
            results.append(result)
    finally:
        route.stop()
    return results


def _cell(route: Route, dovecot: Dovecot, scenario: Scenario, options: Options) -> Result:
    try:
        if not dovecot.running:
            dovecot.start()
        if not route.alive():
            route.stop()
            route.start()
        result = measure(route, dovecot, scenario, options)
    except (TargetError, DovecotError) as error:
        return _blank(route, scenario, "failed", str(error).splitlines()[0])
    if result.status != "ok":  # a fresh server for the next cell
        route.stop()
    return result


def combine(rounds: Sequence[Result]) -> Result:
    """One cell over its rounds: messages and seconds added up, each figure the median of
    the rounds that were ok; the status and note of the first that was not, if any (a
    mismatch in any round shows)."""
    ok = [r for r in rounds if r.status == "ok"]
    bad = next((r for r in rounds if r.status != "ok"), None)

    def median(figure: Callable[[Result], float | None]) -> float | None:
        values = [v for r in ok if (v := figure(r)) is not None]
        return statistics.median(values) if values else None

    rates = [r.msg_per_s for r in ok if r.msg_per_s is not None]
    return replace(
        rounds[0],
        messages=sum(r.messages for r in rounds),
        in_maildir=sum(r.in_maildir for r in rounds),
        accept_seconds=sum(r.accept_seconds for r in rounds),
        seconds=sum(r.seconds for r in rounds),
        msg_per_s=median(lambda r: r.msg_per_s),
        accept_per_s=median(lambda r: r.accept_per_s),
        server_cpu_us_per_msg=median(lambda r: r.server_cpu_us_per_msg),
        mda_cpu_us_per_msg=median(lambda r: r.mda_cpu_us_per_msg),
        client_cpu_us_per_msg=median(lambda r: r.client_cpu_us_per_msg),
        others_cpus=median(lambda r: r.others_cpus),
        load=max(r.load for r in rounds),
        status=bad.status if bad else "ok",
        note="; ".join(dict.fromkeys(r.note for r in rounds if r.note)),
        rounds=len(rounds),
        msg_per_s_low=min(rates, default=None),
        msg_per_s_high=max(rates, default=None),
    )


def combined(results: Sequence[Result]) -> list[Result]:
    cells: dict[tuple[str, int, int], list[Result]] = {}
    for r in results:
        cells.setdefault((r.label, r.size, r.sessions), []).append(r)
    return sorted(map(combine, cells.values()), key=lambda r: (r.size, r.sessions))


# --- reporting ---------------------------------------------------------------------------

COLUMNS = (
    "target",
    "size",
    "sessions",
    "messages",
    "in maildir",
    "seconds",
    "msg/s",
    "low-high",
    "250/s",
    "srv us/msg",
    "mda us/msg",
    "srv+mda",
    "cli us/msg",
    "others",
    "status",
)


def _num(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def _spread(r: Result) -> str:
    if r.msg_per_s_low is None or r.msg_per_s_high is None or r.rounds < 2:
        return "-"
    return f"{r.msg_per_s_low:,.0f}-{r.msg_per_s_high:,.0f}"


def _row(r: Result) -> tuple[str, ...]:
    both = None
    if r.mda_cpu_us_per_msg is not None:
        both = r.mda_cpu_us_per_msg + (r.server_cpu_us_per_msg or 0.0)
    return (
        r.label,
        f"{r.size // KB} KB",
        str(r.sessions),
        f"{r.messages:,}",
        f"{r.in_maildir:,}",
        f"{r.seconds:.2f}",
        _num(r.msg_per_s),
        _spread(r),
        _num(r.accept_per_s),
        _num(r.server_cpu_us_per_msg),
        _num(r.mda_cpu_us_per_msg),
        _num(both),
        _num(r.client_cpu_us_per_msg),
        _num(r.others_cpus, ".2f"),
        r.status,
    )


def table(results: Sequence[Result]) -> str:
    rows = [_row(r) for r in results]
    widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    left = {0, len(COLUMNS) - 1}

    def fmt(row: Sequence[str]) -> str:
        pairs = enumerate(zip(row, widths, strict=True))
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in pairs).rstrip()

    lines = [fmt(COLUMNS), "  ".join("-" * w for w in widths)]
    previous = None
    for r, row in zip(results, rows, strict=True):
        if previous is not None and r.title != previous:
            lines.append("")
        previous = r.title
        lines.append(fmt(row))
    return "\n".join(lines)


def notes(results: Sequence[Result]) -> list[str]:
    lines = [f"{r.label}, {r.title}: {r.status}: {r.note}" for r in results if r.note]
    others = [r.others_cpus for r in results if r.others_cpus is not None]
    if others:
        low, high = min(others), max(others)
        lines.append(f"others: {low:.2f} to {high:.2f} of the CPUs busy with other work")
    rounds = max((r.rounds for r in results), default=1)
    if rounds > 1:
        lines.append(f"each figure: the median of {rounds} rounds; low-high: their msg/s")
    return lines


def plot(results: Sequence[Result], info: dict[str, object], path: Path) -> Path | None:
    plt = output.pyplot()
    if plt is None:
        return None
    titles = list(dict.fromkeys(r.title for r in results))
    fig, axes = plt.subplots(2, len(titles), figsize=(6 * len(titles), 9), squeeze=False)
    for column, title in enumerate(titles):
        mine = [r for r in results if r.title == title]
        xs = range(len(mine))
        labels = [r.label.replace(", ", ",\n") for r in mine]
        rates = [r.msg_per_s or 0.0 for r in mine]
        top, bottom = axes[0][column], axes[1][column]
        bars = top.bar(xs, rates, color=[f"C{i}" for i in xs])
        top.bar_label(bars, [f"{v:,.0f}" if v else "x" for v in rates], fontsize=7)
        top.set_title(f"{title}, many messages per connection")
        top.set_ylabel("messages/s into the Maildir")
        server = [r.server_cpu_us_per_msg or 0.0 for r in mine]
        mda = [r.mda_cpu_us_per_msg or 0.0 for r in mine]
        bottom.bar(xs, server, color="C0", label="server (wildboar / Postfix)")
        stacked = bottom.bar(xs, mda, bottom=server, color="C1", label="Dovecot")
        totals = [s + m for s, m in zip(server, mda, strict=True)]
        bottom.bar_label(stacked, [f"{t:,.0f}" for t in totals], fontsize=7)
        bottom.set_ylabel("CPU us per message (user + system)")
        bottom.legend(fontsize="small")
        for ax in (top, bottom):
            ax.set_xticks(xs, labels, fontsize=7)
    fig.suptitle(
        f"smtp-source into a Dovecot Maildir over LMTP\n{info.get('python')},"
        f" {info.get('nproc')} CPUs, median of {max(r.rounds for r in results)} rounds",
        fontsize="medium",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- main --------------------------------------------------------------------------------


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _check_tools() -> None:
    tools = (SMTP_SOURCE, "/usr/sbin/dovecot", "/usr/lib/dovecot/lmtp", "/usr/sbin/postfix")
    missing = [tool for tool in tools if not os.access(tool, os.X_OK)]
    if missing:
        raise SystemExit(
            f"missing {', '.join(missing)}: apt-get install postfix dovecot-core dovecot-lmtpd"
        )


def _dovecot_version() -> str:
    done = subprocess.run(
        ["/usr/sbin/dovecot", "--version"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.lmtp", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=SECONDS, help="length of a cell")
    parser.add_argument("--max-messages", type=int, default=MAX_MESSAGES)
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="hard limit of a run")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="runs of every cell")
    parser.add_argument("--budget", type=float, default=BUDGET, help="skip cells after, s")
    parser.add_argument("--only", choices=TARGET_KEYS, action="append", help="these routes")
    parser.add_argument("--sizes", type=int, choices=SIZES, action="append", help="octets")
    parser.add_argument("--sessions", type=int, choices=SESSIONS, action="append")
    parser.add_argument("--workers", type=int, choices=(1, 2), action="append")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the results")
    args = parser.parse_args(argv)
    _check_tools()
    if os.geteuid() != 0 and "postfix" in (args.only or TARGET_KEYS):
        raise SystemExit("the postfix route needs root (a private Postfix master)")
    signal.signal(signal.SIGTERM, _interrupt)
    options = Options(args.seconds, args.max_messages, args.timeout, args.budget, args.rounds)
    scenarios = [
        Scenario(size, sessions, True)
        for size in args.sizes or SIZES
        for sessions in args.sessions or SESSIONS[:1]
    ]
    try:
        rounds = run_all(args.only or TARGET_KEYS, args.workers or (1, 2), scenarios, options)
    except (KeyboardInterrupt, Interrupted) as stop:  # every server is stopped by now
        print(f"interrupted ({str(stop) or 'SIGINT'}): no results written", file=sys.stderr)
        return 130
    info: dict[str, Any] = {**environment(), "dovecot": _dovecot_version()}
    info["options"] = asdict(options)
    results = combined(rounds)
    print()
    print(table(results))
    for line in notes(results):
        print(line)
    written = output.save("lmtp", results, info, args.out, lambda p: plot(results, info, p))
    written += output.save("lmtp-rounds", rounds, info, args.out, lambda p: None)
    for path in written:
        print(f"wrote {path}")
    return 0


def run_all(
    keys: Sequence[str], workers: Sequence[int], scenarios: Sequence[Scenario], options: Options
) -> list[Result]:
    """Every cell, ``options.rounds`` times: round after round of the whole matrix, so that
    another load on the machine falls on every route alike."""
    started = time.monotonic()
    results: list[Result] = []
    with Dovecot(users=[USER], quotas={}, domain=DOMAIN, parent=TMP) as dovecot:
        for number in range(1, options.rounds + 1):
            for route in routes(keys, workers, dovecot):
                print(f"round {number}, {route.label}:", flush=True)
                deadline = started + options.budget
                results += run_route(route, dovecot, scenarios, options, deadline)
    return results


if __name__ == "__main__":
    sys.exit(main())
