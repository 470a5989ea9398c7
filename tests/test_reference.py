"""The shipped reference (configuration file, manual pages) says what the code does: it is
made from the definitions, and these tests hold it to them."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import msgspec
import pytest

from supervisor.options import parser as supervisor_parser
from wildboar import config as C
from wildboar import reference
from wildboar.cli import parser as cli_parser

ROOT = Path(__file__).resolve().parent.parent
CONFFILE = ROOT / "packaging" / "wildboar.toml"
PINNED = {"hostname": "mx.example.org", "workers": 3}


def comparable(config: C.Config) -> dict[str, object]:
    data = msgspec.to_builtins(config)
    del data["id"]
    return data  # type: ignore[no-any-return]


def load_text(text: str, tmp_path: Path) -> C.Config:
    path = tmp_path / "wildboar.toml"
    path.write_text(text)
    return C.load(file=str(path), environ={}, flags=PINNED, directory="/")


def test_the_shipped_configuration_file_is_up_to_date() -> None:
    assert CONFFILE.read_text() == reference.conffile(), (
        "regenerate it: .venv/bin/python -m wildboar.reference conffile > packaging/wildboar.toml"
    )


def test_every_key_has_a_meaning() -> None:
    keys = [key for _, keys in reference.sections().values() for key in keys]
    assert len(keys) > 60
    assert [key.dotted for key in keys if len(key.doc) < 8] == []


def test_the_configuration_file_sets_only_the_packaged_values(tmp_path: Path) -> None:
    loaded = load_text(CONFFILE.read_text(), tmp_path)
    defaults = C.load(environ={}, flags=PINNED, directory="/")
    expected = comparable(defaults)
    expected["spool"]["path"] = "/var/spool/wildboar"  # type: ignore[index]
    assert comparable(loaded) == expected
    # As packaged it does not serve until the operator names the domains.
    assert C.serving_errors(loaded, str(tmp_path / "wildboar.toml"))


def test_every_default_the_file_shows_is_the_default(tmp_path: Path) -> None:
    """Uncomment every `# key = value` line: the same configuration as with none."""
    lines = CONFFILE.read_text().splitlines()
    uncommented = [
        re.sub(r"^# (?=[a-z_]+ = )", "", line)
        if not line.startswith("# [[") and "(default:" not in line
        else line
        for line in lines
    ]
    text = "\n".join(uncommented)
    assert text.count("\n[") >= 8 and re.search(r"^message_size = 10240000$", text, re.M)
    assert comparable(load_text(text, tmp_path)) == comparable(
        load_text(CONFFILE.read_text(), tmp_path)
    )
    tomllib.loads(text)


def options(parser: argparse.ArgumentParser) -> set[str]:
    found = {o for action in parser._actions for o in action.option_strings}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= {name} | options(sub)
    return found


def rendered(page: str, tmp_path: Path) -> str:
    """The page as man(1) shows it; groff's warnings fail the test."""
    path = tmp_path / "page"
    path.write_text(page)
    check = subprocess.run(
        ["groff", "-man", "-ww", "-z", str(path)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0 and check.stderr == "", check.stderr
    shown = subprocess.run(
        ["man", "-l", str(path)],
        capture_output=True,
        text=True,
        env={"MANWIDTH": "200", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        check=True,
    )
    return re.sub(r".\x08", "", shown.stdout)


def test_the_command_manual_names_every_command_and_option(tmp_path: Path) -> None:
    text = rendered(reference.manpage_cli(), tmp_path)
    missing = sorted(o for o in options(cli_parser()) - {"-h", "--help"} if o not in text)
    assert missing == []
    for command in ("wildboar serve", "wildboar spool ls", "wildboar check-config"):
        assert command in text


def test_the_supervisor_manual_names_every_option(tmp_path: Path) -> None:
    text = rendered(reference.manpage_supervisor(), tmp_path)
    missing = sorted(o for o in options(supervisor_parser()) - {"-h", "--help"} if o not in text)
    assert missing == []


def test_the_configuration_manual_names_every_key(tmp_path: Path) -> None:
    text = rendered(reference.manpage_config(), tmp_path)
    for name, (_, keys) in reference.sections().items():
        if name:
            assert (f"[[{name}]]" if name == "listen" else f"[{name}]") in text
        for key in keys:
            assert re.search(rf"^\s+{key.name} = ", text, re.M), key.dotted
            assert key.environment in text.replace("\u2010\n", "").replace(" ", "") or (
                key.section == "listen"
            )


@pytest.mark.parametrize("name", sorted(reference.OUTPUTS))
def test_the_build_gets_each_page_from_the_module(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the package build runs; a build's SOURCE_DATE_EPOCH dates the pages."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    result = subprocess.run(
        [sys.executable, "-m", "wildboar.reference", name],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"SOURCE_DATE_EPOCH": "1700000000", "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert result.stdout == reference.OUTPUTS[name]()
    assert name == "conffile" or '"2023-11-14"' in result.stdout.splitlines()[0]


def test_the_package_ships_every_page_the_module_makes() -> None:
    rules = (ROOT / "packaging" / "debian" / "rules").read_text()
    for name in reference.OUTPUTS:
        made = "wildboar.toml" if name == "conffile" else name
        assert f"wildboar.reference {name} > $(GEN)/{made}" in rules
        assert name == "conffile" or f"$(GEN)/{name}" in rules.split("\tdh_installman")[1]
