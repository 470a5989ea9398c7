"""A private, throw-away S3-compatible store for the store stage's tests: Ceph's radosgw
on a one-node Ceph cluster of its own (Debian's ceph-mon, ceph-osd, radosgw).

``Radosgw()`` writes a ``ceph.conf`` and the cluster's keys into a directory of its own
under ``/tmp`` and starts, in the foreground as children of the test process, one monitor
(msgr2 on 127.0.0.1 at a free port), one OSD keeping its objects in memory (``memstore``,
replicas 1; its messengers on 127.0.0.1 from 6800 up, as Ceph picks them) and one
radosgw (beast, HTTP on 127.0.0.1 at a free port), with cephx authentication among them:
nothing listens beyond loopback; then makes an S3 user with keys of its own. Nothing is read
from ``/etc/ceph`` and no Debian ceph service is started nor touched; every command names
the private ``ceph.conf``. ``close`` stops the three by their pids (SIGTERM, then SIGKILL)
and removes the directory. A start takes about ten seconds, most of it radosgw making its
pools: one per test module.
"""

from __future__ import annotations

import contextlib
import http.client
import secrets
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import boto3.session
import botocore.config

from tests.daemons import PrivateDaemon, die_with_parent, free_port

START_TIMEOUT = 90.0
COMMAND_TIMEOUT = 60.0


class CephError(RuntimeError):
    pass


class Radosgw(PrivateDaemon):
    """``with Radosgw() as store:`` an S3 endpoint at ``store.endpoint``; ``store.client()``
    a boto3 client of its user (``store.access_key``, ``store.secret_key``)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="wildboar-ceph-"))
        self.mon_port = free_port()
        self.port = free_port()
        self.fsid = str(uuid.uuid4())
        self.access_key = secrets.token_hex(10).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def conf_path(self) -> Path:
        return self.dir / "ceph.conf"

    def config(self) -> str:
        d = self.dir
        return f"""\
# A private one-node Ceph for wildboar's tests (tests/consumer/s3.py).
[global]
fsid = {self.fsid}
mon host = [v2:127.0.0.1:{self.mon_port}]
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
ms bind msgr1 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
run dir = {d}/run
admin socket = {d}/run/$name.asok
log file = {d}/log/$name.log
keyring = {d}/$name.keyring
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = 536870912
[mon]
mon data = {d}/mon/$name
keyring = $mon_data/keyring
[osd]
osd data = {d}/osd/$name
keyring = $osd_data/keyring
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:{self.port}
rgw data = {d}/rgw
"""

    def run(self, *command: str) -> str:
        """A Ceph tool against this cluster; its output."""
        argv = [command[0], "-c", str(self.conf_path), *command[1:]]
        done = subprocess.run(argv, capture_output=True, timeout=COMMAND_TIMEOUT, check=False)
        if done.returncode != 0:
            raise CephError(f"{' '.join(command)}: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode()

    def daemon(self, name: str, *command: str) -> None:
        argv = [command[0], "-c", str(self.conf_path), "-f", *command[1:]]
        with (self.dir / "log" / f"{name}.out").open("wb") as out:
            self.procs[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # noqa: PLW1509 (it only calls prctl)
            )

    def start(self) -> None:
        for sub in ("mon", "osd/osd.0", "run", "log", "rgw"):
            (self.dir / sub).mkdir(parents=True, mode=0o700)
        self.conf_path.write_text(self.config())
        admin, mon_keys = self.dir / "client.admin.keyring", self.dir / "mon.keyring"
        tool = "ceph-authtool"
        self.run(
            tool,
            "--create-keyring",
            str(mon_keys),
            "--gen-key",
            "-n",
            "mon.",
            "--cap",
            "mon",
            "allow *",
        )
        self.run(
            tool,
            "--create-keyring",
            str(admin),
            "--gen-key",
            "-n",
            "client.admin",
            "--cap",
            "mon",
            "allow *",
            "--cap",
            "osd",
            "allow *",
            "--cap",
            "mgr",
            "allow *",
        )
        self.run(tool, str(mon_keys), "--import-keyring", str(admin))
        monmap = self.dir / "monmap"
        self.run(
            "monmaptool",
            "--create",
            "--fsid",
            self.fsid,
            "--addv",
            "a",
            f"[v2:127.0.0.1:{self.mon_port}]",
            str(monmap),
        )
        self.run(
            "ceph-mon", "--mkfs", "-i", "a", "--monmap", str(monmap), "--keyring", str(mon_keys)
        )
        self.daemon("mon", "ceph-mon", "-i", "a")
        osd_uuid = str(uuid.uuid4())
        number = self.run("ceph", "osd", "new", osd_uuid).strip()
        if number != "0":
            raise CephError(f"ceph osd new: got OSD {number!r}, expected 0")
        osd_keys = self.dir / "osd" / "osd.0" / "keyring"
        self.run(tool, "--create-keyring", str(osd_keys), "--gen-key", "-n", "osd.0")
        self.run(
            "ceph",
            "auth",
            "add",
            "osd.0",
            "osd",
            "allow *",
            "mon",
            "allow profile osd",
            "-i",
            str(osd_keys),
        )
        self.run("ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", osd_uuid)
        self.daemon("osd", "ceph-osd", "-i", "0")
        self.run(
            "ceph",
            "auth",
            "get-or-create",
            "client.rgw.a",
            "mon",
            "allow rw",
            "osd",
            "allow rwx",
            "-o",
            str(self.dir / "client.rgw.a.keyring"),
        )
        self.daemon("rgw", "radosgw", "-n", "client.rgw.a")
        self._wait_for_gateway()
        self.run(
            "radosgw-admin",
            "user",
            "create",
            "--uid=wildboar",
            "--display-name=wildboar tests",
            f"--access-key={self.access_key}",
            f"--secret-key={self.secret_key}",
        )

    def _wait_for_gateway(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise CephError(f"{name} exited with {proc.returncode}: {self.log_tail(name)}")
            with contextlib.suppress(OSError):
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                try:
                    connection.request("GET", "/")
                    if connection.getresponse().status == 200:
                        return
                finally:
                    connection.close()
            if time.monotonic() > deadline:
                raise CephError(
                    f"radosgw did not answer within {START_TIMEOUT:g} s: "
                    f"{self.log_tail('client.rgw.a')}"
                )
            time.sleep(0.25)

    def log_tail(self, name: str) -> str:
        lines: list[str] = []
        for path in (self.dir / "log" / f"{name}.out", self.dir / "log" / f"{name}.log"):
            with contextlib.suppress(OSError):
                lines += path.read_text(errors="replace").splitlines()[-10:]
        return "\n".join(lines)

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client of the test user (path-style, as the stage's default)."""
        session = boto3.session.Session(
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key
        )
        options = botocore.config.Config(s3={"addressing_style": "path"}, **config)
        return session.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1", config=options
        )

    def stop(self) -> None:
        # The gateway first, then the OSD, then the monitor they both talk to.
        for name in ("rgw", "osd", "mon"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
