"""Private, throw-away nginx mail proxies, for tests of wildboar behind nginx's XCLIENT.

Each instance is Debian's ``/usr/sbin/nginx`` (packages nginx and libnginx-mod-mail) run
in the foreground (``daemon off``) as a child of the test process, in a session of its
own, with everything of its own in a temporary directory, its prefix (``-p``): the
configuration, its pid file (how a start is known to be complete: nginx writes it once its
listeners are bound) and its error log. One ``mail`` server listens for SMTP on a free
loopback port with ``xclient on`` and ``smtp_auth none``, and asks the instance's own
``auth_http`` endpoint where to relay each session (nginx asks it for every SMTP session,
after the client's RCPT TO, even without authentication): a Python HTTP server on a
loopback port of its own, in a thread, that answers ``Auth-Status: OK`` with
``Auth-Server`` and ``Auth-Port`` naming wildboar, and keeps the headers of every request.

The ``mail`` block is ``MAIL``, which docs/operations.md shows filled in with
``DOCUMENTED`` (tests/test_proxy_docs.py keeps the two equal). Nothing is read
from ``/etc/nginx``, and Debian's nginx service is never started nor touched (see
``scripts/system-deps``); ``debian_service_running`` says whether it runs anyway, and the
tests check it. An instance is stopped by its PID (SIGTERM, then SIGKILL), and whatever of
its process group is left (its workers) by their PIDs after it. Should the test process
die first, the master gets SIGTERM (``PR_SET_PDEATHSIG``: start instances from the main
thread).
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from tests.daemons import PrivateDaemon, alive, die_with_parent, free_port, process_group

NGINX = Path("/usr/sbin/nginx")
MAIL_MODULE = Path("/usr/lib/nginx/modules/ngx_mail_module.so")
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
#: The mail proxy: SMTP in, XCLIENT to wildboar, which the auth_http endpoint names.
MAIL = """\
mail {{
    server_name {server_name};
    auth_http {auth_http};
    proxy_pass_error_message on;
    xclient on;
    server {{
        listen {listen};
        protocol smtp;
        smtp_auth none;
        smtp_capabilities "SIZE 10240000" 8BITMIME;
    }}
}}
"""
DOCUMENTED = {
    "server_name": "mx.example.org",
    "auth_http": "127.0.0.1:9000/auth",
    "listen": "0.0.0.0:25",
}
SERVER_NAME = "mx.example.org"


class NginxError(RuntimeError):
    pass


def debian_service_running() -> bool:
    """Whether an nginx master runs on Debian's configuration (``/etc/nginx``)."""
    found = subprocess.run(
        ["pgrep", "-a", "-x", "nginx"], check=False, capture_output=True, text=True
    )
    return any("-p" not in line.split() for line in found.stdout.splitlines() if "master" in line)


class AuthEndpoint:
    """nginx's ``auth_http``: every session may go, to ``upstream``; requests are kept."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.requests: list[dict[str, str]] = []
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                endpoint.requests.append(dict(self.headers.items()))
                self.send_response(200)
                self.send_header("Auth-Status", "OK")
                self.send_header("Auth-Server", upstream[0])
                self.send_header("Auth-Port", str(upstream[1]))
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass  # nothing on the test's stderr

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host!s}:{port}/auth"

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Nginx(PrivateDaemon):
    """One nginx mail proxy on ``address``, relaying every session to ``upstream``."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="wildboar-nginx-"))
        self.dir.chmod(0o755)  # its workers run as nobody when we are root
        self.address = ("127.0.0.1", free_port("127.0.0.1"))
        self.auth = AuthEndpoint(upstream)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def config(self) -> str:
        host, port = self.address
        mail = MAIL.format(
            server_name=SERVER_NAME, auth_http=self.auth.url, listen=f"{host}:{port}"
        )
        return "\n".join(
            [
                f"load_module {MAIL_MODULE};",
                "daemon off;",
                "worker_processes 1;",
                f"pid {self.dir / 'nginx.pid'};",
                f"error_log {self.dir / 'error.log'} info;",
                "events { worker_connections 64; }",
                mail,
            ]
        )

    def _command(self, *extra: str) -> list[str]:
        conf, log = self.dir / "nginx.conf", self.dir / "error.log"
        return [str(NGINX), "-p", f"{self.dir}/", "-c", str(conf), "-e", str(log), *extra]

    def start(self, timeout: float = START_TIMEOUT) -> None:
        (self.dir / "nginx.conf").write_text(self.config())
        checked = subprocess.run(self._command("-t", "-q"), check=False, capture_output=True)
        if checked.returncode != 0:
            raise NginxError(f"nginx -t: {checked.stdout!r} {checked.stderr!r} {self.log}")
        self.auth.start()
        self.proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd=self.dir, start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 (it only calls prctl)
        )  # fmt: skip
        self._wait_ready(time.monotonic() + timeout)

    def _wait_ready(self, deadline: float) -> None:
        """Until the pid file names our process: nginx writes it after binding."""
        assert self.proc is not None
        pid_file = self.dir / "nginx.pid"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NginxError(f"nginx exited {self.proc.returncode}: {self.log}")
            if pid_file.exists() and pid_file.read_text().strip() == str(self.proc.pid):
                return
            time.sleep(0.05)
        raise NginxError(f"nginx not ready within the timeout: {self.log}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM to our master's PID (nginx's fast stop), SIGKILL if it stays; then
        any process left in its group (a worker), by PID."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        for pid in process_group(self.proc.pid):  # its own session: only its processes
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        self.stop()
        self.auth.close()
        shutil.rmtree(self.dir, ignore_errors=True)
