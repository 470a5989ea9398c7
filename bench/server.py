"""Messages per second through whole SMTP servers over loopback (``make bench``).

Postfix's ``smtp-source`` loads, in one run so the figures are comparable:

- ``wildboar serve --handoff discard`` (a benchmark-only handoff that keeps nothing) and
  ``wildboar serve`` with the default spool handoff (fsync'd files in a spool under /tmp),
  each with ``--workers 1`` and ``--workers 2``;
- aiosmtpd, a peer: a discarding handler in aiosmtpd's ``Controller`` (``aiosmtpd_peer.py``);
- the "python floor" (``floor_peer.py``): canned replies on uvloop with 1 and 2 processes,
  no parsing, no checks, no records, no log: what the event loop and the socket calls
  alone cost a Python server, so the gap between it and wildboar is wildboar's own work;
- Postfix's ``smtp-sink``, the reference: a C server that discards.

Scenarios: message payload 1 KB and 100 KB (``smtp-source -l``); 20 and 200 parallel
sessions (``-s``); one message per connection, or many (``-d``). For each cell, probe runs
(which also warm the server up) estimate the rate, then the measured run sends as many
messages as take about ``--seconds`` (at most ``--max-messages``), killed at ``--timeout``.
msg/s = messages counted by ``smtp-source -c`` / wall time of the smtp-source process.

A cell fails, and shows no rate, when smtp-source reports "fatal" (it aborts the whole run
on a lost connection), exits non-zero, counts fewer messages than asked, or times out. For
wildboar, the messages its log says were accepted, and for the spool the files that appeared
in ``msg/``, must equal the messages sent, else the cell is marked "mismatch".

Output: a table on stdout and ``bench/results/server.{csv,json,png}`` (the plot needs
matplotlib, the ``bench`` extra).

    python -m bench.server                       # the whole matrix, about 4 minutes
    python -m bench.server --only discard --only smtp-sink --sizes 1024
    python -m bench.server --profile             # py-spy on a wildboar worker under load
    python -m bench.server --only discard --set WILDBOAR_SESSIONS_CONTENT_MEMORY=262144
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

from . import output
from .core import machine
from .targets import (
    HOSTNAME,
    ROOT,
    SMTP_SINK,
    Aiosmtpd,
    Floor,
    SmtpSink,
    Target,
    TargetError,
    Wildboar,
    cpu_seconds,
)

SMTP_SOURCE = "/usr/sbin/smtp-source"
RESULTS = Path(__file__).resolve().parent / "results"
KB = 1024
SIZES = (KB, 100 * KB)
SESSIONS = (20, 200)
#: The issue's targets, for wildboar's discard handoff, 1 KB, 20 sessions, many per connection.
TARGET_VS_SINK = 0.8
TARGET_VS_AIOSMTPD = 5.0
#: A cell runs about this long; bounded by message count and a hard timeout.
SECONDS = 3.0
MAX_MESSAGES = 60_000
TIMEOUT = 60.0
#: Probe runs stop growing once one takes this long; they time out after PROBE_TIMEOUT.
PROBE_SECONDS = 0.5
PROBE_TIMEOUT = 20.0
#: A measured run shorter than this share of ``--seconds`` is repeated with more messages.
SHORTEST = 0.4
RERUNS = 2
#: Cells not started within this many seconds of the start are skipped (~15 min in all).
BUDGET = 13 * 60.0

TARGET_KEYS = ("smtp-sink", "aiosmtpd", "floor", "discard", "spool")


class Interrupted(Exception):
    """SIGTERM: unwind like Ctrl-C so every server is stopped."""


@dataclass(frozen=True)
class Scenario:
    size: int
    sessions: int
    many: bool

    @property
    def title(self) -> str:
        per = "many/conn" if self.many else "one/conn"
        return f"{self.size // KB} KB, {self.sessions} sessions, {per}"


SCENARIOS = tuple(Scenario(z, s, m) for z in SIZES for s in SESSIONS for m in (False, True))


@dataclass(frozen=True)
class Result:
    target: str
    workers: int | None
    size: int
    sessions: int
    per_connection: str  # "one" or "many"
    messages: int
    seconds: float
    msg_per_s: float | None
    vs_sink: float | None
    vs_aiosmtpd: float | None
    #: CPU time of the server's processes (supervisor and workers) and of smtp-source.
    server_cpu_us_per_msg: float | None
    client_cpu_us_per_msg: float | None
    #: With several wildboar workers, each one's share of their CPU time ("80%/20%").
    worker_cpu_split: str
    #: The 1-minute load average when the cell started (another job on the machine shows).
    load: float
    status: str  # ok, failed, mismatch, skipped
    note: str

    def scenario(self) -> Scenario:
        return Scenario(self.size, self.sessions, self.per_connection == "many")


@dataclass(frozen=True)
class Options:
    seconds: float
    max_messages: int
    timeout: float
    budget: float


# --- smtp-source -----------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One smtp-source process: what it was asked, what it counted, how long it took."""

    messages: int
    completed: int
    seconds: float
    timeout: float
    returncode: int | None  # None: killed at the timeout
    output: str
    client_cpu: float

    @property
    def failure(self) -> str | None:
        fatal = next((line for line in self.output.splitlines() if "fatal" in line), None)
        if self.returncode is None:
            done = f"{self.completed:,} of {self.messages:,} messages done"
            return f"timeout after {self.timeout:.0f} s ({done}); {fatal or 'no fatal'}"
        if fatal is not None:
            return fatal.replace(SMTP_SOURCE + ": ", "smtp-source ")
        if self.returncode != 0:
            return f"smtp-source exit {self.returncode}: {self.output.strip()[-200:]}"
        if self.completed != self.messages:
            return f"smtp-source counted {self.completed:,} of {self.messages:,} messages"
        return None


