"""What STARTTLS costs a server (``make bench``): CPU per message and per handshake, with
and without TLS session resumption, for wildboar and Postfix's ``smtpd``.

The servers, each given the same fresh self-signed certificate (ECDSA P-256 by default,
``--key rsa`` for RSA 2048), in one run:

- ``wildboar serve --handoff discard`` with one STARTTLS listener, ``--workers 1`` and
  ``--workers 2`` (every worker makes its own ``SSLContext``, and with it its own session
  ticket key: Python's ``ssl`` has no way to set one, nor to share a session cache);
- a private Postfix (``tests/postfix.py``) whose ``smtpd`` offers STARTTLS
  (``smtpd_tls_security_level = may``) and whose every message is thrown away by its
  ``discard`` transport after ``cleanup`` has queued it; its ``tlsmgr`` hands one set of
  ticket keys to all of its ``smtpd`` processes.

The client is ``bench.tls_client`` (smtp-source has no STARTTLS): 20 sessions, 1 KB
messages, in these cells:

| per conn | mode | what it shows |
|---|---|---|
| one | plain | the baseline: a connection and a message, no TLS |
| one | starttls | the same with STARTTLS and a full handshake |
| one | resume | the same, each session offering its previous connection's ticket |
| many | plain, starttls | the cost of TLS per message once the handshake is paid |

**srv us/msg** is the user + system CPU time of the server's whole process tree
(``bench.targets.tree_cpu``: wildboar's supervisor and workers; Postfix's master and every
daemon it ran, the exited ones included) per message, over the client's run and, for
Postfix, until its queue is empty again. With one message per connection it is also the
cost per connection, so **the handshake** = srv us/msg (starttls) - srv us/msg (plain),
and the resumed handshake the same with ``resume``. **resumed** is the share of TLS
connections the server resumed (``SSLSocket.session_reused``, client side).
**cli us/msg**: the client's CPU; **others**: the CPUs the rest of the machine kept busy
meanwhile.

Each cell is sized by probe runs to take about ``--seconds`` and run ``--rounds`` times,
round after round of the whole matrix; the table shows the median of each figure, and the
lowest and highest srv us/msg. A cell fails when the client reports an error or counts
fewer messages than asked; it is a ``mismatch`` when wildboar's log does not count the
messages the client did, or Postfix's queue does not empty.

Security: run as root (``make bench`` is), as the private Postfix needs; wildboar's workers
drop to ``nobody``, who owns the certificate's files. Everything is made in a temporary
directory under ``$TMPDIR`` and removed; Debian's Postfix is never started.

Output: a table on stdout and ``bench/results/tls.{csv,json,png}`` (``tls-rsa.*`` with
``--key rsa``).

    python -m bench.tls                        # about 4 minutes
    python -m bench.tls --only wildboar --rounds 1
    python -m bench.tls --key rsa
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import resource
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
from types import FrameType
from typing import Any, Protocol

from tests.daemons import free_port
from tests.postfix import Postfix, PostfixError

from . import output
from .server import RESULTS, Interrupted, environment
from .targets import (
    AS_ROOT,
    HOSTNAME,
    ROOT,
    USER,
    TargetError,
    Wildboar,
    busy_cpu,
    cpu_seconds,
    tree_cpu,
)

KB = 1024
SIZE = KB
SESSIONS = 20
SECONDS = 3.0
ROUNDS = 3
#: Probes grow until one takes this long; a measured run holds at most MAX_MESSAGES.
PROBE_SECONDS = 0.5
MAX_MESSAGES = 30_000
#: A run is stopped after this many times ``--seconds`` (at least MIN_TIMEOUT).
TIMEOUT_FACTOR = 6.0
MIN_TIMEOUT = 20.0
#: How long Postfix may take to empty its queue after a run.
DRAIN_TIMEOUT = 30.0
SERVER_NAME = "mx.bench.example"
TARGET_KEYS = ("wildboar", "postfix")
KEYS = {
    "ec": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "rsa": ["-newkey", "rsa:2048"],
}


@dataclass(frozen=True)
class Cell:
    many: bool
    mode: str  # plain, starttls, resume (bench.tls_client.MODES)

    @property
    def title(self) -> str:
        return f"{'many' if self.many else 'one'}/conn {self.mode}"


CELLS = (
    Cell(False, "plain"),
    Cell(False, "starttls"),
    Cell(False, "resume"),
    Cell(True, "plain"),
    Cell(True, "starttls"),
)


@dataclass(frozen=True)
class Result:
    target: str
    workers: int | None
    per_connection: str  # "one" or "many"
    mode: str
    messages: int
    connections: int
    seconds: float
    msg_per_s: float | None
    server_cpu_us_per_msg: float | None
    client_cpu_us_per_msg: float | None
    #: Share of the TLS connections the server resumed (client's view).
    resumed: float | None
    tls_version: str
    tls_cipher: str
    #: With several wildboar workers, each one's share of their CPU time ("48%/52%").
    worker_cpu_split: str
    others_cpus: float | None
    load: float
    status: str  # ok, failed, mismatch, skipped
    note: str
    rounds: int = 1
    server_cpu_low: float | None = None
    server_cpu_high: float | None = None

    @property
    def label(self) -> str:
        return self.target if self.workers is None else f"{self.target} x{self.workers}"

    def cell(self) -> Cell:
        return Cell(self.per_connection == "many", self.mode)


@dataclass(frozen=True)
class Options:
    seconds: float
    rounds: int
    sessions: int
    key: str


# --- the servers -------------------------------------------------------------------------


class Server(Protocol):
    """What a cell needs of a server."""

    name: str
    workers: int | None

    @property
    def label(self) -> str: ...
    @property
    def port(self) -> int: ...

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def alive(self) -> bool: ...
    def root(self) -> int | None: ...
    def worker_pids(self) -> list[int]: ...
    def before(self) -> None: ...
    def settle(self, sent: int) -> str | None: ...


def make_certificate(directory: Path, key: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``SERVER_NAME`` and its key, owned by the workers'
    user (root reads them too: Postfix's smtpd loads them before it drops privileges)."""
    cert, private = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", *KEYS[key], "-nodes", "-keyout", str(private),
         "-out", str(cert), "-days", "2", "-subj", f"/CN={SERVER_NAME}",
         "-addext", f"subjectAltName=DNS:{SERVER_NAME}"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    if AS_ROOT:
        entry = pwd.getpwnam(USER)
        for path in (cert, private):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    return cert, private


