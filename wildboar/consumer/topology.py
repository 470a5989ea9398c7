"""What a consumer stage declares on the broker, and the pipeline it is a part of.

Owns: the names (every one prefixed with ``[amqp] prefix``, as the server's are), the
arguments of the queues, the bindings, the pipeline syntax (``smtp,scam,spf,deliver``:
the server's stage first, then each consumer stage in order) and the text of
``wildboar consume --check``.

A stage ``S`` after stage ``P``:

- consumes its queue (``stage.S`` unless ``--queue`` names another), bound to
  ``accepted.inbound.email`` with ``after.P``; the queue dead-letters to ``dead.S``
  whatever the broker itself gives up on (a quorum queue's delivery limit: a message
  whose consumer died every time it had it);
- publishes what it passes to ``accepted.inbound.email`` with ``after.S`` (the next
  stage's binding) and what it rejects to ``rejected.inbound.email`` with ``after.S``;
  with ``declare_queues`` the server's default queue ``rejected.inbound.email`` is bound
  with ``after.S`` too, so that rejections of every stage land beside the server's;
- dead-letters what it cannot handle to ``dead.S``.

Queues are durable, quorum or classic lazy as ``[amqp] queue_type`` says (the server's
rule, ``config.queue_arguments``).
Must not know: pika, handlers.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from ..config import EXCHANGE_NAMES, Amqp, queue_arguments

ACCEPTED, REJECTED = EXCHANGE_NAMES[0], EXCHANGE_NAMES[1]
#: The stage the server publishes from (``[amqp] routing_key`` is ``after.smtp``).
SERVER_STAGE = "smtp"
#: A stage name: it becomes part of a routing key and of queue names.
STAGE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
#: How many times a quorum queue delivers one message before it dead-letters it: only a
#: consumer that dies (or stops) while it has the message makes a delivery count, so
#: this is what stops a message that kills its consumer from doing so for ever.
DELIVERY_LIMIT = 20


def routing_key(stage: str) -> str:
    return f"after.{stage}"


def check_stage_name(name: str) -> str:
    if not STAGE_NAME.fullmatch(name):
        raise ValueError(
            f"stage {name!r}: 1 to 63 of a-z, 0-9, '-' and '_', starting with a letter or digit"
        )
    return name


def parse_pipeline(text: str) -> tuple[str, ...]:
    """``smtp,scam,spf,deliver``: at least two stages, each named once."""
    stages = tuple(check_stage_name(part.strip()) for part in text.split(",") if part.strip())
    if len(stages) < 2:
        raise ValueError(f"pipeline {text!r}: the server's stage and at least one more")
    if len(set(stages)) != len(stages):
        raise ValueError(f"pipeline {text!r}: a stage is named twice")
    return stages


def stage_before(pipeline: Sequence[str], stage: str) -> str:
    if stage not in pipeline[1:]:
        raise ValueError(f"stage {stage!r} is not one of the pipeline's {list(pipeline[1:])}")
    return pipeline[pipeline.index(stage) - 1]


@dataclasses.dataclass(frozen=True)
class Exchange:
    name: str
    type: str = "direct"


@dataclasses.dataclass(frozen=True)
class Queue:
    name: str
    arguments: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Binding:
    queue: str
    exchange: str
    routing_key: str


@dataclasses.dataclass(frozen=True)
class Topology:
    exchanges: tuple[Exchange, ...]
    queues: tuple[Queue, ...]
    bindings: tuple[Binding, ...]

    def __add__(self, other: Topology) -> Topology:
        return Topology(
            _unique(self.exchanges + other.exchanges),
            _unique(self.queues + other.queues),
            _unique(self.bindings + other.bindings),
        )


def _unique(items: Iterable[Any]) -> tuple[Any, ...]:
    return tuple({repr(item): item for item in items}.values())


@dataclasses.dataclass(frozen=True)
class Stage:
    """One consumer stage's names, from its name, the stage before it and the settings."""

    name: str
    after: str
    settings: Amqp
    queue_name: str = ""  # without the prefix; empty: stage.<name>
    delivery_limit: int = DELIVERY_LIMIT

    @property
    def queue(self) -> str:
        return self.settings.prefix + (self.queue_name or f"stage.{self.name}")

    @property
    def dead_letters(self) -> str:
        return self.settings.prefix + f"dead.{self.name}"

    @property
    def accepted(self) -> str:
        return self.settings.exchange(ACCEPTED)

    @property
    def rejected(self) -> str:
        return self.settings.exchange(REJECTED)

    @property
    def routing_key(self) -> str:
        """What this stage publishes with."""
        return routing_key(self.name)

    def queue_arguments(self) -> dict[str, Any]:
        """The stage queue's: the server's, and dead-lettering to ``dead.<stage>``
        whatever the broker gives up on, at least once (a quorum queue's strategy,
        which needs ``reject-publish``)."""
        arguments = {
            **queue_arguments(self.settings),
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.dead_letters,
        }
        if self.settings.queue_type == "quorum":
            arguments["x-delivery-limit"] = self.delivery_limit
            arguments["x-dead-letter-strategy"] = "at-least-once"
            arguments["x-overflow"] = "reject-publish"
        return arguments

    def topology(self) -> Topology:
        exchanges = (Exchange(self.accepted), Exchange(self.rejected))
        queues = [
            Queue(self.dead_letters, queue_arguments(self.settings)),
            Queue(self.queue, self.queue_arguments()),
        ]
        bindings = [Binding(self.queue, self.accepted, routing_key(self.after))]
        if self.settings.declare_queues:
            queues.append(Queue(self.rejected, queue_arguments(self.settings)))
            bindings.append(Binding(self.rejected, self.rejected, self.routing_key))
        return Topology(exchanges, tuple(queues), tuple(bindings))


def pipeline_topology(stages: Sequence[Stage]) -> Topology:
    total = Topology((), (), ())
    for stage in stages:
        total = total + stage.topology()
    return total


def _arguments_text(arguments: dict[str, Any]) -> str:
    return " ".join(
        f"{key}={msgspec.json.encode(value).decode()}" for key, value in arguments.items()
    )


def check_text(stages: Sequence[Stage]) -> str:
    """What ``wildboar consume --check`` prints: every declaration, then each stage's
    path through it, one line each, aligned for reading."""
    topology = pipeline_topology(stages)
    lines = [f"exchange {e.name} type={e.type} durable" for e in topology.exchanges]
    lines += [f"queue {q.name} durable {_arguments_text(q.arguments)}" for q in topology.queues]
    lines += [f"binding {b.exchange} -[{b.routing_key}]-> {b.queue}" for b in topology.bindings]
    for stage in stages:
        lines.append(
            f"stage {stage.name}: consumes {stage.queue} (after.{stage.after}); passes to"
            f" {stage.accepted} -[{stage.routing_key}]->; rejects to {stage.rejected}"
            f" -[{stage.routing_key}]->; dead-letters to {stage.dead_letters}"
        )
    last = stages[-1]
    if len(stages) > 1:
        lines.append(
            f"note: nothing here is bound to {last.accepted} -[{last.routing_key}]->: bind a"
            f" queue there, or have {last.name} return None (a publish that no queue takes"
            " is a failure: retried, then dead-lettered)"
        )
    return "\n".join(lines) + "\n"
