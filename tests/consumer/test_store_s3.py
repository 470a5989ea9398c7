"""The store stage with an S3-compatible store (wildboar.consumer.store): each message and
its record as two objects of a real radosgw (tests/consumer/s3.py), once per id however
often it comes; a store that refuses, is away or hangs is a failure the runtime retries,
never a message taken for stored."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.amqp.broker import Broker, broker
from tests.daemons import free_port
from tests.records import make_message
from wildboar import message as M
from wildboar.consumer import Retry, add_verdict, store
from wildboar.consumer._settings import SettingError

from .harness import Consumer, collect, publish
from .s3 import Radosgw
from .stages import Context, event_of, record_of

__all__ = ["broker"]  # the fixture

CONTEXT = Context("store")


@pytest.fixture(scope="module")
def radosgw() -> Iterator[Radosgw]:
    with Radosgw() as gateway:
        yield gateway


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch, radosgw: Radosgw) -> Iterator[None]:
    """The test user's keys where the SDK looks first; never the instance metadata service
    (the tests reach no network but loopback); each test's own clients."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", radosgw.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", radosgw.secret_key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    store.s3_client.cache_clear()
    yield
    store.s3_client.cache_clear()


@pytest.fixture
def bucket(radosgw: Radosgw) -> str:
    name = f"mail-{uuid.uuid4().hex[:12]}"
    radosgw.client().create_bucket(Bucket=name)
    return name


def s3_settings(radosgw: Radosgw, bucket: str, **overrides: Any) -> store.Settings:
    config = {"bucket": bucket, "endpoint": radosgw.endpoint, "addressing": "path", **overrides}
    return store.Settings(s3=store.S3(**config))


def objects(radosgw: Radosgw, bucket: str) -> dict[str, bytes]:
    client = radosgw.client()
    listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def test_a_message_and_its_record_are_two_objects(radosgw: Radosgw, bucket: str) -> None:
    message = make_message(content=b"Subject: kept\r\n\r\nKeep me.\r\n")
    event = add_verdict(event_of(message), "scam", "pass")
    config = s3_settings(radosgw, bucket, prefix="in/2026/")
    result = store.handle(event, CONTEXT, msgspec.structs.replace(config, then="pass"))
    uuid_ = message.email.id.removeprefix("urn:uuid:")
    eml, json = f"in/2026/{uuid_}.eml", f"in/2026/{uuid_}.json"
    stored = objects(radosgw, bucket)
    assert sorted(stored) == [eml, json]
    assert stored[eml] == message.email.data
    assert M.decode(stored[json]) == record_of(event)
    client = radosgw.client()
    head = client.head_object(Bucket=bucket, Key=eml)
    assert head["ContentType"] == "message/rfc822"
    assert head["Metadata"] == {"email-id": message.email.id}
    # What the store kept is what was sent: a single PUT's ETag is the MD5 of its body.
    assert head["ETag"].strip('"') == hashlib.md5(message.email.data).hexdigest()
    assert client.head_object(Bucket=bucket, Key=json)["ContentType"] == "application/json"
    verdict = record_of(result).verdicts[-1]
    assert (verdict.stage, verdict.result) == ("store", "stored")
    assert verdict.details == {"eml": f"s3://{bucket}/{eml}", "json": f"s3://{bucket}/{json}"}


def test_a_redelivery_writes_the_same_objects_again(radosgw: Radosgw, bucket: str) -> None:
    config = s3_settings(radosgw, bucket)
    first, second = make_message(), make_message(content=b"Subject: two\r\n\r\nTwo.\r\n")
    for message in (first, second, first, first):
        store.handle(event_of(message), CONTEXT, config)
    stored = objects(radosgw, bucket)
    assert sorted(stored) == sorted(
        f"{m.email.id.removeprefix('urn:uuid:')}.{kind}"
        for m in (first, second)
        for kind in ("eml", "json")
    )
    assert stored[f"{second.email.id.removeprefix('urn:uuid:')}.eml"] == second.email.data


