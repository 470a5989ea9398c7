"""Configuration: defaults < TOML file < WILDBOAR_* environment < flags, and error reports."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from wildboar import config as C
from wildboar import smtp

TOML = """
hostname = "mx.example.org"
workers = 3
handoff = ["spool"]

[[listen]]
name = "smtp"
host = "0.0.0.0"
port = 25

[[listen]]
name = "submission"
host = "::"
port = 587

[spool]
path = "/var/spool/wildboar"

[limits]
message_size = 35000000

[timeouts]
command = 120

[recipients]
domains = ["example.org", "bücher.example"]
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "wildboar.toml"
    path.write_text(text)
    return str(path)


def test_defaults_without_any_source() -> None:
    config = C.load(environ={})
    assert config.listen == [C.Listener(host="127.0.0.1", port=2525, name="smtp")]
    assert config.spool.path == os.path.join(os.getcwd(), "spool")  # relative: from here
    assert config.handoff == ["spool"]
    assert config.workers == (os.cpu_count() or 1)
    assert config.limits == smtp.Limits()
    assert config.id.startswith("urn:uuid:")


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, TOML)
    config = C.load(file=path, environ={})
    assert config.hostname == "mx.example.org"
    assert [str(listener) for listener in config.listen] == [
        "smtp=0.0.0.0:25",
        "submission=[::]:587",
    ]
    assert config.limits.message_size == 35_000_000
    assert config.limits.recipients == 1000  # untouched keys keep their default
    assert config.timeouts.command == 120
    env = {
        "WILDBOAR_WORKERS": "5",
        "WILDBOAR_SPOOL": "/srv/spool",
        "WILDBOAR_LIMITS_RECIPIENTS": "200",
        "WILDBOAR_LISTEN": "127.0.0.1:2526,submission=[::1]:2587",
    }
    config = C.load(file=path, environ=env)
    assert config.workers == 5
    assert config.spool.path == "/srv/spool"
    assert config.limits.recipients == 200
    assert config.limits.message_size == 35_000_000
    assert [str(listener) for listener in config.listen] == [
        "smtp=127.0.0.1:2526",
        "submission=[::1]:2587",
    ]
    config = C.load(file=path, environ=env, flags={"workers": 7, "spool": {"path": "x"}})
    assert config.workers == 7
    assert config.spool.path == os.path.join(os.getcwd(), "x")


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, 'hostname = "from.file.example"\n')
    assert C.load(environ={"WILDBOAR_CONFIG": path}).hostname == "from.file.example"


def test_the_shipped_stages_variables_are_theirs_not_the_configurations() -> None:
    """``wildboar consume deliver`` runs with WILDBOAR_DELIVER_LMTP set: the configuration
    it loads (as ``serve`` does) must not refuse that as an unknown key."""
    env = {
        "WILDBOAR_SCAM_ACTION": "tag",
        "WILDBOAR_SPF_NAMESERVER": "127.0.0.1:53",
        "WILDBOAR_DELIVER_LMTP": "lmtp:127.0.0.1:24",
        "WILDBOAR_STORE_DIR": "/srv/mail",
        "WILDBOAR_WORKERS": "2",
    }
    assert C.from_env(env) == {"workers": "2"}
    assert C.load(environ=env).workers == 2
    with pytest.raises(C.ConfigError, match="spam_action: unknown key"):
        C.load(environ={"WILDBOAR_SPAM_ACTION": "tag"})


def test_every_error_is_reported_with_its_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'workers = 0\nbogus = 1\nhandoff = ["carrier-pigeon"]\n'
        '[limits]\nrecipients = 50\ncolour = "red"\n[timeouts]\ncommand = "soon"\n',
    )
    with pytest.raises(C.ConfigError) as info:
        C.load(file=path, environ={"WILDBOAR_LISTEN": "nowhere"})
    errors = "\n".join(info.value.errors)
    for key in ("workers:", "bogus: unknown key", "handoff:", "limits.colour: unknown key"):
        assert key in errors
    assert "timeouts.command:" in errors
    assert "listen[0]:" in errors


