"""The delivery stage (wildboar.consumer.deliver) into a private Dovecot (tests/lmtp/dovecot.py)
over LMTP: every message in its Maildirs exactly once, 4xx retried without a second copy for
whoever had it, 5xx refused with a bounce in the bounce spool."""

from __future__ import annotations

from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest

from tests.lmtp.dovecot import Dovecot
from tests.records import make_message, run
from wildboar import message as M
from wildboar.consumer import Retry, deliver
from wildboar.consumer._settings import SettingError
from wildboar.handoff.spool import Spool

from .stages import Context, event_of, record_of

CONTEXT = Context("deliver")
T = TypeVar("T")


def run_stage(stage: Coroutine[Any, Any, T]) -> T:
    """Run a call of the stage on an event loop of its own, closing its connections after."""

    async def then_close() -> T:
        try:
            return await stage
        finally:
            await deliver.close()

    return run(then_close())


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    """A Dovecot of this test's own (empty mailboxes), with over-quota a 4xx."""
    with Dovecot(extra="quota_full_tempfail = yes\n") as server:
        yield server


def settings_for(
    dovecot: Dovecot, bounces: Path | None = None, unix: bool = False
) -> deliver.Settings:
    url = f"lmtp:unix:{dovecot.unix_socket}" if unix else f"lmtp:127.0.0.1:{dovecot.port}"
    return deliver.Settings(
        url=url,
        lhlo="stage.example.org",
        bounces=None if bounces is None else str(bounces),
        then="pass",  # the verdicts are what these tests read
    )


def test_every_recipient_delivered_once_goes_on_with_a_verdict(dovecot: Dovecot) -> None:
    content = b"Subject: hello\r\n\r\nHello, both.\r\n..and a dot line\r\n"
    message = make_message(to=("alice@example.org", "bob@example.org"), content=content)
    config = settings_for(dovecot, unix=True)
    result = run_stage(deliver.handle(event_of(message), CONTEXT, config))
    record = record_of(result)
    assert record.rejection is None
    verdict = record.verdicts[-1]
    assert (verdict.stage, verdict.result) == ("deliver", "delivered")
    assert set(verdict.details) == {"alice@example.org", "bob@example.org"}
    assert all(text.startswith("250 2.0.0 <") for text in verdict.details.values())
    for user in ("alice", "bob"):
        [stored] = dovecot.maildir_messages(user)
        assert stored.endswith(message.email.data)
    # The runtime may hand the same message over again (at least once): no second copy.
    run_stage(deliver.handle(event_of(message), CONTEXT, config))
    assert [len(dovecot.maildir_messages(user)) for user in ("alice", "bob")] == [1, 1]


def test_a_4xx_is_retried_and_the_retry_skips_who_got_it(dovecot: Dovecot) -> None:
    dovecot.fill_quota("carol")
    message = make_message(to=("alice@example.org", "carol@example.org"))
    config = settings_for(dovecot)
    event = event_of(message)
    with pytest.raises(Retry, match=r"carol@example.org: 452 4.2.2"):
        run_stage(deliver.handle(event, CONTEXT, config))
    assert len(dovecot.maildir_messages("alice")) == 1
    with pytest.raises(Retry):
        run_stage(deliver.handle(event, CONTEXT, config))
    dovecot.expunge("carol")
    result = record_of(run_stage(deliver.handle(event, CONTEXT, config)))
    assert result.verdicts[-1].result == "delivered"
    assert set(result.verdicts[-1].details) == {"alice@example.org", "carol@example.org"}
    [alices] = dovecot.maildir_messages("alice")
    [carols] = dovecot.maildir_messages("carol")
    assert alices.endswith(message.email.data) and carols.endswith(message.email.data)


def test_an_mda_that_cannot_be_reached_is_retried(dovecot: Dovecot) -> None:
    config = settings_for(dovecot)
    dovecot.stop(graceful=False)
    with pytest.raises(Retry, match=r"alice@example.org: 451 4.3.0"):
        run_stage(
            deliver.handle(event_of(make_message(to=("alice@example.org",))), CONTEXT, config)
        )


def test_every_recipient_refused_is_rejected_with_a_bounce(
    dovecot: Dovecot, tmp_path: Path
) -> None:
    message = make_message(to=("nobody-here@example.org",))
    config = settings_for(dovecot, bounces=tmp_path / "bounce")
    record = record_of(run_stage(deliver.handle(event_of(message), CONTEXT, config)))
    assert record.rejection is not None
    assert (record.rejection.code, record.rejection.enhanced, record.rejection.stage) == (
        550,
        "5.1.1",
        "deliver",
    )
    details = record.verdicts[-1].details
    assert details["nobody-here@example.org"].startswith("550 5.1.1 <nobody-here@example.org>")
    [bounce] = bounces_in(tmp_path / "bounce")
    assert details["dsn"] == bounce.email.id
    assert (bounce.email.sender, bounce.email.to) == ("", ["alice@example.org"])
    assert b"Final-Recipient: rfc822; nobody-here@example.org" in bounce.email.data
    assert b"Remote-MTA: dns; 127.0.0.1" in bounce.email.data


