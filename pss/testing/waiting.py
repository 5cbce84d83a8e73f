"""Waiting for a cluster event (a file, a state, a counter) in tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], what: str, timeout: float = 1800.0) -> T:
    """Poll ``predicate`` every half second until it returns a true value, and return it.

    The event must stay true once it happened; ``timeout`` (seconds) only catches a
    hang, it is no bound on how long the event may take.
    """
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)
    return value
