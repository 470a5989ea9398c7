"""The Debian package under a real systemd: what an operator does with it, in order.

One container (a Debian 12 tree booted with systemd-nspawn, see ``container.py``) for the
whole module: the tests follow an operator's path, from building the package to purging
it, each starting from where the one before left the machine. A machine that cannot build
the package or boot the container fails here loudly; nothing is skipped.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .container import ROOT, Container, tree_for

# The first test also waits for the tree (debootstrap, once) and the package build.
pytestmark = pytest.mark.timeout(900)

DOMAIN = "example.org"
MESSAGE = b"Subject: package test\r\n\r\nHello from outside.\r\n"
#: At most this long for the load of the reload-and-upgrade test.
LOAD_SECONDS = 180
LOAD_MESSAGES = 2000


def build() -> Path:
    result = subprocess.run(
        ["sh", str(ROOT / "packaging" / "build-deb")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return Path(result.stdout.strip().splitlines()[-1])


def bumped(deb: Path, directory: Path) -> Path:
    """The same package with a higher version: what an upgrade installs."""
    tree = directory / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    text = control.read_text()
    version = re.search(r"^Version: (.+)$", text, re.M).group(1)  # type: ignore[union-attr]
    control.write_text(text.replace(f"Version: {version}", f"Version: {version}+upgrade1"))
    out = directory / f"wildboar_{version}+upgrade1_amd64.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(tree), str(out)],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="module")
def debs() -> Iterator[tuple[Path, Path]]:
    assert os.geteuid() == 0, "the package tests need root (systemd-nspawn)"
    deb = build()
    with tempfile.TemporaryDirectory(prefix="wildboar-upgrade-") as scratch:
        yield deb, bumped(deb, Path(scratch))


@pytest.fixture(scope="module")
def machine(debs: tuple[Path, Path]) -> Iterator[Container]:
    deb, upgrade = debs
    tree = tree_for(deb)
    binds = {deb: "/root/wildboar.deb", upgrade: "/root/wildboar-upgrade.deb"}
    with Container(tree, binds) as container:
        yield container


def send(machine: Container, port: int, count: int = 1, sender: str = "a@example.net") -> str:
    """Messages sent from this machine's Python into the container's port; the replies."""
    script = (
        "import smtplib, sys\n"
        f"for n in range({count}):\n"
        f"    with smtplib.SMTP('127.0.0.1', {port}, timeout=60) as s:\n"
        f"        print(s.sendmail({sender!r}, ['user@{DOMAIN}'], {MESSAGE!r}))\n"
    )
    result = subprocess.run(
        machine.netns(sys.executable, "-c", script),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def spooled(machine: Container) -> int:
    out = machine.sh("find /var/spool/wildboar/msg -name '*.msgpack' 2>/dev/null | wc -l")
    return int(out.strip())


def service_pids(machine: Container) -> list[int]:
    group = machine.sh("systemctl show -p ControlGroup --value wildboar.service").strip()
    # The unified hierarchy, or (nspawn on a host without systemd: hybrid) systemd's own.
    procs = machine.sh(
        f"cat /sys/fs/cgroup{group}/cgroup.procs 2>/dev/null"
        f" || cat /sys/fs/cgroup/systemd{group}/cgroup.procs"
    )
    return [int(p) for p in procs.split()]


def workers(machine: Container) -> int:
    main = int(machine.sh("systemctl show -p MainPID --value wildboar.service"))
    return len([p for p in service_pids(machine) if p != main])


def wait_for(what: str, check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def set_key(machine: Container, pattern: str, line: str) -> None:
    """Replace the conffile's line matching ``pattern`` (a commented default) with ``line``."""
    machine.run("sed", "-i", f"s|{pattern}|{line}|", "/etc/wildboar/wildboar.toml")
    assert line in machine.sh("cat /etc/wildboar/wildboar.toml")


# --- before the machine: the package and its units ------------------------------------


