"""The grammar of SMTP command arguments, as regular expressions over decoded text.

Owns: RFC 5321 §4.1.2 paths, mailboxes, domains and address literals, RFC 6531 §3.3 UTF-8
additions, RFC 5321 §4.1.2 ESMTP parameter tokens, RFC 3461 §4 xtext.
Must not know: state, replies, policy. Callers get a value or a ``GrammarError`` naming
what is wrong; they choose the reply.
Security: every pattern is anchored and linear (no nested unbounded repetition over the
same characters), and inputs are already bounded by the command line limit.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

ErrorKind = Literal["syntax", "too_long", "needs_utf8"]


class GrammarError(Exception):
    """An argument does not match the grammar. ``kind`` says how."""

    def __init__(self, kind: ErrorKind) -> None:
        super().__init__(kind)
        self.kind: ErrorKind = kind


# RFC 5321 §4.5.3.1.1-3: sizes in octets.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256
# RFC 1035 §2.3.4: a label is at most 63 octets.
MAX_LABEL = 63

# UTF8-non-ascii (RFC 6532 §3.1), as decoded code points; C1 controls excluded.
_U = "\u00a0-\U0010ffff"

# atext = ALPHA / DIGIT / "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "/" /
#         "=" / "?" / "^" / "_" / "`" / "{" / "|" / "}" / "~"      (RFC 5322 §3.2.3)
_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~"
# qtextSMTP = %d32-33 / %d35-91 / %d93-126 ; quoted-pairSMTP = %d92 %d32-126
_QTEXT = r"\x20\x21\x23-\x5b\x5d-\x7e"


def _grammar(utf8: bool) -> dict[str, str]:
    u = _U if utf8 else ""
    # sub-domain = Let-dig [Ldh-str] ; Ldh-str = *( ALPHA / DIGIT / "-" ) Let-dig
    # (RFC 6531 §3.3: sub-domain =/ U-label)
    let_dig = f"[A-Za-z0-9{u}]"
    sub_domain = f"{let_dig}(?:[A-Za-z0-9{u}-]*{let_dig})?"
    domain = rf"{sub_domain}(?:\.{sub_domain})*"
    # address-literal = "[" ( IPv4-address-literal / IPv6-address-literal /
    #                         General-address-literal ) "]"   (checked by _literal_ok)
    literal = r"\[[\x21-\x5a\x5e-\x7e]+\]"
    # Local-part = Dot-string / Quoted-string ; Dot-string = Atom *("." Atom)
    atom = f"[{_ATEXT}{u}]+"
    quoted = rf'"(?:[{_QTEXT}{u}]|\\[\x20-\x7e])*"'
    local = rf"(?:{atom}(?:\.{atom})*|{quoted})"
    # A-d-l = At-domain *( "," At-domain ) ; At-domain = "@" Domain
    adl = rf"@{domain}(?:,@{domain})*"
    return {"domain": domain, "literal": literal, "local": local, "adl": adl}


def _compile(utf8: bool) -> dict[str, re.Pattern[str]]:
    g = _grammar(utf8)
    mailbox = rf"(?P<local>{g['local']})@(?P<domain>{g['domain']}|{g['literal']})"
    return {
        "domain": re.compile(g["domain"]),
        "host": re.compile(rf"{g['domain']}|{g['literal']}"),
        # Path = "<" [ A-d-l ":" ] Mailbox ">"
        "path": re.compile(rf"<(?:{g['adl']}:)?(?P<mailbox>{mailbox})>"),
    }


_ASCII = _compile(utf8=False)
_UTF8 = _compile(utf8=True)

# A path's extent, before its content is judged: "<", then quoted strings or anything but
# ">", then ">". Lets a bad mailbox (553) be told from a missing path (501).
_PATH_EXTENT = re.compile(r'<(?:"(?:[^"\\]|\\.)*"|[^">])*>')

# IPv4-address-literal = Snum 3("." Snum) ; Snum = 1*3DIGIT, 0 through 255
_IPV4 = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})")
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]+")


def _ipv4_ok(text: str) -> bool:
    match = _IPV4.fullmatch(text)
    return match is not None and all(int(part) <= 255 for part in match.groups())


def _ipv6_ok(text: str) -> bool:
    """IPv6-addr of RFC 5321 §4.1.3: full, compressed, and with an IPv4 tail."""
    if not _IPV6_CHARS.fullmatch(text):
        return False
    pieces = [piece for piece in text.split(":") if piece]
    if any("." in piece for piece in pieces[:-1]):
        return False
    if pieces and "." in pieces[-1] and not _ipv4_ok(pieces[-1]):
        return False
    if pieces and "." in pieces[-1]:  # Snum allows leading zeros; ipaddress does not
        tail = ".".join(str(int(part)) for part in pieces[-1].split("."))
        text = text[: -len(pieces[-1])] + tail
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    groups = sum(2 if "." in piece else 1 for piece in pieces)
    # "::" stands for at least two groups of zeros: at most 6 others may be present.
    return groups <= 6 if "::" in text else groups == 8


def literal_ok(text: str) -> bool:
    """``[...]`` holds an IPv4 or ``IPv6:`` address; no other tag is registered with IANA."""
    inner = text[1:-1]
    if inner[:5].lower() == "ipv6:":
        return _ipv6_ok(inner[5:])
    return _ipv4_ok(inner)


def _octets(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _domain_ok(domain: str) -> bool:
    if domain.startswith("["):
        return literal_ok(domain)
    if _octets(domain) > MAX_DOMAIN:
        return False
    return all(_octets(label) <= MAX_LABEL for label in domain.split("."))


def parse_host(text: str) -> str:
    """EHLO/HELO argument: ``Domain / address-literal`` (RFC 5321 §4.1.1.1), ASCII only."""
    if not text.isascii():
        raise GrammarError("syntax")
    if _ASCII["host"].fullmatch(text) is None or not _domain_ok(text):
        raise GrammarError("syntax")
    return text


def parse_domain(text: str) -> str:
    """A host name (RFC 5321 §4.1.2 ``Domain``), ASCII only: XCLIENT's NAME."""
    if not text.isascii() or _ASCII["domain"].fullmatch(text) is None or not _domain_ok(text):
        raise GrammarError("syntax")
    return text


