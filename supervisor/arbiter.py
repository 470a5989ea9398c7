"""The main loop: spawn, reap, murder and manage workers, act on signals, report to systemd.

Owns: the worker slots (1..N, one serving worker each, plus a successor during a rolling
restart), the retiring (draining) workers, and every policy: restart with exponential back-off,
SIGKILL on a missed boot or heartbeat deadline, halt instead of crash-looping, graceful stop,
rolling restart (HUP), one worker more or less (TTIN/TTOU), and what systemd is told.
Must not know: how sockets were obtained, how messages are encoded, what a worker serves.
SECURITY: runs unprivileged (after the drop). Trusts nothing a worker says beyond the counts
it reports: the pid is the one ``posix_spawn`` returned, deadlines are the supervisor's clock,
and a worker that does not keep them is killed. Signals sent by a worker or any process
descended from the supervisor (it is their child subreaper, so a double fork does not
escape) are ignored: a compromised worker cannot make it fork more workers or restart them
(it is the same user, and could only kill the service, which it can do anyway). The sender
is looked up as the signal arrives; one that exits and is reaped by its own parent before
that is not recognised, so the cost stays bounded whatever: TTIN never goes beyond
``--workers-max``, and HUP only replaces workers. Every wait is bounded, so the supervisor
always exits after a stop; writing its log never blocks (``log.py``).

Limits (seconds unless named):
    BACKOFF_MIN 0.1 doubling to BACKOFF_MAX 30, reset when the dead worker had been ready for
    BACKOFF_RESET_AFTER 60; MAX_BOOT_FAILURES 5 workers in a row dying before "ready" halt;
    DRAIN_GRACE 5 after a worker's drain deadline before SIGKILL; STOP_GRACE 5 more before the
    supervisor exits anyway; STATUS_INTERVAL 1 between STATUS= updates; TICK 0.5, the longest
    sleep. A heartbeat is fresh (for WATCHDOG=1) for half the heartbeat timeout.
"""

from __future__ import annotations

import ctypes
import math
import os
import selectors
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from . import control
from .exits import EXIT_FAILURE, EXIT_OK, WORKER_BOOT_ERROR
from .files import PassedFiles
from .log import WRITER, log
from .notify import Notifier
from .options import Options
from .signals import Received, SignalInbox
from .sockets import Listener
from .table import Table
from .workers import (
    Phase,
    Worker,
    close_output,
    describe_status,
    kill,
    read_output,
    spawn,
)

BACKOFF_MIN: Final = 0.1
BACKOFF_MAX: Final = 30.0
BACKOFF_RESET_AFTER: Final = 60.0
MAX_BOOT_FAILURES: Final = 5
DRAIN_GRACE: Final = 5.0
STOP_GRACE: Final = 5.0
STATUS_INTERVAL: Final = 1.0
TICK: Final = 0.5
#: A gap this long between two turns of the loop means the supervisor was not running.
STALL: Final = 3.0
#: How far up the parent chain a signal's sender is followed to find the supervisor.
ANCESTRY_DEPTH: Final = 64
#: A worker's output read at exit, at most this many chunks (it may have left children).
LAST_WORDS_READS: Final = 16
_PR_SET_CHILD_SUBREAPER: Final = 36
#: Reaped orphans (descendants of workers) remembered, for signals they sent before dying.
ORPHANS_REMEMBERED: Final = 256
#: The signals that change what the supervisor runs (TERM and INT only stop it).
COMMANDS: Final = frozenset({signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU})


@dataclass(frozen=True)
class Output:
    """The selector's key for a worker's output pipe (its channel's key is the worker)."""

    worker: Worker


