"""The ``wildboar`` command line: replay and schema, and what ``serve`` hands the
supervisor and workers (serve, spool and check-config have tests of their own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import msgspec

from wildboar import cli
from wildboar import config as C
from wildboar import message as M
from wildboar.cli import load, serve

ROOT = Path(__file__).resolve().parents[1]


def wildboar(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "wildboar.cli", *args],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        env={"PATH": os.environ["PATH"]},
        timeout=60,
        check=False,
    )


def test_replay_prints_the_transcript_and_the_record() -> None:
    result = wildboar("replay", "examples/sample.smtp")
    assert result.returncode == 0, result.stderr
    transcript, _, record = result.stdout.decode().partition("\n\n")
    lines = transcript.splitlines()
    assert lines[0] == "S: 220 mx.example.org ESMTP"
    assert "C: DATA" in lines and "S: 354 End data with <CR><LF>.<CR><LF>" in lines
    assert lines[-3].startswith("S: 250 2.0.0 Ok: queued as urn:uuid:")
    assert lines[-2] == "C: QUIT"
    assert lines[-1] == "S: 221 2.0.0 Bye"
    message = msgspec.json.decode(record.encode(), type=M.Message)
    assert lines[-3].endswith(message.email.id)
    assert message.email.sender == "alice@example.net"
    assert message.email.to == ["bob@example.org", "Postmaster"]
    assert message.email.envid == "QQ314159"
    content = (ROOT / "examples/sample.smtp").read_bytes().split(b"DATA\n", 1)[1]
    content = content.split(b"\n.\n", 1)[0].replace(b"\n", b"\r\n") + b"\r\n"
    expected = content.replace(b"\r\n..", b"\r\n.")  # the sample is dot-stuffed
    assert message.email.data == message.email.received.encode() + b"\r\n" + expected


def test_replay_msgpack_and_a_refused_transcript(tmp_path: Path) -> None:
    script = tmp_path / "bad.smtp"
    script.write_bytes(b"EHLO c.example\nMAIL FROM:<a@example.net>\nRCPT TO:<bad@@x>\nQUIT\n")
    result = wildboar("replay", "--msgpack", str(script))
    assert result.returncode == 0
    assert b"S: 553 5.1.3 Error: bad recipient address syntax" in result.stdout
    assert result.stdout.rstrip().endswith(b"S: 221 2.0.0 Bye")  # no record was printed


def test_replay_missing_file_is_one_line() -> None:
    result = wildboar("replay", "/nonexistent/file.smtp")
    assert result.returncode == 1
    assert result.stderr.decode().strip().splitlines() == [
        "wildboar replay: cannot read /nonexistent/file.smtp: No such file or directory"
    ]


def test_schema_command_prints_the_published_schema() -> None:
    result = wildboar("schema")
    assert result.returncode == 0
    assert json.loads(result.stdout) == json.loads((ROOT / "docs/message.schema.json").read_text())


def handed_on(*flags: str) -> tuple[list[str], dict[str, str]]:
    """The supervisor's command line and what ``serve`` adds to its environment."""
    args = cli.parser().parse_args(["serve", "--workers", "1", *flags])
    config = C.load(environ={}, flags=C.flags_of(args))
    return serve.supervisor_command(config, args), serve.worker_environment(args)


def test_serve_passes_a_url_file_as_its_path_only(tmp_path: Path) -> None:
    urls = tmp_path / "amqp-urls"
    urls.write_text("amqp://w:pa,ss@10.0.0.5/\n")
    urls.chmod(0o640)
    command, environment = handed_on("--amqp-url-file", str(urls))
    assert environment == {"WILDBOAR_AMQP_URLS_FILE": str(urls)}
    assert not any("pa,ss" in part or "amqp://" in part for part in command)
    assert command[-2:] == ["--handoff", "amqp"]  # the file implies the handoff


def test_serve_runs_isolated_interpreters_and_resolves_no_name_as_root(tmp_path: Path) -> None:
    """The supervisor and the workers are ``python -I`` (no current directory on sys.path),
    the workers take relative paths from where serve started, and serve's own look at the
    configuration does not resolve the host name (it runs as root): the workers do."""
    args = cli.parser().parse_args(["serve", "--workers", "1", "--directory", str(tmp_path)])
    config = load.load_config(args, resolve_hostname=False)
    assert config is not None and config.hostname == load.UNRESOLVED_HOSTNAME
    assert config.spool.path == str(tmp_path / "spool")
    command = serve.supervisor_command(config, args)
    supervisor, worker = command[: command.index("--")], command[command.index("--") + 1 :]
    assert supervisor[1:4] == ["-I", "-m", "supervisor"]
    assert worker[1:6] == ["-I", "-m", "wildboar.worker", "--directory", str(tmp_path)]
    assert "--hostname" not in worker


def test_serve_passes_url_flags_in_the_environment_not_on_a_command_line() -> None:
    url = "amqp://w:pa,ss@10.0.0.5/"
    command, environment = handed_on("--amqp-url", url, "--handoff", "spool", "--handoff", "amqp")
    assert json.loads(environment.pop("WILDBOAR_AMQP_URLS")) == [url]
    # Over a urls_file from the file or the outer environment, as the flag was for serve.
    assert environment == {"WILDBOAR_AMQP_URLS_FILE": ""}
    assert not any("pa,ss" in part for part in command)
    assert handed_on()[1] == {}
