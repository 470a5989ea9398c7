"""The store stage: every message into a directory, or into an S3-compatible bucket, as
``<uuid>.eml`` and ``<uuid>.json``.

For a message whose ``email.id`` is ``urn:uuid:<uuid>``, ``<uuid>.eml`` holds the message
as received (``email.data``: the Received field wildboar added, then the content, CRLF line
ends) and ``<uuid>.json`` the record as this stage got it (the JSON form of
``wildboar.message.Message``, verdicts of the earlier stages included). Then the message's
journey ends (``None``), or with ``WILDBOAR_STORE_THEN=pass`` the stage returns the event
with a ``stored`` verdict (details: ``eml``, ``json``: where the two are) for the next
stage. The destination is one of:

- ``WILDBOAR_STORE_DIR``: a directory (made, mode 0700, if missing); the default, when no
  bucket is named either, is the unit's own (``STATE_DIRECTORY``). Each file is written
  to a temporary name in the same directory, its own for every call
  (``.<name>.<pid>.<random>.tmp``), fsync'd, renamed over its final name, and the
  directory fsync'd: a file under its final name is always whole and durable.
- ``WILDBOAR_STORE_S3_BUCKET``: a bucket of Amazon S3 or of any store that speaks its API
  (Ceph's radosgw, MinIO, Garage, ...), the objects ``<prefix><uuid>.eml`` and
  ``<prefix><uuid>.json`` written by one PUT each, with ``Content-MD5``: the store
  refuses a body that does not match it, and a PUT it answered 200 is whole and durable
  by the S3 contract. Credentials, region and CA bundle come from the AWS SDK's usual
  chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_SHARED_CREDENTIALS_FILE``,
  an instance or Lambda role, ``AWS_CA_BUNDLE``), through boto3.

The ``.eml`` is written first, so a ``.json`` never names a message that is not there. A
message delivered again (the runtime is at-least-once) writes the same names again: they
are replaced, never duplicated; a crash between two writes leaves at most a stray
temporary file (``.*.tmp``, safe to remove) or an ``.eml`` without its ``.json`` until the
redelivery writes both.

Owns: the layouts above and their durability; the S3 settings.
Must not know: brokers, retries (a failed write raises ``OSError``, ``Retry`` for a store
that may answer later, ``StoreError`` for one that refused: the runtime retries them,
then dead-letters the message).
Security: names and keys come only from the record's id, which the schema checks against
the UUID pattern, so none can leave the directory or the prefix; files are created 0600
with ``O_EXCL|O_NOFOLLOW`` through a descriptor of the directory, which is opened with
``O_NOFOLLOW`` (the directory itself may not be a symbolic link). An endpoint URL may not
carry credentials (they would be logged); keys belong in the SDK's chain, e.g. a
systemd credential named by ``AWS_SHARED_CREDENTIALS_FILE``. TLS to the store is verified
(``AWS_CA_BUNDLE`` names a private CA); ``http://`` is for a store on the same host or a
private network only, and the stage logs a warning for one elsewhere.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
import logging
import os
import re
import secrets
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from .. import message as M
from . import Event, Retry, add_verdict
from ._settings import SettingError, choice, seconds, stage_name, text

log = logging.getLogger(__name__)  # a child of "wildboar": its handlers

#: What S3 calls a bucket name (the rules of new buckets: 3 to 63 lowercase letters,
#: digits, dots and hyphens, a letter or digit at each end).
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
#: The longest key prefix: S3 keys are at most 1024 bytes, and the names are 41.
PREFIX_MAX = 512


#: Refusals that pass by themselves, whatever their status (S3 answers some with 400 or
#: 409): the request took too long, too many requests, a conflicting one in progress.
TRANSIENT = frozenset({"RequestTimeout", "SlowDown", "OperationAborted"})


class StoreError(Exception):
    """The S3-compatible store refused a write for a reason that will not pass by itself
    (no such bucket, access denied): ``str()`` says which, in one line."""


class S3(msgspec.Struct, frozen=True):
    #: The bucket the objects go into.
    bucket: str
    #: Put before every key (``mail/`` puts them in a "folder").
    prefix: str = ""
    #: The store's URL (``https://host[:port]``); None: Amazon S3 of the region.
    endpoint: str | None = None
    #: The region the requests are signed for; None: the SDK's own choice
    #: (``AWS_REGION``, ``AWS_DEFAULT_REGION``, the profile, else ``us-east-1``).
    region: str | None = None
    #: ``path`` (``host/bucket/key``, what most S3-compatible stores want) or ``virtual``
    #: (``bucket.host/key``).
    addressing: str = "virtual"
    #: Seconds to connect, and to wait for each answer: twice this fits in the runtime's
    #: default time budget (30 s), so a store that hangs is a failure, not an overrun.
    timeout: float = 10.0


class Settings(msgspec.Struct, frozen=True):
    #: The directory the messages go into, if they go to one.
    directory: str | None = None
    #: The bucket they go into, if they go to one.
    s3: S3 | None = None
    #: What follows a stored message: ``drop`` (its journey ends here: ``None``) or
    #: ``pass`` (the event with its ``stored`` verdict, for a stage after this one).
    then: str = "drop"


def load(environ: Mapping[str, str]) -> Settings:
    """The settings from ``WILDBOAR_STORE_DIR`` or ``WILDBOAR_STORE_S3_*`` (one of the two);
    with neither, the directory systemd made for the unit (``STATE_DIRECTORY``: under
    ``wildboar-consumer@store.service``, ``/var/lib/wildboar-consumer/store``)."""
    directory = text(environ, "WILDBOAR_STORE_DIR")
    s3 = load_s3(environ)
    if directory is not None and s3 is not None:
        raise SettingError(
            "WILDBOAR_STORE_DIR and WILDBOAR_STORE_S3_BUCKET are both set: the store writes"
            " to one of a directory and a bucket"
        )
    if directory is None and s3 is None:
        # StateDirectory= lists its directories separated by colons; the first is ours.
        directory = (text(environ, "STATE_DIRECTORY") or "").split(":")[0] or None
        if directory is None:
            raise SettingError(
                "WILDBOAR_STORE_DIR is not set: the directory to store messages in"
                " (or WILDBOAR_STORE_S3_BUCKET: the bucket of an S3-compatible store)"
            )
    then = choice(environ, "WILDBOAR_STORE_THEN", ("drop", "pass"), "drop")
    return Settings(directory=directory, s3=s3, then=then)


def load_s3(environ: Mapping[str, str]) -> S3 | None:
    """The ``WILDBOAR_STORE_S3_*`` settings, or None if no bucket is named (and no other
    of them is set)."""
    bucket = text(environ, "WILDBOAR_STORE_S3_BUCKET")
    if bucket is None:
        stray = sorted(
            name
            for name, value in environ.items()
            if name.startswith("WILDBOAR_STORE_S3_") and value.strip()
        )
        if stray:
            raise SettingError(f"{stray[0]} is set but WILDBOAR_STORE_S3_BUCKET is not")
        return None
    if not BUCKET.fullmatch(bucket) or ".." in bucket:
        raise SettingError(
            f"WILDBOAR_STORE_S3_BUCKET={bucket!r}: not a bucket name (3 to 63 lowercase"
            " letters, digits, dots and hyphens)"
        )
    prefix = environ.get("WILDBOAR_STORE_S3_PREFIX", "")
    if (
        len(prefix.encode()) > PREFIX_MAX
        or prefix.startswith("/")
        or any(part in (".", "..") for part in prefix.split("/")[:-1])
        or not prefix.isprintable()
    ):
        raise SettingError(
            f"WILDBOAR_STORE_S3_PREFIX={prefix!r}: must be printable, at most {PREFIX_MAX}"
            " bytes, not start with / nor hold a . or .. segment"
        )
    endpoint = text(environ, "WILDBOAR_STORE_S3_ENDPOINT")
    if endpoint is not None:
        endpoint = checked_endpoint(endpoint)
    default = "path" if endpoint is not None else "virtual"
    return S3(
        bucket=bucket,
        prefix=prefix,
        endpoint=endpoint,
        region=text(environ, "WILDBOAR_STORE_S3_REGION"),
        addressing=choice(environ, "WILDBOAR_STORE_S3_ADDRESSING", ("path", "virtual"), default),
        timeout=seconds(environ, "WILDBOAR_STORE_S3_TIMEOUT", 10.0, low=1, high=600),
    )


def checked_endpoint(value: str) -> str:
    """``value`` if it is an ``http`` or ``https`` URL of a host (and port), nothing more."""
    name = "WILDBOAR_STORE_S3_ENDPOINT"
    if "@" in value:  # before any message that would repeat the value
        raise SettingError(
            f"{name}: holds credentials; give them as AWS_ACCESS_KEY_ID and"
            " AWS_SECRET_ACCESS_KEY or in AWS_SHARED_CREDENTIALS_FILE instead"
        )
    url = urllib.parse.urlsplit(value)
    try:
        port = url.port
    except ValueError:
        port = 0
    if url.scheme not in ("http", "https") or not url.hostname:
        raise SettingError(f"{name}={value!r}: must be an https:// (or http://) URL of a host")
    if url.path not in ("", "/") or url.query or url.fragment:
        raise SettingError(f"{name}={value!r}: must be the URL of the store alone (no path)")
    if port == 0:
        raise SettingError(f"{name}={value!r}: the port is not a number from 1 to 65535")
    return f"{url.scheme}://{url.netloc}"


def private(host: str) -> bool:
    """Whether ``host`` is this host or an address of a private network."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private