def test_some_refused_goes_on_as_partial(dovecot: Dovecot, tmp_path: Path) -> None:
    message = make_message(to=("alice@example.org", "nobody-here@example.org"))
    config = settings_for(dovecot, bounces=tmp_path / "bounce")
    record = record_of(run_stage(deliver.handle(event_of(message), CONTEXT, config)))
    assert record.rejection is None
    verdict = record.verdicts[-1]
    assert verdict.result == "partial"
    assert verdict.reason == "refused by the mail store: nobody-here@example.org"
    assert verdict.details["alice@example.org"].startswith("250 ")
    assert len(bounces_in(tmp_path / "bounce")) == 1
    assert len(dovecot.maildir_messages("alice")) == 1


def test_no_bounce_without_a_bounce_spool_nor_for_a_null_sender(
    dovecot: Dovecot, tmp_path: Path
) -> None:
    refused = make_message(to=("nobody-here@example.org",))
    result = record_of(run_stage(deliver.handle(event_of(refused), CONTEXT, settings_for(dovecot))))
    assert result.verdicts[-1].details["dsn"] == "none"
    null = make_message(sender="", to=("nobody-here@example.org",))
    config = settings_for(dovecot, bounces=tmp_path / "bounce")
    result = record_of(run_stage(deliver.handle(event_of(null), CONTEXT, config)))
    assert result.verdicts[-1].details["dsn"] == "none"
    assert bounces_in(tmp_path / "bounce") == []


def bounces_in(path: Path) -> list[M.Message]:
    if not path.exists():
        return []
    with Spool(path) as spool:
        return [spool.load(uuid) for uuid in spool.uuids()]


def test_settings_come_from_the_environment(
    dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SettingError, match="WILDBOAR_DELIVER_LMTP is not set"):
        deliver.load({})
    with pytest.raises(SettingError, match="WILDBOAR_DELIVER_LMTP: 'smtp:x' is not"):
        deliver.load({"WILDBOAR_DELIVER_LMTP": "smtp:x"})
    assert deliver.load(
        {"WILDBOAR_DELIVER_LMTP": "lmtp:unix:/run/dovecot/lmtp", "WILDBOAR_DELIVER_LHLO": "mx"}
    ) == deliver.Settings(url="lmtp:unix:/run/dovecot/lmtp", lhlo="mx")
    deliver.settings.cache_clear()
    monkeypatch.setenv("WILDBOAR_DELIVER_LMTP", f"lmtp:127.0.0.1:{dovecot.port}")
    monkeypatch.setenv("WILDBOAR_DELIVER_THEN", "pass")
    try:
        message = make_message(to=("bob@example.org",))
        record = record_of(run_stage(deliver.handler(event_of(message), CONTEXT)))
    finally:
        deliver.settings.cache_clear()
    assert record.verdicts[-1].result == "delivered"
    assert len(dovecot.maildir_messages("bob")) == 1


def test_by_default_a_delivered_message_ends_the_pipeline(dovecot: Dovecot) -> None:
    """Delivered: None (the runtime logs the end and acks), so a pipeline's last stage
    publishes nothing that no queue would take; refused for all: the rejection."""
    config = msgspec.structs.replace(settings_for(dovecot), then="drop")
    message = make_message(to=("alice@example.org",))
    assert run_stage(deliver.handle(event_of(message), CONTEXT, config)) is None
    assert len(dovecot.maildir_messages("alice")) == 1
    refused = make_message(to=("nobody-here@example.org",))
    record = record_of(run_stage(deliver.handle(event_of(refused), CONTEXT, config)))
    assert record.rejection is not None and record.rejection.stage == "deliver"
    assert deliver.load({"WILDBOAR_DELIVER_LMTP": "lmtp:127.0.0.1:24"}).then == "drop"
    with pytest.raises(SettingError, match="WILDBOAR_DELIVER_THEN='keep'"):
        deliver.load(
            {"WILDBOAR_DELIVER_LMTP": "lmtp:127.0.0.1:24", "WILDBOAR_DELIVER_THEN": "keep"}
        )


def test_a_message_handled_again_after_its_bounce_is_not_bounced_again(
    dovecot: Dovecot, tmp_path: Path
) -> None:
    """The bounce is kept, then the publish of the result fails and the runtime calls
    the stage again (or the broker redelivers): the same verdict, the same bounce id,
    one bounce in the spool, and the delivered recipient still has one copy."""
    message = make_message(to=("alice@example.org", "nobody-here@example.org"))
    config = settings_for(dovecot, bounces=tmp_path / "bounce")
    first = record_of(run_stage(deliver.handle(event_of(message), CONTEXT, config)))
    again = record_of(run_stage(deliver.handle(event_of(message), CONTEXT, config)))
    assert first.verdicts[-1].details["dsn"] == again.verdicts[-1].details["dsn"] != "none"
    assert again.verdicts[-1].result == "partial"
    assert len(bounces_in(tmp_path / "bounce")) == 1
    assert len(dovecot.maildir_messages("alice")) == 1
