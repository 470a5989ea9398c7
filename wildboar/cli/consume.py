"""``wildboar consume [NAME|MODULE:FUNCTION] --stage NAME [--queue Q] [--after STAGE]``: run
one consumer stage in the foreground; ``--check`` prints what it would declare.

Owns: the ``consume`` command's flags, loading the ``[amqp]`` settings as ``serve`` does
(the configuration file, ``WILDBOAR_AMQP_*``, ``--amqp-url``/``--amqp-url-file``), the
pipeline (``--pipeline smtp,scam,spf,deliver``: a stage's ``--after`` is the one before
it), and the exit statuses: 0 after a stop on TERM/INT, 1 for a bad flag, configuration
or handler (one line on stderr), ``runtime.EXIT_STUCK`` when sync handlers overran.
Must not know: how deliveries are handled (``wildboar.consumer.runtime``).
Security: broker URLs with passwords belong in ``--amqp-url-file`` (a command line is
public); nothing printed here shows a password. ``--pythonpath`` is the only way a
directory comes onto ``sys.path``: the interpreter runs isolated (``-I``), so the
directory it starts in decides no code.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from typing import Any

import uvloop

from .. import config as C
from ..consumer import invoke, runtime, topology
from ..worker import logs


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    consume = subparsers.add_parser(
        "consume",
        help="run a consumer stage: a Lambda-shaped handler between two queues",
        description="Consume a stage's queue, call handler(event, context) for every record,"
        " publish what it returns to the next stage (docs/consumers.md).",
    )
    consume.add_argument(
        "handler",
        nargs="?",
        metavar="NAME|MODULE:FUNCTION",
        help="the handler: a shipped stage (scam, spf, deliver, store) or MODULE:FUNCTION"
        " (default: the stage's name)",
    )
    consume.add_argument("--stage", help="this stage's name: it publishes with after.STAGE")
    consume.add_argument("--queue", help="the queue to consume, without the prefix (stage.STAGE)")
    where = consume.add_mutually_exclusive_group()
    where.add_argument("--after", help="the stage before this one (default: smtp)")
    where.add_argument(
        "--pipeline",
        metavar="S1,S2,...",
        help="the whole pipeline, the server's stage first (smtp,scam,spf,deliver): gives"
        " --after, and --check prints every stage",
    )
    consume.add_argument(
        "--check",
        action="store_true",
        help="print the exchanges, queues, bindings and arguments it would declare, and exit",
    )
    _tuning_flags(consume)
    _config_flags(consume)
    consume.set_defaults(func=cmd_consume)


def _tuning_flags(parser: argparse.ArgumentParser) -> None:
    defaults = runtime.Options(handler="")
    number = _positive(int)
    seconds = _positive(float)
    parser.add_argument(
        "--concurrency",
        type=number,
        default=defaults.concurrency,
        metavar="N",
        help="handlers in flight (default: %(default)s)",
    )
    parser.add_argument(
        "--prefetch",
        type=number,
        metavar="N",
        help="deliveries the broker sends ahead (default: twice --concurrency)",
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=defaults.timeout,
        metavar="SECONDS",
        help="each call's time budget; past it, a failure (default: %(default)s)",
    )
    parser.add_argument(
        "--retries",
        type=_positive(int, zero=True),
        default=defaults.retries,
        metavar="N",
        help="tries after the first before dead-lettering (default: %(default)s)",
    )
    parser.add_argument(
        "--backoff",
        type=seconds,
        default=defaults.backoff,
        metavar="SECONDS",
        help="first wait before a retry, doubling (default: %(default)s)",
    )
    parser.add_argument(
        "--dedupe",
        type=number,
        default=defaults.dedupe,
        metavar="N",
        help="message ids remembered to skip duplicates (default: %(default)s)",
    )
    parser.add_argument(
        "--delivery-limit",
        type=number,
        default=topology.DELIVERY_LIMIT,
        metavar="N",
        help="deliveries of one message before a quorum queue"
        " dead-letters it (default: %(default)s)",
    )
    parser.add_argument(
        "--progress",
        type=seconds,
        default=defaults.progress,
        metavar="SECONDS",
        help="between progress records (default: %(default)s)",
    )
    parser.add_argument("--pythonpath", action="append", metavar="DIR",
                        help="look for the handler's module there too (repeatable)")  # fmt: skip


def _config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file ([amqp])")
    parser.add_argument("--directory", metavar="DIR",
                        help="where relative paths of the configuration start")  # fmt: skip
    parser.add_argument("--hostname", help="this host's name in the context and the log")
    parser.add_argument("--log-format", choices=["auto", "json", "journal"],
                        help="as log_format in the configuration")  # fmt: skip
    brokers = parser.add_mutually_exclusive_group()
    brokers.add_argument("--amqp-url", action="append", metavar="URL",
                         help="RabbitMQ URL (repeatable, tried in order); a password belongs"
                         " in --amqp-url-file")  # fmt: skip
    brokers.add_argument("--amqp-url-file", metavar="FILE",
                         help="file of RabbitMQ URLs, one per line (mode 0640)")  # fmt: skip


def _positive(kind: type[Any], zero: bool = False) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(f"{text}: must be {'>= 0' if zero else '> 0'}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    if args.amqp_url:
        flags["amqp"] = {"urls": args.amqp_url, "urls_file": ""}
    elif args.amqp_url_file:
        flags["amqp"] = {"urls_file": args.amqp_url_file}
    if args.hostname:
        flags["hostname"] = args.hostname
    if args.log_format:
        flags["log_format"] = args.log_format
    return flags


def _stages(args: argparse.Namespace, settings: C.Amqp) -> list[topology.Stage]:
    """This stage (``--stage``, else the shipped handler's name), or with ``--check
    --pipeline`` and no stage, every stage of the pipeline. ValueError: one line."""
    name = args.stage or (args.handler if args.handler and ":" not in args.handler else None)
    pipeline = topology.parse_pipeline(args.pipeline) if args.pipeline else None
    if name is None:
        if not (args.check and pipeline):
            raise ValueError("--stage is needed (or --check --pipeline for every stage)")
        return [_stage(s, pipeline[i], settings, args, "") for i, s in enumerate(pipeline[1:])]
    topology.check_stage_name(name)
    after = topology.stage_before(pipeline, name) if pipeline else (args.after or "smtp")
    topology.check_stage_name(after)
    if not (args.check and pipeline):
        return [_stage(name, after, settings, args, args.queue or "")]
    before = dict(zip(pipeline[1:], pipeline, strict=False))
    return [
        _stage(s, before[s], settings, args, args.queue or "" if s == name else "")
        for s in pipeline[1:]
    ]


def _stage(
    name: str, after: str, settings: C.Amqp, args: argparse.Namespace, queue: str
) -> topology.Stage:
    return topology.Stage(name, after, settings, queue, args.delivery_limit)


def cmd_consume(args: argparse.Namespace) -> int:
    try:
        config = C.load(file=args.config, flags=_flags(args), directory=args.directory)
        stages = _stages(args, config.amqp)
    except C.ConfigError as error:
        return _fail(*(f"config: {line}" for line in error.errors))
    except ValueError as error:
        return _fail(str(error))
    if args.check:
        sys.stdout.write(topology.check_text(stages))
        return 0
    [stage] = stages
    sys.path[:0] = [os.path.abspath(p) for p in args.pythonpath or []]
    try:
        handler = invoke.load_handler(args.handler or stage.name)
    except invoke.HandlerNotFound as error:
        return _fail(f"handler {error}")
    options = runtime.Options(
        handler=args.handler or stage.name,
        concurrency=args.concurrency,
        prefetch=args.prefetch or 0,
        timeout=args.timeout,
        retries=args.retries,
        backoff=args.backoff,
        dedupe=args.dedupe,
        progress=args.progress,
        hostname=args.hostname or socket.gethostname(),
    )
    logs.setup(config.log_format)
    return _run(handler, stage, config.amqp, options)


def _run(
    handler: invoke.Handler, stage: topology.Stage, settings: C.Amqp, options: runtime.Options
) -> int:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        consumer = runner.run(_consumer(handler, stage, settings, options))
        code = runner.run(consumer.run())
    logs.flush()
    if consumer.stuck:  # their threads would keep the interpreter from exiting
        os._exit(code)
    return code


async def _consumer(
    handler: invoke.Handler, stage: topology.Stage, settings: C.Amqp, options: runtime.Options
) -> runtime.Consumer:
    """Made on the loop that runs it (its asyncio objects belong to it)."""
    return runtime.Consumer(handler, stage, settings, options)


def _fail(*lines: str) -> int:
    for line in lines:
        print(f"wildboar: consume: {line}", file=sys.stderr)
    return 1
