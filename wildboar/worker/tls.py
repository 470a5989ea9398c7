"""TLS for the worker's listeners: the server contexts of each listener that has TLS.

Owns: ``contexts`` (made at worker start, so a renewed certificate is taken by the
rolling restart of ``HUP``), the choice of a certificate by the name the client asks for
(SNI), the handshake's description for logs and records (``describe``).
Must not know: SMTP (the core models STARTTLS; the session runs the handshake).
Security: Python's defaults for a server (``ssl.create_default_context``: no SSLv3,
compression off, the system's cipher policy), TLS 1.2 at the least (``min_tls_version``),
no client certificates asked for, session tickets left to OpenSSL. Each pair of
certificate and key is loaded and checked at start: a key that does not match its
certificate, or a file that cannot be read, stops the worker with the reason. The files
are the sealed copies the supervisor read (``--pass-file``, docs/tls.md) where it passed
them, so the key file need not be readable by the workers' user; a path it did not pass
is read here. Pairs for the same names (an RSA and an ECDSA certificate) share a context,
from which OpenSSL picks per client; pairs for other names get contexts of their own,
chosen by the client's SNI, the first listed being the default for a client that names
none or another.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from ..config import Config

VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


class ListenerTls(NamedTuple):
    """A listener's TLS: ``starttls`` or ``implicit``, its context, whether required."""

    mode: str
    context: ssl.SSLContext
    require: bool


class TlsError(Exception):
    """A listener's TLS cannot be set up; ``str()`` names the listener and why."""


def contexts(config: Config, files: Mapping[str, int]) -> dict[str, ListenerTls]:
    """Per listener name with TLS: its mode, context and ``require_tls``. ``files`` holds
    the descriptors of the files the supervisor passed, by path."""
    made: dict[str, ListenerTls] = {}
    for listener in config.listen:
        if listener.tls == "none":
            continue
        by_names: dict[frozenset[str], ssl.SSLContext] = {}
        for certificate, key in zip(listener.certificates, listener.keys, strict=True):
            cert_file, key_file = _source(certificate, files), _source(key, files)
            names = certificate_names(cert_file)
            context = by_names.get(names)
            if context is None:
                context = by_names[names] = _context(listener.min_tls_version)
            try:
                context.load_cert_chain(cert_file, key_file)
            except (OSError, ssl.SSLError) as error:
                raise TlsError(
                    f"listener {listener.name}: certificate {certificate} with key {key}:"
                    f" {getattr(error, 'strerror', None) or error}"
                ) from None
        default = next(iter(by_names.values()))
        if len(by_names) > 1:
            default.sni_callback = _chooser(list(by_names.items()))
        made[listener.name] = ListenerTls(listener.tls, default, listener.require_tls)
    return made


def _source(path: str, files: Mapping[str, int]) -> str:
    """Where to read ``path``: the supervisor's copy if it passed one (a worker opens its
    own descriptors through /proc/self/fd), else the file."""
    fd = files.get(path)
    return path if fd is None else f"/proc/self/fd/{fd}"


def _context(min_version: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = VERSIONS[min_version]
    context.verify_mode = ssl.CERT_NONE  # an MX does not ask its clients for one
    return context


def certificate_names(path: str) -> frozenset[str]:
    """The DNS names of the first certificate in ``path`` (its subjectAltName, else its
    Common Name), lower case; empty if it cannot be read here (loading it says why).
    Python's ``ssl`` decodes a certificate only by this private function, present from
    3.4 to 3.13; without it every pair shares one context (no choice by SNI)."""
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        return frozenset()
    try:
        decoded: dict[str, Any] = decode(path)
    except (OSError, ssl.SSLError, ValueError):
        return frozenset()
    names = [value for kind, value in decoded.get("subjectAltName", ()) if kind == "DNS"]
    if not names:
        for rdn in decoded.get("subject", ()):
            names += [value for kind, value in rdn if kind == "commonName"]
    return frozenset(str(name).lower().rstrip(".") for name in names)


def matches(server_name: str, names: frozenset[str]) -> bool:
    """RFC 6125 §6.4.3, as browsers apply it: exact, or a wildcard for the left-most
    label only (``*.example.org`` is ``mx.example.org``, not ``example.org`` nor
    ``a.b.example.org``)."""
    name = server_name.lower().rstrip(".")
    if name in names:
        return True
    head, dot, rest = name.partition(".")
    return bool(head and dot and rest and f"*.{rest}" in names)


def _chooser(
    contexts: list[tuple[frozenset[str], ssl.SSLContext]],
) -> Callable[[ssl.SSLObject, str | None, ssl.SSLContext], int | None]:
    def choose(connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> int | None:
        if server_name:
            for names, context in contexts:
                if matches(server_name, names):
                    connection.context = context
                    break
        return None  # the default context's certificates for any other name

    return choose


def describe(ssl_object: ssl.SSLObject | None) -> tuple[str, str]:
    """The protocol version and cipher of an established TLS session."""
    if ssl_object is None:
        return ("", "")
    cipher = ssl_object.cipher()
    return (ssl_object.version() or "", cipher[0] if cipher else "")
