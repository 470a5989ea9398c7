"""TLS for the worker's listeners: one server context per listener that has TLS.

Owns: ``contexts`` (the listeners' ``ssl.SSLContext``, made at worker start, so a renewed
certificate is taken by the rolling restart of ``HUP``), the handshake's description for
logs and records (``describe``).
Must not know: SMTP (the core models STARTTLS; the session runs the handshake).
Security: Python's defaults for a server (``ssl.create_default_context``: no SSLv3,
compression off, the system's cipher policy), TLS 1.2 at the least (``min_tls_version``),
no client certificates asked for, session tickets left to OpenSSL. Each pair of
certificate and key is loaded and checked at start: a key that does not match its
certificate, or a file that cannot be read, stops the worker with the reason. Several
pairs (RSA and ECDSA) go into one context, from which OpenSSL picks per client.
The key files are read by the worker, so the ``wildboar`` user must be able to read them
(docs/tls.md).
"""

from __future__ import annotations

import ssl
from typing import NamedTuple

from ..config import Config

VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


class ListenerTls(NamedTuple):
    """A listener's TLS: ``starttls`` or ``implicit``, its context, whether required."""

    mode: str
    context: ssl.SSLContext
    require: bool


class TlsError(Exception):
    """A listener's TLS cannot be set up; ``str()`` names the listener and why."""


def contexts(config: Config) -> dict[str, ListenerTls]:
    """Per listener name with TLS: its mode, context and ``require_tls``."""
    made: dict[str, ListenerTls] = {}
    for listener in config.listen:
        if listener.tls == "none":
            continue
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = VERSIONS[listener.min_tls_version]
        context.verify_mode = ssl.CERT_NONE  # an MX does not ask its clients for one
        for certificate, key in zip(listener.certificates, listener.keys, strict=True):
            try:
                context.load_cert_chain(certificate, key)
            except (OSError, ssl.SSLError) as error:
                raise TlsError(
                    f"listener {listener.name}: certificate {certificate} with key {key}:"
                    f" {getattr(error, 'strerror', None) or error}"
                ) from None
        made[listener.name] = ListenerTls(listener.tls, context, listener.require_tls)
    return made


def describe(ssl_object: ssl.SSLObject | None) -> tuple[str, str]:
    """The protocol version and cipher of an established TLS session."""
    if ssl_object is None:
        return ("", "")
    cipher = ssl_object.cipher()
    return (ssl_object.version() or "", cipher[0] if cipher else "")
