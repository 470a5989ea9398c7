"""``python -m tests.fuzz.seeds``: regenerate the seed corpus from the tests' transcripts.

Runs the core's tests (``tests/smtp``) and the PROXY reader's (``tests/test_proxy.py``)
in this process with ``ServerConnection`` and ``ProxyParser`` recorded: every read a test
feeds, the answers it gives, the handshakes it runs, how its connection is set up. Each
connection becomes one fuzz input in the target's format (``smtp_target.Options`` or
``proxy_target.Options``, then the reads joined by the separator), written to
``tests/corpus/TARGET/seed-<sha1>``. Some SMTP seeds are also given a PROXY header in
front, from the headers the PROXY tests read. The same tests give the same files: stale
``seed-*`` files are removed; inputs merged from ``make fuzz`` (other names) are kept.

Left out: tests of Hypothesis (their inputs are random), the byte-at-a-time variants (a
split mode of the targets), tests that need a real HAProxy, ``tests/smtp/test_fuzz.py``
(fuzzing already), and transcripts over ``MAX_SEED`` octets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import pytest

from wildboar import proxy, smtp

from . import proxy_target
from . import smtp_target as T

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "corpus"
MAX_SEED = 4 * 1024
# Seeds kept per test function (its parametrized cases together), the first ones it gives.
PER_TEST = 4
# How many SMTP seeds also get a PROXY header in front (from the PROXY tests' headers).
BEHIND_PROXY = 24


@dataclass
class SmtpLog:
    test: str
    conn: smtp.ServerConnection
    reads: list[bytes] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    session: int = 0
    size: int = 0
    eof: bool = False
    during_handshake: bool = False
    started: bool = False


@dataclass
class ProxyLog:
    test: str
    max_size: int
    reads: list[bytes] = field(default_factory=list)
    eof: bool = False
    header: bytes | None = None  # the header's octets, when one was read


class Recorder:
    """A pytest plugin that records the two parsers while the tests run."""

    def __init__(self) -> None:
        self.smtp: list[SmtpLog] = []
        self.proxy: list[ProxyLog] = []
        self._by_conn: dict[int, SmtpLog] = {}
        self._by_parser: dict[int, ProxyLog] = {}
        self._test = ""

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        self._test = item.nodeid.split("[")[0]

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        items[:] = [item for item in items if self._wanted(item)]

    @staticmethod
    def _wanted(item: pytest.Item) -> bool:
        function = getattr(item, "function", None)
        if function is None or hypothesis.is_hypothesis_test(function):
            return False
        fixtures = getattr(item, "fixturenames", ())
        return "bytewise]" not in item.nodeid and "relay" not in fixtures

    @contextmanager
    def patched(self) -> Iterator[None]:
        patches = [
            (smtp.ServerConnection, "__init__", self._conn_init),
            (smtp.ServerConnection, "receive_data", self._conn_receive),
            (smtp.ServerConnection, "send", self._conn_send),
            (proxy.ProxyParser, "__init__", self._parser_init),
            (proxy.ProxyParser, "receive_data", self._parser_receive),
        ]
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
        for owner, name, make in patches:
            setattr(owner, name, make(getattr(owner, name)))
        try:
            yield
        finally:
            for owner, name, original in saved:
                setattr(owner, name, original)

    # --- ServerConnection ---

    def _conn_init(self, original: Any) -> Any:
        def init(conn: smtp.ServerConnection, *args: Any, **kwargs: Any) -> None:
            original(conn, *args, **kwargs)
            log = SmtpLog(self._test, conn)
            self.smtp.append(log)
            self._by_conn[id(conn)] = log

        return init

    def _conn_receive(self, original: Any) -> Any:
        def receive_data(conn: smtp.ServerConnection, data: bytes) -> None:
            log = self._by_conn.get(id(conn))
            if log is not None and not log.eof:
                if not log.started:  # tests may set require_tls after construction
                    log.started, log.session = True, _session_flags(conn)
                if not data:
                    log.eof = True
                elif log.size <= 4 * MAX_SEED:
                    log.during_handshake |= conn.state is smtp.State.TLS
                    log.reads.append(bytes(data))
                    log.size += len(data)
            original(conn, data)

        return receive_data

    def _conn_send(self, original: Any) -> Any:
        def send(conn: smtp.ServerConnection, answer: smtp.Answer) -> bytes:
            log = self._by_conn.get(id(conn))
            if log is not None:
                log.answers.append(_answer_kind(answer))
            result: bytes = original(conn, answer)
            return result

        return send

    # --- ProxyParser ---

    def _parser_init(self, original: Any) -> Any:
        def init(parser: proxy.ProxyParser, *args: Any, **kwargs: Any) -> None:
            original(parser, *args, **kwargs)
            log = ProxyLog(self._test, parser.max_size)
            self.proxy.append(log)
            self._by_parser[id(parser)] = log

        return init

    def _parser_receive(self, original: Any) -> Any:
        def receive_data(parser: proxy.ProxyParser, data: bytes) -> None:
            log = self._by_parser.get(id(parser))
            if log is not None and not log.eof and parser.next_event() is proxy.NEED_DATA:
                if data:
                    log.reads.append(bytes(data))
                log.eof = not data
            original(parser, data)
            event = parser.next_event()
            if log is not None and isinstance(event, proxy.ProxyHeader):
                whole = b"".join(log.reads)
                log.header = whole[: len(whole) - len(event.rest)]

        return receive_data


def _session_flags(conn: smtp.ServerConnection) -> int:
    flags = T.STARTTLS if conn.starttls else 0
    flags |= T.REQUIRE_TLS if conn.require_tls else 0
    return flags | (T.IMPLICIT_TLS if conn.tls else 0)


def _answer_kind(answer: smtp.Answer) -> int:
    if isinstance(answer, smtp.Accept):
        return T.Answer.ACCEPT if answer.text is None else T.Answer.ACCEPT_TEXT
    return T.Answer.REFUSE if answer.code >= 500 else T.Answer.DEFER


def _extensions_off(extensions: smtp.Extensions) -> int:
    names = {
        T.NO_PIPELINING: "pipelining",
        T.NO_SIZE: "size",
        T.NO_8BITMIME: "eightbitmime",
        T.NO_SMTPUTF8: "smtputf8",
        T.NO_CHUNKING: "chunking",
        T.NO_BINARYMIME: "binarymime",
        T.NO_DSN: "dsn",
    }
    return sum(flag for flag, name in names.items() if not getattr(extensions, name))


def _stream(reads: list[bytes]) -> tuple[int, bytes]:
    """The read mode and the octets: a test's one-octet reads become the octets mode."""
    if len(reads) > 1 and all(len(read) == 1 for read in reads):
        return T.Reads.OCTETS, b"".join(reads)
    return T.Reads.SEPARATOR, T.SEPARATOR.join(reads)