def parent_of(pid: int) -> int | None:
    """``pid``'s parent from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return None
    # pid (comm) state ppid ...: comm may hold spaces and parentheses; it ends at the last ")".
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else None


DESCENDANT: Final = "descendant"
OTHER: Final = "other"
GONE: Final = "gone"


def kinship(pid: int, ancestor: int) -> str:
    """What process ``pid`` is to ``ancestor``: ``DESCENDANT``, ``OTHER`` (its parent
    chain reaches init without ``ancestor``), or ``GONE`` (it, or a process of its chain,
    exited before the chain was read: it cannot be told). A chain deeper than
    ``ANCESTRY_DEPTH`` counts as a descendant: no process that may command the supervisor
    is nested that deep, and a worker could nest its children so to hide."""
    if parent_of(pid) is None:
        return GONE
    for _ in range(ANCESTRY_DEPTH):
        parent = parent_of(pid)
        if parent is None:
            return GONE
        if parent == ancestor:
            return DESCENDANT
        if parent <= 1:
            return OTHER
        pid = parent
    return DESCENDANT


def become_subreaper() -> None:
    """Orphaned descendants of the workers become the supervisor's children (prctl(2))."""
    libc = ctypes.CDLL(None, use_errno=True)
    unused = ctypes.c_ulong(0)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(1), unused, unused, unused)