@functools.cache
def settings() -> Settings:
    """This process's settings, read from its environment once."""
    return load(os.environ)


def handler(event: Event, context: Any) -> Event | None:
    """The stage's entry point (``wildboar consume store``)."""
    return handle(event, context, settings())


def handle(event: Event, context: Any, config: Settings) -> Event | None:
    record = msgspec.json.decode(msgspec.json.encode(event), type=M.Message)
    if config.s3 is not None:
        eml, json = store_s3(config.s3, record)
    else:
        assert config.directory is not None  # load() sees to one of the two
        paths = store(Path(config.directory), record)
        eml, json = str(paths[0]), str(paths[1])
    if config.then != "pass":
        return None
    return add_verdict(event, stage_name(context, "store"), "stored", eml=eml, json=json)


def store(directory: Path, record: M.Message) -> tuple[Path, Path]:
    """Write ``record`` into ``directory`` durably (see the module's header); the paths of
    its ``.eml`` and ``.json``."""
    uuid = record.email.id.removeprefix("urn:uuid:")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        write_durably(fd, f"{uuid}.eml", record.email.data)
        write_durably(fd, f"{uuid}.json", M.encode(record))
    finally:
        os.close(fd)
    return directory / f"{uuid}.eml", directory / f"{uuid}.json"


