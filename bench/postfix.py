"""A private, throw-away Postfix for ``bench.lmtp``: ``smtpd`` on 127.0.0.1 at a port of its
own, every message for one virtual domain queued and handed by Postfix's ``lmtp`` client to
an LMTP server (the benchmark's Dovecot): the MTA path that wildboar's LMTP handoff replaces.

Owns: the instance's files in a directory under ``$TMPDIR`` (/tmp when unset): ``main.cf``
and ``master.cf`` in ``etc/``, which is its ``config_directory``; ``queue/``, its
``queue_directory``; ``data/``; the log, ``postfix.log``, through ``postlogd``; the
recipient table ``etc/vmailbox``; and the life of its ``master(8)``: run in the foreground
(``master -s``) as a child of the benchmark, in its own session, with every daemon it spawns
in its process group; stopped by SIGTERM to that pid, as ``postfix stop`` does, the group
killed if anything is left. Must not know: the benchmark, SMTP, Dovecot.

Security: runs as root only (Postfix's master must); its daemons run as Debian's
``postfix`` user (``mail_owner``) without chroot. Nothing is read from or written to
``/etc/postfix`` or ``/var/spool/postfix``, and Debian's own Postfix is never started: the
``postfix`` command is used only for ``postfix -c DIR check``, which creates the private
queue's directories. If the benchmark dies, the master gets SIGTERM (``PR_SET_PDEATHSIG``)
and stops its daemons.

The configuration is Postfix's defaults except: the private paths above; one ``smtpd``
listener; ``virtual_mailbox_domains`` and ``virtual_mailbox_maps`` (so ``smtpd`` refuses
unknown users at RCPT from its own table, the counterpart of wildboar's RCPT check with
the MDA) and ``virtual_transport = lmtp:inet:HOST:PORT``; no chroot; no reverse lookup of
the client (``smtpd_peername_lookup = no``: wildboar does none either); IPv4 only; a
process limit of 300 so that 200 sessions fit.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from tests.daemons import die_with_parent, process_group

POSTFIX = "/usr/sbin/postfix"
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
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixError(RuntimeError):
    pass


class Postfix:
    """One private Postfix; ``with Postfix(...) as postfix:`` starts it, and stops it and
    removes its directory at the end."""

    def __init__(self, port: int, lmtp: tuple[str, int], domain: str, users: Iterable[str]) -> None:
        if os.geteuid() != 0:
            raise PostfixError("a private Postfix needs root (its master runs as root)")
        self.port = port
        self.lmtp = lmtp
        self.domain = domain
        self.users = tuple(users)
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="wildboar-bench-postfix-"))
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
        host, port = self.lmtp
        return f"""\
# A private Postfix for wildboar's LMTP benchmark (bench/postfix.py).
compatibility_level = 3.6
queue_directory = {self.queue_directory}
data_directory = {self.dir / "data"}
mail_owner = {MAIL_OWNER}
maillog_file = {self.log_path}
maillog_file_prefixes = {self.dir}
myhostname = postfix.bench.example
mydestination =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
smtpd_peername_lookup = no
default_process_limit = 300
virtual_mailbox_domains = {self.domain}
virtual_mailbox_maps = texthash:{self.config_directory / "vmailbox"}
virtual_transport = lmtp:inet:{host}:{port}
"""

    def _write_files(self) -> None:
        etc = self.config_directory
        etc.mkdir(mode=0o755)
        (etc / "main.cf").write_text(self.main_cf())
        (etc / "master.cf").write_text(MASTER_CF.format(listen=f"127.0.0.1:{self.port}"))
        (etc / "vmailbox").write_text("".join(f"{u}@{self.domain} {u}/\n" for u in self.users))
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

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Postfix:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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
