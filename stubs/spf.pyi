# Type information for pyspf 2.0 (module ``spf``), which ships none: only the part of its
# API that wildboar.consumer.spf uses.
from collections.abc import Callable
from typing import Any

MAX_PER_LOOKUP_TIME: float

#: One answer of a lookup: ((name, type), value), the value a str for A, AAAA and PTR, a
#: (preference, exchange) pair for MX, a list of bytes for TXT.
Answer = tuple[tuple[str, str], Any]
#: The lookup pyspf calls for every DNS query: (name, type, strict, timeout) -> answers;
#: raises TempError for a failure that may pass.
DNSLookup: Callable[[str, str, bool, float], list[Answer]]

class TempError(Exception):
    msg: str
    def __init__(self, msg: object, mech: str | None = None, ext: object = None) -> None: ...

class PermError(Exception):
    msg: str
    def __init__(self, msg: object, mech: str | None = None, ext: object = None) -> None: ...

class query:
    ident: str
    def __init__(
        self,
        i: str,
        s: str,
        h: str,
        local: str | None = None,
        receiver: str | None = None,
        strict: bool | int = True,
        timeout: float = ...,
        verbose: bool = False,
        querytime: float = 0,
    ) -> None: ...
    def check(self, spf: str | None = None) -> tuple[str, int, str]: ...