def test_rfc_floor_of_a_limit_is_enforced(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nrecipients = 50\n")
    with pytest.raises(C.ConfigError, match="recipients = 50 is below the minimum 100"):
        C.load(file=path, environ={})


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(C.ConfigError, match="cannot read"):
        C.load(file=str(tmp_path / "missing.toml"), environ={})
    with pytest.raises(C.ConfigError, match="not valid TOML"):
        C.load(file=write(tmp_path, "workers = = 2"), environ={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:25", C.Listener(host="127.0.0.1", port=25)),
        ("submission=[::]:587", C.Listener(host="::", port=587, name="submission")),
    ],
)
def test_listener_syntax(text: str, expected: C.Listener) -> None:
    assert C.parse_listener(text) == expected


@pytest.mark.parametrize(
    "text", ["25", "::1:25", "a=b=c:1", "host:port", "1.2.3.4:99999", "mx.example.org:25"]
)
def test_bad_listener_syntax(text: str) -> None:
    with pytest.raises(C.ConfigError):
        C.load(environ={}, flags={"listen": [text]})


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wildboar.cli", *args],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], **(env or {})},
        timeout=60,
        check=False,
    )


def test_a_file_that_does_not_say_whose_mail_to_take_does_not_serve(tmp_path: Path) -> None:
    """A configuration file without ``recipients.domains`` would make a server that takes
    mail for every domain (an open relay for whatever is behind it): check-config refuses
    it, naming the key; without any file (the embedded default) every domain is accepted,
    and check-config says so first."""
    result = cli("check-config", "--config", write(tmp_path, "workers = 1\n"))
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("wildboar: config: recipients.domains: not set in ")
    embedded = cli("check-config")
    assert embedded.returncode == 0
    assert embedded.stdout.startswith("# warning: recipients.domains: every domain is accepted")
    listed = cli("check-config", env={"WILDBOAR_RECIPIENTS_DOMAINS": "a.example,b.example"})
    assert '[recipients]\ndomains = ["a.example", "b.example"]\n' in listed.stdout
    assert "# warning" not in listed.stdout