def test_the_package_builds_and_lintian_finds_nothing_unexplained(
    debs: tuple[Path, Path],
) -> None:
    deb, _ = debs
    result = subprocess.run(
        ["lintian", "--pedantic", "--no-tag-display-limit", str(deb)],
        capture_output=True,
        text=True,
        check=False,
    )
    tags = [line for line in result.stdout.splitlines() if re.match(r"^[EW]: ", line)]
    # docs/packaging.md lists each accepted warning and why.
    allowed = ("initial-upload-closes-no-bugs",)
    assert [t for t in tags if not any(a in t for a in allowed)] == [], result.stdout


def test_the_service_is_hardened_to_an_exposure_of_at_most_1_5() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "units/wildboar.service"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for wildboar.service: ([0-9.]+)", result.stdout)
    assert found is not None, result.stdout + result.stderr
    assert float(found.group(1)) <= 1.5, result.stdout


# --- on the machine, in an operator's order -------------------------------------------


def test_install_creates_the_user_and_spool_and_enables_nothing(machine: Container) -> None:
    out = machine.run("apt-get", "install", "-y", "-q", "/root/wildboar.deb", timeout=300)
    assert "Setting up wildboar" in out.stdout
    for unit in ("wildboar.socket", "wildboar-submission.socket", "wildboar.service"):
        state = machine.run("systemctl", "is-active", unit, check=False).stdout.strip()
        assert state == "inactive", unit
    for unit in ("wildboar.socket", "wildboar-submission.socket"):
        enabled = machine.run("systemctl", "is-enabled", unit, check=False).stdout.strip()
        assert enabled == "disabled", unit
    assert machine.sh("stat -c '%U %G %a' /var/spool/wildboar").split() == [
        "wildboar",
        "wildboar",
        "700",
    ]
    assert machine.sh("getent passwd wildboar").strip().endswith(":/usr/sbin/nologin")
    assert "/etc/wildboar/wildboar.toml" in machine.sh("dpkg-query -W -f '${Conffiles}' wildboar")
    # Units as shipped are the units/ of the source tree, and systemd finds nothing in them.
    for unit in (
        "wildboar.socket",
        "wildboar-submission.socket",
        "wildboar.service",
        "wildboar-consumer@.service",
    ):
        shipped = machine.sh(f"cat /lib/systemd/system/{unit}")
        assert shipped == (ROOT / "units" / unit).read_text(), unit
    verify = machine.run(
        "systemd-analyze",
        "verify",
        "wildboar.socket",
        "wildboar-submission.socket",
        "wildboar.service",
        "wildboar-consumer@scam.service",
        check=False,
    )
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")


def test_without_domains_the_service_does_not_serve_and_says_why(machine: Container) -> None:
    check = machine.run("wildboar", "check-config", check=False)
    assert check.returncode == 1
    assert "recipients.domains: not set in /etc/wildboar/wildboar.toml" in check.stderr
    machine.run("systemctl", "start", "wildboar.service", check=False)
    wait_for(
        "the failed start in the journal",
        lambda: (
            "recipients.domains: not set"
            in machine.sh("journalctl -u wildboar.service --no-pager", check=False)
        ),
    )
    machine.run("systemctl", "reset-failed", "wildboar.service", check=False)
    machine.run("systemctl", "stop", "wildboar.service", check=False)


def test_the_sockets_listen_and_start_the_service_on_the_first_connection(
    machine: Container,
) -> None:
    set_key(machine, "^# domains is not set by default$", f'domains = ["{DOMAIN}"]')
    machine.run("systemctl", "enable", "--now", "wildboar.socket")
    listening = machine.sh("ss -Hltn")
    assert re.search(r"[*:]:25\b", listening) and re.search(r"[*:]:587\b", listening), listening
    assert machine.run("systemctl", "is-active", "wildboar.service", check=False).stdout == (
        "inactive\n"
    )
    assert send(machine, 25) == "{}\n"
    assert send(machine, 587) == "{}\n"
    # The first worker serves before the supervisor's READY=1, which waits for them all.
    wait_for(
        "the service to be active",
        lambda: machine.sh("systemctl is-active wildboar.service", False).strip() == "active",
    )
    assert spooled(machine) == 2
    listed = machine.sh("wildboar spool ls").splitlines()
    assert len(listed) == 2 and all(f"a@example.net -> user@{DOMAIN}" in x for x in listed)


