"""A private, throw-away Postfix for the tests and benchmarks: ``smtpd`` on 127.0.0.1 at a
port of its own, the rest of its configuration the caller's (``settings``: ``main.cf``
parameters over the base below; ``tables``: files beside ``main.cf``). ``bench.lmtp``
makes it deliver over LMTP to the benchmark's Dovecot; ``tests/system/test_tls.py`` makes
it relay everything to wildboar over mandatory TLS; ``bench.tls`` makes it discard behind
an ``smtpd`` with STARTTLS.

Owns: the instance's files in a directory under ``$TMPDIR`` (/tmp when unset): ``main.cf``
and ``master.cf`` in ``etc/``, which is its ``config_directory`` (``$config_directory`` in a
setting names it); ``queue/``, its ``queue_directory``; ``data/``; the log,
``postfix.log``, through ``postlogd``; and the life of its ``master(8)``: run in the
foreground (``master -s``) as a child of the caller, in its own session, with every daemon
it spawns in its process group; stopped by SIGTERM to that pid, as ``postfix stop`` does,
the group killed if anything is left. Must not know: who uses it, SMTP beyond a greeting.

Security: runs as root only (Postfix's master must); its daemons run as Debian's
``postfix`` user (``mail_owner``) without chroot. Nothing is read from or written to
``/etc/postfix`` or ``/var/spool/postfix``, and Debian's own Postfix is never started: the
``postfix`` command is used only for ``postfix -c DIR check``, which creates the private
queue's directories (``debian_service_running`` says whether Debian's runs anyway). If the
caller dies, the master gets SIGTERM (``PR_SET_PDEATHSIG``, sent when the *thread* that
started it ends) and stops its daemons.

The base configuration is Postfix's defaults except: the private paths above; one
``smtpd`` listener; no local delivery (``mydestination`` and the alias maps empty);
``mynetworks = 127.0.0.0/8`` (the callers' clients, allowed to relay); no chroot; no reverse
lookup of the client (``smtpd_peername_lookup = no``: wildboar does none either); IPv4
only; a process limit of 300 so that 200 sessions fit.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.daemons import PrivateDaemon, die_with_parent, process_group

POSTFIX = "/usr/sbin/postfix"
POSTQUEUE = "/usr/sbin/postqueue"
MASTER = "/usr/lib/postfix/sbin/master"
MAIL_OWNER = "postfix"
START_TIMEOUT = 20.0
#: The master stops its daemons on SIGTERM; whatever is left after this is killed.
STOP_TIMEOUT = 10.0
#: The queue's directories that hold messages not yet delivered.
QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")

#: Every daemon without chroot ("n"); the rest of each line is Debian's master.cf.
MASTER_CF = """\
{listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixError(RuntimeError):
    pass


class Postfix(PrivateDaemon):
    """One private Postfix; ``with Postfix(...) as postfix:`` starts it, and stops it and
    removes its directory at the end."""

    def __init__(
        self,
        port: int,
        settings: Mapping[str, str],
        tables: Mapping[str, str] | None = None,
    ) -> None:
        """``settings``: ``main.cf`` parameters over the base; ``tables``: file name and
        content of files written to the ``config_directory`` (lookup tables)."""
        if os.geteuid() != 0:
            raise PostfixError("a private Postfix needs root (its master runs as root)")
        self.port = port
        self.settings = dict(settings)
        self.tables = dict(tables or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="wildboar-postfix-"))
        self.dir.chmod(0o755)

    @property
    def config_directory(self) -> Path:
        return self.dir / "etc"

    @property
    def queue_directory(self) -> Path:
        return self.dir / "queue"

    @property
    def log_path(self) -> Path:
        return self.dir / "postfix.log"

    def main_cf(self) -> str:
        base = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_directory),
            "data_directory": str(self.dir / "data"),
            "mail_owner": MAIL_OWNER,
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.dir),
            "myhostname": "postfix.test.example",
            "mydestination": "",
            "alias_maps": "",
            "alias_database": "",
            "mynetworks": "127.0.0.0/8",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "smtpd_peername_lookup": "no",
            "default_process_limit": "300",
        }
        lines = [f"{name} = {value}".rstrip() for name, value in (base | self.settings).items()]
        return "\n".join(["# A private Postfix (tests/postfix.py).", *lines, ""])

    def _write_files(self) -> None:
        etc = self.config_directory
        etc.mkdir(mode=0o755)
        (etc / "main.cf").write_text(self.main_cf())
        (etc / "master.cf").write_text(MASTER_CF.format(listen=f"127.0.0.1:{self.port}"))
        for name, content in self.tables.items():
            (etc / name).write_text(content)
        self.queue_directory.mkdir(mode=0o755)
        data = self.dir / "data"
        data.mkdir(mode=0o700)
        owner = pwd.getpwnam(MAIL_OWNER)
        os.chown(data, owner.pw_uid, owner.pw_gid)
        # Creates the queue's directories with their owners and modes (post-install).
        check = [POSTFIX, "-c", str(etc), "check"]
        done = subprocess.run(check, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise PostfixError(f"postfix check: {done.returncode}\n{self.tail()}")

    def start(self) -> None:
        self._write_files()
        with (self.dir / "output.log").open("ab") as output:
            self.proc = subprocess.Popen(
                [MASTER, "-c", str(self.config_directory), "-s"],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"},
                start_new_session=True,  # its own process group: the master's pid
                preexec_fn=die_with_parent,  # noqa: PLW1509 (it only calls prctl)
            )

    def wait_serving(self, timeout: float = START_TIMEOUT) -> None:
        """Until ``smtpd`` answers a connection with its 220 greeting."""
        deadline = time.monotonic() + timeout
        while not _greets(self.port):
            if not self.running or time.monotonic() > deadline:
                raise PostfixError(f"postfix does not answer on port {self.port}\n{self.tail()}")
            time.sleep(0.1)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def queued(self) -> int:
        """Messages in the queue, not yet delivered (or deferred)."""
        count = 0
        for name in QUEUES:
            for _root, _dirs, files in os.walk(self.queue_directory / name):
                count += len(files)
        return count

    def queue(self) -> list[dict[str, Any]]:
        """The queue as ``postqueue -j`` shows it: one object per message, its
        ``queue_name`` (active, deferred, ...) and ``recipients`` with their
        ``delay_reason``."""
        argv = [POSTQUEUE, "-c", str(self.config_directory), "-j"]
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
        if done.returncode != 0:
            raise PostfixError(f"postqueue -j: {done.returncode} {done.stderr}\n{self.tail()}")
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    def stop(self) -> None:
        """SIGTERM to the master (``postfix stop``), which stops its daemons; SIGKILL to
        the group for any left after ``STOP_TIMEOUT``."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        kill_at = time.monotonic() + STOP_TIMEOUT
        while left := process_group(proc.pid):
            if time.monotonic() > kill_at + STOP_TIMEOUT:
                raise PostfixError(f"postfix processes {left} survived SIGKILL")
            if time.monotonic() > kill_at:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.05)

    def tail(self, lines: int = 20) -> str:
        """The end of the log and of the master's output, for error messages."""
        parts = []
        for path in (self.dir / "output.log", self.log_path):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except FileNotFoundError:
                text = ["(none)"]
            parts.append("\n".join([f"--- {path}:", *text]))
        return "\n".join(parts)


def _greets(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock:
            greeting = sock.recv(512)
            sock.sendall(b"QUIT\r\n")
            return greeting.startswith(b"220")
    except OSError:
        return False


def debian_service_running() -> bool:
    """Whether a Postfix master runs on Debian's configuration (one without ``-c``)."""
    found = subprocess.run(
        ["pgrep", "-a", "-f", "^" + MASTER], check=False, capture_output=True, text=True
    )
    return any(" -c " not in line for line in found.stdout.splitlines())
