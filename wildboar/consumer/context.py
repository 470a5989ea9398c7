"""The ``context`` a handler gets: the attributes and the one method of a Python Lambda's.

Owns: ``LambdaContext`` (what AWS documents for its Python runtime: ``function_name``,
``function_version``, ``invoked_function_arn``, ``memory_limit_in_mb``, ``aws_request_id``,
``log_group_name``, ``log_stream_name``, ``identity``, ``client_context`` and
``get_remaining_time_in_millis()``), filled with what they mean here, and ``Function``,
what stays the same for every invocation of one consumer process.
Must not know: brokers, retries, the record.
Security: none; a handler is code the operator chose to run.
"""

from __future__ import annotations

import dataclasses
import os
import time

#: AWS's name for a function version that was not published.
UNPUBLISHED = "$LATEST"
#: Where a process finds its cgroup's memory limit (cgroup v2; "max" for none).
CGROUP_MEMORY = "/sys/fs/cgroup{}/memory.max"


@dataclasses.dataclass(frozen=True)
class Function:
    """One consumer process as Lambda would name it.

    ``log_group_name`` is the systemd unit the stage runs as, so that
    ``journalctl -u <log_group_name>`` shows its logs; ``log_stream_name`` names this
    process (host, pid and the consumer's URN, which every log record carries)."""

    name: str  # the stage
    version: str
    arn: str
    memory_limit_in_mb: str
    log_group_name: str
    log_stream_name: str
    timeout: float  # seconds per invocation


def describe_function(stage: str, consumer: str, hostname: str, timeout: float) -> Function:
    return Function(
        name=stage,
        version=UNPUBLISHED,
        arn=f"arn:wildboar:lambda:local:{hostname}:function:{stage}",
        memory_limit_in_mb=str(memory_limit_mb()),
        log_group_name=f"wildboar-consumer@{stage}.service",
        log_stream_name=f"{hostname}/{os.getpid()}/{consumer}",
        timeout=timeout,
    )


class LambdaContext:
    """What a Python Lambda's handler gets as ``context``, for one invocation."""

    identity = None
    client_context = None

    def __init__(self, function: Function, request_id: str) -> None:
        self.function_name = function.name
        self.function_version = function.version
        self.invoked_function_arn = function.arn
        self.memory_limit_in_mb = function.memory_limit_in_mb
        self.aws_request_id = request_id
        self.log_group_name = function.log_group_name
        self.log_stream_name = function.log_stream_name
        self._deadline = time.monotonic() + function.timeout

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left of this invocation's budget (``--timeout``), never negative."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    def __repr__(self) -> str:
        return f"LambdaContext({self.function_name!r}, {self.aws_request_id!r})"


def memory_limit_mb() -> int:
    """The process's memory limit in MiB: its cgroup's ``memory.max`` (a unit's
    ``MemoryMax=``), else the machine's memory."""
    try:
        with open("/proc/self/cgroup") as handle:
            group = handle.read().strip().rpartition("::")[2]
        with open(CGROUP_MEMORY.format(group)) as handle:
            limit = handle.read().strip()
        if limit.isdigit():
            return int(limit) // (1024 * 1024)
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
