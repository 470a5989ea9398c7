"""The scam filter stage: the original Wildboar design's example, in earnest.

A message whose decoded text holds three or more distinct of the words ``African``,
``prince``, ``account`` and ``million`` (any case, whole words only: ``accounts`` is not
``account``) is refused (``reject``: to ``rejected.inbound.email``, ``550 5.7.1``) or tagged
(``tag``: a ``tag`` verdict whose details carry the words found and an
``X-Wildboar-Scam`` field for a later stage to add), as ``WILDBOAR_SCAM_ACTION`` says
(default ``reject``). Any other message gets a ``pass`` verdict and goes on.

The text searched is the Subject and every ``text/plain`` and ``text/html`` part, at any
depth (multiparts, attached ``message/rfc822``), decoded by Python's ``email`` package with
``policy.default``: quoted-printable and base64 undone, each part's charset honoured (an
unknown charset read as UTF-8 with replacement characters), RFC 2047 encoded words decoded,
HTML reduced to its text (tags, comments, ``script`` and ``style`` dropped, entities
resolved).

Owns: that decision and the bounded text extraction behind it.
Must not know: brokers, queues, retries (the runtime's), other stages.
Security: the content is the sender's and may be built to hurt, so the work is bounded:
only the first ``MAX_PARSED`` octets are parsed, at most ``MAX_PARTS`` parts are looked at,
no deeper than ``MAX_DEPTH``, and at most ``MAX_TEXT`` characters of decoded text are
searched (what lies past a bound is not searched: a scam hidden behind megabytes of other
text passes). A message the parser cannot take (nesting past Python's recursion limit) is
searched as raw text, within ``MAX_TEXT``. Nothing of the content is executed or fetched.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import functools
import html
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec

from . import Event, add_verdict, content, reject
from ._settings import choice, stage_name

#: The words of the original design, and how many distinct ones make a scam.
WORDS = ("african", "prince", "account", "million")
THRESHOLD = 3
#: Octets of the message given to the parser (a bigger message is cut there first).
MAX_PARSED = 10 * 1024 * 1024
#: MIME parts looked at, and how deep multiparts are followed.
MAX_PARTS = 200
MAX_DEPTH = 20
#: Characters of decoded text searched in all.
MAX_TEXT = 1024 * 1024
#: RFC 3463 X.7.1 "Delivery not authorized, message refused".
REJECT_CODE, REJECT_ENHANCED = 550, "5.7.1"
HEADER = "X-Wildboar-Scam"

_WORD = re.compile(r"\b(" + "|".join(WORDS) + r")\b", re.IGNORECASE)
_TEXT_TYPES = ("text/plain", "text/html")


class Settings(msgspec.Struct, frozen=True):
    #: ``reject`` or ``tag`` a message found to be a scam.
    action: str = "reject"


def load(environ: Mapping[str, str]) -> Settings:
    """The settings from ``WILDBOAR_SCAM_ACTION`` (``reject`` or ``tag``)."""
    return Settings(action=choice(environ, "WILDBOAR_SCAM_ACTION", ("reject", "tag"), "reject"))


@functools.cache
def settings() -> Settings:
    """This process's settings, read from its environment once."""
    return load(os.environ)


def handler(event: Event, context: Any) -> Event:
    """The stage's entry point (``wildboar consume scam``)."""
    return handle(event, context, settings())


def handle(event: Event, context: Any, config: Settings) -> Event:
    stage = stage_name(context, "scam")
    found = scam_words(text_of(content(event)))
    words = ", ".join(found)
    if len(found) < THRESHOLD:
        return add_verdict(event, stage, "pass", words=words)
    reason = f"scam: {len(found)} of the scam words ({words})"
    if config.action == "reject":
        return reject(event, stage, reason, code=REJECT_CODE, enhanced=REJECT_ENHANCED, words=words)
    return add_verdict(event, stage, "tag", reason, words=words, header=f"{HEADER}: yes ({words})")


def scam_words(text: str) -> list[str]:
    """The distinct scam words in ``text``, lowercased, sorted."""
    return sorted({match.lower() for match in _WORD.findall(text)})


# --- the decoded text of a message --------------------------------------------------------