def test_a_large_message_is_stored_whole(radosgw: Radosgw, bucket: str) -> None:
    body = b"".join(b"%07d " % n + b"x" * 71 + b"\r\n" for n in range(100_000))  # 8 MB
    message = make_message(content=b"Subject: big\r\n\r\n" + body)
    store.handle(event_of(message), CONTEXT, s3_settings(radosgw, bucket))
    stored = objects(radosgw, bucket)
    assert stored[f"{message.email.id.removeprefix('urn:uuid:')}.eml"] == message.email.data


def test_a_bucket_that_does_not_exist_is_a_refusal(radosgw: Radosgw) -> None:
    config = s3_settings(radosgw, "no-such-bucket")
    with pytest.raises(store.StoreError, match=r"^S3 PUT s3://no-such-bucket/.*: 404 NoSuchBucket"):
        store.handle(event_of(make_message()), CONTEXT, config)


def test_a_wrong_secret_is_a_refusal_that_does_not_show_it(
    radosgw: Radosgw, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = base64.b32encode(os.urandom(20)).decode()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    with pytest.raises(store.StoreError, match=r": 403 SignatureDoesNotMatch") as refused:
        store.handle(event_of(make_message()), CONTEXT, s3_settings(radosgw, bucket))
    assert wrong not in str(refused.value) and radosgw.secret_key not in str(refused.value)
    assert objects(radosgw, bucket) == {}


def test_a_store_that_is_away_is_retried(radosgw: Radosgw) -> None:
    config = store.Settings(
        s3=store.S3(bucket="mail", endpoint=f"http://127.0.0.1:{free_port()}", timeout=2)
    )
    with pytest.raises(Retry, match=r"^S3 PUT s3://mail/.*\.eml: EndpointConnectionError"):
        store.handle(event_of(make_message()), CONTEXT, config)


def test_a_store_that_does_not_answer_is_retried_within_the_timeout(
    radosgw: Radosgw, bucket: str
) -> None:
    """The gateway stopped (SIGSTOP): the kernel still takes the connection, nothing answers."""
    config = s3_settings(radosgw, bucket, timeout=2)
    gateway = radosgw.procs["rgw"]
    gateway.send_signal(signal.SIGSTOP)
    try:
        began = time.monotonic()
        with pytest.raises(Retry, match=r"ReadTimeoutError"):
            store.handle(event_of(make_message()), CONTEXT, config)
        waited = time.monotonic() - began
    finally:
        gateway.send_signal(signal.SIGCONT)
    # One try (1 s for the 100 Continue, then 2 s for the answer): not the SDK's retries
    # on top of the runtime's, which would take twice that and a back-off.
    assert waited < 5.5
    message = make_message()
    store.handle(event_of(message), CONTEXT, s3_settings(radosgw, bucket))  # and it is back
    assert f"{message.email.id.removeprefix('urn:uuid:')}.json" in objects(radosgw, bucket)


def test_keys_from_a_shared_credentials_file(
    radosgw: Radosgw, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a systemd credential names it (LoadCredential= and AWS_SHARED_CREDENTIALS_FILE=%d/s3)."""
    keys = tmp_path / "s3"
    keys.write_text(
        f"[default]\naws_access_key_id = {radosgw.access_key}\n"
        f"aws_secret_access_key = {radosgw.secret_key}\n"
    )
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(keys))
    store.handle(event_of(make_message()), CONTEXT, s3_settings(radosgw, bucket))
    assert len(objects(radosgw, bucket)) == 2


def test_no_credentials_is_a_setting_error(
    radosgw: Radosgw, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(SettingError, match="no S3 credentials were found"):
        store.handle(event_of(make_message()), CONTEXT, s3_settings(radosgw, bucket))
    monkeypatch.setenv("AWS_PROFILE", "mail")
    with pytest.raises(SettingError, match=r"S3 credentials: The config profile .mail."):
        store.handle(event_of(make_message()), CONTEXT, s3_settings(radosgw, bucket))


def test_the_s3_settings_come_from_the_environment(radosgw: Radosgw) -> None:
    environ = {
        "WILDBOAR_STORE_S3_BUCKET": "mail.example",
        "WILDBOAR_STORE_S3_PREFIX": "inbound/",
        "WILDBOAR_STORE_S3_ENDPOINT": "https://s3.example.net:7480/",
        "WILDBOAR_STORE_S3_REGION": "eu-west-1",
        "WILDBOAR_STORE_S3_TIMEOUT": "12",
    }
    assert store.load(environ) == store.Settings(
        s3=store.S3(
            bucket="mail.example",
            prefix="inbound/",
            endpoint="https://s3.example.net:7480",
            region="eu-west-1",
            addressing="path",  # the default with an endpoint
            timeout=12,
        )
    )
    assert store.load({"WILDBOAR_STORE_S3_BUCKET": "mail"}).s3 == store.S3(bucket="mail")
    virtual = {**environ, "WILDBOAR_STORE_S3_ADDRESSING": "virtual"}
    assert store.load(virtual).s3 == store.S3(
        "mail.example", "inbound/", "https://s3.example.net:7480", "eu-west-1", "virtual", 12
    )


@pytest.mark.parametrize(
    ("environ", "error"),
    [
        (
            {"WILDBOAR_STORE_DIR": "/var/mail", "WILDBOAR_STORE_S3_BUCKET": "mail"},
            "WILDBOAR_STORE_DIR and WILDBOAR_STORE_S3_BUCKET are both set",
        ),
        (
            {"WILDBOAR_STORE_DIR": "/x", "WILDBOAR_STORE_S3_ENDPOINT": "https://s3.example"},
            "WILDBOAR_STORE_S3_ENDPOINT is set but WILDBOAR_STORE_S3_BUCKET is not",
        ),
        ({"WILDBOAR_STORE_S3_BUCKET": "Mail"}, "'Mail': not a bucket name"),
        ({"WILDBOAR_STORE_S3_BUCKET": "a..b"}, "not a bucket name"),
        ({"WILDBOAR_STORE_S3_BUCKET": "m" * 64}, "not a bucket name"),
        (
            {"WILDBOAR_STORE_S3_BUCKET": "mail", "WILDBOAR_STORE_S3_PREFIX": "a/../b/"},
            "WILDBOAR_STORE_S3_PREFIX='a/../b/': must be printable",
        ),
        (
            {"WILDBOAR_STORE_S3_BUCKET": "mail", "WILDBOAR_STORE_S3_PREFIX": "/abs/"},
            "must be printable, at most 512 bytes, not start with /",
        ),
        (
            {"WILDBOAR_STORE_S3_BUCKET": "mail", "WILDBOAR_STORE_S3_PREFIX": "a\nb"},
            "must be printable",
        ),
        (
            {"WILDBOAR_STORE_S3_BUCKET": "mail", "WILDBOAR_STORE_S3_ENDPOINT": "s3.example"},
            "must be an https:// (or http://) URL of a host",
        ),
        (
            {
                "WILDBOAR_STORE_S3_BUCKET": "mail",
                "WILDBOAR_STORE_S3_ENDPOINT": "https://AKIA:secret@s3.example",
            },
            "WILDBOAR_STORE_S3_ENDPOINT: holds credentials; give them as AWS_ACCESS_KEY_ID",
        ),
        (
            {
                "WILDBOAR_STORE_S3_BUCKET": "mail",
                "WILDBOAR_STORE_S3_ENDPOINT": "AKIA:secret@s3.example:99999",
            },
            "WILDBOAR_STORE_S3_ENDPOINT: holds credentials",
        ),
        (
            {"WILDBOAR_STORE_S3_BUCKET": "mail", "WILDBOAR_STORE_S3_ENDPOINT": "https://h/b"},
            "must be the URL of the store alone",
        ),
        (
            {"WILDBOAR_STORE_S3_BUCKET": "mail", "WILDBOAR_STORE_S3_ENDPOINT": "https://h:99999"},
            "the port is not a number",
        ),
        (
            {"WILDBOAR_STORE_S3_BUCKET": "mail", "WILDBOAR_STORE_S3_ADDRESSING": "dns"},
            "WILDBOAR_STORE_S3_ADDRESSING='dns': must be one of path, virtual",
        ),
        (
            {"WILDBOAR_STORE_S3_BUCKET": "mail", "WILDBOAR_STORE_S3_TIMEOUT": "0"},
            "WILDBOAR_STORE_S3_TIMEOUT='0': must be seconds from 1 to 600",
        ),
        (
            {},
            "WILDBOAR_STORE_DIR is not set: the directory to store messages in"
            " (or WILDBOAR_STORE_S3_BUCKET",
        ),
    ],
)
def test_a_bad_s3_setting_is_named(environ: dict[str, str], error: str) -> None:
    with pytest.raises(SettingError, match=re.escape(error)) as refused:
        store.load(environ)
    assert "secret" not in str(refused.value)  # an endpoint's password is never repeated


def test_the_stage_stores_what_the_runtime_gives_it(
    radosgw: Radosgw, bucket: str, broker: Broker
) -> None:
    """``wildboar consume store`` with the bucket in its environment, as a unit runs it: every
    message in the bucket, then on to ``after.store`` with its verdict; a bucket that is not
    there dead-letters the message with the store's refusal, never acks it as stored."""
    out = collect(broker, "store")
    sent = [make_message() for _ in range(3)]
    env = {
        "WILDBOAR_STORE_S3_BUCKET": bucket,
        "WILDBOAR_STORE_S3_ENDPOINT": radosgw.endpoint,
        "WILDBOAR_STORE_S3_PREFIX": "wb/",
        "WILDBOAR_STORE_THEN": "pass",
        "AWS_ACCESS_KEY_ID": radosgw.access_key,
        "AWS_SECRET_ACCESS_KEY": radosgw.secret_key,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    running = Consumer(broker, "store", "store", "--after", "smtp", env=env)
    try:
        running.connected()
        publish(broker, sent)
        passed = broker.get(out, 3)
    finally:
        running.kill()
    stored = objects(radosgw, bucket)
    assert sorted(stored) == sorted(
        f"wb/{m.email.id.removeprefix('urn:uuid:')}.{kind}"
        for m in sent
        for kind in ("eml", "json")
    )
    for got in passed:
        record = M.decode(got.body, got.properties.content_type)
        [verdict] = record.verdicts
        uuid_ = record.email.id.removeprefix("urn:uuid:")
        assert verdict.details["eml"] == f"s3://{bucket}/wb/{uuid_}.eml"
        assert stored[f"wb/{uuid_}.eml"] == record.email.data

    missing = {**env, "WILDBOAR_STORE_S3_BUCKET": "not-made-" + uuid.uuid4().hex[:8]}
    message = make_message()
    refused = Consumer(broker, "store", "store", "--retries", "1", env=missing)
    try:
        refused.connected()
        publish(broker, [message])
        [dead] = broker.get(broker.name("dead.store"), 1)
    finally:
        refused.kill()
    headers = dead.properties.headers
    assert dead.properties.message_id == message.email.id
    assert headers["x-wildboar-error-type"] == "StoreError"
    assert "404 NoSuchBucket" in headers["x-wildboar-error"]
    assert broker.drain(out) == []


def test_plain_http_to_a_host_that_is_not_private_is_warned_of(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only the client is made: no request leaves the machine."""
    warned = []
    for endpoint in ("http://s3.example.org", "http://10.1.2.3:7480", "https://s3.example.org"):
        caplog.clear()
        with caplog.at_level("WARNING", logger="wildboar.consumer.store"):
            store.s3_client(store.S3(bucket="mail", endpoint=endpoint))
        warned += [(endpoint, r.getMessage(), r.fields) for r in caplog.records]  # type: ignore[attr-defined]
    assert warned == [
        (
            "http://s3.example.org",
            "store_endpoint_unencrypted",
            {
                "endpoint": "http://s3.example.org",
                "why": "plain HTTP to a host that is not private: mail crosses it unencrypted",
            },
        )
    ]