def test_check_config_prints_the_effective_config(tmp_path: Path) -> None:
    result = cli("check-config", "--config", write(tmp_path, TOML), "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "workers = 2\n" in result.stdout
    assert 'hostname = "mx.example.org"' in result.stdout
    assert "[limits]\n" in result.stdout and "message_size = 35000000\n" in result.stdout
    assert result.stdout.count("[[listen]]") == 2


def test_check_config_masks_broker_passwords(tmp_path: Path) -> None:
    env = {"WILDBOAR_AMQP_URLS": "amqp://mail:s3cret@10.0.0.5:5672/mail,amqp://10.0.0.6/"}
    result = cli("check-config", env=env)
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout
    assert 'urls = ["amqp://mail:***@10.0.0.5:5672/mail", "amqp://10.0.0.6/"]' in result.stdout


def test_amqp_urls_from_the_environment_may_be_a_json_array() -> None:
    # A password may hold a comma; serve --amqp-url passes the URLs to workers this way.
    config = C.load(environ={"WILDBOAR_AMQP_URLS": '["amqp://u:a,b@10.0.0.5/", "amqp://h2/"]'})
    assert config.amqp.urls == ["amqp://u:a,b@10.0.0.5/", "amqp://h2/"]


def test_an_amqp_url_with_a_bad_port_is_refused() -> None:
    with pytest.raises(C.ConfigError, match="has a bad port"):
        C.load(environ={"WILDBOAR_AMQP_URLS": "amqp://u:pw@h:56720x/"})


@pytest.mark.parametrize("password", ["Zm9v/YmFy", "1234/5678", "s3cr#t", "ab?cd"])
def test_a_password_with_a_character_that_ends_the_host_is_refused_and_masked(
    password: str,
) -> None:
    """Unencoded, "/" "?" "#" end the authority: the URL would name another host, and the
    password would reach the log as part of a path. Refused, never shown."""
    result = cli("check-config", "--amqp-url", f"amqp://mail:{password}@127.0.0.1:5672/%2F")
    assert result.returncode == 1
    assert password not in result.stderr and password not in result.stdout
    assert "amqp://mail:***@127.0.0.1:5672/%2F" in result.stderr
    assert "must be percent-encoded" in result.stderr
    encoded = password.replace("/", "%2F").replace("#", "%23").replace("?", "%3F")
    config = C.load(flags={"amqp": {"urls": [f"amqp://mail:{encoded}@127.0.0.1/"]}})
    assert config.amqp.urls == [f"amqp://mail:{encoded}@127.0.0.1/"]


def test_list_values_from_the_environment_may_have_spaces_after_commas() -> None:
    environ = {"WILDBOAR_HANDOFF": "spool, amqp", "WILDBOAR_LISTEN": "127.0.0.1:25, [::1]:25"}
    config = C.load(environ=environ)
    assert config.handoff == ["spool", "amqp"]
    assert [str(listener) for listener in config.listen] == ["smtp=127.0.0.1:25", "smtp=[::1]:25"]


def test_a_user_without_a_password_is_refused() -> None:
    with pytest.raises(C.ConfigError, match="names a user without a password"):
        C.load(environ={"WILDBOAR_AMQP_URLS": "amqp://guest@127.0.0.1/"})


def test_timeouts_are_at_most_a_day_as_the_supervisor_allows() -> None:
    with pytest.raises(C.ConfigError, match=r"timeouts\.drain"):
        C.load(environ={"WILDBOAR_TIMEOUTS_DRAIN": "90000"})
    with pytest.raises(C.ConfigError, match=r"timeouts\.command"):
        C.load(environ={"WILDBOAR_TIMEOUTS_COMMAND": "inf"})
    assert C.load(environ={"WILDBOAR_TIMEOUTS_DRAIN": "86400"}).timeouts.drain == 86400


def test_a_message_size_whose_records_the_broker_would_refuse_is_a_config_error() -> None:
    environ = {"WILDBOAR_HANDOFF": "amqp", "WILDBOAR_LIMITS_MESSAGE_SIZE": "14000000"}
    with pytest.raises(C.ConfigError, match=r"amqp\.max_message_size"):
        C.load(environ=environ)
    environ["WILDBOAR_AMQP_FORMAT"] = "msgpack"  # no base64: it fits
    assert C.load(environ=environ).limits.message_size == 14_000_000
    # The envelope counts too: 1,000 recipients with long addresses and ORCPTs need ~2 MB.
    environ["WILDBOAR_AMQP_MAX_MESSAGE_SIZE"] = str(14_000_000 + 1_100_000)
    with pytest.raises(C.ConfigError, match=r"limits\.recipients 1000"):
        C.load(environ=environ)
    environ["WILDBOAR_LIMITS_RECIPIENTS"] = "100"
    assert C.load(environ=environ).limits.recipients == 100


def test_an_amqp_setting_error_names_its_key() -> None:
    result = cli("check-config", env={"WILDBOAR_AMQP_WHEN_DOWN": "never"})
    assert result.returncode == 1
    assert "amqp.when_down" in result.stderr and "Traceback" not in result.stderr


def test_check_config_names_every_error_without_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "workers = -1\n[limits]\nerrors = 0\n")
    result = cli("check-config", "--config", path, env={"WILDBOAR_TIMEOUTS_DRAIN": "x"})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith("wildboar: config: ") for line in lines), lines
    assert any("workers:" in line for line in lines)
    assert any("timeouts.drain:" in line for line in lines)
    assert "Traceback" not in result.stderr


