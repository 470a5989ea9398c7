"""Transactions per second through the sans-IO core, in memory (``make bench-core``).

One ``ServerConnection`` per scenario: greeted and EHLO'd once, then as many mail
transactions (one sender, one recipient) as fit in the time box. The server side answers
every question with ``smtp.Accept()`` and collects ``MessageData`` into a fresh
``bytearray`` per message, as a server would. The client side is precomputed: the bytes
of each feed and, learned and checked once before timing, the exact reply bytes each feed
must produce; in the timed loop every reply is compared with them.

Scenarios: {1 KB, 1 MB} x {one command per feed, waiting for each reply (no PIPELINING);
MAIL+RCPT+DATA in one feed (PIPELINING)}, the content (dot-stuffed) and the final "."
always in one feed; a 1 MB BDAT (CHUNKING) transaction in one feed; and, for comparison
with real socket reads, 1 MB pipelined with the content fed in 64 KiB reads.

Output: a plain-text table on stdout and ``bench/results/core.{png,csv,json}``. The plot
needs matplotlib (the ``bench`` extra); without it the plot is skipped.

    python -m bench.core                    # all scenarios
    python -m bench.core --profile 1k-pipe  # cProfile one scenario, top functions
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from wildboar import smtp

from . import output

HOST = "mx.example.org"
KB = 1024
MB = 1024 * 1024
#: The session's command budget is raised so one connection can carry every transaction.
LIMITS = smtp.Limits(commands=10**9)
RESULTS = Path(__file__).resolve().parent / "results"
#: A server aiming at this many messages per second per core.
TARGET_PER_CORE = 10_000

Mode = Literal["plain", "pipelined", "bdat"]
Step = tuple[bytes, bytes]  # bytes fed, exact reply bytes expected


class BenchError(Exception):
    """The core did something a correct session would not: the figures would be void."""


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    size: int
    mode: Mode
    #: Feed the content in reads of this many octets; None: all of it in one feed.
    read: int | None
    #: Stop after this many timed transactions even if the time box is not used up.
    max_tx: int
    warmup: int


SCENARIOS = (
    Scenario("1k-plain", "1 KB DATA, no pipelining", KB, "plain", None, 200_000, 200),
    Scenario("1k-pipe", "1 KB DATA, pipelined", KB, "pipelined", None, 200_000, 200),
    Scenario("1m-plain", "1 MB DATA, no pipelining", MB, "plain", None, 2_000, 3),
    Scenario("1m-pipe", "1 MB DATA, pipelined", MB, "pipelined", None, 2_000, 3),
    Scenario("1m-bdat", "1 MB BDAT LAST, pipelined", MB, "bdat", None, 2_000, 3),
    Scenario(
        "1m-pipe-64k", "1 MB DATA, pipelined, 64 KiB reads", MB, "pipelined", 64 * KB, 2_000, 3
    ),
)


@dataclass(frozen=True)
class Result:
    scenario: str
    title: str
    message_octets: int
    transactions: int
    seconds: float
    tx_per_s: float
    mb_per_s: float
    us_per_tx: float


# --- the message -----------------------------------------------------------------------

_HEADERS = (
    "Received: from client.example (client.example [192.0.2.10])\r\n"
    "\tby mx.example.org (wildboar) with ESMTPS id 4VfXk21Lm3z9\r\n"
    "\tfor <bob@example.org>; Tue, 14 May 2024 09:21:07 +0000\r\n"
    "From: Alice Example <alice@example.com>\r\n"
    "To: Bob Example <bob@example.org>\r\n"
    "Subject: Quarterly report, draft 3\r\n"
    "Date: Tue, 14 May 2024 09:21:05 +0000\r\n"
    "Message-ID: <20240514092105.4711.alice@client.example>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=us-ascii\r\n"
    "Content-Transfer-Encoding: 7bit\r\n"
    "\r\n"
)
_PROSE = (
    "the quarterly figures show revenue ahead of plan while costs stayed flat and the team "
    "expects shipping volumes to rise again next month once the new warehouse opens please "
    "review the attached notes before thursday and send any corrections to me"
)
_WORDS = tuple(_PROSE.split())
LINE = 76  # body line length without CRLF
#: Every fifth body line starts with one of these; every 20th is a lone ".".
_DOT_HEADS = (".", "...", ". ", ".-- ")


def _body_line(rng: random.Random, index: int) -> str:
    if index % 20 == 17:
        return "."
    line = _DOT_HEADS[index // 5 % len(_DOT_HEADS)] if index % 5 == 2 else ""
    while len(line) < LINE:
        line += rng.choice(_WORDS) + " "
    return line[:LINE]


def make_message(size: int) -> bytes:
    """RFC 5322 content of exactly ``size`` octets: headers, then 76-character lines,
    every fifth starting with "." and every 20th a lone "." so dot-stuffing is exercised."""
    rng = random.Random(size)
    lines = [_HEADERS]
    length = len(_HEADERS)
    index = 0
    while length + LINE + 2 <= size:
        line = _body_line(rng, index) + "\r\n"
        lines.append(line)
        length += len(line)
        index += 1
    left = size - length
    if left == 1:  # lengthen the last line by one octet rather than end on a lone "\r"
        lines[-1] = lines[-1][:-2] + "x\r\n"
    elif left >= 2:
        lines.append(_body_line(rng, index)[: left - 2] + "\r\n")
    out = "".join(lines)
    message = out.encode("ascii")
    if len(message) != size or b"\r\n." not in message:
        raise BenchError("message generator is wrong")
    return message


def dot_stuff(content: bytes) -> bytes:
    """What a client sends after DATA's 354: content with leading dots doubled, then "."."""
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