def _counter(stdout: bytes) -> int:
    """The last value of smtp-source's ``-c`` counter ("1\\r2\\r...")."""
    numbers = re.findall(rb"\d+", stdout)
    return int(numbers[-1]) if numbers else 0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def smtp_source(
    port: int,
    scenario: Scenario,
    messages: int,
    timeout: float,
    *,
    recipient: str = f"rcpt@{HOSTNAME}",
    lmtp: bool = False,
) -> Run:
    """smtp-source (with ``lmtp``: speaking LMTP, ``-L``) sending ``messages`` to
    ``recipient`` at 127.0.0.1:``port``, killed after ``timeout`` seconds."""
    argv = [
        SMTP_SOURCE,
        *(["-L"] if lmtp else []),
        *(["-d"] if scenario.many else []),
        "-c",
        *("-s", str(scenario.sessions), "-m", str(messages), "-l", str(scenario.size)),
        *("-M", "client.example", "-f", "sender@client.example", "-t", recipient),
        f"127.0.0.1:{port}",
    ]
    cpu = _children_cpu()
    start = time.perf_counter()
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        returncode: int | None = done.returncode
        stdout, stderr = done.stdout, done.stderr
    except subprocess.TimeoutExpired as expired:  # run() killed it
        returncode, stdout, stderr = None, expired.stdout or b"", expired.stderr or b""
    seconds = time.perf_counter() - start
    return Run(
        messages=messages,
        completed=_counter(stdout),
        seconds=seconds,
        timeout=timeout,
        returncode=returncode,
        output=stderr.decode(errors="replace"),
        client_cpu=_children_cpu() - cpu,
    )


# --- one cell ----------------------------------------------------------------------------


def drive(target: Target, scenario: Scenario, messages: int, timeout: float) -> Run:
    """smtp-source against ``target``, counting what it delivered there since the start."""
    run = smtp_source(target.port, scenario, messages, timeout)
    target.delivered += run.completed
    return run


