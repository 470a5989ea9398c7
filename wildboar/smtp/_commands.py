"""Command lines into verbs and typed arguments (RFC 5321 §4.1.1-4.1.2 and the extensions).

Owns: decoding a line, recognising the verb, and parsing the arguments of EHLO/HELO, MAIL,
RCPT and BDAT into values, or the reply that refuses them.
Must not know: state (``state.py``), policy (the caller), framing (``_buffer.py``).
Security: non-ASCII is accepted only where RFC 6531 allows it; every parameter is
validated and decoded here, so events carry only well-formed values.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import cast

from . import replies as R
from ._abnf import (
    _ATEXT,
    ATOM,
    MAX_LOCAL_PART,
    MAX_PATH,
    GrammarError,
    decode_utf8_xtext,
    decode_xtext,
    parse_domain,
    parse_host,
    parse_mailbox_path,
    split_params,
    split_path,
)
from .events import Body, MailParams, Notify, Orcpt, RcptParams, Ret, Unavailable, Xclient
from .limits import Extensions
from .replies import Reply
from .state import Verb

VERBS = {verb.value: verb for verb in Verb}

# Recognised but not implemented here: 502 (RFC 5321 §4.2.4). Never listed in EHLO.
UNIMPLEMENTED = frozenset({"EXPN", "TURN", "ETRN", "ATRN", "SEND", "SOML", "SAML", "AUTH", "BURL"})
# A web or proxy client, or message content sent as commands: answer and close (as
# Postfix's smtpd_forbidden_commands does).
FORBIDDEN = frozenset({"CONNECT", "GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE"})
_HEADER_LIKE = re.compile(r"[\x21-\x39\x3b-\x7e]+:")

# RFC 3030 §2: chunk-size = 1*DIGIT; 18 digits is far beyond any message size limit and
# keeps the number a machine integer.
_BDAT = re.compile(r"([0-9]{1,18})(?: (LAST))?", re.IGNORECASE)
_SIZE = re.compile(r"[0-9]{1,20}")  # RFC 1870 §3: size-value ::= 1*20DIGIT
_NOTIFY = ("SUCCESS", "FAILURE", "DELAY")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
MAX_ENVID = 100  # RFC 3461 §4.4
MAX_ORCPT = 500  # RFC 3461 §4.2
MAX_NOTIFY = 28  # RFC 3461 §5.4


# The common path: an ASCII dot-atom local part at a host name, no source route
# (``<user@example.org>``), checked by one pattern; with no parameters the whole argument is
# (``FROM:<user@example.org>``). Everything it matches, the full grammar of ``_abnf`` accepts
# with the same mailbox (tests/smtp/test_paths.py checks that over generated paths against
# the UTF-8 grammar, which SMTPUTF8 transactions use and which reads ASCII alike);
# everything else takes the full grammar, which also finds the right refusal.
# Labels are bounded to 63 octets in the pattern (RFC 1035 §2.3.4); the path and the local
# part are measured after the match. The keywords are spelled out case by case: a
# case-insensitive pattern would also match non-ASCII letters that fold to ASCII ones.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_SIMPLE = (
    rf"<(?P<mailbox>(?P<local>[{_ATEXT}]+(?:\.[{_ATEXT}]+)*)"
    rf"@(?P<domain>{_LABEL}(?:\.{_LABEL})*))>"
)
_SIMPLE_PATH = re.compile(_SIMPLE)
_SIMPLE_MAIL = re.compile(f"[Ff][Rr][Oo][Mm]:{_SIMPLE}")
_SIMPLE_RCPT = re.compile(f"[Tt][Oo]:{_SIMPLE}")


def _simple(pattern: re.Pattern[str], args: str) -> str | None:
    """The mailbox of ``args`` if it takes the common path, else None."""
    match = pattern.fullmatch(args)
    if match is None:
        return None
    mailbox = match["mailbox"]
    # A path within MAX_PATH has a domain well within MAX_DOMAIN.
    if len(mailbox) + 2 > MAX_PATH or len(match["local"]) > MAX_LOCAL_PART:
        return None  # the full grammar names the problem
    return mailbox


def decode(line: bytes, *, utf8_ok: bool) -> tuple[str, str] | Reply:
    """(upper-case verb, argument text) of a command line, or the reply refusing it."""
    if line.isascii():
        text = line.decode("ascii")
    else:
        if not utf8_ok or line.partition(b" ")[0].upper() not in (b"MAIL", b"RCPT", b"VRFY"):
            return R.NOT_ASCII
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return R.NOT_ASCII
    # RFC 5321 §4.1.1: trailing white space (a TAB too) SHOULD be tolerated: "RSET\t" is
    # RSET, "BDAT 3 LAST " is BDAT.
    verb, _, args = text.rstrip(" \t").partition(" ")
    return verb.upper(), args


def _upper(value: str) -> str:
    """ASCII upper case: parameter values such as ``FULL`` or ``BINARYMIME`` are ASCII
    literals (RFC 5234 §2.3), and ``str.upper`` would turn U+017F (long s) into "S"."""
    return value.upper() if value.isascii() else value


def classify(verb: str) -> Verb | Reply:
    """The verb, or the reply for a verb this server does not run."""
    known = VERBS.get(verb)
    if known is not None:
        return known
    if verb in UNIMPLEMENTED:
        return R.NOT_IMPLEMENTED
    if verb in FORBIDDEN or _HEADER_LIKE.fullmatch(verb):
        return R.FORBIDDEN
    return R.NOT_RECOGNIZED


def parse_hello(args: str) -> str | None:
    try:
        return parse_host(args.rstrip(" \t"))
    except GrammarError:
        return None


def _path(args: str, keyword: str) -> tuple[str, str] | None:
    if args[: len(keyword)].upper() != keyword:
        return None
    try:
        return split_path(args[len(keyword) :])
    except GrammarError:
        return None


def _mailbox(path: str, *, utf8: bool, sender: bool) -> str | Reply:
    if not utf8:
        simple = _simple(_SIMPLE_PATH, path)
        if simple is not None:
            return simple
    try:
        return parse_mailbox_path(path, utf8=utf8)
    except GrammarError as error:
        if error.kind == "needs_utf8":
            return R.SENDER_NEEDS_UTF8 if sender else R.RECIPIENT_NEEDS_UTF8
        if error.kind == "too_long":
            return R.SENDER_TOO_LONG if sender else R.RECIPIENT_TOO_LONG
        return R.BAD_SENDER if sender else R.BAD_RECIPIENT


def _params(text: str, allowed: frozenset[str], *, utf8: bool) -> dict[str, str | None] | Reply:
    try:
        pairs = split_params(text, utf8=utf8)
    except GrammarError:
        # RFC 5321 §4.1.2: non-ASCII where it is not allowed "MUST" get 501.
        return R.UNKNOWN_PARAMETER if text.isascii() else R.NOT_ASCII
    found: dict[str, str | None] = {}
    for key, value in pairs:
        if key not in allowed:
            return R.UNKNOWN_PARAMETER
        if key in found:
            return R.DUPLICATE_PARAMETER
        found[key] = value
    return found


@functools.lru_cache(maxsize=16)
def mail_keywords(ext: Extensions, *, extended: bool) -> frozenset[str]:
    """MAIL parameters accepted in this session: none after HELO (RFC 1869 §4.5)."""
    return ext.mail_parameters() if extended else frozenset()


@functools.lru_cache(maxsize=16)
def rcpt_keywords(ext: Extensions, *, extended: bool) -> frozenset[str]:
    """RCPT parameters accepted in this session: none after HELO."""
    return ext.rcpt_parameters() if extended else frozenset()


def parse_mail(
    args: str, ext: Extensions, *, extended: bool, max_size: int
) -> tuple[str, MailParams] | Reply:
    """``FROM:<reverse-path> [params]`` into (sender, params); ``""`` is the null sender."""
    simple = _simple(_SIMPLE_MAIL, args)
    if simple is not None:
        return simple, _NO_MAIL_PARAMS
    split = _path(args, "FROM:")
    if split is None:
        return R.SYNTAX_MAIL
    path, rest = split
    found = _params(rest, mail_keywords(ext, extended=extended), utf8=ext.smtputf8)
    if isinstance(found, Reply):
        return found
    params = _mail_params(found, ext, max_size)
    if isinstance(params, Reply):
        return params
    if path == "<>":
        return "", params
    sender = _mailbox(path, utf8=params.smtputf8, sender=True)
    return (sender, params) if isinstance(sender, str) else sender


_NO_MAIL_PARAMS = MailParams()
_NO_RCPT_PARAMS = RcptParams()


def _mail_params(
    found: dict[str, str | None], ext: Extensions, max_size: int
) -> MailParams | Reply:
    if not found:
        return _NO_MAIL_PARAMS
    smtputf8 = "SMTPUTF8" in found
    if any(not value.isascii() for value in found.values() if value) and not smtputf8:
        return R.NOT_ASCII  # RFC 5321 §4.1.2
    if smtputf8 and found["SMTPUTF8"] is not None:
        return R.BAD_PARAMETER
    # In this order whatever order the client gave them in, absent ones not looked at.
    size = _size(found["SIZE"], max_size) if "SIZE" in found else None
    if isinstance(size, Reply):
        return size
    body = _body(found["BODY"], ext) if "BODY" in found else None
    if isinstance(body, Reply):
        return body
    ret = _ret(found["RET"]) if "RET" in found else None
    if isinstance(ret, Reply):
        return ret
    envid = _envid(found["ENVID"]) if "ENVID" in found else None
    if isinstance(envid, Reply):
        return envid
    return MailParams(
        size=size,
        body=body,
        smtputf8=smtputf8,
        ret=ret,
        envid=envid,
    )


def _size(value: str | None, max_size: int) -> int | Reply:
    if value is None or not _SIZE.fullmatch(value):
        return R.BAD_PARAMETER
    size = int(value)
    return R.SIZE_EXCEEDED if size > max_size else size


def _body(value: str | None, ext: Extensions) -> Body | Reply:
    if value is None:
        return R.BAD_PARAMETER
    body = _upper(value)
    offered = {"7BIT": True, "8BITMIME": ext.eightbitmime, "BINARYMIME": ext.binarymime}
    if not offered.get(body, False):
        return R.UNKNOWN_PARAMETER  # RFC 6152 §3 / PF "555 5.5.4 Unsupported option"
    return cast(Body, body)


def _ret(value: str | None) -> Ret | Reply:
    if value is None or _upper(value) not in ("FULL", "HDRS"):
        return R.BAD_PARAMETER
    return cast(Ret, _upper(value))


def _envid(value: str | None) -> str | Reply:
    if value is None or len(value) > MAX_ENVID:
        return R.BAD_PARAMETER
    try:
        envid = decode_xtext(value)
    except GrammarError:
        return R.BAD_PARAMETER
    # RFC 3461 §4.4: printable (graphic and white space) US-ASCII.
    return envid if all(" " <= ch <= "~" for ch in envid) else R.BAD_PARAMETER


def parse_rcpt(
    args: str, ext: Extensions, *, extended: bool, utf8: bool
) -> tuple[str, RcptParams] | Reply:
    """``TO:<forward-path> [params]`` into (recipient, params).

    RFC 5321 §4.1.1.3: ``<Postmaster>`` without a domain "MUST be accepted".
    """
    simple = None if utf8 else _simple(_SIMPLE_RCPT, args)
    if simple is not None:
        return simple, _NO_RCPT_PARAMS
    split = _path(args, "TO:")
    if split is None:
        return R.SYNTAX_RCPT
    path, rest = split
    allowed = rcpt_keywords(ext, extended=extended)
    found = _params(rest, allowed, utf8=utf8)
    if isinstance(found, Reply):
        return found
    params = _rcpt_params(found)
    if isinstance(params, Reply):
        return params
    if path.lower() == "<postmaster>":
        return path[1:-1], params
    recipient = _mailbox(path, utf8=utf8, sender=False)
    return (recipient, params) if isinstance(recipient, str) else recipient


def _rcpt_params(found: dict[str, str | None]) -> RcptParams | Reply:
    if not found:
        return _NO_RCPT_PARAMS
    notify = _notify(found.get("NOTIFY"), "NOTIFY" in found)
    if isinstance(notify, Reply):
        return notify
    orcpt = _orcpt(found.get("ORCPT"), "ORCPT" in found)
    if isinstance(orcpt, Reply):
        return orcpt
    return RcptParams(notify=notify, orcpt=orcpt)


def _notify(value: str | None, present: bool) -> tuple[Notify, ...] | Reply | None:
    """RFC 3461 §4.1: "NEVER" alone, or a list of SUCCESS, FAILURE, DELAY."""
    if not present:
        return None
    if value is None or len(value) > MAX_NOTIFY:
        return R.BAD_PARAMETER
    items = _upper(value).split(",")
    if items == ["NEVER"]:
        return ("NEVER",)
    if len(set(items)) != len(items) or not all(item in _NOTIFY for item in items):
        return R.BAD_PARAMETER
    return tuple(cast(Notify, item) for item in items)


def _orcpt(value: str | None, present: bool) -> Orcpt | Reply | None:
    """RFC 3461 §4.2 ``addr-type ";" xtext``; RFC 6533 §3 utf-8-addr-xtext for utf-8."""
    if not present:
        return None
    if value is None or len(value.encode("utf-8")) > MAX_ORCPT:
        return R.BAD_PARAMETER
    addr_type, semicolon, encoded = value.partition(";")
    if not semicolon or not addr_type.isascii() or not ATOM.fullmatch(addr_type) or not encoded:
        return R.BAD_PARAMETER
    try:
        if addr_type.lower() == "utf-8":
            address = decode_utf8_xtext(encoded)
            # RFC 6533 §3: UTF-8 characters, but no controls (C0, DEL, C1).
            printable = not _CONTROL.search(address)
        elif not encoded.isascii():
            return R.BAD_PARAMETER
        else:
            address = decode_xtext(encoded)
            # RFC 3461 §4.2: printable (graphic and white space) US-ASCII, before xtext.
            printable = all(" " <= ch <= "~" for ch in address)
    except GrammarError:
        return R.BAD_PARAMETER
    # A CR LF here would reach the Original-Recipient field of a DSN built from the record.
    return Orcpt(addr_type.lower(), address) if printable else R.BAD_PARAMETER


def parse_bdat(args: str) -> tuple[int, bool] | None:
    """``chunk-size [SP "LAST"]`` (RFC 3030 §2) into (size, last)."""
    match = _BDAT.fullmatch(args)
    if match is None:
        return None
    return int(match.group(1)), match.group(2) is not None


# --- XCLIENT (Postfix XCLIENT_README) ------------------------------------------------
# xclient-command = XCLIENT 1*( SP attribute-name"="attribute-value )
# attribute-name  = ( NAME | ADDR | PORT | PROTO | HELO | LOGIN )   (case-insensitive)
# attribute-value = xtext                                           (RFC 3461 §4)
# Every attribute may also be [UNAVAILABLE] or [TEMPUNAVAIL]. The command line limit
# bounds the whole command; each value has its own bound besides.
XCLIENT_ATTRIBUTES = ("ADDR", "PORT", "NAME", "HELO", "PROTO", "LOGIN")
MAX_XCLIENT_LOGIN = 255  # octets of UTF-8, as a domain (Postfix sets none)
_UNAVAILABLE = {member.value: member for member in Unavailable}
_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,31}")  # an unknown name quoted in the reply
_PORT = re.compile(r"[0-9]{1,5}")


def parse_xclient(args: str) -> Xclient | Reply:
    """``attribute=value ...`` into an ``Xclient`` event, or the 501 naming the attribute."""
    text = args.rstrip(" \t")
    if not text:
        return R.SYNTAX_XCLIENT
    found: dict[str, object] = {}
    for token in text.split(" "):
        name, equals, value = token.partition("=")
        name = name.upper()
        if name not in XCLIENT_ATTRIBUTES:
            return R.xclient_unknown(name) if _TOKEN.fullmatch(name) else R.SYNTAX_XCLIENT
        if name in found:
            return R.xclient_duplicate(name)
        parsed = _xclient_value(name, value) if equals else None
        if parsed is None:
            return R.xclient_bad_value(name)
        found[name] = parsed
    return Xclient(**{name.lower(): value for name, value in found.items()})  # type: ignore[arg-type]


def _xclient_value(name: str, value: str) -> object | None:
    """The decoded, checked value of attribute ``name``; None if it is malformed."""
    try:
        text = decode_xtext(value)
    except GrammarError:
        return None
    special = _UNAVAILABLE.get(text.upper())
    if special is not None:
        return special
    if name == "LOGIN":
        return _login(text)
    if not text.isascii():
        return None
    return _XCLIENT_PARSERS[name](text)


def _addr(text: str) -> str | None:
    """``IPV6:`` and an IPv6 address, or an IPv4 address; canonical, mapped ones as IPv4."""
    try:
        if text[:5].upper() == "IPV6:":
            ip6 = ipaddress.IPv6Address(text[5:])
            return str(ip6.ipv4_mapped or ip6) if ip6.scope_id is None else None
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        return None


def _port(text: str) -> int | None:
    return int(text) if _PORT.fullmatch(text) and int(text) <= 65535 else None


def _name(text: str) -> str | None:
    try:
        return parse_domain(text)
    except GrammarError:
        return None


def _helo(text: str) -> str | None:
    """What EHLO takes: a domain or an address literal."""
    try:
        return parse_host(text)
    except GrammarError:
        return None


def _proto(text: str) -> str | None:
    proto = text.upper()
    return proto if proto in ("SMTP", "ESMTP") else None


def _login(text: str) -> str | None:
    """The SASL login: the xtext's octets as UTF-8, without control characters."""
    try:
        login = text.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        return None
    too_long = len(text) > MAX_XCLIENT_LOGIN
    return None if too_long or not login or _CONTROL.search(login) else login


_XCLIENT_PARSERS = {"ADDR": _addr, "PORT": _port, "NAME": _name, "HELO": _helo, "PROTO": _proto}
