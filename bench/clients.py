"""What a per-client limit costs a worker per connection: ``python -m bench.clients``.

Compares the two designs of limits held across workers: the shared table (each worker
writes its own segment, reads the sum of all: ``wildboar/worker/table.py``), with 2, 8 and
32 segments in use, and asking one process that keeps the counts for all (a round trip
over a ``SOCK_SEQPACKET`` socketpair with a JSON question and answer, as the control
channel speaks), the design it was chosen over. One connection's work at connect: the
address and network keys hashed, both counted, the limits read.
"""

from __future__ import annotations

import json
import mmap
import os
import socket
import sys
import time

from wildboar.config import Clients
from wildboar.worker.clients import ClientLimits
from wildboar.worker.table import SharedTable

ROUNDS = 20_000
SEGMENT = 2 * 1024 * 1024


def per_connection_table(segments: int) -> float:
    """Microseconds for one connect and close with ``segments`` segments in use."""
    memory = mmap.mmap(-1, segments * SEGMENT)
    key = os.urandom(16)
    for other in range(1, segments):  # the other workers' segments, filled in
        SharedTable(memory, segments, other, key)
    limits = ClientLimits(Clients(exempt=[]), SharedTable(memory, segments, 0, key))
    start = time.perf_counter()
    for n in range(ROUNDS):
        client = limits.client(f"192.0.{n % 256}.{n % 251}")
        assert client is not None
        if limits.connect(client) is None:
            limits.closed(client)
    return (time.perf_counter() - start) / ROUNDS * 1e6


def per_connection_round_trip() -> float:
    """Microseconds for one question to a counting process and its answer."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        ours.close()
        counts: dict[str, int] = {}
        while data := theirs.recv(4096):
            question = json.loads(data)
            counts[question["ip"]] = counts.get(question["ip"], 0) + 1
            theirs.send(json.dumps({"open": counts[question["ip"]]}).encode())
        os._exit(0)
    theirs.close()
    start = time.perf_counter()
    for n in range(ROUNDS):
        ours.send(json.dumps({"type": "connect", "ip": f"192.0.2.{n % 251}"}).encode())
        json.loads(ours.recv(4096))
    elapsed = (time.perf_counter() - start) / ROUNDS * 1e6
    ours.close()
    os.waitpid(pid, 0)
    return elapsed


def main() -> int:
    for segments in (2, 8, 32):
        cost = per_connection_table(segments)
        print(f"shared table, {segments:2} segments: {cost:6.1f} us a connection")
    print(f"round trip to a counting process: {per_connection_round_trip():6.1f} us a question")
    return 0


if __name__ == "__main__":
    sys.exit(main())