def store_s3(config: S3, record: M.Message) -> tuple[str, str]:
    """Write ``record`` into the bucket (see the module's header); the ``s3://`` URLs of
    its ``.eml`` and ``.json``."""
    uuid = record.email.id.removeprefix("urn:uuid:")
    client = s3_client(config)
    urls = []
    for name, data, kind in (
        (f"{uuid}.eml", record.email.data, "message/rfc822"),
        (f"{uuid}.json", M.encode(record), "application/json"),
    ):
        key = config.prefix + name
        put(client, config.bucket, key, data, kind=kind, urn=record.email.id)
        urls.append(f"s3://{config.bucket}/{key}")
    return urls[0], urls[1]


@functools.cache
def s3_client(config: S3) -> Any:
    """This process's client for ``config`` (boto3's clients may be shared by threads);
    made at the first message, when the SDK finds the credentials, or ``SettingError``
    (not kept: the next message tries again)."""
    try:
        import boto3.session  # noqa: PLC0415 (boto3 is only recommended: S3 needs it)
        import botocore.config  # noqa: PLC0415
        import botocore.exceptions  # noqa: PLC0415
    except ImportError:
        raise SettingError(
            "WILDBOAR_STORE_S3_BUCKET is set but boto3 is not installed"
            " (Debian: apt install python3-boto3; pip: pip install boto3)"
        ) from None
    try:
        session = boto3.session.Session()
        credentials = session.get_credentials()
    except botocore.exceptions.BotoCoreError as error:  # AWS_PROFILE names none, say
        raise SettingError(f"S3 credentials: {error}") from None
    if credentials is None:
        raise SettingError(
            "WILDBOAR_STORE_S3_BUCKET is set but no S3 credentials were found: set"
            " AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_SHARED_CREDENTIALS_FILE"
        )
    if config.endpoint is not None:
        url = urllib.parse.urlsplit(config.endpoint)
        if url.scheme == "http" and not private(url.hostname or ""):
            # The event and its fields as wildboar's own log lines have them; a plain
            # logging record elsewhere (on AWS Lambda).
            why = "plain HTTP to a host that is not private: mail crosses it unencrypted"
            log.warning(
                "store_endpoint_unencrypted",
                extra={"fields": {"endpoint": config.endpoint, "why": why}},
            )
    options = botocore.config.Config(
        connect_timeout=config.timeout,
        read_timeout=config.timeout,
        # No retries of the SDK's own: the runtime retries, with its back-off, within
        # its time budget, and logs each failure. (total_max_attempts counts the first
        # try in every botocore; max_attempts does not in Debian 12's 1.29.)
        retries={"mode": "standard", "total_max_attempts": 1},
        s3={"addressing_style": config.addressing},
        user_agent_extra="wildboar-store",
    )
    return session.client(
        "s3", endpoint_url=config.endpoint, region_name=config.region, config=options
    )