def test_every_process_runs_as_wildboar_without_privileges(machine: Container) -> None:
    uid = machine.sh("id -u wildboar").strip()
    pids = service_pids(machine)
    assert len(pids) >= 2  # the supervisor and its workers
    for pid in pids:
        status = dict(
            line.split(":\t", 1)
            for line in machine.sh(f"cat /proc/{pid}/status").splitlines()
            if ":\t" in line
        )
        assert status["Uid"].split() == [uid] * 4, pid
        assert status["Gid"].split()[0] != "0", pid
        assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == 0, pid
        assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2", pid


def test_the_journal_has_every_record_with_its_urns(machine: Container) -> None:
    entries = [
        json.loads(line)
        for line in machine.sh("journalctl -u wildboar.service -o json --no-pager").splitlines()
    ]
    accepted = [e for e in entries if e.get("EVENT") == "message_accepted"]
    assert len(accepted) == 2
    urn = accepted[0]["WILDBOAR_MESSAGE"]
    assert re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", urn)
    assert {"CONNECTION", "TRANSACTION", "SERVER"} <= set(accepted[0])
    found = [
        json.loads(line)
        for line in machine.sh(f"journalctl WILDBOAR_MESSAGE={urn} -o json --no-pager").splitlines()
    ]
    assert found and all(e["WILDBOAR_MESSAGE"] == urn for e in found)
    assert "message_accepted" in {e["EVENT"] for e in found}


def test_workers_scale_by_the_configuration_and_by_a_drop_in(machine: Container) -> None:
    set_key(machine, "^# workers = .*$", "workers = 3")
    machine.run("systemctl", "restart", "wildboar.service")
    wait_for("3 workers", lambda: workers(machine) == 3)
    machine.sh(
        "mkdir -p /etc/systemd/system/wildboar.service.d && printf '[Service]\\n"
        "Environment=WILDBOAR_WORKERS=4\\n' > /etc/systemd/system/wildboar.service.d/workers.conf"
        " && systemctl daemon-reload && systemctl restart wildboar.service"
    )
    wait_for("4 workers", lambda: workers(machine) == 4)
    machine.sh(
        "rm -r /etc/systemd/system/wildboar.service.d && sed -i 's/^workers = 3$/workers = 2/'"
        " /etc/wildboar/wildboar.toml && systemctl daemon-reload"
        " && systemctl restart wildboar.service"
    )
    wait_for("2 workers", lambda: workers(machine) == 2)


