"""Private, throw-away HAProxy instances, for tests that read the PROXY protocol headers
a real HAProxy sends (``wildboar.proxy``, later the listeners behind a terminator).

Each instance is Debian's ``/usr/sbin/haproxy -db -f <conf>`` (package haproxy) run in the
foreground as a child of the test process, with everything of its own in a temporary
directory: the config, its stats socket (how a start is known to be complete), its log
(stderr) and, for TLS frontends, a server certificate for ``mx.example.org`` and a client
certificate for ``client.example.org`` (the frontend's only CA: ``verify optional``).
Every ``Route`` is a TCP-mode frontend on a free loopback port relaying to one server, the
test's own listener, with the test's ``server`` options (``send-proxy``,
``send-proxy-v2``, ``proxy-v2-options ...``, ``check check-send-proxy ...``).

Nothing is read from ``/etc/haproxy``, and Debian's haproxy service is never started nor
touched: installing the package starts nothing where systemd is not PID 1, nor under a
policy-rc.d that refuses starts (as ``scripts/system-deps`` installs its daemons);
``debian_service_running`` says whether it runs anyway, and the tests check it. An
instance is stopped by its PID: SIGTERM, then SIGKILL. Should the test process die first,
the instance gets SIGTERM (``PR_SET_PDEATHSIG``, sent when the *thread* that started it
ends: start instances from the main thread).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.daemons import PrivateDaemon, die_with_parent, free_port

HAPROXY = Path("/usr/sbin/haproxy")
#: ``Route.bind_host`` for a frontend on a unix socket (``address`` is then its path).
UNIX = "unix"
SERVER_NAME = "mx.example.org"
CLIENT_NAME = "client.example.org"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
#: One relay: a frontend and the backend that is wildboar. docs/operations.md shows it
#: filled in with ``DOCUMENTED`` (tests/test_proxy_docs.py keeps the two equal).
ROUTE = """\
frontend {name}
    mode tcp
    bind {bind}
    default_backend {name}_wildboar
backend {name}_wildboar
    mode tcp
    server wildboar {server} {options}
"""
DOCUMENTED = {"name": "mx", "bind": ":25", "server": "127.0.0.1:2525", "options": "send-proxy-v2"}


class HAProxyError(RuntimeError):
    pass


def debian_service_running() -> bool:
    """Whether an haproxy process runs on Debian's configuration (``/etc/haproxy``)."""
    found = subprocess.run(
        ["pgrep", "-a", "-x", "haproxy"], check=False, capture_output=True, text=True
    )
    return "/etc/haproxy" in found.stdout


@dataclass(frozen=True)
class Route:
    """A frontend on ``bind_host`` (a free port; ``UNIX``: a socket in the instance's
    directory) relaying to the server at ``server``."""

    name: str
    server: tuple[str, int]
    #: The options of the ``server`` line, as HAProxy's configuration spells them.
    options: str
    bind_host: str = "127.0.0.1"
    #: The frontend terminates TLS (the harness's certificates, client certificate optional).
    tls: bool = False


class HAProxy(PrivateDaemon):
    """One HAProxy serving ``routes``; ``address(name)`` is each frontend's."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = {route.name: route for route in routes}
        self.dir = Path(tempfile.mkdtemp(prefix="wildboar-haproxy-"))
        self._ports = {
            route.name: free_port(route.bind_host) for route in routes if route.bind_host != UNIX
        }
        self.proc: subprocess.Popen[bytes] | None = None
        if any(route.tls for route in routes):
            self._make_certificates()

    def address(self, name: str) -> tuple[str, int] | str:
        """Where the frontend ``name`` listens: (host, port), or a unix socket's path."""
        host = self.routes[name].bind_host
        return str(self.dir / f"{name}.sock") if host == UNIX else (host, self._ports[name])

    @property
    def client_certificate(self) -> Path:
        """The client's certificate and key (PEM), which the TLS frontends accept."""
        return self.dir / "client.pem"

    @property
    def log(self) -> str:
        return (self.dir / "haproxy.log").read_text(errors="replace")

    def config(self) -> str:
        lines = [
            "global",
            "    nbthread 1",
            f"    stats socket {self.dir / 'admin.sock'} mode 600 level admin",
            "    log stderr format raw daemon",
            "defaults",
            "    mode tcp",
            "    log global",
            "    timeout connect 5s",
            "    timeout client 30s",
            "    timeout server 30s",
            "    unique-id-format %[uuid()]",
        ]
        routes = "".join(self._route_config(route) for route in self.routes.values())
        return "\n".join(lines) + "\n" + routes

    def _route_config(self, route: Route) -> str:
        address = self.address(route.name)
        if isinstance(address, str):
            bind = f"unix@{address}"
        else:
            host, port = address
            bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if route.tls:
            certs = f"crt {self.dir / 'server.pem'} ca-file {self.dir / 'client-ca.pem'}"
            bind += f" ssl {certs} verify optional"
        server_host, server_port = route.server
        server = f"{server_host}:{server_port}"
        return ROUTE.format(name=route.name, bind=bind, server=server, options=route.options)

    def _make_certificates(self) -> None:
        for name, cn in (("server", SERVER_NAME), ("client", CLIENT_NAME)):
            key, cert = self.dir / f"{name}.key", self.dir / f"{name}.crt"
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-subj", f"/CN={cn}", "-keyout", str(key), "-out", str(cert)],
                check=True, capture_output=True,
            )  # fmt: skip
            (self.dir / f"{name}.pem").write_bytes(cert.read_bytes() + key.read_bytes())
        shutil.copy(self.dir / "client.crt", self.dir / "client-ca.pem")

    def start(self, timeout: float = START_TIMEOUT) -> None:
        conf = self.dir / "haproxy.cfg"
        conf.write_text(self.config())
        checked = subprocess.run(
            [str(HAPROXY), "-c", "-q", "-f", str(conf)], check=False, capture_output=True
        )
        if checked.returncode != 0:
            raise HAProxyError(f"haproxy -c: {checked.stdout!r} {checked.stderr!r}")
        with (self.dir / "haproxy.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [str(HAPROXY), "-db", "-f", str(conf)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.dir,
                preexec_fn=die_with_parent,  # noqa: PLW1509 (it only calls prctl)
            )  # fmt: skip
        self._wait_ready(time.monotonic() + timeout)

    def _wait_ready(self, deadline: float) -> None:
        """Until the stats socket answers: HAProxy binds every listener before it."""
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HAProxyError(f"haproxy exited {self.proc.returncode}: {self.log}")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as stats:
                stats.settimeout(1.0)
                stats.connect(str(self.dir / "admin.sock"))
                stats.sendall(b"show info\n")
                if b"Pid:" in stats.recv(65536):
                    return
            time.sleep(0.05)
        raise HAProxyError(f"haproxy not ready within the timeout: {self.log}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM to our HAProxy's PID (HAProxy's hard stop), SIGKILL if it stays."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
