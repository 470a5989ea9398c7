"""Private, throw-away Dovecot LMTP servers, for tests of wildboar's LMTP handoff that
deliver into a real MDA, refuse unknown or over-quota recipients, or stop and kill it.

Each instance is Debian's ``/usr/sbin/dovecot -F -c <conf>`` (packages dovecot-core and
dovecot-lmtpd, installed by ``scripts/system-deps``) run in the foreground as a child of
the test process, with everything of its own in a directory under ``/tmp`` (mode 0755, so
that the unprivileged users can traverse it): the config, ``base_dir`` (its sockets, among
them the LMTP ``unix_socket``, mode 0666), ``state_dir``, the log (``log_path``), a
passwd-file of users ``alice``, ``bob`` and ``carol`` at ``example.org`` (``carol`` with a
1 MiB quota, checked at RCPT: ``lmtp_rcpt_check_quota = yes``) and their Maildirs. LMTP
listens on that socket and on 127.0.0.1 at a free port (``lmtp_address``); nothing else
listens on the network. Nothing is read from ``/etc/dovecot``, and Debian's own dovecot
service is never started nor touched: pytest-xdist workers run instances side by side.

Recipients are full addresses (``auth_username_format = %Lu``), so ``alice@example.org``
is delivered to alice's Maildir, and ``alice@example.com`` or ``nobody-here@example.org``
get Dovecot's own ``550 5.1.1 <...> User doesn't exist: ...``.

Run as root (as CI does), Dovecot runs its mail processes (LMTP delivery, doveadm) as
``nobody``/``nogroup``, the mail owner of every Maildir (``first_valid_uid`` and
``last_valid_uid`` are set to exactly that uid), and its internal processes as Debian's
``dovecot`` and ``dovenull`` users. Run as anyone else, every process is that user.

Limits: Linux only (``/proc``, ``prctl``). Should the test process die without cleaning
up, the master gets SIGTERM (``PR_SET_PDEATHSIG``) and takes its children with it; that
signal comes when the *thread* that started it ends, so start instances from the main
thread. A start takes some 0.05 s, a graceful ``stop`` 1.1 s, ``close`` 0.1 s.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from tests.daemons import PrivateDaemon, die_with_parent, free_port, process_group

DOVECOT = Path("/usr/sbin/dovecot")
DOVEADM = Path("/usr/bin/doveadm")
DOMAIN = "example.org"
USERS = ("alice", "bob", "carol")
#: Storage quota per user (Dovecot's quota_rule syntax); the others have none.
QUOTAS: Mapping[str, str] = {"carol": "1M"}
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
_QUOTA_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class DovecotError(RuntimeError):
    pass


def quota_bytes(rule: str) -> int:
    """``1M`` -> 1048576, as Dovecot reads a quota_rule's storage limit."""
    match = re.fullmatch(r"(\d+)\s*([BKMGT]?)", rule.strip().upper())
    if match is None:
        raise ValueError(f"not a storage limit: {rule!r}")
    return int(match[1]) * _QUOTA_UNITS[match[2]]


def _maildir_order(path: Path) -> tuple[int, int, str]:
    """Delivery order of a Maildir file: Dovecot names them ``<secs>.M<usecs>P<pid>...``."""
    match = re.match(r"(\d+)\.M(\d+)P", path.name)
    if match is None:
        return (int(path.stat().st_mtime), 0, path.name)
    return (int(match[1]), int(match[2]), path.name)


def read_reply(reader: BinaryIO) -> tuple[int, list[str]]:
    """One (possibly multi-line) SMTP/LMTP reply from a buffered reader of the connection
    (``sock.makefile("rb")``, whose timeout is the socket's): its code and the text of its
    lines."""
    lines: list[str] = []
    while True:
        line = reader.readline(4096)
        if not line.endswith(b"\r\n"):
            raise DovecotError(
                f"connection closed after {b''.join([*map(str.encode, lines), line])!r}"
            )
        text = line[:-2].decode("utf-8", "replace")
        lines.append(text)
        if len(text) < 4 or text[3] != "-":
            return int(text[:3]), [t[4:] for t in lines]


