"""A private, throw-away authoritative DNS server (Debian's NSD) for the SPF stage's tests.

``Nsd(zones)`` writes an ``nsd.conf`` and the zone files into a directory of its own under
``/tmp`` and runs ``/usr/sbin/nsd -d`` (package nsd, installed by ``scripts/system-deps``) in
the foreground as a child of the test process, on 127.0.0.1 at a free port (UDP and TCP),
with no remote control, no zone database, no IPv6 and no privilege drop. Nothing is read
from ``/etc/nsd``, and Debian's own nsd service is never started nor touched. It answers
only for its zones (``REFUSED`` for any other name): the tests never reach the Internet.
``close`` stops it by its pid (SIGTERM to its process group, then SIGKILL) and removes the
directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import dns.exception
import dns.resolver

from tests.daemons import PrivateDaemon, die_with_parent, free_port, process_group

NSD = Path("/usr/sbin/nsd")
START_TIMEOUT = 15.0


class NsdError(RuntimeError):
    pass


class Nsd(PrivateDaemon):
    """``with Nsd({"spf.test": RECORDS}) as server:`` serves each zone (its records in zone
    file syntax, relative to the zone's origin; the SOA and NS records are added) on
    ``server.address``."""

    def __init__(self, zones: Mapping[str, str]) -> None:
        self.zones = dict(zones)
        self.dir = Path(tempfile.mkdtemp(prefix="wildboar-nsd-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def conf_path(self) -> Path:
        return self.dir / "nsd.conf"

    @property
    def log_path(self) -> Path:
        return self.dir / "nsd.log"

    def config(self) -> str:
        zones = "".join(
            f'zone:\n  name: "{name}"\n  zonefile: "{name}.zone"\n' for name in self.zones
        )
        return f"""\
# A private NSD for wildboar's tests (tests/consumer/dns.py).
server:
  ip-address: 127.0.0.1
  port: {self.port}
  do-ip4: yes
  do-ip6: no
  username: ""
  chroot: ""
  zonesdir: "{self.dir}"
  pidfile: "{self.dir}/nsd.pid"
  database: ""
  xfrdfile: "{self.dir}/xfrd.state"
  zonelistfile: "{self.dir}/zone.list"
  logfile: "{self.log_path}"
  server-count: 1
  hide-version: yes
  verbosity: 1
remote-control:
  control-enable: no
{zones}"""

    @staticmethod
    def zone_file(name: str, records: str) -> str:
        return (
            f"$ORIGIN {name}.\n$TTL 60\n"
            f"@ IN SOA ns.{name}. hostmaster.{name}. 1 3600 600 86400 60\n"
            f"@ IN NS ns.{name}.\nns IN A 127.0.0.1\n{records}\n"
        )

    def start(self) -> None:
        for name, records in self.zones.items():
            (self.dir / f"{name}.zone").write_text(self.zone_file(name, records))
        for attempt in range(4):
            self.conf_path.write_text(self.config())
            self._launch()
            try:
                self._wait_ready()
                return
            except NsdError:
                self.stop()
                if "already in use" not in self.tail() or attempt == 3:
                    raise
                self.port = free_port()  # lost the port between the probe and the bind

    def _launch(self) -> None:
        output = (self.dir / "output.log").open("ab")
        with output:
            self.proc = subprocess.Popen(
                [str(NSD), "-d", "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
                start_new_session=True,  # its own process group: the master's pid
                preexec_fn=die_with_parent,  # noqa: PLW1509 (it only calls prctl)
            )

    def _wait_ready(self) -> None:
        assert self.proc is not None
        probe = dns.resolver.Resolver(configure=False)
        probe.nameservers, probe.port = ["127.0.0.1"], self.port
        first = next(iter(self.zones))
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise NsdError(f"nsd exited with status {self.proc.returncode}\n{self.tail()}")
            if time.monotonic() > deadline:
                raise NsdError(f"nsd not answering within {START_TIMEOUT:.0f}s\n{self.tail()}")
            with contextlib.suppress(dns.exception.DNSException):
                probe.resolve(first, "SOA", lifetime=0.5)
                return
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM to the process group of the master (by its pid), SIGKILL if it lingers;
        returns when every process of it is gone."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.proc.wait()
        kill_at = time.monotonic() + 5
        while left := process_group(pgid):
            if time.monotonic() > kill_at + 5:
                raise NsdError(f"nsd processes {left} survived SIGKILL")
            if time.monotonic() > kill_at:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
            time.sleep(0.01)
        self.proc = None

    def tail(self, lines: int = 30) -> str:
        parts = []
        for path in (self.dir / "output.log", self.log_path):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except FileNotFoundError:
                text = ["(none)"]
            parts.append("\n".join([f"--- {path}:", *text]))
        return "\n".join(parts)
