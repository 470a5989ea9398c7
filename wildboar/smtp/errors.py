"""The core's one exception: the caller used the API wrongly.

Owns: ``LocalProtocolError``.
Must not know: anything about the remote client. A client's protocol errors never raise;
they become replies (see ``connection.py``), so no exception text can reach a client.
"""

from __future__ import annotations


class LocalProtocolError(Exception):
    """The local caller broke the API contract (answered nothing that was asked, sent a
    malformed reply, fed data after close). A bug in the caller, never the client's fault."""
