"""The reference an installation ships, made from the definitions it documents.

Owns: the commented configuration file (``conffile``: every key with its default and its
meaning, the packaged installation's own values set), the manual pages ``wildboar(8)``
(``manpage_cli``, from the command line's argparse parsers) and ``wildboar.toml(5)``
(``manpage_config``, from the configuration's structs and the ``#:`` / trailing comments on
their fields), and ``python -m wildboar.reference {conffile,wildboar.8,wildboar.toml.5}``,
which the Debian package's build runs. Nothing here is written twice: a key or an option
added to the code is in all three at the next build, and a key without a comment fails the
tests.
Must not know: how the configuration is loaded or applied.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import inspect
import os
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import msgspec

from supervisor import options as supervisor_options

from . import __version__
from . import config as C
from .cli import parser as cli_parser

#: What the Debian package sets differently from the built-in defaults.
PACKAGED: dict[str, dict[str, Any]] = {"spool": {"path": "/var/spool/wildboar"}}
#: Keys a configuration file does not set: ``id`` is made at every load.
INTERNAL = frozenset({"id"})
#: Defaults that depend on the machine, said in words.
MACHINE_DEFAULTS = {
    "hostname": "the machine's fully qualified domain name",
    "workers": "one per CPU",
}
SECTIONS_WITHOUT_TABLE = ("listen",)


@dataclasses.dataclass(frozen=True)
class Key:
    """One configuration key: where it lives, its default and what it means."""

    section: str  # "" for the top level
    name: str
    type: str
    default: Any  # msgspec.NODEFAULT when the machine decides
    doc: str

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name

    @property
    def environment(self) -> str:
        return f"{C.ENV_PREFIX}{self.dotted.replace('.', '_').upper()}"


def _comments(cls: type) -> dict[str, str]:
    """The comment of each field of the class ``cls``: the ``#:`` lines above it, else the
    ``#`` comment at the end of its line."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    found: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:  # type: ignore[attr-defined]
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        above: list[str] = []
        row = node.lineno - 2
        while row >= 0 and lines[row].strip().startswith("#:"):
            above.insert(0, lines[row].strip().removeprefix("#:").strip())
            row -= 1
        trailing = lines[node.lineno - 1].partition("  # ")[2].strip()
        found[node.target.id] = " ".join(above) or trailing
    return found


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    text = str(annotation) if "[" in str(annotation) else text
    for noise in ("typing.", "Annotated[", "wildboar.config.", "wildboar.smtp.limits."):
        text = text.replace(noise, "")
    return text.split(", msgspec.Meta")[0].rstrip("]") if "Meta" in text else text


def _doc(cls: type) -> str:
    """The class's own docstring (not one it inherits), on one line, without markup."""
    return _plain(" ".join((cls.__dict__.get("__doc__") or "").split()))


def _plain(text: str) -> str:
    text = text.replace("``", "")
    return text[:1].upper() + text[1:]


def _fields(cls: type, section: str) -> Iterator[Key]:
    comments = _comments(cls)
    for field in msgspec.structs.fields(cls):
        if field.name in INTERNAL:
            continue
        if field.default is not msgspec.NODEFAULT:
            default = field.default
        elif field.default_factory is not msgspec.NODEFAULT:
            default = field.default_factory()
        else:
            default = msgspec.NODEFAULT
        if field.name in MACHINE_DEFAULTS and not section:
            default = msgspec.NODEFAULT
        doc = _plain(comments[field.name])
        yield Key(section, field.name, _type_name(field.type), default, doc)


def sections() -> dict[str, tuple[str, list[Key]]]:
    """Every table of the configuration (``""`` the top level): its description and keys."""
    top: list[Key] = []
    tables: dict[str, tuple[str, list[Key]]] = {}
    for key in _fields(C.Config, ""):
        kind = next((f.type for f in msgspec.structs.fields(C.Config) if f.name == key.name), None)
        if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
            tables[key.name] = (_doc(kind), list(_fields(kind, key.name)))
        else:
            top.append(key)
    tables["listen"] = (_doc(C.Listener), list(_fields(C.Listener, "listen")))
    return {"": (_doc(C.Config), top), **tables}


# --- TOML -------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, msgspec.Struct):
        return toml_value(str(value))
    return str(value)


def _wrapped(text: str, prefix: str = "# ") -> list[str]:
    return textwrap.wrap(text, 88 - len(prefix), initial_indent=prefix, subsequent_indent=prefix)


