"""``python -m tests.fuzz TARGET [libFuzzer flags] [corpus folders]``: run one target
(``smtp`` or ``proxy``) under atheris, with wildboar's code instrumented for coverage.

Flags are libFuzzer's (``-max_total_time=600``, ``-seed=1``, ``-runs=N``, ``-merge=1``,
``-artifact_prefix=DIR/``...); the target's dictionary (``tests/corpus/TARGET.dict``), a
maximum input length, a per-input timeout and a memory cap are added unless given. The
first corpus folder receives the new inputs found; give ``tests/corpus/TARGET`` after a
scratch folder to start from the seeds without writing into them (``make fuzz`` does).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "corpus"
# What libFuzzer re-executes for -merge=1, -fork and -jobs (a module run with -m is no
# executable of its own).
AGAIN = ROOT / "scripts" / "fuzz-target"
TARGETS = {"smtp": "tests.fuzz.smtp_target", "proxy": "tests.fuzz.proxy_target"}
DEFAULTS = {
    "-dict": "{corpus}/{target}.dict",
    # Long enough for an over-long command line, a few DATA pieces and BDAT chunks.
    "-max_len": "8192",
    # An input is a few thousand octets: a second would be a hang in the core.
    "-timeout": "5",
    "-rss_limit_mb": "1024",
}


def flags(target: str, given: list[str]) -> list[str]:
    named = {arg.split("=", 1)[0] for arg in given if arg.startswith("-")}
    extra = [
        f"{flag}={value.format(corpus=CORPUS, target=target)}"
        for flag, value in DEFAULTS.items()
        if flag not in named
    ]
    return [*extra, *given]


def load(target: str) -> Callable[[bytes], None]:
    with atheris.instrument_imports(include=["wildboar"]):
        module = importlib.import_module(TARGETS[target])
    run: Callable[[bytes], None] = module.run
    return run


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m tests.fuzz {{{','.join(TARGETS)}}} [libFuzzer flags]")
    target = sys.argv[1]
    os.environ["WILDBOAR_FUZZ_TARGET"] = target
    os.environ["WILDBOAR_FUZZ_PYTHON"] = sys.executable
    run = load(target)
    atheris.Setup([str(AGAIN), *flags(target, sys.argv[2:])], run)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