def test_a_section_with_a_bad_key_still_gets_its_own_checks(tmp_path: Path) -> None:
    """Every error in one go: the RFC floor of a limit and a broker URL are checked even
    when another key of the same section is wrong."""
    path = write(
        tmp_path,
        '[limits]\nrecipients = 10\nmessage_size = "x"\n[amqp]\nurls = ["http://x/"]\nprefix = 3\n',
    )
    result = cli("check-config", "--config", path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert any("limits.message_size:" in line for line in lines), lines
    assert any("recipients = 10 is below the minimum 100" in line for line in lines), lines
    assert any("amqp.prefix:" in line for line in lines), lines
    assert any("'http://x/' is not an amqp://" in line for line in lines), lines


def test_the_default_hostname_is_never_localhost() -> None:
    """getfqdn() answers "localhost" where /etc/hosts maps the host name to 127.0.0.1 (as
    on this test machine); a greeting must name the host."""
    name = C.load().hostname
    assert name.split(".")[0].lower() != "localhost" or socket.gethostname() == "localhost"
    assert name in (socket.getfqdn(), socket.gethostname())


def test_the_amqp_buffer_may_not_be_the_spool() -> None:
    """Its drain would publish the spool handoff's messages and remove them from it."""
    environ = {"WILDBOAR_SPOOL": "/var/spool/wb", "WILDBOAR_AMQP_BUFFER": "/var/spool/wb/"}
    with pytest.raises(C.ConfigError, match=r"is spool\.path"):
        C.load(environ=environ)
    environ["WILDBOAR_AMQP_BUFFER"] = "/var/spool/wb/amqp"
    assert C.load(environ=environ).amqp_buffer == "/var/spool/wb/amqp"


@pytest.mark.parametrize(
    ("key", "value", "taken"),
    [
        ("LMTP_RETRY_SPOOL", "/var/spool/wb", "spool.path"),
        ("LMTP_BOUNCE_SPOOL", "/var/spool/wb/amqp", "amqp.buffer"),
        ("LMTP_BOUNCE_SPOOL", "/var/spool/wb/lmtp/", "lmtp.retry_spool"),
    ],
)
def test_the_lmtp_spools_are_directories_of_their_own(key: str, value: str, taken: str) -> None:
    """The retry runner would deliver (and remove) what another spool holds."""
    environ = {"WILDBOAR_SPOOL": "/var/spool/wb", f"WILDBOAR_{key}": value}
    with pytest.raises(C.ConfigError, match=f"is {taken}: give it a directory of its own"):
        C.load(environ=environ)


def test_a_prefix_that_would_make_names_too_long_for_amqp_is_refused() -> None:
    with pytest.raises(C.ConfigError, match="prefix: at most 232 octets"):
        C.load(environ={"WILDBOAR_AMQP_PREFIX": "p" * 233})
    assert C.load(environ={"WILDBOAR_AMQP_PREFIX": "p" * 232}).amqp.prefix == "p" * 232


def test_a_tls_listener_needs_its_certificate_and_key(tmp_path: Path) -> None:
    base = '[[listen]]\nname = "smtp"\nhost = "127.0.0.1"\nport = 25\n'
    cases = {
        'tls = "starttls"\n': "tls = 'starttls' needs a certificate",
        'tls = "implicit"\ncertificate = ["/a.pem", "/b.pem"]\nkey = "/a.key"\n': (
            "2 certificate(s) and 1 key(s)"
        ),
        'tls = "starttls"\ncertificate = "a.pem"\nkey = "a.key"\n': "is not an absolute path",
        'tls = "sometimes"\n': "listen[0]",
    }
    for extra, message in cases.items():
        path = tmp_path / "wildboar.toml"
        path.write_text(base + extra)
        with pytest.raises(C.ConfigError, match=re.escape(message)):
            C.load(file=str(path), environ={})
    path.write_text(base + 'tls = "implicit"\ncertificate = ["/r.pem", "/e.pem"]\n'
                    'key = ["/r.key", "/e.key"]\n')  # fmt: skip
    [listener] = C.load(file=str(path), environ={}).listen
    assert (listener.tls, listener.certificates, listener.keys) == (
        "implicit",
        ["/r.pem", "/e.pem"],
        ["/r.key", "/e.key"],
    )


def test_a_proxy_protocol_listener_names_its_proxies(tmp_path: Path) -> None:
    base = '[[listen]]\nname = "smtp"\nhost = "127.0.0.1"\nport = 25\nproxy_protocol = true\n'
    cases = {
        "": "proxy_protocol needs trusted_proxies",
        'trusted_proxies = ["10.0.0.0/33"]\n': "trusted_proxies",
    }
    path = tmp_path / "wildboar.toml"
    for extra, message in cases.items():
        path.write_text(base + extra)
        with pytest.raises(C.ConfigError, match=re.escape(message)):
            C.load(file=str(path), environ={})
    path.write_text(base + 'trusted_proxies = ["10.0.0.0/8", "::1"]\n')
    [listener] = C.load(file=str(path), environ={}).listen
    assert listener.proxy_protocol and listener.trusted_proxies == ["10.0.0.0/8", "::1"]


def test_a_listener_names_its_xclient_hosts(tmp_path: Path) -> None:
    base = '[[listen]]\nname = "smtp"\nhost = "127.0.0.1"\nport = 25\n'
    path = tmp_path / "wildboar.toml"
    for bad in ('["10.0.0.0/33"]', '["nginx.example"]', '"127.0.0.1"'):
        path.write_text(base + f"xclient_hosts = {bad}\n")
        with pytest.raises(C.ConfigError, match="xclient_hosts"):
            C.load(file=str(path), environ={})
    path.write_text(base + 'xclient_hosts = ["127.0.0.1/32", "2001:db8::/32"]\n')
    [listener] = C.load(file=str(path), environ={}).listen
    assert listener.xclient_hosts == ["127.0.0.1/32", "2001:db8::/32"]
    assert C.Listener(host="127.0.0.1", port=25).xclient_hosts == []