# --- the server side -------------------------------------------------------------------


class Server:
    """The I/O layer's loop around one ``ServerConnection``, minus the I/O."""

    def __init__(self) -> None:
        self.conn = smtp.ServerConnection(HOST, limits=LIMITS)
        self.content = bytearray()
        self.last = bytearray()
        self.messages = 0
        self._accept = smtp.Accept()

    def feed(self, data: bytes) -> bytes:
        self.conn.receive_data(data)
        return self.pump()

    def pump(self) -> bytes:
        conn = self.conn
        out: list[bytes] = []
        while True:
            event = conn.next_event()
            if event is smtp.NEED_DATA:
                break
            if isinstance(event, smtp.MessageData):
                self.content += event.data
            elif isinstance(event, smtp.MessageComplete):
                self.last = self.content
                self.content = bytearray()
                self.messages += 1
                out.append(conn.send(self._accept))
            elif isinstance(event, (smtp.ClientConnected, smtp.Hello, smtp.MailFrom, smtp.RcptTo)):
                out.append(conn.send(self._accept))
            else:  # PAUSED (closed), TransactionAborted, ConnectionClosed
                raise BenchError(f"unexpected {event!r}; replies {out!r}")
        out.append(conn.data_to_send())
        return b"".join(out)


# --- the client side -------------------------------------------------------------------


def _codes(replies: bytes) -> list[int]:
    """The code of each complete reply (multi-line replies count once)."""
    codes = []
    for line in replies.split(b"\r\n")[:-1]:
        if line[3:4] == b" ":
            codes.append(int(line[:3]))
    return codes


def _plan(scenario: Scenario, message: bytes) -> list[tuple[bytes, list[int]]]:
    """What the client feeds in one transaction, and the reply codes each feed must get."""
    mail = b"MAIL FROM:<alice@example.com> SIZE=%d\r\n" % len(message)
    rcpt = b"RCPT TO:<bob@example.org>\r\n"
    if scenario.mode == "bdat":
        bdat = b"BDAT %d LAST\r\n" % len(message)
        return [(mail + rcpt + bdat + message, [250, 250, 250])]
    content = dot_stuff(message)
    if scenario.read is None:
        pieces = [content]
    else:
        pieces = [content[i : i + scenario.read] for i in range(0, len(content), scenario.read)]
    tail: list[tuple[bytes, list[int]]] = [(piece, []) for piece in pieces[:-1]]
    tail.append((pieces[-1], [250]))
    if scenario.mode == "pipelined":
        return [(mail + rcpt + b"DATA\r\n", [250, 250, 354]), *tail]
    return [(mail, [250]), (rcpt, [250]), (b"DATA\r\n", [354]), *tail]


def _open(scenario: Scenario) -> Server:
    server = Server()
    if _codes(server.pump()) != [220]:
        raise BenchError("no greeting")
    ehlo = server.feed(b"EHLO client.example\r\n")
    if _codes(ehlo) != [250] or b"PIPELINING" not in ehlo or b"CHUNKING" not in ehlo:
        raise BenchError(f"EHLO reply {ehlo!r}")
    return server


def _learn(server: Server, plan: list[tuple[bytes, list[int]]]) -> list[Step]:
    """Run one transaction checking reply codes; the exact replies become the expectation."""
    steps = []
    for data, codes in plan:
        replies = server.feed(data)
        if _codes(replies) != codes:
            raise BenchError(f"replies {replies!r}, expected codes {codes}")
        steps.append((data, replies))
    return steps


def _transactions(server: Server, steps: Sequence[Step], count: int) -> None:
    for _ in range(count):
        for data, expected in steps:
            if server.feed(data) != expected:
                raise BenchError(f"reply to {data[:40]!r}... differs from {expected!r}")


def _check_content(server: Server, message: bytes, done: int) -> None:
    if server.messages != done:
        raise BenchError(f"{server.messages} messages accepted, {done} sent")
    if server.last != message:
        raise BenchError("the content arrived altered (dot-unstuffing or framing is broken)")