def _least(scenario: Scenario) -> int:
    """Fewest messages worth sending: every session carries at least two."""
    return max(2 * scenario.sessions, 200)


def calibrate(target: Target, scenario: Scenario, options: Options) -> int | Run:
    """Messages that take about ``options.seconds``; or the probe run that failed."""
    count = _least(scenario)
    while True:
        run = drive(target, scenario, count, PROBE_TIMEOUT)
        if run.failure is not None:
            return run
        if run.seconds >= PROBE_SECONDS or count >= options.max_messages:
            break
        count = min(count * 4, options.max_messages)
    wanted = round(count / run.seconds * options.seconds)
    return max(_least(scenario), min(wanted, options.max_messages))


def _blank(target: Target, scenario: Scenario, status: str, note: str) -> Result:
    return Result(
        target=target.name,
        workers=target.workers,
        size=scenario.size,
        sessions=scenario.sessions,
        per_connection="many" if scenario.many else "one",
        messages=0,
        seconds=0.0,
        msg_per_s=None,
        vs_sink=None,
        vs_aiosmtpd=None,
        server_cpu_us_per_msg=None,
        client_cpu_us_per_msg=None,
        worker_cpu_split="",
        load=os.getloadavg()[0],
        status=status,
        note=note,
    )


class Ledger:
    """What a server did during one run: the CPU time of its processes; for wildboar, the
    messages its log says it accepted and the files that appeared in its spool's msg/."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.boar = target if isinstance(target, Wildboar) else None
        # wildboar writes its log lines a little after the replies: wait until the lines
        # of every earlier run (the probes) are in, so none is counted for this one.
        self.accepted = self.boar.wait_accepted(target.delivered) if self.boar else 0
        self.files = self.boar.spooled() if self.boar else 0
        self.dropped = self.boar.dropped_log_lines() if self.boar else 0
        self.cpu = cpu_seconds(target.pids())

    def cpu_used(self) -> tuple[float, str]:
        """CPU seconds used by the server since, and each worker's share ("80%/20%")."""
        after = cpu_seconds(self.target.pids())
        used = {pid: seconds - self.cpu.get(pid, 0.0) for pid, seconds in after.items()}
        workers = [used.get(pid, 0.0) for pid in self.boar.worker_pids()] if self.boar else []
        if len(workers) < 2 or sum(workers) <= 0:
            return sum(used.values()), ""
        return sum(used.values()), "/".join(f"{w / sum(workers):.0%}" for w in workers)

    def mismatch(self, sent: int) -> str | None:
        """For wildboar: its log's accepted count, and the spool's new files, against ``sent``."""
        if self.boar is None:
            return None
        problems = []
        accepted = self.boar.wait_accepted(self.accepted + sent) - self.accepted
        if accepted != sent:
            dropped = self.boar.dropped_log_lines() - self.dropped
            why = f" (and that it dropped {dropped:,} log lines)" if dropped else ""
            problems.append(f"its log says {accepted:,} accepted{why}")
        if self.boar.handoff == "spool":
            files = self.boar.spooled() - self.files
            self.boar.empty_spool()
            if files != sent:
                problems.append(f"{files:,} files appeared in msg/")
        return f"{sent:,} sent, " + ", ".join(problems) if problems else None


def _timed(target: Target, scenario: Scenario, messages: int, options: Options) -> Result:
    """The measured run, with the checks that make its figure trustworthy."""
    result = _blank(target, scenario, "ok", "")
    ledger = Ledger(target)
    # Calibrated to take options.seconds: five times that (at least 15 s) means it is stuck.
    timeout = min(options.timeout, max(15.0, 5 * options.seconds))
    run = drive(target, scenario, messages, timeout)
    cpu, split = ledger.cpu_used()
    failure = run.failure
    if failure is not None:
        return dataclasses.replace(result, status="failed", note=failure)
    mismatch = ledger.mismatch(run.completed)
    return dataclasses.replace(
        result,
        messages=run.completed,
        seconds=run.seconds,
        msg_per_s=run.completed / run.seconds,
        server_cpu_us_per_msg=cpu / run.completed * 1e6,
        client_cpu_us_per_msg=run.client_cpu / run.completed * 1e6,
        worker_cpu_split=split,
        status="mismatch" if mismatch else "ok",
        note=mismatch or "",
    )


