"""The two exception types a person sees: bad input, and a run that could not go on.

Every user-facing input (config, override, spec, dataset file, checkpoint,
cluster profile) that is wrong raises :class:`UserError` with a message that
names the file and the problem. Command-line entry points catch it, print the
message alone (no traceback) and exit with :data:`EXIT_INVALID` (see docs/cli.md).

A run that started and then cannot go on (the training diverged, an image changed
on disk after the data check, a checkpoint could not be written) raises a
:class:`RunFailed`: one line, the run marked FAILED, exit :data:`EXIT_FAILED`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2


class UserError(Exception):
    """Bad input: a message for a person, naming the file and the problem."""

    def __init__(self, message: str, source: str | None = None) -> None:
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


class RunFailed(RuntimeError):
    """A run that started could not go on: one line for a person (exit :data:`EXIT_FAILED`).

    The message stays one line even when raised in a DataLoader worker: torch re-raises
    a worker's exception in the main process as ``type(exc)(text)``, the text being
    "Caught X in DataLoader worker process N" and the worker's whole traceback, whose
    last line is ``module.X: <the message>``; that message is what is kept.
    """

    def __init__(self, message: str) -> None:
        if message.startswith("Caught ") and "Original Traceback" in message:
            last = message.strip().splitlines()[-1]
            message = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(message)


def nearest(name: str, candidates: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest candidate, or ''."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def validation_error(exc: ValidationError, model: type[BaseModel], source: str) -> UserError:
    """The first problem pydantic found in a YAML file, as one line naming key and value.

    An unknown key gets the nearest valid name at its level (and is reported
    first: a misspelt key also makes the key it meant 'missing'); any other
    problem the dotted key, pydantic's message and the value given.
    """
    errors = exc.errors()
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    err = (unknown or errors)[0]
    loc = ".".join(str(p) for p in err["loc"])
    more = f" [+{len(errors) - 1} more]" if len(errors) > 1 else ""
    if err["type"] == "extra_forbidden":
        parent = _model_at(model, err["loc"][:-1])
        hint = nearest(str(err["loc"][-1]), parent.model_fields) if parent else ""
        return UserError(f"unknown key '{loc}'{hint}{more}", source)
    got = err.get("input")
    got_text = f" (got {got!r})" if not isinstance(got, dict | list) else ""
    msg = err["msg"].removeprefix("Value error, ")
    return UserError(f"{loc or '(top level)'}: {msg}{got_text}{more}", source)


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The (nested) model that holds the field at ``loc``; list indices are skipped."""
    for part in loc:
        if isinstance(part, int):
            continue
        field_info = model.model_fields.get(str(part))
        inner = _inner_model(field_info.annotation) if field_info else None
        if inner is None:
            return None
        model = inner
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """``Section``, ``Section | None``, ``list[Section]`` ... -> Section."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None
