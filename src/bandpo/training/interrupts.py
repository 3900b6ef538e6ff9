"""The stop contract of ``bandpo train`` / ``bandpo compare``: SIGINT or SIGTERM stops the command,
which exits with 128 + the signal's number (130, 143).

Inside training the first signal is deferred to the end of the current step, which saves a
checkpoint (`bandpo.training.callbacks.GracefulInterruptCallback`); anywhere else, and at a second
signal, `stop_on_signals` raises `Interrupted` at once. Nothing half-done is kept: every file the
runner reads back is written atomically (`bandpo.training.files`).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """SIGINT or SIGTERM asked the command to stop; it exits with `exit_status` (128 + the signal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def raise_interrupted(signum, frame) -> None:
    """Signal handler: raise `Interrupted` where the program is."""
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` while the block runs; the previous handlers come back after."""
    previous = {signum: signal.signal(signum, raise_interrupted) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