def _too_short(result: Result, options: Options) -> bool:
    short = result.seconds < options.seconds * SHORTEST
    return result.status == "ok" and short and result.messages < options.max_messages


def measure(target: Target, scenario: Scenario, options: Options) -> Result:
    count = calibrate(target, scenario, options)
    if isinstance(count, Run):
        return _blank(target, scenario, "failed", f"probe: {count.failure}")
    result = _timed(target, scenario, count, options)
    for _ in range(RERUNS):  # the probes were slower than the server: again, with more
        if not _too_short(result, options):
            break
        wanted = round(result.messages / result.seconds * options.seconds)
        result = _timed(target, scenario, min(wanted, options.max_messages), options)
    if not target.alive():
        note = f"{result.note}; server exited during the run".lstrip("; ")
        result = dataclasses.replace(result, status="failed", msg_per_s=None, note=note)
    return result


# --- the matrix --------------------------------------------------------------------------


def targets(keys: Sequence[str], settings: Mapping[str, str]) -> Iterator[Target]:
    """The servers of ``keys``; ``settings``: ``WILDBOAR_*`` variables for wildboar's."""
    factories: dict[str, Callable[[], list[Target]]] = {
        "smtp-sink": lambda: [SmtpSink()],
        "aiosmtpd": lambda: [Aiosmtpd()],
        "floor": lambda: [Floor(1), Floor(2)],
        "discard": lambda: [Wildboar("discard", n, settings) for n in (1, 2)],
        "spool": lambda: [Wildboar("spool", n, settings) for n in (1, 2)],
    }
    for key in TARGET_KEYS:
        if key in keys:
            yield from factories[key]()


def _progress(result: Result, target: Target) -> None:
    rate = f"{result.msg_per_s:9,.0f} msg/s" if result.msg_per_s else f"{result.status:>15}"
    title = result.scenario().title
    print(f"  {target.label:<20} {title:<34} {result.messages:>7,} {rate}  {result.note}")
    sys.stdout.flush()


def run_target(
    target: Target, scenarios: Sequence[Scenario], options: Options, deadline: float
) -> list[Result]:
    """Every scenario against one server, restarted after a failed cell."""
    results = []
    try:
        target.start()
    except TargetError as error:
        return [_blank(target, s, "failed", str(error).splitlines()[0]) for s in scenarios]
    for scenario in scenarios:
        if time.monotonic() > deadline:
            result = _blank(target, scenario, "skipped", "time budget used up")
        else:
            result = _cell(target, scenario, options)
        _progress(result, target)
        results.append(result)
    return results


def _cell(target: Target, scenario: Scenario, options: Options) -> Result:
    try:
        if not target.alive():
            target.stop()
            target.start()
        result = measure(target, scenario, options)
    except TargetError as error:
        return _blank(target, scenario, "failed", str(error).splitlines()[0])
    if result.status != "ok":  # a fresh server for the next cell
        target.stop()
    return result


def with_ratios(results: Sequence[Result]) -> list[Result]:
    def rate(name: str, scenario: Scenario) -> float | None:
        found = (r for r in results if r.target == name and r.scenario() == scenario)
        return next((r.msg_per_s for r in found if r.status == "ok"), None)

    out = []
    for r in results:
        sink, aio = rate("smtp-sink", r.scenario()), rate("aiosmtpd", r.scenario())
        out.append(
            dataclasses.replace(
                r,
                vs_sink=r.msg_per_s / sink if r.msg_per_s and sink else None,
                vs_aiosmtpd=r.msg_per_s / aio if r.msg_per_s and aio else None,
            )
        )
    order = {s: i for i, s in enumerate(SCENARIOS)}
    return sorted(out, key=lambda r: order.get(r.scenario(), len(order)))


