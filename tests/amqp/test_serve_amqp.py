"""``wildboar serve`` publishing to the machine's RabbitMQ, as an operator runs it: real
clients (smtplib, swaks, smtp-source), real workers (unprivileged), real broker."""

from __future__ import annotations

import base64
import contextlib
import grp
import json
import os
import signal
import smtplib
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import jsonschema

from tests import unprivileged
from tests.amqp.broker import DEAD_URL, URL, Broker, broker
from tests.amqp.nodes import RabbitNode, private_node
from tests.system.harness import Server, serving
from tests.system.test_serve import ANY_DOMAIN, smtp_source
from wildboar import message as M
from wildboar.handoff import Spool
from wildboar.handoff.amqp import ACCEPTED, REJECTED

__all__ = ["broker", "private_node"]  # fixtures
SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "message.schema.json").read_text())


def connected(server: Server, workers: int, timeout: float = 60.0) -> None:
    """Wait until ``workers`` workers said they reached the broker: a worker serves after
    at most 5 s without one (refusing sessions with 421), and a machine busy with other
    tests can take longer than that to declare the topology."""
    deadline = time.monotonic() + timeout
    while True:
        said = [r for r in list(server.logs) if r.get("event") == "amqp_connected"]
        if len(said) >= workers:
            return
        assert time.monotonic() < deadline, "".join(server.stderr)[-3000:]
        time.sleep(0.05)


def amqp_env(b: Broker, url: str = URL, **more: str) -> dict[str, str]:
    env = {"WILDBOAR_AMQP_PREFIX": b.prefix, "WILDBOAR_AMQP_URLS": url}
    env.update({f"WILDBOAR_AMQP_{k.upper()}": v for k, v in more.items()})
    return env


def test_mail_from_real_clients_arrives_in_the_queue_byte_for_byte(
    broker: Broker, spool_dir: Path
) -> None:
    body = b"Subject: via smtplib\r\n\r\n..leading dot\r\n\xe2\x82\xac 8-bit\r\n"
    with serving(spool_dir, "--handoff", "amqp", workers=2, env=amqp_env(broker)) as server:
        connected(server, 2)
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
            client.sendmail("a@example.net", ["b@example.org"], body, ["BODY=8BITMIME"])
        swaks = subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{server.port}", "--from", "s@example.net",
             "--to", "t@example.org", "--header", "Subject: via swaks", "--body", "swaks"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert swaks.returncode == 0, swaks.stdout
        output = smtp_source(server.port, 200, 10, "source")
        assert "fatal" not in output, output
        accepted = server.wait_for("message_accepted", 202, timeout=60)
    got = broker.get(broker.name(ACCEPTED), 202)
    records = [M.decode(g.body) for g in got]
    assert {r.email.id for r in records} == {a["message"] for a in accepted}
    for item, record in zip(got, records, strict=True):
        assert item.properties.message_id == record.email.id
        assert item.properties.delivery_mode == 2
        jsonschema.validate(json.loads(item.body), SCHEMA)
    [mine] = [r for r in records if b"Subject: via smtplib" in r.email.data]
    assert mine.email.data == mine.email.received.encode() + b"\r\n" + body
    assert sum(1 for r in records if r.email.to[0].endswith("source@example.org")) == 200
    assert not (spool_dir / "msg").exists() or Spool(spool_dir).count() == 0


def test_with_the_broker_down_sessions_get_421_and_later_mail_flows(
    broker: Broker, spool_dir: Path
) -> None:
    config = spool_dir.parent / "wildboar.toml"
    config.write_text(f'[amqp]\nurls = ["{DEAD_URL}"]\nprefix = "{broker.prefix}"\n{ANY_DOMAIN}')
    with serving(spool_dir, "--handoff", "amqp", "--config", str(config), workers=1) as server:
        try:
            smtplib.SMTP("127.0.0.1", server.port, timeout=30)
            raise AssertionError("a session was accepted with no broker")
        except smtplib.SMTPConnectError as error:
            assert error.smtp_code == 421 and b"4.3.2" in error.smtp_error
        config.write_text(f'[amqp]\nurls = ["{URL}"]\nprefix = "{broker.prefix}"\n{ANY_DOMAIN}')
        server.signal(signal.SIGHUP)
        server.wait_for("reloaded", component="supervisor", timeout=60)
        connected(server, 1)
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
            client.sendmail("a@example.net", ["b@example.org"], b"Subject: back\r\n\r\nok\r\n")
    [item] = broker.get(broker.name(ACCEPTED), 1)
    assert b"Subject: back" in M.decode(item.body).email.data