def smtp_seed(log: SmtpLog) -> bytes | None:
    if not log.reads:
        return None
    conn = log.conn
    session = log.session
    session |= T.LATE_HANDSHAKE if log.during_handshake else 0
    session |= 0 if log.eof else T.NO_EOF
    off = _extensions_off(conn.extensions)
    off |= T.SMALL if conn.limits != smtp.Limits() else 0
    policy = sum(kind << (2 * index) for index, kind in enumerate(log.answers[:16]))
    reads, stream = _stream(log.reads)
    options = T.Options(session=session, extensions_off=off, reads=reads, policy=policy)
    return options.encode() + stream


def proxy_seed(log: ProxyLog) -> bytes | None:
    if not log.reads:
        return None
    size = log.max_size if log.max_size in proxy_target.MAX_SIZES else proxy.DEFAULT_MAX_SIZE
    reads, stream = _stream(log.reads)
    options = proxy_target.Options(max_size=size, reads=reads, eof=log.eof)
    return options.encode() + stream


def select(logs: list[tuple[str, bytes, bytes | None]]) -> list[bytes]:
    """Seeds within ``MAX_SEED``, one per distinct input stream, ``PER_TEST`` per test;
    ``logs`` holds (test, octets fed, seed)."""
    seen: set[bytes] = set()
    per_test: dict[str, int] = {}
    kept: list[bytes] = []
    for test, fed, seed in logs:
        if seed is None or len(seed) > MAX_SEED or fed in seen:
            continue
        if per_test.get(test, 0) >= PER_TEST:
            continue
        seen.add(fed)
        per_test[test] = per_test.get(test, 0) + 1
        kept.append(seed)
    return kept


def behind_proxy(smtp_seeds: list[bytes], headers: list[bytes]) -> list[bytes]:
    """SMTP seeds with a PROXY header read first, one header of each kind in turn."""
    out: list[bytes] = []
    if not headers:
        return out
    for index, seed in enumerate(smtp_seeds[:BEHIND_PROXY]):
        options, stream = T.Options.parse(seed)
        flagged = dataclasses.replace(options, session=options.session | T.PROXY)
        header = headers[index % len(headers)]
        out.append(flagged.encode() + header + T.SEPARATOR + stream)
    return out


def record() -> Recorder:
    recorder = Recorder()
    args = ["-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-x",
            "--ignore=tests/smtp/test_fuzz.py", "tests/smtp", "tests/test_proxy.py"]  # fmt: skip
    with recorder.patched():
        code = pytest.main([str(ROOT / arg) if arg.startswith("tests/") else arg
                            for arg in args], plugins=[recorder])  # fmt: skip
    if code != 0:
        sys.exit(f"the tests failed ({code}): no seeds written")
    return recorder


def write(folder: Path, seeds: list[bytes]) -> int:
    """Write the seeds under their hash; remove the seed files no test gives any more."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {f"seed-{hashlib.sha1(seed).hexdigest()[:16]}": seed for seed in seeds}
    for stale in folder.glob("seed-*"):
        if stale.name not in names:
            stale.unlink()
    for name, seed in sorted(names.items()):
        (folder / name).write_bytes(seed)
    return len(names)


def main() -> None:
    recorder = record()
    smtp_seeds = select([(log.test, b"".join(log.reads), smtp_seed(log)) for log in recorder.smtp])
    proxy_seeds = select(
        [(log.test, b"".join(log.reads), proxy_seed(log)) for log in recorder.proxy]
    )
    headers = list(dict.fromkeys(log.header for log in recorder.proxy if log.header))
    plain = [seed for seed in smtp_seeds if not T.Options.parse(seed)[0].session & T.PROXY]
    smtp_seeds += behind_proxy(plain, headers)
    for target, seeds in (("smtp", smtp_seeds), ("proxy", proxy_seeds)):
        count = write(CORPUS / target, seeds)
        print(f"tests/corpus/{target}: {count} seeds")
    for seed in smtp_seeds:  # every seed keeps the invariants
        T.run(seed)
    for seed in proxy_seeds:
        proxy_target.run(seed)


if __name__ == "__main__":
    main()
