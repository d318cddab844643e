"""Ctrl-C stays a Ctrl-C.

Python raises KeyboardInterrupt in whatever Python code runs when SIGINT arrives. Inside a
callback of a C library that is often lost: pandas' C CSV parser, for one, turns it into
``ParserError: Calling read(nbytes) on source failed``, which the importer would then report
as an unreadable file. :func:`keep_interrupts` notes every SIGINT during its block and
raises KeyboardInterrupt at its end whatever the block raised or returned, so the CLI
reports an interruption (exit 130), not a bad input.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def keep_interrupts() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGINT)
    # Only the main thread may set handlers; an ignored or default SIGINT is left as it is.
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return
    seen = []

    def note(signum, frame):
        seen.append(signum)
        previous(signum, frame)  # normally raises KeyboardInterrupt here

    signal.signal(signal.SIGINT, note)
    try:
        yield
    except Exception:
        if seen:
            raise KeyboardInterrupt from None
        raise
    else:
        if seen:  # swallowed by a library that then carried on
            raise KeyboardInterrupt
    finally:
        signal.signal(signal.SIGINT, previous)