def test_when_down_mail_refuses_transactions_with_451(broker: Broker, spool_dir: Path) -> None:
    env = amqp_env(broker, DEAD_URL, when_down="mail")
    with (
        serving(spool_dir, "--handoff", "amqp", workers=1, env=env) as server,
        smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client,
    ):
        client.ehlo("c.example")
        code, text = client.mail("a@example.net")
        assert (code, text[:5]) == (451, b"4.3.0")


def test_store_and_forward_keeps_every_250_and_publishes_it_once_when_the_broker_is_back(
    broker: Broker, spool_dir: Path
) -> None:
    config = spool_dir.parent / "wildboar.toml"
    settings = f'prefix = "{broker.prefix}"\nstore_and_forward = true\n'
    config.write_text(f'[amqp]\nurls = ["{DEAD_URL}"]\n{settings}{ANY_DOMAIN}')
    with serving(spool_dir, "--handoff", "amqp", "--config", str(config), workers=2) as server:
        output = smtp_source(server.port, 100, 5, "buffered")
        assert "fatal" not in output, output
        accepted = {a["message"] for a in server.wait_for("message_accepted", 100)}
        assert Spool(spool_dir / "amqp").count() == 100
        # The operator points the server at the real broker.
        config.write_text(f'[amqp]\nurls = ["{URL}"]\n{settings}{ANY_DOMAIN}')
        server.signal(signal.SIGHUP)
        server.wait_for("reloaded", component="supervisor", timeout=60)
        deadline = time.monotonic() + 60
        while Spool(spool_dir / "amqp").count() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert Spool(spool_dir / "amqp").count() == 0
    got = broker.get(broker.name(ACCEPTED), 100)
    published = [g.properties.message_id for g in got]
    assert sorted(published) == sorted(accepted)  # every 250, exactly once
    created = [M.decode(g.body).email.creation_time for g in got]
    assert created == sorted(created)  # in the order they were accepted


def test_a_message_refused_after_its_content_goes_to_the_rejected_exchange(
    broker: Broker, spool_dir: Path
) -> None:
    env = amqp_env(broker)
    env["WILDBOAR_LIMITS_MESSAGE_SIZE"] = "65536"
    with serving(spool_dir, "--handoff", "amqp", workers=1, env=env) as server:
        connected(server, 1)
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
            client.ehlo("c.example")
            client.esmtp_features.pop("size", None)  # do not declare it: refused at the end
            try:
                content = (b"x" * 998 + b"\r\n") * 80
                client.sendmail("a@example.net", ["b@example.org"], content)
                raise AssertionError("an oversized message was accepted")
            except smtplib.SMTPDataError as error:
                assert error.smtp_code == 552
        # The log's refusal names the record published to the rejected exchange.
        [refused] = server.wait_for("message_refused")
    [item] = broker.get(broker.name(REJECTED), 1)
    record = M.decode(item.body)
    assert refused["message"] == record.email.id == item.properties.message_id
    assert refused["server"] == record.server.id
    assert record.rejection is not None and record.rejection.code == 552
    assert record.email.to == ["b@example.org"]
    assert base64.b64encode(record.email.data)  # what arrived before the limit
    assert broker.depth(broker.name(ACCEPTED)) == 0


def test_a_refused_message_larger_than_memory_is_recorded_whole(
    broker: Broker, spool_dir: Path
) -> None:
    """Content past ``sessions.content_memory`` waits in a temp file; refused, it is read
    back from there (in a thread) for the rejected record: all of what arrived, in order."""
    env = amqp_env(broker)
    env["WILDBOAR_LIMITS_MESSAGE_SIZE"] = "300000"
    lines = [b"%06d" % n + b"r" * 992 + b"\r\n" for n in range(400)]
    with serving(spool_dir, "--handoff", "amqp", workers=1, env=env) as server:
        connected(server, 1)
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
            client.ehlo("c.example")
            client.esmtp_features.pop("size", None)
            try:
                client.sendmail("a@example.net", ["b@example.org"], b"".join(lines))
                raise AssertionError("an oversized message was accepted")
            except smtplib.SMTPDataError as error:
                assert error.smtp_code == 552
        [refused] = server.wait_for("message_refused")
        deadline = time.monotonic() + 30
        while broker.depth(broker.name(REJECTED)) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
    [item] = broker.get(broker.name(REJECTED), 1)
    record = M.decode(item.body)
    assert refused["message"] == record.email.id
    content = record.email.data.removeprefix(record.email.received.encode() + b"\r\n")
    # What the core had parsed when the size ran out: some 300 KB, less what was still
    # waiting unparsed in its buffer then (more under load); far past the 64 KiB kept in
    # memory either way.
    assert len(content) > 2 * 65536
    assert b"".join(lines).startswith(content)


