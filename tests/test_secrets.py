"""Broker passwords (finding 9 of the audit): the ``urls_file`` that keeps them off command
lines, a ``WILDBOAR_AMQP_URLS`` that a comma in a password does not cut, and masking that
leaves no trace of a password in any message, log record or output, whatever the URL's
shape. The tests play the attacker: nasty passwords (Hypothesis, and a list), each holding
a marker that no message contains, and look for the marker in everything the code says.
(``tests/amqp/test_serve_amqp.py`` does the same with a real server and a real broker.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from wildboar import config as C
from wildboar.handoff import HandoffStartError
from wildboar.handoff.amqp import AmqpHandoff, describe_url

#: In every generated password; in no message of ours: finding it anywhere is a leak.
MARKER = "Q7zK"
NASTY = [
    f"pa,{MARKER}ss",
    f"p@{MARKER}@ss",
    f"a:{MARKER}:b",
    f"s/{MARKER}/t",
    f"%41{MARKER}%2F%",
    f"{MARKER}#?x",
    f"'\"{MARKER}\\",
    f"{MARKER}é€ ",
    f"@:/%{MARKER},",
]
#: URL shapes, good and broken; ``{pw}`` is the password as the operator wrote it.
SHAPES = [
    "amqp://mail:{pw}@127.0.0.1:5672/%2F",
    "amqp://mail:{pw}@127.0.0.1:56x/",
    "amqps://mail:{pw}@[::1/",
    "http://mail:{pw}@127.0.0.1/",
    "mail:{pw}@127.0.0.1",
    "amqp:/mail:{pw}@127.0.0.1/",
    "amqp://mail:{pw}",
    "amqp://mail:{pw}/vhost",
    "amqp://mail:{pw}@127.0.0.1/v@host",
    "{pw}",
]
passwords = st.builds(
    lambda left, right: left + MARKER + right,
    st.text(st.sampled_from("ab9@:/%,?#[]!$&'()*+;= é\"\\"), max_size=8),
    st.text(st.sampled_from("ab9@:/%,?#[]!$&'()*+;= é\"\\"), max_size=8),
)


def hosted(shape: str, password: str) -> bool:
    """False where no rule can tell the password from the rest of a valid URL: in a URL
    with no ``@host`` after the password, a password with "@" (``amqp://mail:pa@ss`` is
    host ``ss``) or one that starts with digits then "/", "?" or "#" (``amqp://mail:9/ss``
    is port 9, vhost ``ss``)."""
    if "}@" in shape:
        return True
    return "@" not in password and not re.match(r"[0-9]*[/?#]", password)


def leaks(text: str, password: str) -> bool:
    """Whether ``text`` holds the password, its percent-decoded form, or the marker (so
    any piece of the password that holds the marker)."""
    forms = {password, urllib.parse.unquote(password), MARKER}
    return any(form in text for form in forms)


def outcome(environ: dict[str, str] | None = None, flags: dict[str, object] | None = None) -> str:
    """What ``load`` says: the errors, or the effective configuration ``check-config``
    prints."""
    try:
        config = C.load(environ=environ or {}, flags=flags)
    except C.ConfigError as error:
        return "\n".join(error.errors)
    return C.to_toml_like(config)


@contextlib.contextmanager
def urls_file(text: str, mode: int = 0o600) -> Iterator[str]:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "amqp-urls")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(path, mode)
        yield path


# --- mask_url ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://mail:s3cret@10.0.0.5:5672/mail", "amqp://mail:***@10.0.0.5:5672/mail"),
        ("amqp://mail:p@ss@h/", "amqp://mail:***@h/"),  # the last "@" ends the password
        ("amqp://mail:a:b@h/", "amqp://mail:***@h/"),
        ("amqp://mail:pa/ss@h:5672/%2F", "amqp://mail:***@h:5672/%2F"),
        ("amqp://mail:p%40ss@h/", "amqp://mail:***@h/"),
        ("amqp://:pw@h/", "amqp://:***@h/"),
        ("amqp://guest@h/", "amqp://guest@h/"),  # a user only: no password to mask
        ("amqp://10.0.0.6/", "amqp://10.0.0.6/"),
        ("amqp://[::1]:5672/", "amqp://[::1]:5672/"),
        ("amqp://mail:pw", "amqp://mail:***"),  # no host: the "port" may be a password
        ("amqp://mail:pa/ss", "amqp://mail:***"),
        ("http://x/", "http://x/"),
        ("mail:pw@h", "***"),  # not scheme://: could be anything
        ("s3cret", "***"),
        ("mail:p://w@h", "***"),  # "mail:p" is no scheme
    ],
)
def test_mask_url_whatever_the_shape(url: str, shown: str) -> None:
    assert C.mask_url(url) == shown


@given(passwords, st.sampled_from(SHAPES))
def test_no_shape_of_url_shows_its_password_masked(password: str, shape: str) -> None:
    url = shape.format(pw=password)
    assume(hosted(shape, password))
    assert not leaks(C.mask_url(url), password)
    assert not leaks(describe_url(url), password)


@given(passwords, st.sampled_from(SHAPES))
def test_mask_secrets_removes_every_trace_from_foreign_text(password: str, shape: str) -> None:
    """What pika or the broker says may quote the URL, or the password as pika decoded it."""
    url = shape.format(pw=password)
    assume(hosted(shape, password))
    text = f"error: {url} / {password} / {urllib.parse.unquote(password)}."
    masked = C.mask_secrets(text, [url, "amqp://other:pw@h/"])
    assert not leaks(masked, password)


def test_mask_secrets_leaves_the_rest_of_a_text_alone() -> None:
    urls = ["amqp://mail:p%40ss,w@10.0.0.5:5672/mail", "amqp://10.0.0.6/"]
    text = "ACCESS_REFUSED for mail (p@ss,w) at amqp://mail:p%40ss,w@10.0.0.5:5672/mail"
    assert C.mask_secrets(text, urls) == (
        "ACCESS_REFUSED for mail (***) at amqp://mail:***@10.0.0.5:5672/mail"
    )


# --- every configuration error or output, whatever the source --------------------


@given(passwords, st.sampled_from(SHAPES))
def test_no_configuration_error_shows_a_password_from_the_flags(password: str, shape: str) -> None:
    url = shape.format(pw=password)
    assume(hosted(shape, password))
    assert not leaks(outcome(flags={"amqp": {"urls": [url]}, "handoff": ["amqp"]}), password)


@given(passwords, st.sampled_from(SHAPES))
def test_no_configuration_error_shows_a_password_from_the_environment(
    password: str, shape: str
) -> None:
    # A comma before "scheme://" separates URLs: such a password needs the JSON form.
    assume(not re.search(r",\s*[A-Za-z][A-Za-z0-9+.-]*://", password))
    url = shape.format(pw=password)
    assume(hosted(shape, password))
    for value in (url, f"amqp://10.0.0.6/,{url}", f"{url}, amqp://10.0.0.6/"):
        assert not leaks(outcome(environ={"WILDBOAR_AMQP_URLS": value}), password)
    text = outcome(environ={"WILDBOAR_AMQP_URLS": json.dumps([url])})
    assert not leaks(text, password)


@given(passwords, st.sampled_from(SHAPES))
def test_no_configuration_error_shows_a_password_from_the_urls_file(
    password: str, shape: str
) -> None:
    url = shape.format(pw=password)
    assume(hosted(shape, password))
    with urls_file(f"# brokers\n\namqp://10.0.0.6/\n{url}\n") as path:
        text = outcome(flags={"amqp": {"urls_file": path}})
    assert not leaks(text, password)


@pytest.mark.parametrize("password", NASTY)
def test_check_config_never_prints_a_password(password: str, tmp_path: Path) -> None:
    """The command an operator pastes into a ticket, with every source of URLs: flag,
    environment, file; a broken URL of each shape (and a good one, printed masked)."""
    for index, shape in enumerate(SHAPES):
        if not hosted(shape, password):
            continue
        url = shape.format(pw=password)
        source = ("flag", "env", "file")[index % 3]
        if source == "flag":
            result = check_config("--amqp-url", url)
        elif source == "env":
            result = check_config(env={"WILDBOAR_AMQP_URLS": json.dumps([url])})
        else:
            path = tmp_path / f"urls-{index}"
            path.write_text(url + "\n")
            path.chmod(0o600)
            result = check_config("--amqp-url-file", str(path))
        assert "Traceback" not in result.stderr, result.stderr
        assert not leaks(result.stdout + result.stderr, password), (url, source, result.stderr)
        assert result.returncode == 0 or result.stderr.startswith("wildboar: config: amqp")


def check_config(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wildboar.cli", "check-config", *args],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], **(env or {})},
        timeout=60,
        check=False,
    )


# --- WILDBOAR_AMQP_URLS: a comma in a password ------------------------------------


def test_a_comma_in_a_password_does_not_cut_the_url() -> None:
    value = "amqp://u:pa,ss@10.0.0.5/,amqp://u:x,y,z@10.0.0.6/, amqps://h3/,"
    config = C.load(environ={"WILDBOAR_AMQP_URLS": value})
    assert config.amqp.urls == [
        "amqp://u:pa,ss@10.0.0.5/",
        "amqp://u:x,y,z@10.0.0.6/",
        "amqps://h3/",
    ]


def test_a_comma_before_any_scheme_still_separates() -> None:
    with pytest.raises(C.ConfigError, match="'http://x' is not an amqp://"):
        C.load(environ={"WILDBOAR_AMQP_URLS": "amqp://u:pa,ss@10.0.0.5/,http://x"})


def test_a_bad_json_array_is_reported_without_its_text() -> None:
    with pytest.raises(C.ConfigError) as info:
        C.load(environ={"WILDBOAR_AMQP_URLS": f'["amqp://u:{MARKER}@h/"'})
    assert "amqp.urls" in str(info.value) and MARKER not in str(info.value)


# --- urls_file ---------------------------------------------------------------------


def test_urls_file_replaces_urls_and_ignores_comments_and_blank_lines() -> None:
    text = "\ufeff# the cluster, nearest first\n\n  amqp://w:pa,ss@10.0.0.5/mail  \r\n#x\namqp://w:p@h2/\n"
    with urls_file(text, 0o640) as path:
        config = C.load(environ={"WILDBOAR_AMQP_URLS_FILE": path})
        assert config.amqp.urls == ["amqp://w:pa,ss@10.0.0.5/mail", "amqp://w:p@h2/"]
        assert config.amqp.urls_file == path
        printed = C.to_toml_like(config)
        assert "pa,ss" not in printed and '"amqp://w:***@10.0.0.5/mail"' in printed
        assert f"urls_file = {json.dumps(path)}" in printed
        # From the TOML file too.
        toml = Path(path).with_name("wildboar.toml")
        toml.write_text(f'[amqp]\nurls_file = "{path}"\nurls = ["amqp://ignored/"]\n')
        assert C.load(file=str(toml), environ={}).amqp.urls[1] == "amqp://w:p@h2/"


def test_urls_file_is_read_at_every_load() -> None:
    """Workers load the configuration at every start, so at every HUP."""
    with urls_file("amqp://w:one@h/\n") as path:
        first = C.load(environ={}, flags={"amqp": {"urls_file": path}})
        Path(path).write_text("amqp://w:two@h/\n")
        second = C.load(environ={}, flags={"amqp": {"urls_file": path}})
    assert (first.amqp.urls, second.amqp.urls) == (["amqp://w:one@h/"], ["amqp://w:two@h/"])


def test_a_higher_source_of_urls_overrides_a_lower_urls_file(tmp_path: Path) -> None:
    with urls_file("amqp://w:file@h/\n") as path:
        toml = tmp_path / "wildboar.toml"
        toml.write_text(f'[amqp]\nurls_file = "{path}"\n')
        environ = {"WILDBOAR_AMQP_URLS": "amqp://w:env@h/"}
        assert C.load(file=str(toml), environ=environ).amqp.urls == ["amqp://w:env@h/"]
        flags = {"amqp": {"urls": ["amqp://w:flag@h/"], "urls_file": ""}}
        assert C.load(file=str(toml), environ={}, flags=flags).amqp.urls == ["amqp://w:flag@h/"]
        environ["WILDBOAR_AMQP_URLS_FILE"] = path  # the same source: the file wins
        assert C.load(environ=environ).amqp.urls == ["amqp://w:file@h/"]


@pytest.mark.parametrize(
    ("text", "mode", "error"),
    [
        (f"amqp://w:{MARKER}@h/\n", 0o644, "is readable by every user (mode 0644)"),
        (f"amqp://w:{MARKER}@h/\n", 0o604, "chmod 0640"),
        ("# nothing yet\n\n", 0o600, "holds no broker URL"),
        ("", 0o600, "holds no broker URL"),
        (
            f"amqp://10.0.0.6/\namqp://w:{MARKER}@h:5x/\n",
            0o600,
            "line 2: 'amqp://w:***@h:5x/' has a bad port",
        ),
        (f"amqp://w:{MARKER}/x@h/\n", 0o600, "line 1: 'amqp://w:***@h/': a '/'"),
        (f"{MARKER}\n", 0o600, "line 1: '***' is not an amqp:// or amqps:// URL"),
    ],
)
def test_a_bad_urls_file_is_one_line_naming_it_and_no_password(
    text: str, mode: int, error: str
) -> None:
    with urls_file(text, mode) as path, pytest.raises(C.ConfigError) as info:
        C.load(environ={"WILDBOAR_AMQP_URLS_FILE": path})
    [line] = info.value.errors
    assert line.startswith(f"amqp: urls_file {path}") and error in line, line
    assert "\n" not in line and MARKER not in line


def test_a_missing_unreadable_or_strange_urls_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "none")
    with pytest.raises(C.ConfigError, match=f"urls_file {missing}: cannot read: No such file"):
        C.load(environ={"WILDBOAR_AMQP_URLS_FILE": missing})
    with pytest.raises(C.ConfigError, match="is not a regular file"):
        C.load(environ={"WILDBOAR_AMQP_URLS_FILE": str(tmp_path)})
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)  # a FIFO nobody writes to would block the load
    with pytest.raises(C.ConfigError, match="is not a regular file"):
        C.load(environ={"WILDBOAR_AMQP_URLS_FILE": str(fifo)})
    binary = tmp_path / "binary"
    binary.write_bytes(b"amqp://w:\xff@h/\n")
    binary.chmod(0o600)
    with pytest.raises(C.ConfigError, match="is not UTF-8 text"):
        C.load(environ={"WILDBOAR_AMQP_URLS_FILE": str(binary)})
    huge = tmp_path / "huge"
    huge.write_text("#" * (C.MAX_URLS_FILE + 1))
    huge.chmod(0o600)
    with pytest.raises(C.ConfigError, match="is larger than"):
        C.load(environ={"WILDBOAR_AMQP_URLS_FILE": str(huge)})


def test_the_url_file_flag_implies_the_amqp_handoff_and_excludes_the_url_flag(
    tmp_path: Path,
) -> None:
    path = tmp_path / "urls"
    path.write_text("amqp://w:pa,ss@10.0.0.5/\n")
    path.chmod(0o600)
    result = check_config("--amqp-url-file", str(path))
    assert result.returncode == 0, result.stderr
    assert 'handoff = ["amqp"]' in result.stdout
    assert 'urls = ["amqp://w:***@10.0.0.5/"]' in result.stdout
    assert "pa,ss" not in result.stdout
    both = check_config("--amqp-url-file", str(path), "--amqp-url", "amqp://h/")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    help_text = check_config("--help").stdout
    assert "--amqp-url-file FILE" in help_text and "(ps)" in help_text


# --- the AMQP handoff --------------------------------------------------------------


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(f"{record.getMessage()} {getattr(record, 'fields', '')}")


@pytest.mark.parametrize("password", NASTY)
def test_the_handoff_masks_its_start_errors_logs_and_connection_name(
    password: str, tmp_path: Path
) -> None:
    """A URL the client cannot use (a bad heartbeat) fails at start; one with no broker is
    logged as unusable. Neither text, nor the name the broker would show, has a trace of
    the password, though pika's own words are in them."""
    secret = urllib.parse.quote(password, safe="")
    bad = f"amqp://mail:{secret}@127.0.0.1:5672/%2F?heartbeat={secret}"
    dead = f"amqp://mail:{secret}@127.0.0.1:1/%2F"
    handler = Records()
    logging.getLogger("wildboar.handoff").addHandler(handler)

    async def start(url: str) -> str:
        settings = C.Amqp(urls=[url], connect_timeout=1.0, reconnect_min=5.0)
        amqp = AmqpHandoff(settings, buffer=str(tmp_path), connection_name=f"wb {password}")
        assert not leaks(amqp.connection_name, password)
        try:
            await amqp.start()
        except HandoffStartError as error:
            return str(error)
        finally:
            await amqp.close()
        return ""

    try:
        error = asyncio.run(start(bad))
        asyncio.run(start(dead))
    finally:
        logging.getLogger("wildboar.handoff").removeHandler(handler)
    assert error.startswith("bad broker URL '127.0.0.1:5672'"), error
    assert not leaks(error, password) and not leaks(error, secret)
    unusable = [t for t in handler.texts if "amqp_broker_unusable" in t]
    assert unusable and "127.0.0.1:1" in unusable[0]
    assert not any(leaks(t, password) or leaks(t, secret) for t in handler.texts)