def _conffile_key(key: Key) -> list[str]:
    lines = _wrapped(key.doc)
    packaged = PACKAGED.get(key.section, {})
    if key.name in packaged:
        return [*lines, f"{key.name} = {toml_value(packaged[key.name])}"]
    if key.default is msgspec.NODEFAULT:
        return [*lines, f"# {key.name} = ... (default: {MACHINE_DEFAULTS[key.name]})"]
    if key.default is None:
        return [*lines, f"# {key.name} is not set by default"]
    return [*lines, f"# {key.name} = {toml_value(key.default)}"]


CONFFILE_HEAD = """\
# /etc/wildboar/wildboar.toml: the configuration of wildboar(8); wildboar.toml(5) has
# every key. Each key is shown commented out with its built-in default; the values this
# installation sets are not commented. The environment overrides this file
# (WILDBOAR_<TABLE>_<KEY>, e.g. WILDBOAR_WORKERS=4 in a `systemctl edit wildboar` drop-in),
# and command line flags override both. `wildboar check-config` prints what is in effect.
#
# Before wildboar serves, list the domains it receives mail for ([recipients] domains):
# a configuration file that does not set them does not serve.
#
# Generated from the definitions (python3 -m wildboar.reference conffile): do not edit
# the copy in the source tree, edit the comments in wildboar/config.py.
"""


def conffile() -> str:
    out = [CONFFILE_HEAD.rstrip("\n")]
    for name, (doc, keys) in sections().items():
        if name == "listen":
            out += ["", *_wrapped(f"[[listen]] tables: {doc} Their keys:")]
            for key in keys:
                shown = "... (required)" if key.default is msgspec.NODEFAULT else None
                out += [
                    "#",
                    *_wrapped(key.doc),
                    f"#   {key.name} = {shown or toml_value(key.default)}",
                ]
            continue
        if name:
            out += ["", *_wrapped(doc), f"[{name}]"]
        for key in keys:
            out += ["", *_conffile_key(key)]
    return "\n".join(out) + "\n"


# --- roff -------------------------------------------------------------------------------


def _roff(text: str) -> str:
    """Plain text for a roff line: backslashes, leading dots and quotes escaped."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def _th(name: str, section: int) -> str:
    # A package build sets SOURCE_DATE_EPOCH (the changelog's date): the same page each time.
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.datetime.fromtimestamp(int(epoch), datetime.UTC) if epoch else None
    date = (when or datetime.datetime.now(datetime.UTC)).date().isoformat()
    return f'.TH {name.upper()} {section} "{date}" "wildboar {__version__}" "wildboar"'


def _subcommands(
    parser: argparse.ArgumentParser,
) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """Each subcommand of ``parser``: its parser and its one-line help."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return {name: (sub, helps.get(name, "")) for name, sub in action.choices.items()}
    return {}


def _options(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str]]:
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.option_strings:
            metavar = action.metavar or (
                None if action.nargs == 0 else action.dest.upper().replace("_", "-")
            )
            flag = ", ".join(action.option_strings)
            if action.choices and not action.metavar:
                metavar = "{" + ",".join(str(c) for c in action.choices) + "}"
            name = f"{flag} {metavar}" if metavar and action.nargs != 0 else flag
        else:
            name = str(action.metavar or action.dest)
        yield name, action.help or ""


def _command_section(path: str, parser: argparse.ArgumentParser, summary: str) -> list[str]:
    lines = [".SS " + _roff(path)]
    text = parser.description or summary
    if text:
        lines.append(_roff(text[:1].upper() + text[1:]))
    for name, help in _options(parser):
        lines += [".TP", f"\\fB{_roff(name)}\\fR", _roff(help)]
    for sub, (child, help) in _subcommands(parser).items():
        lines += _command_section(f"{path} {sub}", child, help)
    return lines


MANPAGE_CLI_TAIL = r"""
.SH FILES
.TP
.I /etc/wildboar/wildboar.toml
the configuration (wildboar.toml(5))
.TP
.I /var/spool/wildboar
the spool, with the LMTP retry spool in \fIlmtp/\fR and bounces in \fIbounce/\fR
.TP
.I /lib/systemd/system/wildboar.socket, wildboar\-submission.socket, wildboar.service
the units: \fBsystemctl enable \-\-now wildboar.socket\fR starts serving on ports 25 and 587
.SH ENVIRONMENT
Every configuration key can be set as \fBWILDBOAR_\fR\fITABLE\fR\fB_\fR\fIKEY\fR
(\fBWILDBOAR_WORKERS\fR, \fBWILDBOAR_RECIPIENTS_DOMAINS\fR); see wildboar.toml(5).
.SH SIGNALS
\fBHUP\fR: replace every worker by one that read the configuration again, without refusing a
connection (\fBsystemctl reload wildboar\fR). \fBTERM\fR: drain and stop. \fBTTIN\fR,
\fBTTOU\fR: one worker more, one fewer.
.SH SEE ALSO
wildboar.toml(5), systemd.socket(5), journalctl(1)
"""


