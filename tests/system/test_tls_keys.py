"""Where the TLS keys come from: the supervisor reads every certificate and key (as root
when it starts so) and hands workers sealed copies, so a key can stay readable by root
alone; the files are read again at HUP, so a renewed certificate needs no stop; several
pairs on a listener are chosen by the client's SNI (docs/tls.md)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .. import unprivileged
from . import certificates
from .harness import Server, serving


@pytest.fixture
def directory() -> Iterator[Path]:
    with unprivileged.spool_directory() as made:
        yield made


def listener_config(spool: Path, name: str, pairs: list[tuple[Path, Path]]) -> Path:
    config = spool.parent / "wildboar.toml"
    certs = ", ".join(f'"{cert}"' for cert, _ in pairs)
    keys = ", ".join(f'"{key}"' for _, key in pairs)
    config.write_text(
        '[recipients]\ndomains = ["example.org"]\n\n'
        f'[[listen]]\nname = "{name}"\nhost = "127.0.0.1"\nport = 0\ntls = "implicit"\n'
        f"certificate = [{certs}]\nkey = [{keys}]\n"
    )
    return config


def port(server: Server) -> int:
    [listening] = server.wait_for("listening", component="supervisor")
    return int(listening["port"])


def peer_certificate(
    port: int, server_name: str | None = None, *, ciphers: str | None = None
) -> bytes:
    """The DER certificate the server presents on an implicit-TLS connection (after the
    greeting, so the session was served)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    if ciphers is not None:  # TLS 1.2 for the choice between RSA and ECDSA by cipher
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(ciphers)
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    with context.wrap_socket(raw, server_hostname=server_name) as tls:
        assert tls.recv(512).startswith(b"220 ")
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


def der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


def root_only(*paths: Path) -> None:
    for path in paths:
        if unprivileged.AS_ROOT:
            os.chown(path, 0, 0)
        path.chmod(0o600)


def readable_by_workers(path: Path) -> bool:
    """Whether the workers' user can read ``path`` (as that user, when we are root)."""
    if not unprivileged.AS_ROOT:
        return os.access(path, os.R_OK)
    found = subprocess.run(
        ["runuser", "-u", unprivileged.USER, "--", "cat", str(path)],
        capture_output=True,
        check=False,
    )
    return found.returncode == 0


def test_a_key_only_root_can_read_serves_tls(spool_dir: Path, directory: Path) -> None:
    cert, key = certificates.make(directory, "mx.test.example")
    root_only(key)
    if unprivileged.AS_ROOT:
        assert not readable_by_workers(key)
    config = listener_config(spool_dir, "smtps", [(cert, key)])
    with serving(spool_dir, "--config", str(config), listen=(), workers=1) as server:
        assert peer_certificate(port(server)) == der(cert)
        # A HUP re-reads the files; a key the unprivileged supervisor cannot read keeps
        # what it read at start, says so, and the new workers serve with it.
        server.signal(signal.SIGHUP)
        server.wait_for("reloaded", component="supervisor", timeout=60)
        kept = server.events("pass_file_kept", component="supervisor")
        if unprivileged.AS_ROOT:
            assert [k["path"] for k in kept] == [str(key)]
            assert kept[0]["reason"] == "Permission denied"
        assert peer_certificate(port(server)) == der(cert)


def test_a_renewed_certificate_is_served_after_hup(spool_dir: Path, directory: Path) -> None:
    cert, key = certificates.make(directory, "mx.test.example")
    config = listener_config(spool_dir, "smtps", [(cert, key)])
    with serving(spool_dir, "--config", str(config), listen=(), workers=2) as server:
        first = peer_certificate(port(server))
        assert first == der(cert)
        # Renewal as an ACME client does it: new files put in place, then a reload.
        renewed = directory / "renewed"
        renewed.mkdir()
        new_cert, new_key = certificates.make(renewed, "mx.test.example")
        shutil.move(new_key, key)
        shutil.move(new_cert, cert)
        server.signal(signal.SIGHUP)
        server.wait_for("reloaded", component="supervisor", timeout=60)
        assert server.events("pass_file_kept", component="supervisor") == []
        served = {peer_certificate(port(server)) for _ in range(6)}
        assert served == {der(cert)} and first not in served


def test_sni_chooses_the_certificate(spool_dir: Path, directory: Path) -> None:
    """Two names, the first with an ECDSA and an RSA certificate (one chosen by what the
    client can do), the second with one: SNI picks the name, the first is the default."""
    mx_ec = certificates.make(directory, "mx.test.example", kind="ec")
    mx_rsa = certificates.make(directory, "mx.test.example", kind="rsa")
    other = certificates.make(directory, "smtp.other.example", kind="ec")
    config = listener_config(spool_dir, "smtps", [mx_ec, mx_rsa, other])
    with serving(spool_dir, "--config", str(config), listen=(), workers=1) as server:
        where = port(server)
        assert peer_certificate(where, "smtp.other.example") == der(other[0])
        assert peer_certificate(where, "SMTP.Other.Example") == der(other[0])
        assert peer_certificate(where, "mx.test.example") == der(mx_ec[0])
        assert peer_certificate(where) == der(mx_ec[0])  # no SNI: the default
        assert peer_certificate(where, "unknown.example") == der(mx_ec[0])
        rsa_only = "ECDHE-RSA-AES128-GCM-SHA256"
        assert peer_certificate(where, "mx.test.example", ciphers=rsa_only) == der(mx_rsa[0])
        ecdsa_only = "ECDHE-ECDSA-AES128-GCM-SHA256"
        assert peer_certificate(where, ciphers=ecdsa_only) == der(mx_ec[0])


def test_an_unreadable_key_at_start_is_one_line(spool_dir: Path, directory: Path) -> None:
    cert, _ = certificates.make(directory, "mx.test.example")
    missing = directory / "missing.key"
    config = listener_config(spool_dir, "smtps", [(cert, missing)])
    server = Server(spool_dir, "--config", str(config), listen=(), workers=1)
    try:
        assert server.proc.wait(60) != 0
    finally:
        if server.proc.poll() is None:
            server.kill()
    deadline = time.monotonic() + 10
    while server._reader_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    text = "".join(server.stderr)
    assert f"--pass-file {missing}: No such file or directory" in text, text
    assert "Traceback" not in text
