"""The accepted-message record: round trips through JSON and msgpack, the wire names, the
``urn:uuid:`` ids enforced on decode, and the published JSON Schema
(``docs/message.schema.json``), which must be up to date and must accept every record.
"""

from __future__ import annotations

import base64
import datetime
import functools
import json
import pathlib
import re
import uuid
from typing import Any

import jsonschema
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wildboar import message as M
from wildboar import smtp

from .records import message_of

SCHEMA_FILE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "message.schema.json"
# RFC 9562 §4 (version 4, variant 10xx) in RFC 8141 URN form, lower case as uuid.urn writes.
URN_BODY = r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
OBJECTS_WITH_IDS = ("server", "connection", "transaction", "email")

# --- strategies ----------------------------------------------------------------------

urns = st.uuids(version=4).map(lambda u: u.urn)
offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(
    lambda minutes: datetime.timezone(datetime.timedelta(minutes=minutes))
)
times = st.datetimes(
    min_value=datetime.datetime(1900, 1, 1),
    max_value=datetime.datetime(2999, 12, 31),
    timezones=offsets,
)
ports = st.none() | st.integers(0, 65535)
int64 = st.integers(-(2**63), 2**63 - 1)
sizes = st.integers(0, 2**63 - 1)

servers = st.builds(M.Server, id=urns, creation_time=times, hostname=st.text())
connections = st.builds(
    M.Connection,
    id=urns,
    creation_time=times,
    remote=st.builds(
        M.Remote,
        family=st.sampled_from(["ipv4", "ipv6", "unix"]),
        address=st.text(),
        port=ports,
    ),
    local=st.builds(M.Local, address=st.text(), port=ports),
    tls=st.booleans(),
)
transactions = st.builds(
    M.Transaction, id=urns, creation_time=times, helo_name=st.text(), protocol=st.text()
)
recipients = st.builds(
    M.Recipient,
    address=st.text(),
    notify=st.none()
    | st.lists(st.sampled_from(["NEVER", "SUCCESS", "FAILURE", "DELAY"]), max_size=3),
    orcpt=st.none() | st.builds(M.Orcpt, type=st.text(), address=st.text()),
)
emails = st.builds(
    M.Email,
    id=urns,
    creation_time=times,
    sender=st.text(),
    to=st.lists(st.text(), max_size=5),
    data=st.binary(),
    size=sizes,
    received=st.text(),
    recipients=st.lists(recipients, max_size=5),
    declared_size=st.none() | sizes,
    body=st.none() | st.sampled_from(["7BIT", "8BITMIME", "BINARYMIME"]),
    smtputf8=st.booleans(),
    ret=st.none() | st.sampled_from(["FULL", "HDRS"]),
    envid=st.none() | st.text(),
)
messages = st.builds(
    M.Message,
    version=int64,
    server=servers,
    connection=connections,
    transaction=transactions,
    email=emails,
)

# Ids that are not a lower-case version-4 urn:uuid.
BAD_IDS = [
    "",
    str(uuid.UUID(int=0x1234, version=4)),  # no urn:uuid: prefix
    uuid.UUID(int=0x1234, version=4).urn.upper(),
    uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8").urn,  # version 1
    "urn:uuid:6ba7b810-9dad-41d1-c0b4-00c04fd430c8",  # variant 110x
    "urn:uuid:6ba7b8109dad41d180b400c04fd430c8",  # no hyphens
    " " + uuid.UUID(int=0x1234, version=4).urn,
    uuid.UUID(int=0x1234, version=4).urn + " ",
    "urn:uuid:{6ba7b810-9dad-41d1-80b4-00c04fd430c8}",
]
# Python's "$" also matches before a final newline; RFC 8141 has no newline in a URN, and
# the JSON Schema pattern (ECMA-262, JSON Schema 2020-12 §6.4) does not allow one.
NEWLINE_ID = uuid.UUID(int=0x1234, version=4).urn + "\n"
bad_ids = st.sampled_from(BAD_IDS) | st.text().filter(lambda s: not re.fullmatch(URN_BODY, s))


def with_id(message: M.Message, name: str, bad: str) -> dict[str, Any]:
    """The message's JSON record with one id replaced."""
    record: dict[str, Any] = json.loads(M.encode(message))
    record[name]["id"] = bad
    return record


