"""The ``wildboar`` command line.

Owns: argument parsing and the ``serve``, ``check-config``, ``replay`` and ``schema``
commands (``spool`` lives in ``spool_cli.py``).
``serve`` validates the whole configuration, then replaces itself with the supervisor
(``python -m supervisor``), which binds, drops privileges and starts the workers.
``replay FILE`` plays a client's side of an SMTP conversation (one line per line of the
file, sent with CRLF) through the SMTP core, prints the transcript, and prints each
accepted message as the JSON record a handoff would receive.
Must not know: the internals of the core; it uses only the public ``wildboar.smtp`` API.
Security: reads only the file it is given; errors are one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import TextIO

import msgspec

from . import config as C
from . import message as M
from . import record as R
from . import smtp, spool_cli

# A documentation address (RFC 5737) stands for the simulated client.
REPLAY_CLIENT = ("192.0.2.10", 49152)
REPLAY_SERVER = ("127.0.0.1", 2525)


class Replay:
    """Drives one ``ServerConnection`` with a scripted client, accepting everything."""

    def __init__(self, hostname: str, out: TextIO, content_type: str) -> None:
        self.conn = smtp.ServerConnection(hostname)
        self.out = out
        self.content_type = content_type
        self.server = R.build_server(hostname)
        self.connection = R.build_connection("ipv4", REPLAY_CLIENT, REPLAY_SERVER)
        self.transaction: R.TransactionStart | None = None
        self.content: list[bytes] = []
        self.messages: list[M.Message] = []
        self.closed = False

    def run(self, lines: Iterable[bytes]) -> None:
        self.pump()
        for line in lines:
            if self.closed:
                break
            self.out.write(f"C: {line.decode('utf-8', 'replace')}\n")
            self.conn.receive_data(line + b"\r\n")
            self.pump()
        if not self.closed:
            self.conn.receive_data(b"")
            self.pump()

    def pump(self) -> None:
        while True:
            event = self.conn.next_event()
            if event is smtp.NEED_DATA or event is smtp.PAUSED:
                break
            self.handle(event)
        self.show(self.conn.data_to_send())

    def show(self, replies: bytes) -> None:
        for line in replies.decode("ascii").splitlines():
            self.out.write(f"S: {line}\n")

    def handle(self, event: smtp.Event | smtp.Wait) -> None:
        if isinstance(event, smtp.MailFrom):
            self.transaction = R.start_transaction()
        if isinstance(event, smtp.MessageData):
            self.content.append(event.data)
        elif isinstance(event, smtp.TransactionAborted):
            self.content.clear()
        elif isinstance(event, smtp.ConnectionClosed):
            self.closed = True
        elif isinstance(event, smtp.MessageComplete):
            self.show(self.conn.send(smtp.Accept(f"Ok: queued as {self.accept(event)}")))
        elif isinstance(event, smtp.Question):
            self.show(self.conn.send(smtp.Accept()))

    def accept(self, event: smtp.MessageComplete) -> str:
        assert self.transaction is not None
        record = R.build_message(
            event.envelope,
            b"".join(self.content),
            server=self.server,
            connection=self.connection,
            transaction=self.transaction,
        )
        self.content.clear()
        self.messages.append(record)
        return record.email.id


def _read_lines(path: str) -> list[bytes]:
    with open(path, "rb") as handle:
        data = handle.read()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line.removesuffix(b"\r") for line in lines]


def cmd_replay(args: argparse.Namespace) -> int:
    try:
        lines = _read_lines(args.file)
    except OSError as error:
        print(f"wildboar replay: cannot read {args.file}: {error.strerror}", file=sys.stderr)
        return 1
    content_type = M.CONTENT_TYPE_MSGPACK if args.msgpack else M.CONTENT_TYPE_JSON
    replay = Replay(args.hostname, sys.stdout, content_type)
    replay.run(lines)
    for record in replay.messages:
        sys.stdout.write("\n")
        if args.msgpack:
            sys.stdout.write(M.encode(record, content_type).hex() + "\n")
        else:
            sys.stdout.write(msgspec.json.format(M.encode(record), indent=2).decode() + "\n")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(json.dumps(M.json_schema(), indent=2, sort_keys=True) + "\n")
    return 0


#: ``serve`` validates the configuration as root, before the privilege drop: the host name
#: is not looked up there (NSS and DNS as root), but by each worker, unprivileged.
UNRESOLVED_HOSTNAME = "hostname.invalid"


def _load(args: argparse.Namespace, resolve_hostname: bool = True) -> C.Config | None:
    flags = C.flags_of(args)
    if not resolve_hostname and flags.get("hostname") is None:
        flags["hostname"] = UNRESOLVED_HOSTNAME
    try:
        config = C.load(file=args.config, flags=flags, directory=args.directory)
        errors = C.serving_errors(config, C.config_file(args.config, directory=args.directory))
    except C.ConfigError as error:
        errors = error.errors
    for line in errors:
        print(f"wildboar: config: {line}", file=sys.stderr)
    return None if errors else config


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 1
    sys.stdout.write(C.to_toml_like(config))
    return 0


def supervisor_command(config: C.Config, args: argparse.Namespace) -> list[str]:
    """The supervisor's command line, with the worker command after ``--``. Both run an
    isolated interpreter (``-I``: neither the current directory nor ``PYTHON*`` variables
    nor the user's site directory on ``sys.path``): root starts the first, and a directory
    it happens to be in must not decide what code runs."""
    command = [sys.executable, "-I", "-m", "supervisor"]
    # Under socket activation (the supervisor keeps this process's pid: exec) the default
    # listener is not passed: the supervisor would warn that it ignores it.
    activated = os.environ.get("LISTEN_PID") == str(os.getpid()) and "LISTEN_FDS" in os.environ
    if not (activated and tuple(config.listen) == C.DEFAULT_LISTEN):
        for listener in config.listen:
            command += ["--listen", str(listener)]
    command += ["--workers", str(config.workers), "--user", config.user]
    command += ["--group", config.group, "--drain-timeout", str(config.timeouts.drain)]
    if config.workers_max is not None:
        command += ["--workers-max", str(config.workers_max)]
    # Workers load the configuration themselves (again at every HUP): only flags are
    # passed on, so that a value from the file or the environment can change on reload.
    # They run in /, and take relative paths from where serve was started.
    directory = os.path.abspath(args.directory or os.getcwd())
    worker = [sys.executable, "-I", "-m", "wildboar.worker", "--directory", directory]
    if args.hostname:
        worker += ["--hostname", args.hostname]
    if args.config:
        worker += ["--config", args.config]
    if args.spool:
        worker += ["--spool", args.spool]
    # --amqp-url and --amqp-url-file imply the amqp handoff, for the workers as for serve.
    implied = ["amqp"] if args.amqp_url or args.amqp_url_file else []
    if args.lmtp:
        worker += ["--lmtp", args.lmtp]
        implied.append("lmtp")
    for handoff in args.handoff or implied:
        worker += ["--handoff", handoff]
    return [*command, "--", *worker]


def worker_environment(args: argparse.Namespace) -> dict[str, str]:
    """What the workers must see in their environment rather than on their command line:
    broker URLs carry passwords, and any local user can read a command line.

    With ``--amqp-url-file`` only the file's path is passed (as given: a relative one is
    taken from the workers' ``--directory``), and each worker reads the file itself;
    ``--amqp-url`` passes the URLs (a JSON array: a password may hold a comma) and clears
    a ``urls_file`` from elsewhere, as the flag did for ``serve``."""
    environment: dict[str, str] = {}
    if args.amqp_url_file:
        environment["WILDBOAR_AMQP_URLS_FILE"] = args.amqp_url_file
    elif args.amqp_url:
        environment["WILDBOAR_AMQP_URLS"] = json.dumps(args.amqp_url)
        environment["WILDBOAR_AMQP_URLS_FILE"] = ""
    return environment


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args, resolve_hostname=False)
    if config is None:
        return 1
    command = supervisor_command(config, args)
    environment = {**os.environ, **worker_environment(args)}
    sys.stdout.flush()
    os.execve(command[0], command, environment)
    return 1  # not reached


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="wildboar", description="Inbound SMTP server.")
    sub = top.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="run the server (supervisor and workers) in the foreground"
    )
    C.config_flags(serve)
    serve.set_defaults(func=cmd_serve)
    check = sub.add_parser("check-config", help="print the effective configuration or its errors")
    C.config_flags(check)
    check.set_defaults(func=cmd_check_config)
    spool_cli.add_parser(sub)
    replay = sub.add_parser("replay", help="play a client transcript through the SMTP core")
    replay.add_argument("file", help="client lines, one per line (sent with CRLF)")
    replay.add_argument("--hostname", default="mx.example.org", help="the server's name")
    replay.add_argument("--msgpack", action="store_true", help="print records as msgpack hex")
    replay.set_defaults(func=cmd_replay)
    schema = sub.add_parser("schema", help="print the JSON Schema of the message record")
    schema.set_defaults(func=cmd_schema)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except smtp.LocalProtocolError as error:
        print(f"wildboar: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. piped into head: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