def test_amqp_url_flag_selects_the_amqp_handoff_and_stays_off_command_lines(
    broker: Broker, spool_dir: Path
) -> None:
    env = {"WILDBOAR_AMQP_PREFIX": broker.prefix}
    with serving(spool_dir, "--amqp-url", URL, workers=1, env=env) as server:
        connected(server, 1)
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
            client.sendmail("a@example.net", ["b@example.org"], b"Subject: flag\r\n\r\nok\r\n")
        for pid in [server.proc.pid, *server.worker_pids()]:
            command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
            assert b"guest:guest" not in command_line
    assert len(broker.get(broker.name(ACCEPTED), 1)) == 1
    assert not (spool_dir / "msg").exists() or Spool(spool_dir).count() == 0


def test_a_hung_broker_costs_the_sender_no_more_than_the_handoff_timeout(
    private_node: RabbitNode, spool_dir: Path
) -> None:
    env = {
        "WILDBOAR_AMQP_URLS": private_node.url,
        "WILDBOAR_AMQP_CONFIRM_TIMEOUT": "120",
        "WILDBOAR_TIMEOUTS_HANDOFF": "2",
    }
    body = b"Subject: hung\r\n\r\nok\r\n"
    with serving(spool_dir, "--handoff", "amqp", workers=1, env=env) as server:
        connected(server, 1)
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
            client.sendmail("a@example.net", ["b@example.org"], body)
            private_node.signal_beam(signal.SIGSTOP)
            try:
                started = time.monotonic()
                try:
                    client.sendmail("a@example.net", ["b@example.org"], body)
                    raise AssertionError("250 from a broker that does not answer")
                except smtplib.SMTPDataError as error:
                    assert (error.smtp_code, error.smtp_error[:5]) == (451, b"4.3.0")
                waited = time.monotonic() - started
            finally:
                private_node.signal_beam(signal.SIGCONT)
        assert 2.0 <= waited < 5.0
        assert server.wait_for("handoff_timeout")


def test_an_unreadable_ca_file_in_the_url_stops_the_start_with_one_line(spool_dir: Path) -> None:
    """pika opens ssl_options' files while parsing the URL, in the worker: a missing CA
    file is the worker's boot error (exit 3), named in one line, and the server stops at
    once instead of restarting workers that cannot work."""
    missing = spool_dir.parent / "no-such-ca.pem"
    options = urllib.parse.quote(json.dumps({"ca_certs": str(missing)}).replace('"', "'"))
    url = f"amqps://guest:guest@127.0.0.1:5671/%2F?ssl_options={options}"
    server = Server(spool_dir, "--amqp-url", url, workers=1)
    try:
        status = server.proc.wait(timeout=60)
    finally:
        server.kill()
    stderr = "".join(server.stderr)
    assert status == 1, stderr
    assert "Traceback" not in stderr, stderr
    [line] = [x for x in server.stderr if x.startswith("wildboar-worker:")]
    assert "handoff amqp: bad broker URL '127.0.0.1:5671'" in line
    assert "ssl_options" in line and "No such file" in line
    assert len(server.events("worker_exited", "supervisor")) == 1  # no restarts


# --- broker passwords (finding 9 of the audit) ---------------------------------------


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, check=True, timeout=120)


@contextlib.contextmanager
def broker_user(password: str) -> Iterator[str]:
    """A RabbitMQ user of the test's own, with ``password``, allowed everything on ``/``."""
    name = f"wbt-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_user", name, password)
    try:
        rabbitmqctl("set_permissions", "-p", "/", name, ".*", ".*", ".*")
        yield name
    finally:
        rabbitmqctl("delete_user", name)


def nasty_password() -> tuple[str, str]:
    """A password with every character that used to cut or show it (``,`` ``@`` ``:``
    ``/`` ``%``), and a piece of it found nowhere else (its end)."""
    piece = uuid.uuid4().hex[:10]
    return f"p,a@s:s/w%rd{piece}", piece


def user_url(user: str, password: str, port: int = 5672) -> str:
    """The URL as an operator writes it: ``/`` and ``%`` percent-encoded, the rest as is."""
    return f"amqp://{user}:{urllib.parse.quote(password, safe=',@:')}@127.0.0.1:{port}/%2F"


def secret_forms(password: str, url: str, piece: str) -> list[bytes]:
    forms = [password, urllib.parse.quote(password, safe=",@:"), url, piece]
    return [form.encode() for form in forms]


def secret_file(path: Path, text: str, mode: int = 0o640) -> Path:
    """``text`` in ``path``, readable by the workers' group only (root:nogroup 0640 when
    the tests run as root, as root:wildboar 0640 in production)."""
    path.write_text(text)
    if unprivileged.AS_ROOT and mode & 0o040:
        os.chown(path, 0, grp.getgrnam(unprivileged.GROUP).gr_gid)
    path.chmod(mode)
    return path


def processes(root: int) -> list[int]:
    """``root`` and every process below it."""
    found = [root]
    for pid in found:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(child) for child in (task / "children").read_text().split()]
    return found


