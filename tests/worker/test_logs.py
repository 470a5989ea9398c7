"""How log fields become journald fields and a readable MESSAGE (the journal itself is
exercised end to end in tests/system/test_journal.py)."""

from __future__ import annotations

import logging

from wildboar.worker.logs import JournalFields, journal_field, journal_message


def test_field_names_are_valid_journald_names_that_do_not_clash() -> None:
    assert journal_field("connection") == "CONNECTION"
    assert journal_field("remote_port") == "REMOTE_PORT"
    # journald's own MESSAGE and PRIORITY keep their meaning.
    assert journal_field("message") == "WILDBOAR_MESSAGE"
    assert journal_field("priority") == "WILDBOAR_PRIORITY"
    # journald drops names with other characters, or starting with "_" or a digit.
    assert journal_field("a-b.c") == "A_B_C"
    assert journal_field("_pid") == "WILDBOAR_PID"
    assert journal_field("2nd") == "WILDBOAR_2ND"


def test_message_quotes_values_a_client_could_use_to_forge_fields() -> None:
    text = journal_message(
        "message_refused",
        {"sender": '"x y"@example.net', "reply": "550 5.7.1 no", "size": 12, "to": ["a", "b"]},
    )
    assert text == (
        'message_refused sender="\\"x y\\"@example.net" reply="550 5.7.1 no" size=12 '
        'to="[\\"a\\",\\"b\\"]"'
    )
    forged = journal_message("helo", {"name": "x\nPRIORITY=0 fake=1"})
    assert "\n" not in forged and forged == 'helo name="x\\nPRIORITY=0 fake=1"'


def test_handler_sends_one_entry_with_fields_and_priority() -> None:
    sent: list[tuple[str, ...]] = []
    handler = JournalFields(lambda *entries: sent.append(entries))
    logger = logging.getLogger("wildboar.test-journal")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.warning("amqp_connection_lost", extra={"fields": {"message": "urn:uuid:1", "n": 2}})
    [entries] = sent
    assert entries == (
        "MESSAGE=amqp_connection_lost message=urn:uuid:1 n=2",
        "EVENT=amqp_connection_lost",
        "PRIORITY=4",
        "SYSLOG_IDENTIFIER=wildboar",
        "WILDBOAR_MESSAGE=urn:uuid:1",
        "N=2",
    )