def manpage_cli() -> str:
    top = cli_parser()
    lines = [
        _th("wildboar", 8),
        ".SH NAME",
        "wildboar \\- inbound SMTP server",
        ".SH SYNOPSIS",
        "\\fBwildboar\\fR \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        _roff(
            "wildboar receives mail over SMTP for the domains and users that exist, and"
            " hands every message it accepts to its spool, to RabbitMQ (AMQP) or to a mail"
            " store over LMTP before it answers 250. A supervisor owns the listening sockets"
            " and runs unprivileged worker processes."
        ),
        ".SH COMMANDS",
    ]
    for name, (child, help) in _subcommands(top).items():
        lines += _command_section(f"wildboar {name}", child, help)
    return "\n".join(lines) + MANPAGE_CLI_TAIL


MANPAGE_SUPERVISOR_DESCRIPTION = r""".SH DESCRIPTION
The supervisor binds the listening sockets (or takes them from systemd), becomes the
unprivileged \fB\-\-user\fR when started as root, and runs the worker processes, each
started with WORKER_COMMAND (by default wildboar's worker), restarting any that dies.
\fBwildboar serve\fR runs it with the configuration's settings: use that, not this, to
start wildboar.
.SH OPTIONS"""


def manpage_supervisor() -> str:
    """``wildboar-supervisor(8)``, from the supervisor's own command line."""
    lines = [
        _th("wildboar-supervisor", 8),
        ".SH NAME",
        "wildboar\\-supervisor \\- the process that owns wildboar's sockets and workers",
        ".SH SYNOPSIS",
        "\\fBwildboar\\-supervisor\\fR [\\fIOPTIONS\\fR]"
        " [\\fB\\-\\-\\fR \\fIWORKER_COMMAND\\fR...]",
        MANPAGE_SUPERVISOR_DESCRIPTION,
    ]
    for name, help in _options(supervisor_options.parser()):
        lines += [".TP", f"\\fB{_roff(name)}\\fR", _roff(help)]
    return "\n".join([*lines, ".SH SEE ALSO", "wildboar(8)"]) + "\n"


def _default_text(key: Key) -> str:
    if key.dotted in (f"{s}.{k}" for s, keys in PACKAGED.items() for k in keys):
        packaged = PACKAGED[key.section][key.name]
        return f"{toml_value(key.default)} (the package sets {toml_value(packaged)})"
    if key.default is msgspec.NODEFAULT:
        return MACHINE_DEFAULTS.get(key.name, "required")
    if key.default is None:
        return "not set"
    return toml_value(key.default)


def manpage_config() -> str:
    lines = [
        _th("wildboar.toml", 5),
        ".SH NAME",
        "wildboar.toml \\- configuration of wildboar",
        ".SH DESCRIPTION",
        _roff(
            "wildboar(8) reads /etc/wildboar/wildboar.toml (or the file of --config or"
            " WILDBOAR_CONFIG), a TOML file. Built-in defaults < this file < environment"
            " variables < command line flags. Relative paths are taken from the directory"
            " wildboar serve was started in. wildboar check-config prints the configuration"
            " in effect, or names each key that is wrong."
        ),
    ]
    for name, (doc, keys) in sections().items():
        title = "TOP LEVEL" if not name else f"[[{name}]]" if name == "listen" else f"[{name}]"
        lines += [f".SH {_roff(title)}"]
        if doc and name:
            lines.append(_roff(doc))
        for key in keys:
            lines += [
                ".TP",
                f"\\fB{_roff(key.name)}\\fR = \\fI{_roff(_default_text(key))}\\fR",
                _roff(f"{key.doc} ({key.type}; environment: {key.environment})"),
            ]
    lines += [".SH SEE ALSO", "wildboar(8)"]
    return "\n".join(lines) + "\n"


OUTPUTS = {
    "conffile": conffile,
    "wildboar.8": manpage_cli,
    "wildboar-supervisor.8": manpage_supervisor,
    "wildboar.toml.5": manpage_config,
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in OUTPUTS:
        print(f"usage: python -m wildboar.reference {{{','.join(OUTPUTS)}}}", file=sys.stderr)
        return 2
    sys.stdout.write(OUTPUTS[args[0]]())
    return 0


if __name__ == "__main__":
    sys.exit(main())