def send_one(server: Server, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.sendmail("a@example.net", ["b@example.org"], f"Subject: {subject}\r\n\r\nok\r\n")


def test_a_password_in_the_url_file_is_on_no_command_line_environment_or_log(
    broker: Broker, spool_dir: Path
) -> None:
    """The attack: a local user reads every command line (``ps``) and every log line.
    ``serve --amqp-url-file`` passes the supervisor and the workers the file's path only;
    the workers read the file (as nobody, through the group) and reach the broker with
    the password."""
    password, piece = nasty_password()
    with broker_user(password) as user:
        url = user_url(user, password)
        urls = secret_file(spool_dir.parent / "amqp-urls", f"# a test broker\n\n{url}\n")
        env = {"WILDBOAR_AMQP_PREFIX": broker.prefix}
        with serving(spool_dir, "--amqp-url-file", str(urls), workers=2, env=env) as server:
            connected(server, 2)
            send_one(server, "from the file")
            seen = processes(server.proc.pid)
            assert len(seen) >= 3  # the supervisor and its two workers
            for pid in seen:
                command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
                environment = Path(f"/proc/{pid}/environ").read_bytes()
                for form in secret_forms(password, url, piece):
                    assert form not in command_line and form not in environment, pid
            for pid in server.worker_pids():
                environment = Path(f"/proc/{pid}/environ").read_bytes()
                assert f"WILDBOAR_AMQP_URLS_FILE={urls}".encode() in environment.split(b"\0")
        [item] = broker.get(broker.name(ACCEPTED), 1)
    assert b"Subject: from the file" in M.decode(item.body).email.data
    log = "".join(server.stderr).encode()
    assert not any(form in log for form in secret_forms(password, url, piece))


def test_a_comma_in_a_password_in_wildboar_amqp_urls_does_not_cut_the_url(
    broker: Broker, spool_dir: Path
) -> None:
    """Comma-separated, as the environment of a container gives it: the first URL's
    password holds a comma (and "@", ":", "/", "%"); it is one URL, and it works."""
    password, piece = nasty_password()
    with broker_user(password) as user:
        url = user_url(user, password)
        env = amqp_env(broker, f"{url},{DEAD_URL}")
        with serving(spool_dir, "--handoff", "amqp", workers=1, env=env) as server:
            connected(server, 1)
            send_one(server, "comma")
            for pid in processes(server.proc.pid):
                command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
                assert not any(f in command_line for f in secret_forms(password, url, piece))
        assert len(broker.get(broker.name(ACCEPTED), 1)) == 1
    [said] = server.events("amqp_connected")[:1]
    assert said["broker"] == "127.0.0.1:5672"
    log = "".join(server.stderr).encode()
    assert not any(form in log for form in secret_forms(password, url, piece))


def test_a_broker_refusing_the_password_is_logged_without_it(
    broker: Broker, spool_dir: Path
) -> None:
    """The broker's refusal (ACCESS_REFUSED) and pika's words about it reach the log with
    no trace of the password, as written or decoded."""
    password, piece = nasty_password()
    url = user_url("guest", password)  # guest's password is "guest"
    urls = secret_file(spool_dir.parent / "amqp-urls", url + "\n")
    env = {"WILDBOAR_AMQP_PREFIX": broker.prefix}
    with serving(spool_dir, "--amqp-url-file", str(urls), workers=1, env=env) as server:
        [unusable] = server.wait_for("amqp_broker_unusable", timeout=60)[:1]
    assert unusable["broker"] == "127.0.0.1:5672"
    log = "".join(server.stderr).encode()
    assert b"amqp_broker_unusable" in log
    assert not any(form in log for form in secret_forms(password, url, piece))


def test_a_url_file_the_workers_cannot_read_stops_the_start_with_one_line(
    spool_dir: Path,
) -> None:
    """Root (serve) can read a 0600 root file; the workers' user cannot: each worker says
    so in one line naming the file, and the server stops instead of restarting them."""
    if not unprivileged.AS_ROOT:
        return  # as one user, serve and its workers read the same files
    password, piece = nasty_password()
    url = user_url("guest", password)
    urls = secret_file(spool_dir.parent / "amqp-urls", url + "\n", mode=0o600)
    server = Server(spool_dir, "--amqp-url-file", str(urls), workers=1)
    try:
        status = server.proc.wait(timeout=60)
    finally:
        server.kill()
    stderr = "".join(server.stderr)
    assert status == 1, stderr
    [line] = [x for x in server.stderr if x.startswith("wildboar-worker:")]
    assert line.strip() == (
        f"wildboar-worker: config: amqp: urls_file {urls}: cannot read: Permission denied"
    )
    assert not any(form in stderr.encode() for form in secret_forms(password, url, piece))
