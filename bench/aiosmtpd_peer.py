"""aiosmtpd as a peer for ``bench.server``: accept every message, keep nothing.

The smallest server an aiosmtpd user writes: a handler whose ``handle_DATA`` says 250, run
by aiosmtpd's ``Controller`` (its own thread and asyncio event loop, the default loop, no
uvloop) on the address given. The process runs until SIGTERM or SIGINT.

    python -m bench.aiosmtpd_peer --port 2526
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


class Discard:
    """Say 250 to every message and drop it."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 Ok: discarded"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.aiosmtpd_peer")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    stop = {signal.SIGTERM, signal.SIGINT}
    # Blocked before the controller's thread starts, so only sigwait below sees them.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    controller = Controller(
        Discard(), hostname=args.host, port=args.port, server_hostname="aiosmtpd.example"
    )
    controller.start()
    try:
        signal.sigwait(stop)
    finally:
        controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
