from __future__ import annotations

from collections.abc import Iterator

import pytest

from .dovecot import Dovecot


@pytest.fixture(scope="module")
def dovecot_module() -> Iterator[Dovecot]:
    """The private Dovecot of this test module (see ``dovecot``)."""
    with Dovecot() as server:
        yield server


@pytest.fixture
def dovecot(dovecot_module: Dovecot) -> Dovecot:
    """A running private Dovecot LMTP server, shared by the tests of one module: its
    mailboxes keep what earlier tests delivered, and a test that stopped or killed it
    gets it started again (same ports, same mailboxes) for the next one."""
    if not dovecot_module.running:
        dovecot_module.start()
    return dovecot_module


@pytest.fixture
def fresh_dovecot() -> Iterator[Dovecot]:
    """A private Dovecot LMTP server of this test's own, with empty mailboxes (for tests
    that fill a quota, or must see nothing but their own mail)."""
    with Dovecot() as server:
        yield server