def split_path(args: str) -> tuple[str, str]:
    """Split ``<path> params`` into the bracketed path and the parameter text after it.

    Raises ``GrammarError("syntax")`` when no bracketed path starts the text or when the
    path is not followed by end of line or a space.
    """
    match = _PATH_EXTENT.match(args)
    if match is None:
        raise GrammarError("syntax")
    rest = args[match.end() :]
    if not rest.strip(" \t"):
        return match.group(), ""  # RFC 5321 §4.1.1: trailing white space is tolerated
    if not rest.startswith(" "):
        raise GrammarError("syntax")
    return match.group(), rest[1:]


def parse_mailbox_path(path: str, *, utf8: bool) -> str:
    """Validate a bracketed Path and return its Mailbox with any source route removed.

    RFC 5321 §4.1.1.3: source routes "MUST BE accepted, SHOULD NOT be generated, and
    SHOULD be ignored". Non-ASCII is allowed only when ``utf8`` (RFC 6531 §3.3).
    """
    if not path.isascii() and not utf8:
        raise GrammarError("needs_utf8")
    if _octets(path) > MAX_PATH:
        raise GrammarError("too_long")
    grammar = _UTF8 if utf8 else _ASCII
    match = grammar["path"].fullmatch(path)
    if match is None:
        raise GrammarError("syntax")
    if _octets(match.group("local")) > MAX_LOCAL_PART:
        raise GrammarError("too_long")
    if not _domain_ok(match.group("domain")):
        raise GrammarError("syntax")
    return match.group("mailbox")


# esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
# esmtp-value   = 1*(%d33-60 / %d62-126)     (RFC 6531 §3.3: =/ UTF8-non-ascii)
_PARAM_ASCII = re.compile(
    r"(?P<key>[A-Za-z0-9][A-Za-z0-9-]*)(?:=(?P<value>[\x21-\x3c\x3e-\x7e]+))?"
)
_PARAM_UTF8 = re.compile(
    rf"(?P<key>[A-Za-z0-9][A-Za-z0-9-]*)(?:=(?P<value>[\x21-\x3c\x3e-\x7e{_U}]+))?"
)


def split_params(text: str, *, utf8: bool) -> list[tuple[str, str | None]]:
    """``esmtp-param *(SP esmtp-param)`` into (upper-case keyword, value or None) pairs.

    RFC 5321 §4.1.1: trailing white space is tolerated; anything else malformed raises.
    """
    text = text.rstrip(" \t")
    if not text:
        return []
    pattern = _PARAM_UTF8 if utf8 else _PARAM_ASCII
    params: list[tuple[str, str | None]] = []
    for token in text.split(" "):
        match = pattern.fullmatch(token)
        if match is None:
            raise GrammarError("syntax")
        params.append((match.group("key").upper(), match.group("value")))
    return params


# xtext = *( xchar / hexchar ) ; xchar = "!".."~" except "+" and "=" ;
# hexchar = "+" 2(%x30-39 / %x41-46)     (RFC 3461 §4)
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")
_HEXCHAR = re.compile(r"\+([0-9A-F]{2})")


def decode_xtext(text: str) -> str:
    """Decode xtext; the result is text of octets 0-255 (Latin-1 code points)."""
    if _XTEXT.fullmatch(text) is None:
        raise GrammarError("syntax")
    return _HEXCHAR.sub(lambda m: chr(int(m.group(1), 16)), text)


# RFC 6533 §3: utf-8-addr-xtext = 1*(QCHAR / EmbeddedUnicodeChar);
# EmbeddedUnicodeChar = %x5C.78 "{" HEXPOINT "}" ; QCHAR is xchar without "\" plus
# UTF8-non-ascii.
# HEXPOINT = ( ( "0"/"1" ) %x31-39 ) / "10" / "20" / "2B" / "3D" / "7F" /  ; xtext specials
#            "5C" / (HEXDIG8 HEXDIG) /              ; 2-digit forms
#            ( NZHEXDIG 2(HEXDIG) ) /               ; 3-digit forms
#            ( NZDHEXDIG 3(HEXDIG) ) / ( "D" %x30-37 2(HEXDIG) ) /  ; 4 digits, no surrogate
#            ( NZHEXDIG 4(HEXDIG) ) / ( "10" 4HEXDIG )             ; 5 and 6 digits
_HEXPOINT = (
    r"(?:[01][1-9]|10|20|2B|3D|7F|5C|[89A-F][0-9A-F]|[1-9A-F][0-9A-F]{2}"
    r"|[1-9A-CEF][0-9A-F]{3}|D[0-7][0-9A-F]{2}|[1-9A-F][0-9A-F]{4}|10[0-9A-F]{4})"
)
_UTF8_XTEXT = re.compile(rf"(?:[\x21-\x2a\x2c-\x3c\x3e-\x5b\x5d-\x7e{_U}]|\\x\{{{_HEXPOINT}\}})+")
_EMBEDDED = re.compile(r"\\x\{([0-9A-F]+)\}")


def decode_utf8_xtext(text: str) -> str:
    """Decode RFC 6533 utf-8-addr-xtext (``\\x{HEX}`` escapes)."""
    if _UTF8_XTEXT.fullmatch(text) is None:
        raise GrammarError("syntax")
    return _EMBEDDED.sub(lambda m: chr(int(m.group(1), 16)), text)


# atom (RFC 5322 §3.2.3), for ORCPT's addr-type
ATOM = re.compile(f"[{_ATEXT}]+")
