"""The one exception type users see for bad input.

Every user-facing input (config, override, spec, dataset file, checkpoint,
cluster profile) that is wrong raises :class:`UserError` with a message that
names the file and the problem. Command-line entry points catch it, print the
message alone (no traceback) and exit with :data:`EXIT_INVALID`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2


class UserError(Exception):
    """Bad input: a message for a person, naming the file and the problem."""

    def __init__(self, message: str, source: str | None = None) -> None:
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


def nearest(name: str, candidates: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest candidate, or ''."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""