def text_of(data: bytes) -> str:
    """The Subject and the decoded text parts of the RFC 5322 message ``data``, joined by
    newlines, at most ``MAX_TEXT`` characters (see the module's header for the bounds)."""
    try:
        message = email.message_from_bytes(data[:MAX_PARSED], policy=email.policy.default)
        texts = list(_texts(message))
    except RecursionError:  # nested past what the parser can follow: the raw text, then
        texts = [data[:MAX_TEXT].decode("utf-8", "replace")]
    return _bounded(texts)


def _bounded(texts: list[str]) -> str:
    kept: list[str] = []
    left = MAX_TEXT
    for text in texts:
        if left <= 0:
            break
        kept.append(text[:left])
        left -= len(kept[-1]) + 1
    return "\n".join(kept)


def _texts(message: email.message.Message) -> Iterator[str]:
    subject = message.get("subject")
    if subject is not None:
        yield str(subject)
    for part in _parts(message):
        kind = part.get_content_type()
        if kind in _TEXT_TYPES:
            text = _decoded(part)
            yield html_text(text) if kind == "text/html" else text


def _parts(message: email.message.Message) -> Iterator[email.message.Message]:
    """The leaf parts of ``message``, depth first, within ``MAX_PARTS`` and ``MAX_DEPTH``
    (iterative: the nesting costs no stack)."""
    stack: list[tuple[email.message.Message, int]] = [(message, 0)]
    seen = 0
    while stack and seen < MAX_PARTS:
        part, depth = stack.pop()
        seen += 1
        if not part.is_multipart():
            yield part
        elif depth < MAX_DEPTH:
            children = part.get_payload()
            if isinstance(children, list):
                stack.extend(
                    (child, depth + 1)
                    for child in reversed(children)
                    if isinstance(child, email.message.Message)
                )


def _decoded(part: email.message.Message) -> str:
    """A text part's content, transfer encoding undone, in its charset (unknown or wrong
    charsets: UTF-8 with replacement characters)."""
    if isinstance(part, email.message.EmailMessage):
        try:
            decoded = part.get_content()
        except (LookupError, UnicodeError, ValueError, AssertionError):
            decoded = None
        if isinstance(decoded, str):
            return decoded
    raw = part.get_payload(decode=True)
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""


_HIDDEN = frozenset({"script", "style"})
_BLOCKS = frozenset({"p", "br", "div", "li", "tr", "td", "th", "h1", "h2", "h3", "table"})
#: A tag from its ``<`` to its ``>``, never across another ``<``: each octet of the markup
#: is looked at a bounded number of times, whatever the markup (``html.parser`` is
#: quadratic on unclosed tags: 30 KB of ``<a `` took it 9 s).
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9]*)?[^<>]*>")


def html_text(markup: str) -> str:
    """The text a reader sees of ``markup`` (``<b>Afri</b>can`` reads ``African``):
    character data outside ``script`` and ``style`` and comments, entities resolved,
    block elements as line breaks. One pass, linear in the markup's length; anything that
    is not a tag is text."""
    markup = markup[:MAX_TEXT]
    out: list[str] = []
    hidden: str | None = None
    i, end = 0, len(markup)
    while i < end:
        lt = markup.find("<", i)
        if hidden is None:
            out.append(markup[i:] if lt < 0 else markup[i:lt])
        if lt < 0:
            break
        i, hidden, text = _markup_at(markup, lt, hidden)
        if hidden is None:
            out.append(text)
    return html.unescape("".join(out))


def _markup_at(markup: str, lt: int, hidden: str | None) -> tuple[int, str | None, str]:
    """At the ``<`` at ``lt``: where the text goes on, the hidden element it is in then,
    and the text the markup stands for."""
    if markup.startswith("<!--", lt):
        close = markup.find("-->", lt + 4)
        return (len(markup) if close < 0 else close + 3), hidden, ""
    tag = _TAG.match(markup, lt)
    if tag is None:
        return lt + 1, hidden, "<"  # not a tag: text
    name, closing = (tag.group(2) or "").lower(), bool(tag.group(1))
    if hidden is not None:
        return tag.end(), (None if closing and name == hidden else hidden), ""
    if name in _HIDDEN and not closing:
        return tag.end(), name, ""
    return tag.end(), None, "\n" if name in _BLOCKS else ""