def msgpack_with_id(message: M.Message, name: str, bad: str) -> bytes:
    """The message's msgpack encoding with one id replaced."""
    record: dict[str, Any] = msgspec.msgpack.decode(M.encode(message, M.CONTENT_TYPE_MSGPACK))
    record[name]["id"] = bad
    return msgspec.msgpack.encode(record)


@functools.cache
def validator() -> jsonschema.protocols.Validator:
    """A validator for the published schema file (not the in-memory one)."""
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


# --- round trips ---------------------------------------------------------------------


@given(messages)
def test_json_round_trip(message: M.Message) -> None:
    encoded = M.encode(message, M.CONTENT_TYPE_JSON)
    assert msgspec.json.decode(encoded, type=M.Message) == message
    assert M.decode(encoded, M.CONTENT_TYPE_JSON) == message


@given(messages)
def test_msgpack_round_trip(message: M.Message) -> None:
    encoded = M.encode(message, M.CONTENT_TYPE_MSGPACK)
    assert msgspec.msgpack.decode(encoded, type=M.Message) == message
    assert M.decode(encoded, M.CONTENT_TYPE_MSGPACK) == message
    # msgpack carries the content as bin, not text.
    assert msgspec.msgpack.decode(encoded)["email"]["data"] == message.email.data


def test_unknown_content_type_is_refused() -> None:
    with pytest.raises(ValueError, match="content type"):
        M.encode(_example(), "text/plain")
    with pytest.raises(ValueError, match="content type"):
        M.decode(b"{}", "text/plain")


# --- wire names ------------------------------------------------------------------------


def _keys(value: object) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {key for item in value.values() for key in _keys(item)}
    if isinstance(value, list):
        return {key for item in value for key in _keys(item)}
    return set()


@given(messages)
def test_json_keys_are_camel_case_with_from_for_the_sender(message: M.Message) -> None:
    record = json.loads(M.encode(message))
    assert all(re.fullmatch(r"[a-z][a-zA-Z0-9]*", key) for key in _keys(record))
    assert set(record) == {
        "version",
        "server",
        "connection",
        "transaction",
        "email",
        "rejection",
        "retry",
        "verdicts",
    }
    assert set(record["server"]) == {"id", "creationTime", "hostname"}
    assert set(record["connection"]) == {
        "id",
        "creationTime",
        "remote",
        "local",
        "tls",
        "tlsVersion",
        "tlsCipher",
        "login",
    }
    assert set(record["transaction"]) == {"id", "creationTime", "heloName", "protocol"}
    assert set(record["email"]) == {
        "id",
        "creationTime",
        "from",
        "to",
        "data",
        "size",
        "received",
        "recipients",
        "declaredSize",
        "body",
        "smtputf8",
        "ret",
        "envid",
    }
    assert record["email"]["from"] == message.email.sender
    assert record["transaction"]["heloName"] == message.transaction.helo_name
    assert record["email"]["declaredSize"] == message.email.declared_size
    for wire, recipient in zip(
        record["email"]["recipients"], message.email.recipients, strict=True
    ):
        assert set(wire) == {"address", "notify", "orcpt"}
        if recipient.orcpt is not None:
            assert wire["orcpt"] == {
                "type": recipient.orcpt.type,
                "address": recipient.orcpt.address,
            }


@given(messages)
def test_data_is_base64_in_json(message: M.Message) -> None:
    data = json.loads(M.encode(message))["email"]["data"]
    assert isinstance(data, str)
    assert base64.b64decode(data, validate=True) == message.email.data


@given(messages)
def test_times_carry_their_offset(message: M.Message) -> None:
    record = json.loads(M.encode(message))
    for name in OBJECTS_WITH_IDS:
        text = record[name]["creationTime"]
        # RFC 3339 date-time with "Z" or a numeric offset.
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", text)
        when = datetime.datetime.fromisoformat(text)
        assert when == getattr(message, name).creation_time


# --- ids ------------------------------------------------------------------------------


@given(message=messages, name=st.sampled_from(OBJECTS_WITH_IDS), bad=bad_ids)
def test_a_bad_id_is_refused_on_decode(message: M.Message, name: str, bad: str) -> None:
    where = r"\$\." + name + r"\.id"
    with pytest.raises(msgspec.ValidationError, match=where):
        M.decode(json.dumps(with_id(message, name, bad)).encode())
    with pytest.raises(msgspec.ValidationError, match=where):
        M.decode(msgpack_with_id(message, name, bad), M.CONTENT_TYPE_MSGPACK)