def journal_stream() -> bool:
    """Whether stderr is the journal stream systemd gave this process (systemd.exec(5))."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        status = os.fstat(2)
        return (int(device), int(inode)) == (status.st_dev, status.st_ino)
    except (ValueError, OSError):
        return False


@dataclass
class Slot:
    """A place for one serving worker; its back-off survives the workers that fill it."""

    index: int
    worker: Worker | None = None
    successor: Worker | None = None  # booting to replace ``worker`` (rolling restart)
    backoff: float = BACKOFF_MIN
    respawn_at: float = 0.0

    def workers(self) -> list[Worker]:
        return [w for w in (self.worker, self.successor) if w is not None]

    def vacant(self) -> bool:
        return self.worker is None and self.successor is None


@dataclass(frozen=True)
class Stop:
    status: int
    reason: str
    started: float


def shared_table(workers_max: int) -> Table | None:
    """The table the workers share their per-client counts in: a segment for every worker
    that may live at once (each slot, its successor in a rolling restart, and as many
    retiring); None, and the workers count alone, when it cannot be made."""
    try:
        return Table(2 * workers_max + 2)
    except OSError as error:
        log("clients_table_failed", "warning", error=str(error))
        return None


class Arbiter:
    def __init__(
        self,
        options: Options,
        listeners: Sequence[Listener],
        notifier: Notifier,
        env: Mapping[str, str],
        files: PassedFiles | None = None,
    ) -> None:
        self._options = options
        self._files = files if files is not None else PassedFiles(())
        self._listeners = listeners
        self._notifier = notifier
        self._env = env
        self._signals = SignalInbox(lambda pid: kinship(pid, os.getpid()))
        self._selector = selectors.DefaultSelector()
        self._slots: dict[int, Slot] = {}
        self._retiring: list[Worker] = []
        self._seq = 0
        self._generation = 0
        self._reloading = False
        self._boot_failures = 0
        self._stop: Stop | None = None
        self._exit_status: int | None = None
        self._announced_ready = False
        self._last_tick = time.monotonic()
        self._status_text = ""
        self._status_at = -math.inf
        self._next_watchdog = 0.0
        self._watchdog_paused = False
        self._messages_retired = 0
        self._journal = journal_stream()
        self._orphans: deque[int] = deque(maxlen=ORPHANS_REMEMBERED)
        self._signals_dropped = 0
        self._table = shared_table(options.workers_max)

    # --- the loop --------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped or halted; returns the exit status."""
        self._signals.install()  # first: every thread started after it has them blocked
        WRITER.start()
        become_subreaper()
        self._selector.register(self._signals.fileno(), selectors.EVENT_READ, None)
        now = time.monotonic()
        for index in range(1, self._options.workers + 1):
            self._slots[index] = Slot(index, respawn_at=now)
        while self._exit_status is None:
            self._wait(self._timeout(time.monotonic()))
            self._tick(time.monotonic())
        return self._exit_status

    def _tick(self, now: float) -> None:
        self._forgive_own_stall(now)
        self._handle_signals(now)
        self._reap_workers(now)
        self._murder_workers(now)
        self._manage_workers(now)
        self._report(now)
        self._check_stopped(now)

    def _forgive_own_stall(self, now: float) -> None:
        """The supervisor itself was not running (SIGSTOP, a paused VM, a starved CPU):
        the heartbeats wait unread in the channels, and the deadlines of the workers must
        not count that time against them. Read the channels and move every deadline on."""
        gap = now - self._last_tick
        self._last_tick = now
        if gap < STALL:
            return
        log("supervisor_stalled", "warning", seconds=round(gap, 3))
        for worker in self._all_workers():
            if worker.channel_open:
                self._read_channel(worker, now)
            worker.last_heartbeat = max(worker.last_heartbeat, now)
            worker.spawned_at += gap
            if worker.kill_at is not None:
                worker.kill_at += gap

    def _timeout(self, now: float) -> float:
        deadlines = [now + TICK]
        deadlines += [slot.respawn_at for slot in self._slots.values() if slot.vacant()]
        if self._notifier.watchdog_interval is not None and self._stop is None:
            deadlines.append(self._next_watchdog)
        return max(0.0, min(deadlines) - now)

    def _wait(self, timeout: float) -> None:
        for key, _ in self._selector.select(timeout):
            if isinstance(key.data, Worker):
                self._read_channel(key.data, time.monotonic())
            elif isinstance(key.data, Output) and not read_output(key.data.worker):
                self._close_output(key.data.worker)

    def _close_output(self, worker: Worker) -> None:
        if worker.output >= 0:
            self._selector.unregister(worker.output)
            close_output(worker)

    def _last_words(self, worker: Worker) -> None:
        """What an exited worker wrote and the loop did not read yet (bounded: a child it
        left behind may hold the pipe open and keep writing)."""
        for _ in range(LAST_WORDS_READS):
            if worker.output < 0 or not read_output(worker):
                break
        self._close_output(worker)

    def _all_workers(self) -> list[Worker]:
        serving = [w for slot in self._slots.values() for w in slot.workers()]
        return serving + self._retiring

    def _serving(self) -> list[Worker]:
        workers = (slot.worker for slot in self._slots.values())
        return [w for w in workers if w is not None and w.phase is Phase.READY]

    # --- the control channel ---------------------------------------------------------------

    def _read_channel(self, worker: Worker, now: float) -> None:
        messages, end_of_file = control.receive(worker.channel)
        for message in messages:
            self._on_message(worker, message, now)
        if end_of_file:
            self._close_channel(worker)

    def _close_channel(self, worker: Worker) -> None:
        if worker.channel_open:
            worker.channel_open = False
            self._selector.unregister(worker.channel)
            worker.channel.close()

    def _on_message(self, worker: Worker, message: control.Message, now: float) -> None:
        match message:
            case control.Ready(pid=pid, drain=drain, handoff=handoff):
                self._on_ready(worker, pid, drain, handoff, now)
            case control.Heartbeat(sessions=sessions, messages=messages):
                worker.sessions, worker.messages = sessions, messages
                worker.last_heartbeat = now
            case control.Stopping():
                self._on_stopping(worker, now)
            case control.Malformed(reason=reason):
                log("bad_message", "warning", **worker.fields(), reason=reason)

    def _on_ready(
        self,
        worker: Worker,
        claimed_pid: int,
        drain: float | None,
        handoff: float | None,
        now: float,
    ) -> None:
        if worker.phase is not Phase.BOOTING:
            # Once only: a later "ready" could move its kill deadline at stop out to days.
            log("bad_message", "warning", **worker.fields(), reason="ready after ready")
            return
        worker.drain_timeout, worker.handoff_timeout = drain, handoff
        worker.phase = Phase.READY
        worker.ready_at = worker.last_heartbeat = now
        self._boot_failures = 0
        boot = round(now - worker.spawned_at, 3)
        log("worker_ready", **worker.fields(), boot_seconds=boot)
        if claimed_pid != worker.pid:
            log("worker_pid_mismatch", "warning", **worker.fields(), claimed=claimed_pid)
        for slot in self._slots.values():
            if slot.successor is worker:
                self._promote(slot, now)

    def _promote(self, slot: Slot, now: float) -> None:
        old, slot.worker, slot.successor = slot.worker, slot.successor, None
        if old is not None:
            self._retire(old, now)

    def _on_stopping(self, worker: Worker, now: float) -> None:
        solicited = worker.phase is Phase.DRAINING
        worker.stopped_accepting = True
        log("worker_stopping", **worker.fields(), solicited=solicited)
        if not solicited:  # it stops on its own (a signal of its own): replace it now
            slot, _ = self._detach(worker)
            if slot is not None:
                slot.respawn_at = now
            self._retire(worker, now)

    def _retire(self, worker: Worker, now: float) -> None:
        """Drain ``worker`` (already detached from its slot), SIGKILL it if it overstays."""
        drain = self._drain_timeout(worker)
        worker.phase = Phase.DRAINING
        # After its drain deadline a worker still lets the messages being made durable
        # finish, up to its handoff timeout (docs/operations.md, TERM); a worker that hangs
        # meanwhile is caught by its missing heartbeat, not by this.
        worker.kill_at = now + drain + (worker.handoff_timeout or 0.0) + DRAIN_GRACE
        told = worker.channel_open and control.send_drain(worker.channel, drain)
        self._retiring.append(worker)
        log("worker_draining", **worker.fields(), deadline=drain, told=told)

    def _drain_timeout(self, worker: Worker) -> float:
        """The worker's own drain deadline (of the configuration it was started with, so a
        HUP applies a changed one), else ``--drain-timeout``."""
        if worker.drain_timeout is not None:
            return worker.drain_timeout
        return self._options.drain_timeout

    def _detach(self, worker: Worker) -> tuple[Slot | None, bool]:
        """Take ``worker`` out of its slot or the retiring list: (its slot, was successor)."""
        for slot in self._slots.values():
            if slot.worker is worker:
                slot.worker = None
                return slot, False
            if slot.successor is worker:
                slot.successor = None
                return slot, True
        if worker in self._retiring:
            self._retiring.remove(worker)
        return None, False

    # --- reap, murder, manage --------------------------------------------------------------

    def _reap_workers(self, now: float) -> None:
        for worker in self._all_workers():
            returncode = worker.process.poll()
            if returncode is not None:
                self._on_exit(worker, returncode, now)
        self._reap_orphans()

    def _reap_orphans(self) -> None:
        """Reap the descendants of workers that were reparented to the supervisor (it is
        their subreaper); a worker's own exit is left for ``_reap_workers``."""
        workers = {w.pid for w in self._all_workers()}
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid in workers:
                return
            os.waitpid(info.si_pid, 0)
            self._orphans.append(info.si_pid)  # a signal it sent may not be taken yet
            log("orphan_reaped", pid=info.si_pid, status=info.si_status)

    def _on_exit(self, worker: Worker, returncode: int, now: float) -> None:
        if worker.channel_open:  # its last words (a "ready" just before dying) still count
            self._read_channel(worker, now)
        self._last_words(worker)
        slot, was_successor = self._detach(worker)
        self._close_channel(worker)
        if worker.segment is not None and self._table is not None:
            self._table.give_back(worker.segment)  # its sessions ended with it
        self._messages_retired += worker.messages
        expected = slot is None or self._stop is not None
        log(
            "worker_exited",
            "info" if expected else "warning",
            **worker.fields(),
            returncode=returncode,
            status=describe_status(returncode),
            phase=worker.phase.value,
        )
        if slot is None or self._stop is not None:
            return
        if worker.phase is Phase.BOOTING and self._boot_failed(worker, returncode, was_successor):
            return
        self._schedule_respawn(slot, worker, now)

    def _boot_failed(self, worker: Worker, returncode: int, was_successor: bool) -> bool:
        """Count a death before "ready"; True if it halted (or, in a reload, aborted it)."""
        self._boot_failures += 1
        what = f"worker {worker.index} (pid {worker.pid})"
        if returncode == WORKER_BOOT_ERROR:
            reason = f"{what} exited with status 3 (WORKER_BOOT_ERROR) before ready"
        elif self._boot_failures >= MAX_BOOT_FAILURES:
            last = describe_status(returncode)
            reason = (
                f"{self._boot_failures} workers in a row died before ready (last: {what}, {last})"
            )
        else:
            return False
        if was_successor and self._reloading:
            self._abort_reload(reason)
            return True
        if self._announced_ready:
            # Serving already: the others go on serving, this slot retries with back-off
            # (a full disk, a spool made unwritable, a file edited wrong: fixable).
            log("worker_boot_failed", "error", reason=reason)
            return False
        self._halt(reason)
        return True

    def _schedule_respawn(self, slot: Slot, worker: Worker | None, now: float) -> None:
        """Fill ``slot`` again after its back-off; ``worker`` is the one that died (None:
        none could be started), whose long service resets the back-off."""
        ready_at = worker.ready_at if worker is not None else None
        if ready_at is not None and now - ready_at >= BACKOFF_RESET_AFTER:
            slot.backoff = BACKOFF_MIN
        delay = slot.backoff
        slot.backoff = min(delay * 2, BACKOFF_MAX)
        slot.respawn_at = now + delay
        log("worker_restart_scheduled", worker=slot.index, delay=round(delay, 3))

    def _overdue(self, worker: Worker, now: float) -> str | None:
        options = self._options
        if worker.phase is Phase.BOOTING and now - worker.spawned_at > options.boot_timeout:
            return "boot_timeout"
        if (
            worker.phase in (Phase.READY, Phase.DRAINING)
            and worker.channel_open
            and now - worker.last_heartbeat > options.heartbeat_timeout
        ):
            return "heartbeat_timeout"  # a draining worker keeps its heartbeat too
        if worker.phase is Phase.DRAINING and worker.kill_at is not None and now > worker.kill_at:
            return "drain_timeout"
        return None

    def _murder_workers(self, now: float) -> None:
        for worker in self._all_workers():
            reason = self._overdue(worker, now)
            if reason is not None and not worker.killed:
                kill(worker)
                log("worker_killed", "warning", **worker.fields(), reason=reason, signal="SIGKILL")

    def _manage_workers(self, now: float) -> None:
        for slot in list(self._slots.values()):
            if self._stop is not None:
                return
            if slot.vacant() and now >= slot.respawn_at:
                slot.worker = self._spawn(slot.index, now)
                if slot.worker is None and self._stop is None:
                    self._schedule_respawn(slot, None, now)
        self._advance_reload(now)

    def _spawn(self, index: int, now: float) -> Worker | None:
        self._seq += 1
        command, listeners = self._options.worker_command, self._listeners
        share = self._table.take() if self._table is not None else None
        if self._table is not None and share is None:
            log("clients_table_full", "warning", worker=index, segments=self._table.segments)
        try:
            with self._files.descriptors() as files:
                worker = spawn(
                    command,
                    listeners,
                    self._env,
                    index=index,
                    seq=self._seq,
                    generation=self._generation,
                    now=now,
                    journal=self._journal,
                    table=share,
                    files=files,
                )
        except OSError as error:
            if share is not None and self._table is not None:
                self._table.give_back(share.segment)
            reason = f"cannot start the worker command {command[0]!r}: {error}"
            if not self._announced_ready:
                self._halt(reason)  # at start: the command itself is wrong
            elif self._reloading:
                self._abort_reload(reason)  # the old workers keep serving
            else:
                log("worker_spawn_failed", "error", worker=index, reason=reason)
            return None
        self._selector.register(worker.channel, selectors.EVENT_READ, worker)
        self._selector.register(worker.output, selectors.EVENT_READ, Output(worker))
        log("worker_spawned", **worker.fields(), generation=worker.generation)
        return worker

    # --- rolling restart, more or fewer workers -------------------------------------------

    def _advance_reload(self, now: float) -> None:
        """One slot at a time: spawn its successor; ``_on_ready`` drains the old worker."""
        if not self._reloading or self._stop is not None:
            return
        if any(slot.successor is not None for slot in self._slots.values()):
            return
        stale = [
            s for s in self._slots.values() if s.worker and s.worker.generation < self._generation
        ]
        if not stale:
            if any(self._still_accepting(w) for w in self._retiring):
                return  # "reloaded" promises that every new connection meets the new config
            self._reloading = False
            self._notifier.ready()
            log("reloaded", workers=len(self._slots), generation=self._generation)
        else:
            # The slot whose worker is oldest first: with HUPs in quick succession, every
            # slot gets its turn, not the first one again and again.
            slot = min(stale, key=lambda s: (s.worker.generation if s.worker else 0, s.index))
            if now >= slot.respawn_at:
                slot.successor = self._spawn(slot.index, now)

    def _still_accepting(self, worker: Worker) -> bool:
        """An old worker told to drain that has not yet said it closed its listeners."""
        return (
            worker.generation < self._generation
            and worker.channel_open
            and not worker.stopped_accepting
            and worker.process.poll() is None
        )

    def _abort_reload(self, reason: str) -> None:
        """A successor cannot boot: keep the old workers serving, do not halt."""
        self._reloading = False
        self._boot_failures = 0
        log("reload_failed", "error", reason=reason)
        self._notifier.ready()
        self._notifier.status(f"reload failed: {reason}")

    def _handle_hup(self, now: float) -> None:
        # The new workers get the files as they are now (a renewed certificate), or as
        # they were when one can no longer be read.
        for path, reason in self._files.reload():
            log("pass_file_kept", "warning", path=path, reason=reason)
        self._generation += 1
        self._reloading = True
        self._notifier.reloading()
        log("reloading", generation=self._generation, workers=len(self._slots))

    def _handle_ttin(self, now: float) -> None:
        if len(self._slots) >= self._options.workers_max:
            log("ttin_ignored", "warning", workers=len(self._slots), reason="at --workers-max")
            return
        index = next(i for i in range(1, len(self._slots) + 2) if i not in self._slots)
        self._slots[index] = Slot(index, respawn_at=now)
        log("workers_changed", workers=len(self._slots))

    def _newest_slot(self) -> Slot:
        def age(slot: Slot) -> float:
            return max((float(w.seq) for w in slot.workers()), default=math.inf)

        return max(self._slots.values(), key=age)

    def _handle_ttou(self, now: float) -> None:
        if len(self._slots) <= 1:
            log("ttou_ignored", "warning", workers=len(self._slots), reason="never below 1")
            return
        slot = self._slots.pop(self._newest_slot().index)
        for worker in slot.workers():
            self._retire(worker, now)
        log("workers_changed", workers=len(self._slots))

    # --- signals, stopping -----------------------------------------------------------------

    def _handle_signals(self, now: float) -> None:
        handlers: dict[int, Callable[[float], None]] = {
            signal.SIGTERM: self._handle_term,
            signal.SIGINT: self._handle_term,
            signal.SIGHUP: self._handle_hup,
            signal.SIGTTIN: self._handle_ttin,
            signal.SIGTTOU: self._handle_ttou,
        }
        for received in self._signals.take():
            handler = handlers.get(received.signum)
            if handler is None:
                continue  # SIGCHLD: only a wake-up, reaping follows
            name = signal.Signals(received.signum).name
            sender = {"sender_pid": received.pid, "sender_uid": received.uid}
            why = self._distrusted(received)
            if why:
                log("signal_ignored", "warning", signal=name, **sender, reason=why)
                continue
            if self._stop is not None:
                log("signal_ignored", signal=name, reason="stopping")
                continue
            log("signal", signal=name, **sender)
            handler(now)
        if self._signals.dropped > self._signals_dropped:
            log("signals_dropped", "warning", count=self._signals.dropped - self._signals_dropped)
            self._signals_dropped = self._signals.dropped

    def _distrusted(self, received: Received) -> str:
        """Why a signal is not acted on ("" if it is): one sent by a worker or any of its
        descendants; and a HUP, TTIN or TTOU whose sender is gone and ran as the workers'
        user, which cannot be told from a worker's child that exited at once (root's, the
        kernel's and a live outsider's signals are acted on)."""
        if received.pid <= 0 or received.pid == os.getpid():
            return ""  # the kernel (a terminal), or the supervisor itself
        if received.sender == DESCENDANT or received.pid in self._orphans:
            return "sent by a worker or a process of a worker"
        if any(w.pid == received.pid for w in self._all_workers()):
            return "sent by a worker or a process of a worker"
        own_user = received.uid == os.getuid() != 0
        if received.sender == GONE and own_user and received.signum in COMMANDS:
            return (
                "the sender is gone and ran as the workers' user: it cannot be told from a"
                " worker's (send it as root, or from a process that stays, such as a shell)"
            )
        return ""

    def _handle_term(self, now: float) -> None:
        self._begin_stop(EXIT_OK, "stop requested", now)

    def _halt(self, reason: str) -> None:
        log("halted", "error", reason=reason)
        self._notifier.status(f"halted: {reason}")
        self._begin_stop(EXIT_FAILURE, reason, time.monotonic())

    def _begin_stop(self, status: int, reason: str, now: float) -> None:
        if self._stop is not None:
            return
        self._stop = Stop(status, reason, now)
        self._reloading = False
        self._notifier.stopping()
        workers = [w for slot in self._slots.values() for w in slot.workers()]
        drains = [self._drain_timeout(w) for w in workers]
        deadline = max(drains) if drains else self._options.drain_timeout
        log("stopping", reason=reason, deadline=deadline)
        for worker in workers:
            self._retire(worker, now)
        self._slots.clear()

    def _check_stopped(self, now: float) -> None:
        stop = self._stop
        if stop is None:
            return
        remaining = self._all_workers()
        # Each draining worker has its own kill_at (drain deadline, handoff timeout, grace).
        kill_at = [w.kill_at for w in remaining if w.kill_at is not None]
        limit = max(kill_at) if kill_at else stop.started + self._options.drain_timeout
        if remaining and now < limit + STOP_GRACE:
            return
        if remaining:
            log("stop_timeout", "error", pids=[w.pid for w in remaining])
        log("stopped", "info" if stop.status == EXIT_OK else "error", status=stop.status)
        self._exit_status = stop.status

    # --- reporting -------------------------------------------------------------------------

    def _report(self, now: float) -> None:
        if self._stop is None:
            self._announce_ready()
            self._feed_watchdog(now)
        if self._stop is None or self._stop.status == EXIT_OK:
            self._report_status(now)

    def _announce_ready(self) -> None:
        if self._announced_ready or not self._slots:
            return
        if len(self._serving()) == len(self._slots):
            self._announced_ready = True
            self._notifier.ready()
            log("ready", workers=len(self._slots))

    def _report_status(self, now: float) -> None:
        everyone = self._all_workers()
        sessions = sum(w.sessions for w in everyone)
        messages = self._messages_retired + sum(w.messages for w in everyone)
        text = f"{len(self._serving())} workers, {sessions} sessions, {messages} messages"
        if text != self._status_text and now >= self._status_at + STATUS_INTERVAL:
            self._notifier.status(text)
            self._status_text, self._status_at = text, now

    def _heartbeats_fresh(self, now: float) -> bool:
        serving = self._serving()
        fresh = self._options.heartbeat_timeout / 2
        return bool(serving) and all(now - w.last_heartbeat <= fresh for w in serving)

    def _feed_watchdog(self, now: float) -> None:
        interval = self._notifier.watchdog_interval
        if interval is None or now < self._next_watchdog:
            return
        if not self._heartbeats_fresh(now):
            self._next_watchdog = now + min(interval, TICK) / 5
            if self._announced_ready and not self._watchdog_paused:
                self._watchdog_paused = True
                log("watchdog_paused", "warning", reason="a serving worker's heartbeat is late")
            return
        self._notifier.watchdog()
        self._next_watchdog = now + interval
        if self._watchdog_paused:
            self._watchdog_paused = False
            log("watchdog_resumed")
