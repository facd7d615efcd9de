"""SIGTERM handled as Ctrl-C, so that a batch scheduler's stop cleans up as a user's interrupt does."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Handle SIGTERM as the SIGINT handler of the moment would, inside the block.

    Outside ``Tuner.fit`` that raises KeyboardInterrupt, so unfinished files are removed and
    click prints 'Aborted!'. During ``Tuner.fit`` the SIGINT handler is Tune's: the first
    signal ends the sweep after a last save of its state, and a second one stops it at once.
    Signal handlers can be set in the main thread only, so elsewhere the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signal_number: int, frame: Any) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            # SIGINT is ignored (a background job of a shell script) or has no Python handler.
            raise KeyboardInterrupt(f"signal {signal_number}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