@pytest.mark.parametrize("name", OBJECTS_WITH_IDS)
def test_an_id_with_a_trailing_newline_is_refused_on_decode(name: str) -> None:
    message = _example()
    with pytest.raises(msgspec.ValidationError):
        M.decode(json.dumps(with_id(message, name, NEWLINE_ID)).encode())
    with pytest.raises(msgspec.ValidationError):
        M.decode(msgpack_with_id(message, name, NEWLINE_ID), M.CONTENT_TYPE_MSGPACK)


def test_new_urn_matches_the_pattern() -> None:
    assert all(re.fullmatch(URN_BODY, M.new_urn()) for _ in range(100))


def test_new_urn_is_a_random_version_4_uuid() -> None:
    ids = [M.new_urn() for _ in range(1000)]
    parsed = [uuid.UUID(urn) for urn in ids]
    assert all(u.version == 4 and u.variant == uuid.RFC_4122 for u in parsed)
    assert all(u.urn == urn for u, urn in zip(parsed, ids, strict=True))
    assert len(set(ids)) == len(ids)


# --- the published schema -------------------------------------------------------------


def test_schema_file_is_up_to_date() -> None:
    expected = json.dumps(M.json_schema(), indent=2, sort_keys=True) + "\n"
    assert SCHEMA_FILE.read_text(encoding="utf-8") == expected, (
        "regenerate it: .venv/bin/wildboar schema > docs/message.schema.json"
    )


def test_schema_is_a_valid_2020_12_schema() -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    email = schema["$defs"]["Email"]
    assert "from" in email["properties"] and "sender" not in email["properties"]
    assert email["properties"]["data"]["contentEncoding"] == "base64"
    patterns = {
        schema["$defs"][name.title()]["properties"]["id"]["pattern"] for name in OBJECTS_WITH_IDS
    }
    assert len(patterns) == 1
    pattern = patterns.pop()
    assert pattern.startswith("^") and pattern.endswith("$(?!\\n)")  # anchored: the whole string
    assert re.search(pattern, M.new_urn())


@given(messages)
def test_every_encoded_message_validates_against_the_schema(message: M.Message) -> None:
    validator().validate(json.loads(M.encode(message)))


@given(
    message=messages,
    name=st.sampled_from(OBJECTS_WITH_IDS),
    bad=st.sampled_from(BAD_IDS) | st.text().filter(lambda s: not re.search(URN_BODY, s)),
)
def test_the_schema_refuses_a_bad_id_too(message: M.Message, name: str, bad: str) -> None:
    errors = list(validator().iter_errors(with_id(message, name, bad)))
    assert [list(error.absolute_path) for error in errors] == [[name, "id"]]


# --- a record built from a real session ------------------------------------------------


def _example() -> M.Message:
    envelope = smtp.Envelope(
        helo="client.example",
        protocol="ESMTP",
        sender="alice@example.net",
        mail=smtp.MailParams(size=42, body="8BITMIME", ret="HDRS", envid="QQ314159"),
        recipients=(
            smtp.Recipient(
                "bob@example.org",
                smtp.RcptParams(
                    notify=("SUCCESS", "FAILURE"), orcpt=smtp.Orcpt("rfc822", "bob@example.org")
                ),
            ),
            smtp.Recipient("carol@example.org"),
        ),
        size=6,
        chunked=False,
    )
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    return message_of(
        envelope,
        b"body\r\n",
        when=when,
        family="ipv6",
        remote=("2001:db8::1", 49152),
        local=("2001:db8::25", 25),
    )


def test_a_record_built_from_an_envelope() -> None:
    message = _example()
    record = json.loads(M.encode(message))
    validator().validate(record)
    assert M.decode(M.encode(message)) == message
    email = record["email"]
    assert email["from"] == "alice@example.net"
    assert email["to"] == ["bob@example.org", "carol@example.org"]
    received = email["received"]
    assert received.startswith("Received: from client.example ([IPv6:2001:db8::1])\r\n")
    assert received.endswith("; Fri, 02 Jan 2026 03:04:05 +0000")
    assert base64.b64decode(email["data"]) == received.encode() + b"\r\nbody\r\n"
    assert email["size"] == len(received) + len(b"\r\nbody\r\n")
    assert email["declaredSize"] == 42
    assert email["recipients"][0] == {
        "address": "bob@example.org",
        "notify": ["SUCCESS", "FAILURE"],
        "orcpt": {"type": "rfc822", "address": "bob@example.org"},
    }
    assert email["recipients"][1] == {"address": "carol@example.org", "notify": None, "orcpt": None}
