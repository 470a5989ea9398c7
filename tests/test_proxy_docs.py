"""The proxy configurations the documentation shows are the ones the tests run: the
HAProxy relay of ``tests/haproxy.py`` and the nginx ``mail`` block of ``tests/nginx.py``,
filled in with their ``DOCUMENTED`` values, appear as they are in the docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from . import haproxy, nginx

DOCS = Path(__file__).resolve().parents[1] / "docs"
HAPROXY = haproxy.ROUTE.format(**haproxy.DOCUMENTED)
NGINX = nginx.MAIL.format(**nginx.DOCUMENTED)


def blocks(name: str) -> list[str]:
    """The fenced blocks of ``docs/NAME``, each with its final newline."""
    text = (DOCS / name).read_text()
    return [match + "\n" for match in re.findall(r"^```[a-z]*\n(.*?)\n```$", text, re.S | re.M)]


@pytest.mark.parametrize(
    ("doc", "snippet"),
    [("operations.md", HAPROXY), ("proxy.md", HAPROXY), ("operations.md", NGINX)],
    ids=["operations-haproxy", "proxy-haproxy", "operations-nginx"],
)
def test_the_documented_snippet_is_the_tested_one(doc: str, snippet: str) -> None:
    assert snippet in blocks(doc), f"docs/{doc} must show, as a block of its own:\n{snippet}"
