"""The store stage (wildboar.consumer.store): a message as ``.eml`` and its record as
``.json``, durably, once per id however often it comes."""

from __future__ import annotations

import concurrent.futures
import json
import os
from pathlib import Path

import pytest

from tests.records import make_message
from wildboar import message as M
from wildboar.consumer import add_verdict, store
from wildboar.consumer._settings import SettingError

from .stages import Context, event_of, record_of

CONTEXT = Context("store")


def test_a_message_and_its_record_are_written(tmp_path: Path) -> None:
    message = make_message(content=b"Subject: kept\r\n\r\nKeep me.\r\n")
    event = add_verdict(event_of(message), "scam", "pass")
    config = store.Settings(directory=str(tmp_path / "mail"), then="pass")
    result = store.handle(event, CONTEXT, config)
    uuid = message.email.id.removeprefix("urn:uuid:")
    eml, record = tmp_path / "mail" / f"{uuid}.eml", tmp_path / "mail" / f"{uuid}.json"
    assert sorted(os.listdir(tmp_path / "mail")) == sorted([eml.name, record.name])
    assert eml.read_bytes() == message.email.data
    assert M.decode(record.read_bytes()) == record_of(event)
    assert (eml.stat().st_mode & 0o777, (tmp_path / "mail").stat().st_mode & 0o777) == (
        0o600,
        0o700,
    )
    verdict = record_of(result).verdicts[-1]
    assert (verdict.stage, verdict.result) == ("store", "stored")
    assert verdict.details == {"eml": str(eml), "json": str(record)}


def test_by_default_a_stored_message_ends_its_journey(tmp_path: Path) -> None:
    message = make_message()
    assert store.handle(event_of(message), CONTEXT, store.Settings(str(tmp_path))) is None
    assert (tmp_path / f"{message.email.id.removeprefix('urn:uuid:')}.eml").exists()
    assert store.load({"WILDBOAR_STORE_DIR": "/x"}).then == "drop"
    assert store.load({"WILDBOAR_STORE_DIR": "/x", "WILDBOAR_STORE_THEN": "pass"}).then == "pass"
    with pytest.raises(SettingError, match="WILDBOAR_STORE_THEN='keep': must be one of drop, pass"):
        store.load({"WILDBOAR_STORE_DIR": "/x", "WILDBOAR_STORE_THEN": "keep"})


def test_a_redelivery_writes_the_same_files_again(tmp_path: Path) -> None:
    config = store.Settings(directory=str(tmp_path))
    first, second = make_message(), make_message()
    for message in (first, second, first, first):
        store.handle(event_of(message), CONTEXT, config)
    names = sorted(os.listdir(tmp_path))
    assert names == sorted(
        f"{m.email.id.removeprefix('urn:uuid:')}.{kind}"
        for m in (first, second)
        for kind in ("eml", "json")
    )


def test_calls_at_once_never_touch_each_others_temporary_files(tmp_path: Path) -> None:
    """An overrunning call and its retry run side by side in one process: each writes a
    temporary file of its own, so each renames only what it wrote and fsync'd; one left
    by a crash (of any process) is never taken for ours."""
    message = make_message()
    uuid = message.email.id.removeprefix("urn:uuid:")
    stale = tmp_path / f".{uuid}.eml.{os.getpid()}.tmp"
    stale.write_bytes(b"half")
    config = store.Settings(directory=str(tmp_path))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for done in [
            pool.submit(store.handle, event_of(message), CONTEXT, config) for _ in range(8)
        ]:
            done.result()
    assert sorted(os.listdir(tmp_path)) == sorted([stale.name, f"{uuid}.eml", f"{uuid}.json"])
    assert (tmp_path / f"{uuid}.eml").read_bytes().endswith(message.email.data)


def test_a_directory_that_is_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(OSError):
        store.handle(event_of(make_message()), CONTEXT, store.Settings(str(tmp_path / "link")))
    assert os.listdir(tmp_path / "real") == []


def test_an_invalid_record_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    event = event_of(make_message())
    event["email"]["id"] = "urn:uuid:../../etc/passwd"
    with pytest.raises(ValueError, match=r"email\.id"):
        store.handle(event, CONTEXT, store.Settings(directory=str(tmp_path)))
    assert os.listdir(tmp_path) == []


def test_the_directory_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SettingError, match="WILDBOAR_STORE_DIR is not set"):
        store.load({})
    # Under systemd, the unit's StateDirectory= is the default (the first of several).
    unit = {"STATE_DIRECTORY": "/var/lib/wildboar-consumer/store:/var/lib/other"}
    assert store.load(unit) == store.Settings(directory="/var/lib/wildboar-consumer/store")
    assert store.load({**unit, "WILDBOAR_STORE_DIR": "/srv/mail"}).directory == "/srv/mail"
    assert store.load({**unit, "WILDBOAR_STORE_S3_BUCKET": "mail"}).directory is None
    store.settings.cache_clear()
    monkeypatch.setenv("WILDBOAR_STORE_DIR", str(tmp_path))
    monkeypatch.setenv("WILDBOAR_STORE_THEN", "pass")
    try:
        result = store.handler(event_of(make_message()), CONTEXT)
    finally:
        store.settings.cache_clear()
    assert json.loads(Path(result["verdicts"][-1]["details"]["json"]).read_bytes())["version"] == 1