class TlsWildboar(Wildboar):
    """``wildboar serve --handoff discard`` whose one listener offers STARTTLS."""

    def __init__(self, workers: int, certificate: tuple[Path, Path]) -> None:
        super().__init__("discard", workers)
        self.name = "wildboar"
        self.certificate = certificate
        self.accepted_before = 0

    def _argv(self) -> list[str]:
        assert self.base is not None
        cert, key = self.certificate
        config = self.base / "wildboar.toml"
        config.write_text(
            f'[recipients]\ndomains = ["{HOSTNAME}"]\n\n'
            '[[listen]]\nname = "smtp"\nhost = "127.0.0.1"\nport = 0\ntls = "starttls"\n'
            f'certificate = "{cert}"\nkey = "{key}"\n'
        )
        argv = super()._argv()
        at = argv.index("--listen")
        return [*argv[:at], "--config", str(config), *argv[at + 2 :]]

    def root(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def before(self) -> None:
        # Its log lines come a little after the replies: those of earlier runs first.
        self.accepted_before = self.wait_accepted(self.delivered)

    def settle(self, sent: int) -> str | None:
        self.delivered += sent
        accepted = self.wait_accepted(self.accepted_before + sent) - self.accepted_before
        return None if accepted == sent else f"{sent:,} sent, its log says {accepted:,} accepted"


class PostfixTls:
    """A private Postfix: ``smtpd`` with STARTTLS, every message discarded once queued."""

    workers: int | None = None
    name = "postfix smtpd"

    def __init__(self, certificate: tuple[Path, Path]) -> None:
        self.certificate = certificate
        self.postfix: Postfix | None = None

    @property
    def label(self) -> str:
        return self.name

    @property
    def port(self) -> int:
        assert self.postfix is not None
        return self.postfix.port

    def settings(self) -> dict[str, str]:
        cert, key = self.certificate
        return {
            "myhostname": SERVER_NAME,
            "smtpd_tls_security_level": "may",
            "smtpd_tls_chain_files": f"{key}, {cert}",
            "default_transport": "discard",
            "relay_transport": "discard",
        }

    def start(self) -> None:
        self.postfix = Postfix(free_port(), self.settings())
        try:
            self.postfix.start()
            self.postfix.wait_serving()
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

    def worker_pids(self) -> list[int]:
        return []

    def before(self) -> None:
        pass

    def settle(self, sent: int) -> str | None:
        """Until the queue is empty again (every message discarded), bounded."""
        assert self.postfix is not None
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while (left := self.postfix.queued()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return f"{sent:,} sent, {left:,} still in the queue" if left else None


def servers(keys: Sequence[str], certificate: tuple[Path, Path]) -> list[Server]:
    made: list[Server] = []
    if "wildboar" in keys:
        made += [TlsWildboar(1, certificate), TlsWildboar(2, certificate)]
    if "postfix" in keys:
        made.append(PostfixTls(certificate))
    return made


# --- one run -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientRun:
    report: dict[str, Any]
    asked: int
    client_cpu: float

    @property
    def messages(self) -> int:
        return int(self.report.get("messages", 0))

    @property
    def failure(self) -> str | None:
        errors = self.report.get("errors") or []
        if errors:
            return f"{self.report.get('error_count')} errors, first: {errors[0]}"
        if self.messages != self.asked:
            return f"the client counted {self.messages:,} of {self.asked:,} messages"
        return None


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def client(port: int, cell: Cell, messages: int, options: Options) -> ClientRun:
    """``bench.tls_client`` for one run, in a process of its own."""
    timeout = max(MIN_TIMEOUT, TIMEOUT_FACTOR * options.seconds)
    argv = [sys.executable, "-m", "bench.tls_client", "--port", str(port), "--mode", cell.mode]
    argv += ["--sessions", str(options.sessions), "--messages", str(messages)]
    argv += ["--size", str(SIZE), "--timeout", str(timeout), *(["--many"] if cell.many else [])]
    before = _children_cpu()
    try:
        done = subprocess.run(
            argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout + 30, check=False
        )
        report = json.loads(done.stdout) if done.returncode == 0 else {}
        if not report:
            report = {"errors": [f"exit {done.returncode}: {done.stderr.strip()[-300:]}"]}
    except subprocess.TimeoutExpired:
        report = {"errors": [f"the client did not finish in {timeout + 30:.0f} s"]}
    return ClientRun(report, messages, _children_cpu() - before)


def _blank(server: Server, cell: Cell, status: str, note: str) -> Result:
    return Result(
        target=server.name,
        workers=server.workers,
        per_connection="many" if cell.many else "one",
        mode=cell.mode,
        messages=0,
        connections=0,
        seconds=0.0,
        msg_per_s=None,
        server_cpu_us_per_msg=None,
        client_cpu_us_per_msg=None,
        resumed=None,
        tls_version="",
        tls_cipher="",
        worker_cpu_split="",
        others_cpus=None,
        load=os.getloadavg()[0],
        status=status,
        note=note,
    )


def _cpu(server: Server) -> tuple[float, dict[int, float], float]:
    """The server's tree's CPU seconds, each worker's, and the machine's busy seconds."""
    root = server.root()
    tree = 0.0 if root is None else tree_cpu(root)
    return tree, cpu_seconds(server.worker_pids()), busy_cpu()


def _split(before: dict[int, float], after: dict[int, float]) -> str:
    used = [after[pid] - before.get(pid, 0.0) for pid in after]
    if len(used) < 2 or sum(used) <= 0:
        return ""
    return "/".join(f"{u / sum(used):.0%}" for u in used)


def _top(counts: dict[str, int]) -> str:
    return max(counts, key=lambda k: counts[k]) if counts else ""


def timed(server: Server, cell: Cell, messages: int, options: Options) -> Result:
    """One measured run, with the checks that make its figures trustworthy."""
    result = _blank(server, cell, "ok", "")
    server.before()
    tree, workers, busy = _cpu(server)
    run = client(server.port, cell, messages, options)
    mismatch = server.settle(run.messages)
    tree_after, workers_after, busy_after = _cpu(server)
    if run.failure is not None:
        return replace(result, status="failed", note=run.failure)
    done, report = run.messages, run.report
    tree_used, seconds = tree_after - tree, float(report["seconds"])
    tls = int(report["tls"])
    return replace(
        result,
        messages=done,
        connections=int(report["connections"]),
        seconds=seconds,
        msg_per_s=done / seconds,
        server_cpu_us_per_msg=tree_used / done * 1e6,
        client_cpu_us_per_msg=run.client_cpu / done * 1e6,
        resumed=int(report["resumed"]) / tls if tls else None,
        tls_version=_top(report["versions"]),
        tls_cipher=_top(report["ciphers"]),
        worker_cpu_split=_split(workers, workers_after),
        others_cpus=max(0.0, busy_after - busy - tree_used - run.client_cpu) / seconds,
        status="mismatch" if mismatch else "ok",
        note=mismatch or "",
    )


def _least(options: Options) -> int:
    return max(2 * options.sessions, 200)


def calibrate(server: Server, cell: Cell, options: Options) -> int | str:
    """Messages that take about ``options.seconds``; or why a probe failed."""
    count = _least(options)
    while True:
        server.before()
        run = client(server.port, cell, count, options)
        server.settle(run.messages)
        if run.failure is not None:
            return f"probe: {run.failure}"
        seconds = float(run.report["seconds"])
        if seconds >= PROBE_SECONDS or count >= MAX_MESSAGES:
            break
        count = min(count * 4, MAX_MESSAGES)
    wanted = round(count / seconds * options.seconds)
    return max(_least(options), min(wanted, MAX_MESSAGES))


def measure(server: Server, cell: Cell, options: Options) -> Result:
    try:
        if not server.alive():
            server.stop()
            server.start()
        count = calibrate(server, cell, options)
        if isinstance(count, str):
            result = _blank(server, cell, "failed", count)
        else:
            result = timed(server, cell, count, options)
    except TargetError as error:
        result = _blank(server, cell, "failed", str(error).splitlines()[0])
    if result.status != "ok":  # a fresh server for the next cell
        server.stop()
    return result


# --- the matrix --------------------------------------------------------------------------


def _progress(r: Result) -> None:
    cpu = f"{r.server_cpu_us_per_msg:7,.0f} us/msg" if r.server_cpu_us_per_msg else r.status
    rate = f"{r.msg_per_s:7,.0f} msg/s" if r.msg_per_s else ""
    print(f"  {r.label:<16} {r.cell().title:<18} {r.messages:>7,} {rate:>13} {cpu:>14}  {r.note}")
    sys.stdout.flush()


def run_round(servers: Sequence[Server], options: Options) -> list[Result]:
    results = []
    for server in servers:
        try:
            server.start()
        except TargetError as error:
            server.stop()  # whatever it started, and its directory
            note = str(error).splitlines()[0]
            results += [_blank(server, c, "failed", note) for c in CELLS]
            continue
        try:
            for cell in CELLS:
                results.append(measure(server, cell, options))
                _progress(results[-1])
        finally:
            server.stop()
    return results


def combine(rounds: Sequence[Result]) -> Result:
    """One cell over its rounds: counts added up, each figure the median of the rounds that
    were ok; the status and note of the first that was not, if any."""
    ok = [r for r in rounds if r.status == "ok"]
    bad = next((r for r in rounds if r.status != "ok"), None)

    def median(figure: Callable[[Result], float | None]) -> float | None:
        values = [v for r in ok if (v := figure(r)) is not None]
        return statistics.median(values) if values else None

    cpus = [r.server_cpu_us_per_msg for r in ok if r.server_cpu_us_per_msg is not None]
    return replace(
        rounds[0],
        messages=sum(r.messages for r in rounds),
        connections=sum(r.connections for r in rounds),
        seconds=sum(r.seconds for r in rounds),
        msg_per_s=median(lambda r: r.msg_per_s),
        server_cpu_us_per_msg=median(lambda r: r.server_cpu_us_per_msg),
        client_cpu_us_per_msg=median(lambda r: r.client_cpu_us_per_msg),
        resumed=median(lambda r: r.resumed),
        others_cpus=median(lambda r: r.others_cpus),
        worker_cpu_split=" ".join(r.worker_cpu_split for r in ok if r.worker_cpu_split),
        load=max(r.load for r in rounds),
        status=bad.status if bad else "ok",
        note="; ".join(dict.fromkeys(r.note for r in rounds if r.note)),
        rounds=len(rounds),
        server_cpu_low=min(cpus, default=None),
        server_cpu_high=max(cpus, default=None),
    )


def combined(results: Sequence[Result]) -> list[Result]:
    cells: dict[tuple[str, Cell], list[Result]] = {}
    for r in results:
        cells.setdefault((r.label, r.cell()), []).append(r)
    return [combine(rounds) for rounds in cells.values()]


# --- derived figures ---------------------------------------------------------------------


def _cpu_of(results: Sequence[Result], label: str, cell: Cell) -> Result | None:
    found = (r for r in results if r.label == label and r.cell() == cell)
    return next((r for r in found if r.status == "ok" and r.server_cpu_us_per_msg), None)


def _extra(results: Sequence[Result], label: str, cell: Cell) -> float | None:
    """Server CPU of ``cell`` beyond the plaintext cell of the same connections."""
    mine, plain = (
        _cpu_of(results, label, cell),
        _cpu_of(results, label, replace(cell, mode="plain")),
    )
    if mine is None or plain is None:
        return None
    assert mine.server_cpu_us_per_msg is not None and plain.server_cpu_us_per_msg is not None
    return mine.server_cpu_us_per_msg - plain.server_cpu_us_per_msg


@dataclass(frozen=True)
class Handshake:
    """A server's handshake costs, in server CPU us per connection beyond plaintext."""

    full: float
    #: One resumed handshake: the resume cell mixes resumed ones (``share``) and full ones
    #: (each session's first connection, and tickets the server did not take).
    resumed: float
    share: float


def handshake(results: Sequence[Result], label: str) -> Handshake | None:
    full, mixed = _extra(results, label, CELLS[1]), _extra(results, label, CELLS[2])
    cell = _cpu_of(results, label, CELLS[2])
    if full is None or mixed is None or cell is None or not cell.resumed:
        return None
    resumed = (mixed - (1 - cell.resumed) * full) / cell.resumed
    return Handshake(full, resumed, cell.resumed)


def handshakes(results: Sequence[Result]) -> list[str]:
    """Per server: the full and the resumed handshake's CPU, TLS's per message."""
    lines = []
    for label in dict.fromkeys(r.label for r in results):
        cost, bulk = handshake(results, label), _extra(results, label, CELLS[4])
        many = f"with many messages per connection, TLS adds {_us(bulk)} per message"
        if cost is None:
            lines.append(f"{label}: no handshake figure; {many}")
            continue
        lines.append(
            f"{label}: a full handshake costs {_us(cost.full)} per connection, a resumed one"
            f" {_us(cost.resumed)} ({cost.share:.0%} of offered tickets resumed); {many}"
        )
    return lines


def sharing(results: Sequence[Result]) -> str | None:
    """What one ticket key shared by the workers would save wildboar x2: a resumption's
    saving (measured with one worker, where every ticket comes back to its issuer) on the
    connections that two workers could not resume."""
    one, two = handshake(results, "wildboar x1"), handshake(results, "wildboar x2")
    if one is None or two is None:
        return None
    missed = max(0.0, one.share - two.share)
    saving = one.full - one.resumed
    shares = (
        f"ticket keys per worker: wildboar x2 resumed {two.share:.0%} of offered tickets"
        f" (x1: {one.share:.0%})"
    )
    if saving <= 0:
        return (
            f"{shares}; a resumed handshake costs no less than a full one here"
            f" ({_us(-saving)} more), so one key shared by the workers would save nothing"
        )
    return (
        f"{shares}; a resumption saves {_us(saving)}, so one key shared by the workers"
        f" would save about {_us(saving * missed)} per connection"
    )


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} us"


# --- reporting ---------------------------------------------------------------------------

COLUMNS = (
    "target",
    "per conn",
    "mode",
    "messages",
    "conns",
    "seconds",
    "msg/s",
    "srv us/msg",
    "low-high",
    "cli us/msg",
    "resumed",
    "tls",
    "others",
    "status",
)


def _num(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def _row(r: Result) -> tuple[str, ...]:
    spread = f"{_num(r.server_cpu_low)}-{_num(r.server_cpu_high)}" if r.server_cpu_low else "-"
    return (
        r.label,
        r.per_connection,
        r.mode,
        f"{r.messages:,}",
        f"{r.connections:,}",
        f"{r.seconds:.2f}",
        _num(r.msg_per_s),
        _num(r.server_cpu_us_per_msg),
        spread,
        _num(r.client_cpu_us_per_msg),
        _num(r.resumed, ".0%") if r.mode == "resume" else "-",
        f"{r.tls_version} {r.tls_cipher}".strip() or "-",
        _num(r.others_cpus, ".2f"),
        r.status,
    )


def table(results: Sequence[Result]) -> str:
    rows = [_row(r) for r in results]
    widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    left = {0, 1, 2, 11, 13}

    def fmt(row: Sequence[str]) -> str:
        pairs = enumerate(zip(row, widths, strict=True))
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in pairs).rstrip()

    lines = [fmt(COLUMNS), "  ".join("-" * w for w in widths)]
    for i, (r, row) in enumerate(zip(results, rows, strict=True)):
        if i and r.label != results[i - 1].label:
            lines.append("")
        lines.append(fmt(row))
    return "\n".join(lines)


def plot(results: Sequence[Result], info: dict[str, object], path: Path) -> Path | None:
    plt = output.pyplot()
    if plt is None:
        return None
    labels = list(dict.fromkeys(r.label for r in results))
    fig, ax = plt.subplots(figsize=(12, 6))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        xs, heights = [], []
        for x, cell in enumerate(CELLS):
            found = _cpu_of(results, label, cell)
            if found is not None and found.server_cpu_us_per_msg is not None:
                xs.append(x - 0.4 + width * (i + 0.5))
                heights.append(found.server_cpu_us_per_msg)
        bars = ax.bar(xs, heights, width, label=label, color=f"C{i}")
        ax.bar_label(bars, [f"{h:,.0f}" for h in heights], fontsize=7, padding=2)
    ax.set_xticks(range(len(CELLS)), [c.title.replace(" ", "\n") for c in CELLS])
    ax.set_ylabel("server CPU per message, us (one/conn: per connection)")
    ax.legend(fontsize="small")
    ax.set_title(
        f"STARTTLS, 1 KB, {info.get('sessions')} sessions, {info.get('key')} key:"
        f" {info['python']}, {info['cpu']} ({info['nproc']} CPUs)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- main --------------------------------------------------------------------------------


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.tls", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=SECONDS, help="length of a cell")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="runs of every cell")
    parser.add_argument("--sessions", type=int, default=SESSIONS)
    parser.add_argument("--key", choices=tuple(KEYS), default="ec", help="the certificate's")
    parser.add_argument("--only", choices=TARGET_KEYS, action="append", help="these servers")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the results")
    args = parser.parse_args(argv)
    if not AS_ROOT and "postfix" in (args.only or TARGET_KEYS):
        raise SystemExit("the private Postfix needs root: run as root, or --only wildboar")
    signal.signal(signal.SIGTERM, _interrupt)
    options = Options(args.seconds, args.rounds, args.sessions, args.key)
    try:
        return run_all(args.only or TARGET_KEYS, options, args.out)
    except (KeyboardInterrupt, Interrupted) as stop:  # every server is stopped by now
        print(f"interrupted ({str(stop) or 'SIGINT'}): no results written", file=sys.stderr)
        return 130


@contextlib.contextmanager
def _workspace() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="wildboar-bench-tls-"))
    try:
        directory.chmod(0o755)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run_all(keys: Sequence[str], options: Options, out: Path) -> int:
    info: dict[str, object] = dict(environment())
    info.update(sessions=options.sessions, size=SIZE, key=options.key)
    print(", ".join(f"{k}: {v}" for k, v in info.items()))
    started = time.monotonic()
    rounds: list[Result] = []
    with _workspace() as directory:
        chosen = servers(keys, make_certificate(directory, options.key))
        for number in range(1, options.rounds + 1):
            print(f"round {number} of {options.rounds}:")
            rounds += run_round(chosen, options)
    results = combined(rounds)
    derived = [*handshakes(results), *filter(None, [sharing(results)])]
    info.update(wall_seconds=round(time.monotonic() - started), options=asdict(options))
    info["handshakes"] = derived
    print()
    print(table(results))
    notes = [f"{r.label}, {r.cell().title}: {r.status}: {r.note}" for r in results if r.note]
    for line in [*notes, *derived]:
        print(line)
    name = "tls" if options.key == "ec" else f"tls-{options.key}"
    for path in output.save(name, results, info, out, lambda p: plot(results, info, p)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
