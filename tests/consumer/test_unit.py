"""``units/wildboar-consumer@.service``: hardened as the server's unit is, and its command
line is one ``wildboar consume`` takes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from wildboar.cli import parser

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "units" / "wildboar-consumer@.service"


def test_an_instance_is_hardened_to_an_exposure_of_at_most_1_5(tmp_path: Path) -> None:
    # systemd-analyze comes with the systemd package, which make test installs.
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing: run make setup"
    instance = tmp_path / "wildboar-consumer@scam.service"
    instance.write_text(UNIT.read_text())
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(instance)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert found is not None, result.stdout + result.stderr
    assert float(found.group(1)) <= 1.5, result.stdout


def test_its_command_line_and_the_example_options_parse() -> None:
    text = UNIT.read_text()
    [command] = re.findall(r"^ExecStart=/usr/bin/wildboar (.*)$", text, re.M)
    [options] = re.findall(r"^#   CONSUME_OPTIONS=(.*)$", text, re.M)
    words = command.replace("$HANDLER", "scam").replace("%i", "scam").split()
    words = [w for w in words if w != "$CONSUME_OPTIONS"] + options.split()
    args = parser().parse_args(words)
    assert (args.command, args.handler, args.stage, args.after) == (
        "consume",
        "scam",
        "scam",
        "spf",
    )
