"""The fuzz targets under pytest: every input of ``tests/corpus/`` replayed in this
process (quick, and counted in coverage), then a short coverage-guided run of each target
under atheris, from the corpus, with a fixed seed: ``FUZZ_CI_SECONDS`` (default 20) per
target. A crash fails the test with the input that caused it (docs/fuzzing.md says how it
becomes a regression test)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from . import proxy_target, smtp_target

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "corpus"
TARGETS: dict[str, Callable[[bytes], None]] = {
    "smtp": smtp_target.run,
    "proxy": proxy_target.run,
}
SECONDS = int(os.environ.get("FUZZ_CI_SECONDS", "20"))


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_corpus_input_keeps_the_invariants(target: str) -> None:
    inputs = sorted(path for path in (CORPUS / target).iterdir() if path.is_file())
    assert len(inputs) > 20, "the seed corpus is missing: python -m tests.fuzz.seeds"
    for path in inputs:
        try:
            TARGETS[target](path.read_bytes())
        except Exception as error:
            raise AssertionError(f"{path.relative_to(ROOT)}: {error!r}") from error


def _artifacts(folder: Path) -> list[Path]:
    kinds = ("crash-", "timeout-", "oom-", "leak-")
    return sorted(p for p in folder.iterdir() if p.name.startswith(kinds))


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_a_short_fuzz_run_finds_nothing(target: str, tmp_path: Path) -> None:
    found = tmp_path / "found"
    found.mkdir()
    # Not measured by coverage: its tracer would slow the run and see nothing new.
    env = {key: value for key, value in os.environ.items() if not key.startswith("COVERAGE")}
    command = [
        sys.executable, "-m", "tests.fuzz", target, "-seed=1",
        f"-max_total_time={SECONDS}", f"-artifact_prefix={tmp_path}/",
        str(found), str(CORPUS / target),
    ]  # fmt: skip
    done = subprocess.run(
        command, check=False, cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=SECONDS * 4 + 60,
    )  # fmt: skip
    artifacts = _artifacts(tmp_path)
    report = "\n".join(done.stderr.splitlines()[-40:])
    for artifact in artifacts:
        report += f"\n{artifact.name}: {artifact.read_bytes()!r}"
    assert done.returncode == 0 and not artifacts, report
    assert re.search(r"^#[0-9]+\s+DONE ", done.stderr, re.MULTILINE), report  # ran to its end