class LMTPClient:
    """A bare LMTP client over TCP (``("127.0.0.1", port)``) or a unix socket (a path), for
    tests that want to see every reply exactly as the server sent it."""

    def __init__(self, address: tuple[str, int] | Path, timeout: float = 10.0) -> None:
        if isinstance(address, Path):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            try:
                self.sock.connect(str(address))
            except BaseException:
                self.sock.close()
                raise
        else:
            self.sock = socket.create_connection(address, timeout=timeout)
        self.reader = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> tuple[int, list[str]]:
        return read_reply(self.reader)

    def command(self, line: str | bytes) -> tuple[int, list[str]]:
        """Send one command line (CRLF added) and read its reply."""
        raw = line.encode() if isinstance(line, str) else line
        self.sock.sendall(raw + b"\r\n")
        return self.reply()

    def lhlo(self, name: str = "client.test") -> list[str]:
        """The LHLO reply's lines after the first: the capabilities."""
        code, lines = self.command(f"LHLO {name}")
        if code != 250:
            raise DovecotError(f"LHLO: {code} {lines}")
        return lines[1:]

    def data(self, message: bytes, recipients: int) -> list[tuple[int, list[str]]]:
        """DATA with ``message`` (CRLF line ends; dot-stuffed here), then the one reply per
        accepted recipient that LMTP gives; ``[(354-or-error, ...)]`` if DATA is refused."""
        code, lines = self.command("DATA")
        if code != 354:
            return [(code, lines)]
        stuffed = re.sub(rb"(?m)^\.", b"..", message)
        if not stuffed.endswith(b"\r\n"):
            stuffed += b"\r\n"
        self.sock.sendall(stuffed + b".\r\n")
        return [self.reply() for _ in range(recipients)]

    def close(self) -> None:
        with contextlib.suppress(OSError, DovecotError):
            self.sock.sendall(b"QUIT\r\n")
            self.reply()
        self.reader.close()
        self.sock.close()

    def __enter__(self) -> LMTPClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Dovecot(PrivateDaemon):
    """One private Dovecot LMTP server; ``with Dovecot() as dovecot:`` starts it, and stops
    it and removes its directory at the end (``start``/``close`` do the same by hand).
    ``stop``/``start`` stop and restart it on the same ports with the same mailboxes;
    ``kill9`` kills it as ``kill -9`` would, children included."""

    def __init__(
        self,
        users: Iterable[str] = USERS,
        quotas: Mapping[str, str] = QUOTAS,
        domain: str = DOMAIN,
        extra: str = "",
        parent: Path = Path("/tmp"),
    ) -> None:
        """``extra``: lines appended to dovecot.conf (``quota_full_tempfail = yes``, ...);
        ``parent``: where its directory is made (the benchmark measures another filesystem)."""
        self.extra = extra
        self.users = tuple(users)
        self.quotas = dict(quotas)
        self.domain = domain
        unknown = set(self.quotas) - set(self.users)
        if unknown:
            raise ValueError(f"quotas for unknown users: {sorted(unknown)}")
        self.token = secrets.token_hex(4)
        #: The name in the greeting (``220 <hostname> Dovecot (Debian) ready.``) and headers.
        self.hostname = f"dovecot-{self.token}.test"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._started = False
        self.as_root = os.geteuid() == 0
        if self.as_root:
            mail = pwd.getpwnam("nobody")
            self.internal_user, self.internal_group = "dovecot", "dovecot"
            self.login_user = "dovenull"
        else:
            mail = pwd.getpwuid(os.geteuid())
            self.internal_user = self.login_user = mail.pw_name
            self.internal_group = grp.getgrgid(mail.pw_gid).gr_name
        self.mail_user, self.mail_uid, self.mail_gid = mail.pw_name, mail.pw_uid, mail.pw_gid
        self.mail_group = grp.getgrgid(mail.pw_gid).gr_name
        self.dir = Path(tempfile.mkdtemp(prefix=f"wildboar-dovecot-{self.token}-", dir=parent))
        try:
            self.dir.chmod(0o755)
            self._write_files()
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def __repr__(self) -> str:
        return f"<Dovecot {self.dir} lmtp=127.0.0.1:{self.port} pid={self.pid}>"

    # Paths and addresses.

    @property
    def conf_path(self) -> Path:
        return self.dir / "dovecot.conf"

    @property
    def passwd_path(self) -> Path:
        return self.dir / "users"

    @property
    def base_dir(self) -> Path:
        return self.dir / "run"

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    @property
    def log_path(self) -> Path:
        return self.dir / "dovecot.log"

    @property
    def output_path(self) -> Path:
        """The master's stdout and stderr: configuration errors end up here."""
        return self.dir / "output.log"

    @property
    def mail_dir(self) -> Path:
        return self.dir / "mail"

    @property
    def lmtp_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def unix_socket(self) -> Path:
        return self.base_dir / "lmtp"

    def address(self, user: str) -> str:
        """``alice`` -> ``alice@example.org``; a full address is returned as it is."""
        return user if "@" in user else f"{user}@{self.domain}"

    def home(self, user: str) -> Path:
        local, _, domain = self.address(user).partition("@")
        return self.mail_dir / domain / local

    def maildir(self, user: str) -> Path:
        return self.home(user) / "Maildir"

    # Files.

    def config(self) -> str:
        """The dovecot.conf of this instance."""
        nonroot = ""
        if not self.as_root:
            # No chroot without root (anvil's default is chroot = empty).
            nonroot = "\nservice anvil {\n  chroot =\n}\n"
        return f"""\
# A private Dovecot LMTP server for wildboar's tests (tests/lmtp/dovecot.py).
instance_name = wildboar-{self.token}
hostname = {self.hostname}
base_dir = {self.base_dir}
state_dir = {self.state_dir}
log_path = {self.log_path}
protocols = lmtp
listen = 127.0.0.1
ssl = no
default_internal_user = {self.internal_user}
default_internal_group = {self.internal_group}
default_login_user = {self.login_user}

# Recipients are full addresses, looked up as such (lowercased) in the passwd-file.
auth_username_format = %Lu
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%Lu {self.passwd_path}
}}
userdb {{
  driver = passwd-file
  args = username_format=%Lu {self.passwd_path}
}}

# Every Maildir belongs to {self.mail_user}:{self.mail_group}, the only uid Dovecot accepts.
mail_uid = {self.mail_user}
mail_gid = {self.mail_group}
first_valid_uid = {self.mail_uid}
last_valid_uid = {self.mail_uid}
first_valid_gid = {self.mail_gid}
last_valid_gid = {self.mail_gid}
mail_location = maildir:~/Maildir
# Messages are stored as received, CRLF line ends included (the default stores LF).
mail_save_crlf = yes
mail_plugins = $mail_plugins quota
plugin {{
  quota = maildir:User quota
}}
# Refuse an over-quota recipient at RCPT rather than after DATA.
lmtp_rcpt_check_quota = yes

service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.port}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
}}
{nonroot}{self.extra}
"""

    def _write_files(self) -> None:
        self.conf_path.write_text(self.config())
        lines = []
        for user in self.users:
            address = self.address(user)
            extra = ""
            if user in self.quotas:
                extra = f"userdb_quota_rule=*:storage={self.quotas[user]}"
            # user:password:uid:gid:gecos:home:shell:extra (uid/gid: mail_uid/mail_gid)
            lines.append(f"{address}:{{PLAIN}}secret-{user}::::{self.home(user)}::{extra}\n")
        self.passwd_path.write_text("".join(lines))
        self.passwd_path.chmod(0o644)  # read by auth, which runs as the internal user
        for user in self.users:
            home = self.home(user)
            home.parent.mkdir(parents=True, exist_ok=True)
            home.parent.chmod(0o755)
            home.mkdir(mode=0o700)
            os.chown(home, self.mail_uid, self.mail_gid)
        self.mail_dir.chmod(0o755)

    # Life cycle.

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def processes(self) -> list[int]:
        """The master and its children (they stay in the master's process group)."""
        return process_group(self.proc.pid) if self.proc is not None else []

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start Dovecot and wait until LMTP answers ``220`` on the TCP port. A first start
        that lost its port to another process is retried on a new one; a restart keeps it."""
        if self.running:
            raise DovecotError(f"{self!r} is already running")
        for attempt in range(4):
            self._launch()
            try:
                self._wait_ready(timeout)
            except DovecotError:
                lost_port = "Address already in use" in self.tail()
                self.kill9()
                if self._started or not lost_port or attempt == 3:
                    raise
                self.port = free_port()
                self.conf_path.write_text(self.config())
                continue
            self._started = True
            return

    def _launch(self) -> None:
        # The pid file of a killed master would only be checked against a reused pid.
        (self.base_dir / "master.pid").unlink(missing_ok=True)
        with self.output_path.open("ab") as output:
            self.proc = subprocess.Popen(
                [str(DOVECOT), "-F", "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
                start_new_session=True,  # its own process group: the master's pid
                preexec_fn=die_with_parent,  # noqa: PLW1509 (it only calls prctl)
            )

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise DovecotError(
                    f"dovecot exited with status {self.proc.returncode} while starting\n"
                    f"{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise DovecotError(f"dovecot not up within {timeout:.0f}s\n{self.tail()}")
            try:
                with (
                    socket.create_connection(self.lmtp_address, timeout=1) as sock,
                    sock.makefile("rb") as reader,
                ):
                    code, lines = read_reply(reader)
                    with contextlib.suppress(OSError):
                        sock.sendall(b"QUIT\r\n")
            except (OSError, DovecotError):  # not listening yet, or closed on us
                time.sleep(0.02)
                continue
            if code != 220 or not lines[0].startswith(self.hostname):
                raise DovecotError(f"not our dovecot on port {self.port}: {code} {lines}")
            return

    def stop(self, timeout: float = STOP_TIMEOUT, *, graceful: bool = True) -> None:
        """Stop Dovecot and return when every one of its processes is gone; a no-op if
        not running. ``graceful``: SIGTERM to the master only, as ``doveadm stop`` (and
        Debian's unit) does, after which the master stops its children and exits (some
        1.1 s: it waits for its log process). Otherwise SIGTERM to the whole process
        group at once (as systemd's default KillMode does): 0.1 s. SIGKILL to the group
        after ``timeout``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if graceful:
                self.proc.terminate()
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
                return
        self._reap()

    def kill9(self) -> None:
        """SIGKILL the master and all its children at once, as ``kill -9`` would: nothing
        is cleaned up (sockets and pid file stay behind, as after a crash)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._reap(grace=0)

    def _reap(self, grace: float = 1.0) -> None:
        """Wait for the master, give its children ``grace`` seconds to follow it, then
        SIGKILL whichever is left; returns when none is."""
        assert self.proc is not None
        pgid = self.proc.pid
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait()
        now = time.monotonic()
        kill_at, deadline = now + grace, now + grace + STOP_TIMEOUT
        while left := process_group(pgid):
            if time.monotonic() > deadline:
                raise DovecotError(f"dovecot processes {left} survived SIGKILL")
            if time.monotonic() >= kill_at:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
            time.sleep(0.01)

    def remove_stale_locks(self) -> list[Path]:
        """Remove the lock files a killed Dovecot left in the Maildirs (the ones it names
        ``*.lock``: ``dovecot-uidlist.lock`` above all); the paths removed. Only while it
        is not running. Dovecot itself takes such a lock for stale only after
        ``MAILDIR_UIDLIST_LOCK_STALE_TIMEOUT`` (2 minutes, maildir-uidlist.h), and until
        then every delivery to that mailbox waits; a test that kills Dovecot with ``kill
        -9`` at the wrong moment would wait with it."""
        if self.running:
            raise DovecotError(f"{self!r} is running: its locks are not stale")
        locks = sorted(self.mail_dir.glob("*/*/Maildir/**/*.lock"))
        for lock in locks:
            lock.unlink(missing_ok=True)
        return locks

    def close(self) -> None:
        """Stop (quickly: see ``stop``) and remove the directory."""
        try:
            self.stop(graceful=False)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    # Mail and quota.

    def maildir_messages(self, user: str) -> list[bytes]:
        """The raw messages in ``user``'s Maildir (new/ and cur/ of INBOX), in delivery
        order, as Dovecot stored them (with the headers it adds; ``fill_quota``'s filler
        too)."""
        files = [
            path
            for sub in ("new", "cur")
            if (self.maildir(user) / sub).is_dir()
            for path in (self.maildir(user) / sub).iterdir()
            if path.is_file()
        ]
        return [path.read_bytes() for path in sorted(files, key=_maildir_order)]

    def expunge(self, user: str) -> None:
        """Empty ``user``'s INBOX through Dovecot (which updates the quota too)."""
        self.doveadm("expunge", "-u", self.address(user), "mailbox", "INBOX", "all")

    def doveadm(self, *args: str, timeout: float = 30.0) -> str:
        """``doveadm -c <conf> ARGS...`` against this instance; its stdout."""
        argv = [str(DOVEADM), "-c", str(self.conf_path), *args]
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
            cwd=self.dir,
        )
        if done.returncode != 0:
            raise DovecotError(
                f"{' '.join(argv)}: exit status {done.returncode}\n{done.stdout}{done.stderr}"
            )
        return done.stdout

    def quota_storage(self, user: str) -> tuple[int, int | None]:
        """``user``'s storage quota: (bytes used, limit in bytes or None), from doveadm
        (which counts in KiB)."""
        out = self.doveadm("-f", "tab", "quota", "get", "-u", self.address(user))
        header, *rows = (line.split("\t") for line in out.splitlines() if line)
        for row in rows:
            fields = dict(zip((name.lower() for name in header), row, strict=True))
            if fields["type"] == "STORAGE":
                limit = None if fields["limit"] == "-" else int(fields["limit"]) * 1024
                return int(fields["value"]) * 1024, limit
        raise DovecotError(f"no STORAGE quota for {user}: {out}")

    def fill_quota(self, user: str = "carol", extra: int = 64 * 1024) -> None:
        """Put ``user`` over quota: a message ``extra`` bytes larger than the whole limit
        is stored straight into the Maildir (as a delivery could not), and Dovecot's quota
        is recalculated. Dovecot must be running (doveadm asks its auth process)."""
        if user not in self.quotas:
            raise ValueError(f"{user} has no quota")
        size = quota_bytes(self.quotas[user]) + extra
        body = b"x" * 76 + b"\r\n"
        head = (
            f"From: filler@{self.domain}\r\nTo: {self.address(user)}\r\n"
            "Subject: fills the quota\r\n\r\n"
        ).encode()
        message = head + body * ((size - len(head)) // len(body) + 1)
        new = self.maildir(user) / "new"
        if not new.is_dir():
            self.doveadm("mailbox", "status", "-u", self.address(user), "messages", "INBOX")
        name = f"{int(time.time())}.M0P{os.getpid()}.{self.hostname},S={len(message)}"
        path = new / name
        path.write_bytes(message)
        os.chown(path, self.mail_uid, self.mail_gid)
        self.doveadm("quota", "recalc", "-u", self.address(user))
        used, limit = self.quota_storage(user)
        if limit is None or used <= limit:
            raise DovecotError(f"{user} not over quota: {used} of {limit} bytes used")

    # Diagnostics.

    def tail(self, lines: int = 40) -> str:
        """The ends of the master's output and of the log, for error messages."""
        parts = []
        for path in (self.output_path, self.log_path):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except FileNotFoundError:
                text = ["(none)"]
            parts.append("\n".join([f"--- {path}:", *text]))
        return "\n".join(parts)
