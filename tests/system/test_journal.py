"""Logs under systemd: a real ``systemd-journald`` in a private mount namespace (its own
``/run``, volatile storage in the test's directory), ``wildboar serve`` with stderr marked
as the journal stream as systemd marks it (``JOURNAL_STREAM``), and ``journalctl`` reading
back what the workers logged."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from .. import unprivileged
from .harness import serving, spooled

JOURNALD = "/lib/systemd/systemd-journald"
# Runs its arguments (wildboar serve) with a journald of its own. TERM reaches the server,
# whose exit status is the script's; journald stops after the server.
NAMESPACE_SCRIPT = r"""
set -eu
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/systemd/journald.conf.d /run/log
printf '[Journal]\nStorage=volatile\nRateLimitBurst=0\n' > /run/systemd/journald.conf.d/test.conf
mount --bind "$JOURNAL_TEST_DIR" /run/log
"$JOURNALD" &
journald=$!
tries=0
until [ -S /run/systemd/journal/socket ]; do
    tries=$((tries + 1)); [ "$tries" -lt 200 ] || { echo "journald did not start" >&2; exit 3; }
    sleep 0.05
done
JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2)
export JOURNAL_STREAM
set +e
"$@" &
server=$!
trap 'kill -TERM "$server"' TERM INT
wait "$server"; status=$?
while kill -0 "$server" 2>/dev/null; do wait "$server"; status=$?; done
kill -TERM "$journald"; wait "$journald"
exit "$status"
"""


def journal(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        ["journalctl", "-D", str(directory / "journal"), "-o", "json", "--no-pager",
         "SYSLOG_IDENTIFIER=wildboar"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture
def journal_dir() -> Any:
    with tempfile.TemporaryDirectory(prefix="wildboar-journal-") as name:
        yield Path(name)


def test_workers_log_to_journald_with_fields(spool_dir: Path, journal_dir: Path) -> None:
    assert unprivileged.AS_ROOT, "this test runs as root, as CI does (mount namespace)"
    wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c", NAMESPACE_SCRIPT, "sh"]
    env = {"JOURNAL_TEST_DIR": str(journal_dir), "JOURNALD": JOURNALD}
    sender = '"a b"@example.net'
    with serving(spool_dir, workers=1, wrapper=wrapper, env=env) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=15) as client:
            client.sendmail(sender, ["b@example.org"], b"Subject: journal\r\n\r\nhi\r\n")
        assert server.stop() == 0
    stderr = "".join(server.stderr)
    assert "Traceback" not in stderr and "Logging error" not in stderr, stderr
    # The workers wrote to the journal, not to stderr; the supervisor keeps its stderr.
    assert server.events("message_accepted") == []
    assert server.events("ready", component="supervisor")

    [record] = spooled(spool_dir)
    entries = journal(journal_dir)
    by_event: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_event.setdefault(entry["EVENT"], []).append(entry)
    assert {"worker_ready", "connection_open", "message_accepted", "connection_close"} <= set(
        by_event
    ), sorted(by_event)

    [accepted] = by_event["message_accepted"]
    # The record's ids, as fields journalctl can select on ("message" would clash with
    # journald's MESSAGE, hence WILDBOAR_MESSAGE).
    assert accepted["WILDBOAR_MESSAGE"] == record.email.id
    assert accepted["CONNECTION"] == record.connection.id
    assert accepted["TRANSACTION"] == record.transaction.id
    assert accepted["SENDER"] == sender
    assert accepted["RECIPIENTS"] == "1"
    assert accepted["PRIORITY"] == "6"
    # MESSAGE reads on its own in `journalctl`; a value with a space or quote is quoted.
    assert accepted["MESSAGE"].startswith(f"message_accepted connection={record.connection.id} ")
    assert 'sender="\\"a b\\"@example.net"' in accepted["MESSAGE"]
    [opened] = by_event["connection_open"]
    assert opened["CONNECTION"] == record.connection.id
    assert opened["REMOTE"] == "127.0.0.1"
    assert opened["SERVER"] == record.server.id
    # Sent by the worker after it dropped root.
    assert accepted["_UID"] != "0"
    assert int(accepted["_PID"]) != server.proc.pid


def test_stderr_redirected_away_from_the_journal_gets_json(tmp_path: Path) -> None:
    """JOURNAL_STREAM names the stream systemd connected; a worker whose stderr is another
    file (a redirection in the unit) writes JSON lines there."""
    out = tmp_path / "stderr"
    code = "from wildboar.worker import logs; logs.setup('auto'); logs.log('x_event', a=1)"
    with out.open("wb") as stderr:
        status = os.fstat(stderr.fileno())
        subprocess.run(
            [sys.executable, "-c", code],
            stderr=stderr,
            env={**os.environ, "JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino + 1}"},
            check=True,
            timeout=30,
        )
    [line] = out.read_text().splitlines()
    assert json.loads(line)["event"] == "x_event"


def test_journal_asked_for_without_journald_falls_back_to_json_and_says_so() -> None:
    """libsystemd drops entries without a word when journald's socket is missing: a
    worker told to log to the journal there writes JSON lines instead, first a warning."""
    assert unprivileged.AS_ROOT, "this test runs as root, as CI does (mount namespace)"
    code = "from wildboar.worker import logs; logs.setup('journal'); logs.log('x_event', a=1)"
    script = 'mount -t tmpfs -o mode=0755 tmpfs /run && exec "$@"'
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         sys.executable, "-c", code],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    first, second = (json.loads(line) for line in result.stderr.splitlines())
    assert first["event"] == "journal_unavailable" and first["level"] == "warning"
    assert "/run/systemd/journal/socket does not exist" in first["why"]
    assert second["event"] == "x_event" and second["a"] == 1