# --- reporting ---------------------------------------------------------------------------

COLUMNS = (
    "target",
    "workers",
    "size",
    "sessions",
    "per conn",
    "messages",
    "seconds",
    "msg/s",
    "x sink",
    "x aiosmtpd",
    "srv us/msg",
    "cli us/msg",
    "cpu split",
    "status",
)


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _row(r: Result) -> tuple[str, ...]:
    return (
        r.target,
        "-" if r.workers is None else str(r.workers),
        f"{r.size // KB} KB",
        str(r.sessions),
        r.per_connection,
        f"{r.messages:,}",
        f"{r.seconds:.2f}",
        _num(r.msg_per_s, ",.0f"),
        _num(r.vs_sink, ".2f"),
        _num(r.vs_aiosmtpd, ".2f"),
        _num(r.server_cpu_us_per_msg, ",.0f"),
        _num(r.client_cpu_us_per_msg, ",.0f"),
        r.worker_cpu_split or "-",
        r.status,
    )


def table(results: Sequence[Result]) -> str:
    rows = [_row(r) for r in results]
    widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    left = {0, 4, 13}

    def fmt(row: Sequence[str]) -> str:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = (c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in pairs)
        return "  ".join(cells).rstrip()

    lines = [fmt(COLUMNS), "  ".join("-" * w for w in widths)]
    previous: Scenario | None = None
    for r, row in zip(results, rows, strict=True):
        if previous is not None and r.scenario() != previous:
            lines.append("")
        previous = r.scenario()
        lines.append(fmt(row))
    return "\n".join(lines)


def notes(results: Sequence[Result]) -> list[str]:
    return [
        f"{r.target}{'' if r.workers is None else f' x{r.workers}'}, {r.scenario().title}: "
        f"{r.status}: {r.note}"
        for r in results
        if r.note
    ]


def verdicts(results: Sequence[Result]) -> list[str]:
    goal = Scenario(KB, 20, True)
    lines = []
    for r in results:
        if r.target != "wildboar discard" or r.scenario() != goal:
            continue
        if r.vs_sink is None or r.vs_aiosmtpd is None:
            lines.append(f"wildboar discard x{r.workers}, {goal.title}: no figure ({r.status})")
            continue
        sink = "met" if r.vs_sink >= TARGET_VS_SINK else "MISSED"
        aio = "met" if r.vs_aiosmtpd >= TARGET_VS_AIOSMTPD else "MISSED"
        lines.append(
            f"wildboar discard x{r.workers}, {goal.title}: {r.msg_per_s:,.0f} msg/s ="
            f" {r.vs_sink:.2f}x smtp-sink (target >= {TARGET_VS_SINK}x: {sink}),"
            f" {r.vs_aiosmtpd:.2f}x aiosmtpd (target >= {TARGET_VS_AIOSMTPD:.0f}x: {aio})"
        )
        floor = next(
            (f for f in results if f.target == "python floor" and f.workers == r.workers
             and f.scenario() == goal and f.msg_per_s and f.server_cpu_us_per_msg),
            None,
        )  # fmt: skip
        if floor is not None and r.server_cpu_us_per_msg and floor.vs_sink is not None:
            assert floor.msg_per_s is not None and floor.server_cpu_us_per_msg is not None
            own = r.server_cpu_us_per_msg - floor.server_cpu_us_per_msg
            lines.append(
                f"  python floor x{r.workers}: {floor.msg_per_s:,.0f} msg/s ="
                f" {floor.vs_sink:.2f}x smtp-sink at {floor.server_cpu_us_per_msg:.0f} us/msg;"
                f" wildboar's own work: {own:.0f} us/msg of its {r.server_cpu_us_per_msg:.0f}"
            )
    return lines