def put(client: Any, bucket: str, key: str, data: bytes, *, kind: str, urn: str) -> None:
    """One PUT of ``data`` as ``key``, checked by the store against its MD5; ``Retry`` or
    ``StoreError`` (one line) if it is not stored."""
    import botocore.exceptions  # noqa: PLC0415 (there is a client: boto3 is there)

    digest = hashlib.md5(data, usedforsecurity=False).digest()
    where = f"s3://{bucket}/{key}"
    try:
        client.put_object(
            Bucket=bucket,
            Key=key,
            Body=data,
            ContentMD5=base64.b64encode(digest).decode("ascii"),
            ContentType=kind,
            Metadata={"email-id": urn},
        )
    except botocore.exceptions.ClientError as error:
        raise refusal(where, error.response) from None
    except botocore.exceptions.BotoCoreError as error:  # no answer, or none we could read
        raise Retry(f"S3 PUT {where}: {type(error).__name__}: {error}") from None


def refusal(where: str, response: Mapping[str, Any]) -> Exception:
    """The exception for the store's refusal of a PUT: ``Retry`` when it may pass (5xx,
    throttling, a request timeout), else ``StoreError``."""
    error = response.get("Error") or {}
    code = str(error.get("Code") or "")
    status = int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
    text = " ".join(str(error.get("Message") or "").split())[:200]
    line = f"S3 PUT {where}: {status} {code}" + (f": {text}" if text else "")
    if status >= 500 or status in (408, 429) or code in TRANSIENT:
        return Retry(line)
    return StoreError(line)


def write_durably(directory: int, name: str, data: bytes) -> None:
    """``name`` in the directory open as ``directory`` holds ``data``, durably, whole or not
    at all: a temporary file written and fsync'd, renamed over ``name``, the directory
    fsync'd."""
    # A name of this call's own: an overrunning call and its retry (in another thread of
    # the same process) never write, rename or remove each other's file.
    temp = f".{name}.{os.getpid()}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o600, dir_fd=directory)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, name, src_dir_fd=directory, dst_dir_fd=directory)
    except BaseException:
        os.unlink(temp, dir_fd=directory)
        raise
    os.fsync(directory)