def run(scenario: Scenario, min_seconds: float, cap_seconds: float) -> Result:
    message = make_message(scenario.size)
    server = _open(scenario)
    steps = _learn(server, _plan(scenario, message))
    _transactions(server, steps, scenario.warmup - 1)
    _check_content(server, message, scenario.warmup)
    gc.collect()

    clock = time.perf_counter
    count = 0
    start = clock()
    while True:
        _transactions(server, steps, 1)
        count += 1
        elapsed = clock() - start
        if elapsed >= min_seconds or count >= scenario.max_tx or elapsed >= cap_seconds:
            break
    _check_content(server, message, scenario.warmup + count)
    return Result(
        scenario=scenario.key,
        title=scenario.title,
        message_octets=len(message),
        transactions=count,
        seconds=elapsed,
        tx_per_s=count / elapsed,
        mb_per_s=count * len(message) / elapsed / 1e6,
        us_per_tx=elapsed / count * 1e6,
    )


# --- reporting -------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": model,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
    }


COLUMNS = ("scenario", "transactions", "seconds", "tx/s", "MB/s", "us/tx")


def table(results: Sequence[Result]) -> str:
    rows = [
        (
            r.title,
            f"{r.transactions:,}",
            f"{r.seconds:.2f}",
            f"{r.tx_per_s:,.0f}",
            f"{r.mb_per_s:,.1f}",
            f"{r.us_per_tx:,.1f}",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]

    def fmt(row: Sequence[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        return "  ".join(cells)

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(COLUMNS), rule, *(fmt(row) for row in rows)])


def verdict(results: Sequence[Result]) -> str:
    pipe = next((r for r in results if r.scenario == "1k-pipe"), None)
    if pipe is None:
        return ""
    budget = 1e6 / TARGET_PER_CORE
    share = pipe.us_per_tx / budget
    return (
        f"Target {TARGET_PER_CORE:,} messages/s per core = {budget:.0f} us per message for the"
        f" whole server; the core's 1 KB pipelined transaction takes {pipe.us_per_tx:.1f} us"
        f" ({share:.0%} of that budget, {pipe.tx_per_s / TARGET_PER_CORE:.1f}x the target)."
    )


def save(results: Sequence[Result], info: dict[str, str], out: Path) -> list[Path]:
    return output.save("core", results, info, out, lambda path: plot(results, info, path))


def plot(results: Sequence[Result], info: dict[str, str], path: Path) -> Path | None:
    plt = output.pyplot()
    if plt is None:
        return None

    titles = [r.title for r in results][::-1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.6 * len(results) + 1.8), sharey=True)
    left.barh(titles, [r.tx_per_s for r in results][::-1], color="tab:blue")
    left.set_xscale("log")
    left.axvline(TARGET_PER_CORE, color="tab:red", linestyle="--", label="10,000 msg/s target")
    left.set_xlabel("transactions/s (log)")
    left.legend(loc="lower right", fontsize="small")
    right.barh(titles, [r.mb_per_s for r in results][::-1], color="tab:green")
    right.set_xlabel("MB/s of message content")
    for ax, values in (
        (left, [r.tx_per_s for r in results]),
        (right, [r.mb_per_s for r in results]),
    ):
        for y, value in enumerate(values[::-1]):
            ax.annotate(f" {value:,.0f}", (value, y), va="center", fontsize="small")
    fig.suptitle(f"wildboar core in memory: {info['python']}, {info['cpu']} ({info['nproc']} CPUs)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def profile(scenario: Scenario, seconds: float, top: int) -> None:
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    result = run(scenario, seconds, seconds)
    profiler.disable()
    print(f"{scenario.title}: {result.transactions:,} transactions under cProfile")
    stats = pstats.Stats(profiler)
    stats.strip_dirs().sort_stats(pstats.SortKey.CUMULATIVE).print_stats(top)


def main(argv: Sequence[str] | None = None) -> int:
    keys = [s.key for s in SCENARIOS]
    parser = argparse.ArgumentParser(
        prog="python -m bench.core", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=1.0, help="time box per scenario")
    parser.add_argument("--cap", type=float, default=5.0, help="hard cap per scenario, seconds")
    parser.add_argument("--only", choices=keys, action="append", help="run these scenarios")
    parser.add_argument("--profile", choices=keys, help="cProfile one scenario instead")
    parser.add_argument("--top", type=int, default=25, help="functions shown with --profile")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the results")
    args = parser.parse_args(argv)

    by_key = {s.key: s for s in SCENARIOS}
    if args.profile:
        profile(by_key[args.profile], args.seconds, args.top)
        return 0
    info = machine()
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, {info['python']}, {info['platform']}")
    results = []
    for scenario in [by_key[k] for k in args.only] if args.only else SCENARIOS:
        results.append(run(scenario, args.seconds, min(args.cap, 5.0)))
    print(table(results))
    if line := verdict(results):
        print(line)
    for path in save(results, info, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
