"""What the coverage-guided fuzzer (tests/fuzz, docs/fuzzing.md) found, one test each,
written through the public API; the input that found it is in tests/corpus/ too."""

from __future__ import annotations

import pytest

from wildboar import smtp

from .client import session

TIMEOUT = smtp.Reply(421, "4.4.2", "Error: timeout exceeded")


def drain(conn: smtp.ServerConnection) -> list[smtp.Event]:
    events = []
    while (event := conn.next_event()) not in (smtp.NEED_DATA, smtp.PAUSED):
        assert isinstance(event, smtp.Event)
        events.append(event)
    return events


@pytest.mark.parametrize(
    "command, content",
    [(b"DATA\r\n", b"Subject: x\r\n\r\nhi\r\n.\r\n"), (b"", b"BDAT 4 LAST\r\nhi\r\n")],
)
def test_a_421_with_the_message_question_queued_still_ends_the_transaction(
    command: bytes, content: bytes
) -> None:
    """The worker handles a few events a turn; its timeout may fire between two turns,
    after a ``MessageData`` and before the ``MessageComplete`` queued behind it. The 421
    drops the question the caller never saw: the transaction must still end, with
    ``TransactionAborted``, before ``ConnectionClosed`` (corpus:
    smtp/crash-421-behind-a-queued-message-complete)."""
    client = session()
    client.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\n" + command)
    conn = client.conn
    conn.receive_data(content)
    assert isinstance(conn.next_event(), smtp.MessageData)
    assert conn.send(TIMEOUT).endswith(b"421 4.4.2 Error: timeout exceeded\r\n")
    assert drain(conn) == [smtp.TransactionAborted("closed"), smtp.ConnectionClosed("local")]
    assert conn.next_event() is smtp.PAUSED and conn.state is smtp.State.CLOSED