def test_a_root_only_key_by_loadcredential_serves_starttls(
    machine: Container, tmp_path: Path
) -> None:
    """The key stays 0600 root: systemd reads it (LoadCredential=), the supervisor reads
    the credential and hands the workers copies; STARTTLS on port 25 works, and again
    after a reload."""
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(tmp_path / "key"),
            "-out",
            str(tmp_path / "cert"),
            "-days",
            "2",
            "-subj",
            f"/CN=mx.{DOMAIN}",
        ],
        check=True,
        capture_output=True,
    )
    machine.sh("mkdir -p -m 0700 /etc/ssl/private")
    machine.write("/etc/ssl/private/mx.key", (tmp_path / "key").read_text())
    machine.write("/etc/ssl/mx.pem", (tmp_path / "cert").read_text())
    machine.sh("chown root:root /etc/ssl/private/mx.key && chmod 600 /etc/ssl/private/mx.key")
    assert (
        machine.run(
            "runuser", "-u", "wildboar", "--", "cat", "/etc/ssl/private/mx.key", check=False
        ).returncode
        != 0
    )
    machine.sh(
        "cp /etc/wildboar/wildboar.toml /root/wildboar.toml.saved"
        ' && printf \'\n[[listen]]\nname = "smtp"\nhost = "0.0.0.0"\nport = 25\n'
        'tls = "starttls"\ncertificate = "/etc/ssl/mx.pem"\n'
        'key = "credential:mx.key"\n\' >> /etc/wildboar/wildboar.toml'
        " && mkdir -p /etc/systemd/system/wildboar.service.d"
        " && printf '[Service]\nLoadCredential=mx.key:/etc/ssl/private/mx.key\n'"
        " > /etc/systemd/system/wildboar.service.d/key.conf"
        " && systemctl daemon-reload && systemctl restart wildboar.service"
    )
    script = (
        "import smtplib, ssl\n"
        "c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = 0\n"
        "with smtplib.SMTP('127.0.0.1', 25, timeout=60) as s:\n"
        "    s.starttls(context=c)\n"
        "    print(s.sock.version(), s.sendmail('a@example.net', "
        f"['user@{DOMAIN}'], {MESSAGE!r}))\n"
    )
    try:
        for _ in range(2):
            result = subprocess.run(
                machine.netns(sys.executable, "-c", script),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert result.returncode == 0, result.stderr + machine.sh(
                "journalctl -u wildboar --no-pager -n 30", check=False
            )
            assert result.stdout == "TLSv1.3 {}\n"
            machine.run("systemctl", "reload", "wildboar.service")
    finally:
        machine.sh(
            "mv /root/wildboar.toml.saved /etc/wildboar/wildboar.toml"
            " && rm -r /etc/systemd/system/wildboar.service.d"
            " && systemctl daemon-reload && systemctl restart wildboar.service"
        )


def test_reload_and_upgrade_under_load_refuse_nothing_and_lose_nothing(
    machine: Container,
) -> None:
    """smtp-source sends in batches while the service is reloaded (rolling HUP) and the
    package is upgraded (the service restarted behind its open sockets): every batch gets
    all its 250s, and the spool holds every message."""
    before = spooled(machine)
    socket_since = machine.sh("systemctl show -p ActiveEnterTimestampMonotonic wildboar.socket")
    main = machine.sh("systemctl show -p MainPID --value wildboar.service").strip()
    done = threading.Event()
    failures: list[str] = []
    sent = 0

    def load() -> None:
        nonlocal sent
        end = time.monotonic() + LOAD_SECONDS
        while (not done.is_set() or sent < LOAD_MESSAGES) and time.monotonic() < end:
            batch = 200
            result = subprocess.run(
                machine.netns(
                    "/usr/sbin/smtp-source",
                    "-s",
                    "10",
                    "-m",
                    str(batch),
                    "-l",
                    "2000",
                    "-f",
                    "a@example.net",
                    "-t",
                    f"load@{DOMAIN}",
                    "127.0.0.1:25",
                ),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if result.returncode != 0 or result.stdout.strip() or result.stderr.strip():
                failures.append(f"{result.returncode}: {result.stdout}{result.stderr}"[-2000:])
                return
            sent += batch

    loader = threading.Thread(target=load)
    loader.start()
    try:
        time.sleep(1.0)
        machine.run("systemctl", "reload", "wildboar.service", timeout=120)
        assert machine.sh("systemctl show -p MainPID --value wildboar.service").strip() == main
        time.sleep(1.0)
        upgrade = machine.run("apt-get", "install", "-y", "-q", "/root/wildboar-upgrade.deb")
        assert "+upgrade1" in upgrade.stdout
    finally:
        done.set()
        loader.join(LOAD_SECONDS + 60)
    assert failures == []
    assert sent >= LOAD_MESSAGES
    assert machine.sh("systemctl show -p MainPID --value wildboar.service").strip() != main
    assert machine.sh("systemctl show -p ActiveEnterTimestampMonotonic wildboar.socket") == (
        socket_since
    )
    assert spooled(machine) == before + sent


def test_stop_lets_a_transaction_in_progress_finish(machine: Container) -> None:
    before = spooled(machine)
    client = (
        "import socket, sys\n"
        "s = socket.create_connection(('127.0.0.1', 25), timeout=60)\n"
        "f = s.makefile('rb')\n"
        "def reply():\n"
        "    while True:\n"
        "        line = f.readline()\n"
        "        if line[3:4] != b'-': return line.decode().strip()\n"
        "reply()\n"
        "for line in (b'EHLO client.example', b'MAIL FROM:<a@example.net>',\n"
        f"             b'RCPT TO:<user@{DOMAIN}>', b'DATA'):\n"
        "    s.sendall(line + b'\\r\\n'); reply()\n"
        "s.sendall(b'Subject: drained\\r\\n\\r\\nhalf')\n"
        "print('in data', flush=True)\n"
        "sys.stdin.readline()\n"
        "s.sendall(b' and the rest\\r\\n.\\r\\n')\n"
        "print(reply(), flush=True)\n"
        "s.sendall(b'MAIL FROM:<a@example.net>\\r\\n')\n"
        "print(reply(), flush=True)\n"
    )
    proc = subprocess.Popen(
        machine.netns(sys.executable, "-c", client),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline() == "in data\n"
    machine.run("systemctl", "stop", "--no-block", "wildboar.service")
    wait_for(
        "the stop to begin",
        lambda: (
            machine.sh("systemctl is-active wildboar.service", check=False).strip()
            == "deactivating"
        ),
    )
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline().startswith("250 ")
    assert proc.stdout.readline().startswith("421 4.3.2")
    proc.wait(30)
    wait_for(
        "the service to stop",
        lambda: (
            machine.sh("systemctl is-active wildboar.service", check=False).strip() == "inactive"
        ),
    )
    assert spooled(machine) == before + 1


def test_it_runs_beside_debians_supervisor_package(machine: Container) -> None:
    """Debian's supervisor has a Python module of the same name: both packages install,
    each imports its own."""
    machine.run("apt-get", "install", "-y", "-q", "supervisor", timeout=300)
    debian = machine.sh("python3 -c 'import supervisor; print(supervisor.__file__)'")
    assert debian.strip() == "/usr/lib/python3/dist-packages/supervisor/__init__.py"
    assert machine.sh("supervisord --version").strip()
    assert send(machine, 25) == "{}\n"  # socket-activated again, after the stop
    main = machine.sh("systemctl show -p MainPID --value wildboar.service").strip()
    command = machine.sh(f"tr '\\0' ' ' < /proc/{main}/cmdline")
    assert "/usr/lib/wildboar supervisor" in command
    owners = machine.sh("dpkg -S /usr/lib/wildboar/supervisor/__init__.py")
    assert owners.strip() == "wildboar: /usr/lib/wildboar/supervisor/__init__.py"


def test_a_consumer_unit_stores_what_the_server_publishes(machine: Container) -> None:
    """smtplib -> wildboar.service -> RabbitMQ -> wildboar-consumer@store under the unit's
    hardening: every message in the stage's own directory, with nothing but the broker in
    the configuration and ``--after smtp`` in the stage's file."""
    # Debian's RabbitMQ in the container (from the apt cache: no network), named for
    # loopback, since the container's own host name resolves nowhere.
    machine.sh(
        "mkdir -p /etc/rabbitmq && echo NODENAME=rabbit@localhost > /etc/rabbitmq/rabbitmq-env.conf"
    )
    machine.run("apt-get", "install", "-y", "-q", "rabbitmq-server", timeout=300)
    machine.run("rabbitmqctl", "-q", "await_startup", timeout=180)
    machine.sh("cp /etc/wildboar/wildboar.toml /root/wildboar.toml.spool")
    set_key(machine, r'^# handoff = \["spool"\]$', 'handoff = ["amqp"]')
    url = "amqp://guest:guest@127.0.0.1:5672/%2F"
    set_key(machine, rf'^# urls = \["{url}"\]$', f'urls = ["{url}"]')
    machine.sh("mkdir -p /etc/wildboar/consumers")
    machine.write("/etc/wildboar/consumers/store.env", "CONSUME_OPTIONS=--after smtp\n")
    # Type=notify: start returns once the stage is connected and consuming.
    machine.run("systemctl", "start", "wildboar-consumer@store", timeout=120)
    machine.run("systemctl", "restart", "wildboar.service", timeout=120)
    before = spooled(machine)
    assert send(machine, 25, count=3) == "{}\n" * 3
    store = "/var/lib/wildboar-consumer/store"

    def stored() -> list[str]:
        found = machine.sh(f"find {store} -name '*.eml' 2>/dev/null", check=False)
        return sorted(found.split())

    wait_for("three messages in the store stage's directory", lambda: len(stored()) == 3)
    assert spooled(machine) == before  # handed to RabbitMQ, not spooled
    for eml in stored():
        content = machine.sh(f"cat {eml}")
        assert content.startswith("Received: from ") and "Hello from outside." in content
        record = json.loads(machine.sh(f"cat {eml.removesuffix('.eml')}.json"))
        assert record["email"]["id"] == "urn:uuid:" + Path(eml).stem
        assert record["email"]["to"] == [f"user@{DOMAIN}"]
    modes = machine.sh(f"stat -c '%U %a' {store} {stored()[0]}").split("\n")
    assert modes[:2] == ["wildboar 700", "wildboar 600"]
    wait_for(
        "the unit's progress (every 10 s)",
        lambda: "handled" in machine.sh("systemctl show -p StatusText wildboar-consumer@store"),
        timeout=30,
    )
    urn = "urn:uuid:" + Path(stored()[0]).stem
    journal = machine.sh(f"journalctl -u wildboar-consumer@store WILDBOAR_MESSAGE={urn} -o json")
    assert "record_dropped" in journal  # its journey ended in the store, said with its URN
    # Back to the spool handoff for the tests after this one; the stage is left running
    # (the package's removal stops it).
    machine.sh("cp /root/wildboar.toml.spool /etc/wildboar/wildboar.toml")
    machine.run("systemctl", "restart", "wildboar.service", timeout=120)


def test_purge_keeps_a_spool_with_messages_and_says_so(machine: Container) -> None:
    held = spooled(machine)
    assert held > 0
    purge = machine.run("apt-get", "purge", "-y", "-q", "wildboar", timeout=300)
    said = purge.stdout + purge.stderr
    assert f"/var/spool/wildboar still holds {held} message record(s): kept" in said
    assert "/var/lib/wildboar-consumer still holds 6 file(s) of the consumer stages" in said
    assert spooled(machine) == held
    stage = machine.run("systemctl", "is-active", "wildboar-consumer@store", check=False)
    assert stage.stdout.strip() == "inactive"  # stopped by the removal, not left running
    assert machine.sh("ps -o args= -u wildboar", check=False) == ""
    assert machine.run("getent", "passwd", "wildboar", check=False).returncode == 0
    assert machine.run("test", "-e", "/etc/wildboar", check=False).returncode == 1
    for unit in ("wildboar.socket", "wildboar-submission.socket", "wildboar.service"):
        assert machine.run("systemctl", "is-active", unit, check=False).stdout.strip() in (
            "inactive",
            "failed",
        )
    assert not re.search(r"[*:]:(25|587)\b", machine.sh("ss -Hltn"))


def test_purge_of_an_empty_spool_removes_spool_configuration_and_user(
    machine: Container,
) -> None:
    machine.run("apt-get", "install", "-y", "-q", "/root/wildboar-upgrade.deb", timeout=300)
    drained = machine.sh("wildboar spool drain | wc -l")
    assert int(drained) > 0 and spooled(machine) == 0
    # The operator moved the stored mail elsewhere; the stage's empty directory stays.
    machine.sh("find /var/lib/wildboar-consumer -type f -delete")
    purge = machine.run("apt-get", "purge", "-y", "-q", "wildboar", timeout=300)
    paths = ("/var/spool/wildboar", "/var/lib/wildboar-consumer", "/etc/wildboar")
    for path in (*paths, "/usr/lib/wildboar"):
        assert machine.run("test", "-e", path, check=False).returncode == 1, path
    left = machine.sh("ps -o user,pid,args -u wildboar; userdel wildboar 2>&1 || true", False)
    assert machine.run("getent", "passwd", "wildboar", check=False).returncode == 2, (
        purge.stdout[-2000:] + purge.stderr + left
    )
    assert machine.run("getent", "group", "wildboar", check=False).returncode == 2
