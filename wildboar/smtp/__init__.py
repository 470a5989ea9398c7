"""wildboar.smtp: a sans-IO SMTP server state machine (RFC 5321 and extensions).

Bytes in (``receive_data``), events out (``next_event``), replies out (``send`` and
``data_to_send``). No sockets, no clocks, no logging: the caller does I/O and answers
policy questions. See ``connection.py`` for the usage loop and ``docs/protocol.md``.
"""

from .connection import ServerConnection
from .errors import LocalProtocolError
from .events import (
    NEED_DATA,
    PAUSED,
    Accept,
    Answer,
    ClientConnected,
    ConnectionClosed,
    Envelope,
    Event,
    Hello,
    MailFrom,
    MailParams,
    MessageComplete,
    MessageData,
    Orcpt,
    Question,
    RcptParams,
    RcptTo,
    Recipient,
    StartTls,
    TransactionAborted,
    Unavailable,
    Wait,
    Xclient,
)
from .limits import Extensions, Limits
from .received import address_literal, received_header
from .replies import Reply
from .state import CONTENT, IDLE, State

__all__ = [
    "CONTENT",
    "IDLE",
    "NEED_DATA",
    "PAUSED",
    "Accept",
    "Answer",
    "ClientConnected",
    "ConnectionClosed",
    "Envelope",
    "Event",
    "Extensions",
    "Hello",
    "Limits",
    "LocalProtocolError",
    "MailFrom",
    "MailParams",
    "MessageComplete",
    "MessageData",
    "Orcpt",
    "Question",
    "RcptParams",
    "RcptTo",
    "Recipient",
    "Reply",
    "ServerConnection",
    "StartTls",
    "State",
    "TransactionAborted",
    "Unavailable",
    "Wait",
    "Xclient",
    "address_literal",
    "received_header",
]
