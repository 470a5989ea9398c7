"""Private, throw-away RabbitMQ nodes and clusters, for tests that stop or kill brokers:
the machine's shared RabbitMQ (127.0.0.1:5672) must never suffer that.

Each node is ``/usr/lib/rabbitmq/bin/rabbitmq-server`` run as the current user (root in
CI) with everything of its own: a random name (``wbt-<hex>@localhost``), an AMQP port and
an Erlang distribution port, both on 127.0.0.1 only, no plugins (so no management
listener), and its config, data, logs and pid file in a temporary directory. The parent of
those directories is the ``HOME`` of the nodes of one cluster and of ``rabbitmqctl``, with
the ``.erlang.cookie`` they share. Nothing is read from ``/etc/rabbitmq``
(``RABBITMQ_CONF_ENV_FILE`` points at an empty file) and nothing is written outside the
directory, so pytest-xdist workers can run clusters side by side. The one thing shared is
epmd on port 4369, where each node registers its unique name.

A first ``start`` makes the node's directory afresh. ``restart`` (or ``stop``, then
``start(keep_data=True)``) brings the same node back on the same ports with its data
directory as it was: durable exchanges, queues and bindings, and the persistent messages
of durable queues (quorum, or classic durable), survive it, as on a broker that an
operator restarts.

Limits: Linux only (``/proc``, ``prctl``); needs Debian's ``rabbitmq-server`` package.
A node takes some 150 MB of memory, and a 3-node cluster about 20 s to start on two CPUs.
Ports are picked at random below Linux's ephemeral range and checked free; a node that
still loses a port race is restarted on new ports. Should the test process die without
cleaning up, its nodes get SIGTERM (``PR_SET_PDEATHSIG``); that signal comes when the
*thread* that started a node ends, so start nodes from the main thread. Clusters are made
with ``join_cluster`` (classic, Mnesia-based clustering, as in RabbitMQ 3.x).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import secrets
import shutil
import signal
import socket
import string
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

BIN = Path("/usr/lib/rabbitmq/bin")  # not /usr/sbin, whose wrappers switch to user rabbitmq
START_TIMEOUT = 120.0
#: RabbitMQ's well-known ports, never handed out even when free.
RESERVED = {4369, 5671, 5672, 15672, 25672}
_handed_out: set[int] = set()


class RabbitError(RuntimeError):
    pass


def free_port() -> int:
    """A free loopback port below Linux's ephemeral range (32768-60999), so that no client
    socket and no ``rabbitmqctl`` takes it before the node binds it."""
    while True:
        port = random.randrange(10000, 32768)
        if port in RESERVED or port in _handed_out:
            continue
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Erlang does
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port


_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork


def _die_with_parent() -> None:
    _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: SIGTERM when our process dies


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return f"--- {path}: (none)"
    return "\n".join([f"--- {path}:", *text])


class RabbitNode:
    """One node; ``home`` holds its files and the cookie shared with its cluster."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.name = f"wbt-{secrets.token_hex(6)}@localhost"
        self.dir = home / self.name.partition("@")[0]
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        #: Whether it has been ready once (then its ports are its clients' to know).
        self.booted = False
        home.mkdir(parents=True, exist_ok=True)
        cookie = "".join(secrets.choice(string.ascii_uppercase) for _ in range(32))
        with contextlib.suppress(FileExistsError):
            fd = os.open(home / ".erlang.cookie", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "w") as f:
                f.write(cookie)

    def __repr__(self) -> str:
        return f"<RabbitNode {self.name} amqp={self.amqp_port} dist={self.dist_port}>"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/%2F"

    @property
    def log(self) -> Path:
        return self.dir / "rabbit.log"

    @property
    def output(self) -> Path:
        """The server's stdout and stderr: boot failures end up here, not in the log."""
        return self.dir / "output.log"

    def env(self) -> dict[str, str]:
        """A clean environment (nothing inherited but PATH) for the server and the CLI."""
        files = {
            "CONF_ENV_FILE": "rabbitmq-env.conf",
            "CONFIG_FILE": "rabbitmq.conf",
            "ADVANCED_CONFIG_FILE": "advanced.config",
            "ENABLED_PLUGINS_FILE": "enabled_plugins",
            "MNESIA_BASE": "mnesia",
            "LOG_BASE": "log",
            "LOGS": "rabbit.log",
            "PID_FILE": "pid",
            "MOTD_FILE": "motd",
        }
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": str(self.home),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            # rabbitmqctl's own distribution port: any free one (default: 35672-35682).
            "RABBITMQ_CTL_DIST_PORT_MIN": "0",
            "RABBITMQ_CTL_DIST_PORT_MAX": "0",
            # Distribution (server and CLI) on loopback only; an epmd we start likewise.
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            **{f"RABBITMQ_{key}": str(self.dir / value) for key, value in files.items()},
        }

    def start(self, *, keep_data: bool = False) -> None:
        """Launch the node; returns at once (see ``wait_ready``). A first start makes its
        directory afresh (whatever an earlier node of that name left is removed);
        ``keep_data`` starts a node stopped before as it was: same name, same ports, its
        data directory kept, so its definitions (durable exchanges, queues, bindings) and
        the persistent messages of its durable queues are there again."""
        if keep_data:
            if self.running:
                raise RabbitError(f"{self.name} is running: stop it first")
            if not (self.dir / "mnesia").is_dir():
                raise RabbitError(f"{self.name} has no data to keep: start it once first")
        else:
            self._fresh_directory()
        with self.output.open("ab" if keep_data else "wb") as output:
            # A shell that runs beam.smp as its child and turns SIGTERM into a clean stop.
            self.proc = subprocess.Popen(
                [str(BIN / "rabbitmq-server")],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=self.env(),
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (it only calls prctl)
            )

    def _fresh_directory(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        (self.dir / "rabbitmq-env.conf").write_text("")
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )
        self.booted = False

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stop the node gracefully and start it again with its data (``keep_data``);
        returns once it is ready. Its clients find it on the same port."""
        self.stop()
        self.start(keep_data=True)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the node accepts AMQP connections and reports itself booted. A node
        that lost a port to another process is restarted on new ports."""
        deadline = time.monotonic() + timeout
        restarts = 0
        while not self._port_open():
            assert self.proc is not None, "start() first"
            if self.proc.poll() is not None:
                output = self.output.read_text(errors="replace")
                lost_port = "eaddrinuse" in output or "could not bind" in output
                # A node that booted once keeps its ports: its clients know them.
                if not lost_port or restarts == 3 or self.booted:
                    raise RabbitError(f"{self.name} exited while starting\n{self.tail()}")
                restarts += 1
                self.amqp_port, self.dist_port = free_port(), free_port()
                self.start()
            elif time.monotonic() > deadline:
                raise RabbitError(f"{self.name} not up within {timeout:.0f}s\n{self.tail()}")
            time.sleep(0.2)
        # The port might be someone else's: ask the node itself.
        left = max(5, int(deadline - time.monotonic()))
        self.ctl("await_startup", "--timeout", str(left), timeout=left + 30)
        self.booted = True

    def _port_open(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.amqp_port), timeout=1).close()
        except OSError:
            return False
        return True

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> None:
        """Stop gracefully (SIGTERM), SIGKILL after ``timeout``; a no-op if not running."""
        if not self.running:
            return
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL beam.smp, so that its shell reaps it and exits; then, if need be, the
        shell's whole process group."""
        if self.proc is None or self.proc.returncode is not None:
            return
        pid = self.proc.pid
        # While the shell is not reaped, its children's pids and its group are still ours.
        with contextlib.suppress(FileNotFoundError):
            for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(child), signal.SIGKILL)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(pid, signal.SIGKILL)
            self.proc.wait()

    def signal_beam(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the node's Erlang VM (SIGSTOP: a broker that hangs)."""
        assert self.proc is not None
        beams = [pid for pid in _descendants(self.proc.pid) if _command(pid) == "beam.smp"]
        if not beams:
            raise RabbitError(f"{self.name}: no beam.smp under pid {self.proc.pid}")
        for pid in beams:
            os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while sig == signal.SIGSTOP and time.monotonic() < deadline:
            if all(_state(pid) in ("T", "") for pid in beams):
                break  # stopped, for sure, before the caller goes on
            time.sleep(0.01)

    def ctl(self, *args: str, timeout: float = 120.0) -> str:
        """``rabbitmqctl -n NODE ARGS...``; its stdout, or RabbitError with its output."""
        argv = [str(BIN / "rabbitmqctl"), "-n", self.name, *args]
        try:
            done = subprocess.run(
                argv, env=self.env(), capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as e:
            raise RabbitError(f"{' '.join(argv)}: no answer within {timeout:.0f}s") from e
        if done.returncode != 0:
            raise RabbitError(
                f"{' '.join(argv)}: exit status {done.returncode}\n"
                f"{done.stdout}{done.stderr}\n{self.tail()}"
            )
        return done.stdout

    def tail(self, lines: int = 50) -> str:
        """The ends of the node's output and log, for error messages."""
        return f"{_tail(self.output, lines)}\n{_tail(self.log, lines)}"

    def rss_kib(self) -> int:
        """Resident memory of the node's beam.smp, in KiB (0 when not running)."""
        if not self.running:
            return 0
        try:
            beam = int((self.dir / "pid").read_text())
            status = Path(f"/proc/{beam}/status").read_text()
        except (FileNotFoundError, ValueError):
            return 0
        return next(int(line.split()[1]) for line in status.splitlines() if "VmRSS" in line)


def start_cluster(tmp: Path, size: int, timeout: float = START_TIMEOUT) -> list[RabbitNode]:
    """``size`` nodes booted side by side, then joined to the first; every node is stopped
    again if anything fails."""
    nodes = [RabbitNode(tmp) for _ in range(size)]
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready(timeout)
        first, others = nodes[0], nodes[1:]
        with ThreadPoolExecutor() as pool:  # for rabbitmqctl only: nodes start in this thread
            list(pool.map(lambda node: node.ctl("stop_app"), others))
            for node in others:
                node.ctl("join_cluster", first.name)
            list(pool.map(lambda node: node.ctl("start_app"), others))
        status = json.loads(first.ctl("cluster_status", "--formatter", "json"))
        expected = sorted(node.name for node in nodes)
        if sorted(status["running_nodes"]) != expected:
            raise RabbitError(f"cluster of {expected} came up as {status}")
    except BaseException:
        stop_all(nodes)
        raise
    return nodes


def stop_all(nodes: list[RabbitNode]) -> None:
    """Stop every node, side by side, even if stopping one of them fails."""
    with ThreadPoolExecutor() as pool:
        stops = [pool.submit(node.stop) for node in nodes]
    for node, stop in zip(nodes, stops, strict=True):
        if stop.exception() is not None:
            node.kill()
    for stop in stops:
        stop.result()  # the first error, if any


@contextlib.contextmanager
def cluster(tmp: Path, size: int = 3) -> Iterator[list[RabbitNode]]:
    """A running cluster for the ``with`` block; every node is stopped afterwards."""
    nodes = start_cluster(tmp, size)
    try:
        yield nodes
    finally:
        stop_all(nodes)


ClusterFactory = Callable[[int], list[RabbitNode]]


@pytest.fixture
def rabbit_cluster(tmp_path: Path) -> Iterator[ClusterFactory]:
    """``rabbit_cluster(size)`` starts a private cluster; all are stopped after the test."""
    started: list[RabbitNode] = []

    def make(size: int = 3) -> list[RabbitNode]:
        nodes = start_cluster(tmp_path / f"rabbit{len(started)}", size)
        started.extend(nodes)
        return nodes

    try:
        yield make
    finally:
        stop_all(started)


@pytest.fixture
def private_node(tmp_path: Path) -> Iterator[RabbitNode]:
    """A RabbitMQ node of this test's own: resource alarms block every publisher of a node,
    so they are never raised on the machine's shared broker, nor is it restarted
    (``restart``, or ``stop`` then ``start(keep_data=True)``: its data is kept)."""
    node = RabbitNode(tmp_path / "rabbit")
    node.start()
    try:
        node.wait_ready()
        yield node
    finally:
        node.stop()


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first), from /proc."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
            found += [int(child) for child in children]
            todo += [int(child) for child in children]
    return found


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _state(pid: int) -> str:
    """The process state letter of /proc/PID/stat ("T": stopped), "" if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return ""