def environment() -> dict[str, str]:
    info = machine()
    info["wildboar"] = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--", "wildboar", "supervisor")
    info["wildboar_tree"] = "modified (uncommitted changes)" if dirty else "clean"
    for package in ("uvloop", "msgspec", "aiosmtpd"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[package] = metadata.version(package)
    postconf = subprocess.run(
        ["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True, check=False
    )
    info["postfix"] = postconf.stdout.strip() or "unknown"
    return info


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def save(results: Sequence[Result], info: dict[str, object], out: Path) -> list[Path]:
    return output.save("server", results, info, out, lambda path: plot(results, info, path))


def plot(results: Sequence[Result], info: dict[str, object], path: Path) -> Path | None:
    plt = output.pyplot()
    if plt is None:
        return None

    scenarios = [s for s in SCENARIOS if any(r.scenario() == s for r in results)]
    labels = list(dict.fromkeys(_label(r) for r in results))
    rates = [r.msg_per_s for r in results if r.msg_per_s] or [1.0]
    bottom = 10 ** math.floor(math.log10(min(rates) / 2))
    fig, ax = plt.subplots(figsize=(15, 6.5))
    for i, label in enumerate(labels):
        mine = [
            next((r for r in results if _label(r) == label and r.scenario() == s), None)
            for s in scenarios
        ]
        _bars(ax, mine, i, len(labels), bottom)
    ax.set_yscale("log")
    ax.set_ylim(bottom, max(rates) * 4)
    ax.set_ylabel("messages/s (log); x = failed measurement")
    ax.set_xticks(range(len(scenarios)), [s.title.replace(", ", "\n") for s in scenarios])
    ax.legend(fontsize="small", ncols=3, loc="upper right")
    ax.set_title(
        f"smtp-source over loopback: {info['python']}, {info['cpu']} ({info['nproc']} CPUs)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _bars(
    ax: Any, results: Sequence[Result | None], index: int, groups: int, bottom: float
) -> None:
    """One target's bars, one per scenario; an x at the bottom for a failed measurement."""
    width = 0.8 / groups
    xs, heights, failed = [], [], []
    for x, result in enumerate(results):
        offset = x - 0.4 + width * (index + 0.5)
        if result is not None and result.msg_per_s:
            xs.append(offset)
            heights.append(result.msg_per_s)
        elif result is not None:
            failed.append(offset)
    label = _label(next(r for r in results if r is not None))
    bars = ax.bar(xs, heights, width, label=label, color=f"C{index}")
    ax.bar_label(bars, [f"{h:,.0f}" for h in heights], fontsize=6, rotation=90, padding=2)
    ax.plot(failed, [bottom * 1.5] * len(failed), "x", color=f"C{index}", markersize=9)


def _label(r: Result) -> str:
    return r.target if r.workers is None else f"{r.target} x{r.workers}"


# --- profiling ---------------------------------------------------------------------------


def _load(port: int, stop: threading.Event) -> None:
    scenario = Scenario(KB, 20, True)
    while not stop.is_set():
        smtp_source(port, scenario, MAX_MESSAGES, TIMEOUT)


def profile(seconds: float, out: Path, top: int) -> int:
    """py-spy on the one worker of ``wildboar serve --handoff discard --workers 1`` under
    the target scenario's load: a flame graph and the top functions by own and total time."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out.mkdir(parents=True, exist_ok=True)
    raw, svg = out / "server-profile.txt", out / "server-profile.svg"
    stop = threading.Event()
    with Wildboar("discard", 1) as target:
        target.start()
        loader = threading.Thread(target=_load, args=(target.port, stop), daemon=True)
        loader.start()
        try:
            time.sleep(1.0)
            pid = str(target.worker_pids()[0])
            # Time in C (uvloop's transport.write and its write(2), os.urandom) counts as the
            # calling Python function's own time (--native mislabels libpython's frames).
            # --nonblocking: stopping the worker for each sample lands the samples next to
            # system calls, and over-weights the functions making them (getpid, getrandom).
            common = ["record", "--pid", pid, "-d", str(int(seconds)), "--nolineno", "--idle"]
            common += ["--nonblocking"]
            subprocess.run([spy, *common, "--format", "raw", "-o", str(raw)], check=True)
            subprocess.run([spy, *common, "-o", str(svg)], check=True)
        finally:
            stop.set()
            loader.join()
    print(summarise(raw.read_text(), top))
    print(f"wrote {raw}\nwrote {svg}")
    return 0


def summarise(collapsed: str, top: int) -> str:
    """Top functions of py-spy's collapsed stacks ("a;b;c count"), by own and total time."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        samples += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            total[frame] += int(count)
    lines = [f"{samples:,} samples"]
    for title, counter in (("own time", own), ("total time (incl. callees)", total)):
        lines.append(f"\ntop {top} by {title}:")
        for frame, hits in counter.most_common(top):
            lines.append(f"{hits / max(samples, 1):7.1%}  {frame}")
    return "\n".join(lines)


# --- main --------------------------------------------------------------------------------


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _check_tools() -> None:
    missing = [tool for tool in (SMTP_SOURCE, SMTP_SINK) if not os.access(tool, os.X_OK)]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: apt-get install postfix")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.server", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=SECONDS, help="length of a cell")
    parser.add_argument("--max-messages", type=int, default=MAX_MESSAGES)
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="hard limit of a run")
    parser.add_argument("--budget", type=float, default=BUDGET, help="skip cells after, s")
    parser.add_argument("--only", choices=TARGET_KEYS, action="append", help="these targets")
    parser.add_argument("--sizes", type=int, choices=SIZES, action="append", help="octets")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the results")
    parser.add_argument(
        "--set", action="append", metavar="WILDBOAR_NAME=VALUE", help="for wildboar's servers"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy a worker instead")
    parser.add_argument("--top", type=int, default=25, help="functions shown with --profile")
    args = parser.parse_args(argv)
    _check_tools()
    signal.signal(signal.SIGTERM, _interrupt)
    options = Options(args.seconds, args.max_messages, args.timeout, args.budget)
    scenarios = [s for s in SCENARIOS if s.size in (args.sizes or SIZES)]
    try:
        if args.profile:
            return profile(10.0, args.out, args.top)
        settings = _settings(args.set or [])
        return run_all(args.only or TARGET_KEYS, scenarios, options, args.out, settings)
    except (KeyboardInterrupt, Interrupted) as stop:  # every server is stopped by now
        print(f"interrupted ({str(stop) or 'SIGINT'}): no results written", file=sys.stderr)
        return 130


def _settings(pairs: Sequence[str]) -> dict[str, str]:
    settings = dict(pair.partition("=")[::2] for pair in pairs)
    wrong = [name for name in settings if not name.startswith("WILDBOAR_")]
    if wrong or any("=" not in pair for pair in pairs):
        raise SystemExit(f"--set takes WILDBOAR_NAME=VALUE, not {pairs}")
    return settings


def run_all(
    keys: Sequence[str],
    scenarios: Sequence[Scenario],
    options: Options,
    out: Path,
    settings: Mapping[str, str],
) -> int:
    info: dict[str, object] = dict(environment())
    if settings:
        info["wildboar_settings"] = dict(settings)
    print(", ".join(f"{k}: {v}" for k, v in info.items()))
    started = time.monotonic()
    results: list[Result] = []
    for target in targets(keys, settings):
        print(f"{target.label}:")
        with target:
            results += run_target(target, scenarios, options, started + options.budget)
    results = with_ratios(results)
    info["wall_seconds"] = round(time.monotonic() - started)
    info["options"] = asdict(options)
    info["verdicts"] = verdicts(results)
    print()
    print(table(results))
    for line in [*notes(results), *verdicts(results)]:
        print(line)
    for path in save(results, info, out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
