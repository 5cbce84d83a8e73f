"""Checkpoints: written atomically, read with ``weights_only=True``, checked before use.

A checkpoint is a dict:
    model, optimizer, scheduler, scaler (state dicts; scaler may be None),
    rng (torch / cuda / numpy / python states), epoch (last finished, 1-based),
    iteration (optimizer steps so far), fingerprint (of the config), config
    (resolved, as JSON-able dict), categories (the dataset's [{id, name}], index =
    label; absent from checkpoints written before they were saved), run_id
    (MLflow run, or None).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pss.errors import RunFailed, UserError

REQUIRED = ("model", "epoch", "iteration", "fingerprint")


class CheckpointNotSaved(RunFailed):
    """Writing a checkpoint failed (a full disk, a quota); the previous one is intact."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a crash or a full disk leaves the old file intact.

    The state goes to a temporary file beside ``path``, is flushed to disk, and
    replaces ``path`` in one rename; a write that fails (CheckpointNotSaved, saying
    how much space is left) removes the temporary file and leaves ``path`` alone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch reports a failed write as RuntimeError
        Path(tmp).unlink(missing_ok=True)
        free_mb = shutil.disk_usage(path.parent).free / 2**20
        kept = "the previous checkpoint is kept" if path.is_file() else "no checkpoint kept"
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CheckpointNotSaved(
            f"{path}: could not write the checkpoint ({reason.splitlines()[0]}; "
            f"{free_mb:.0f} MB free there); {kept}"
        ) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint; unreadable or incomplete files are a UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError("checkpoint not found", str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt or foreign files
        raise UserError(
            f"cannot read checkpoint ({_why_unreadable(path, exc)}); the file is damaged or "
            "not a checkpoint: restore it, or delete it to start this run over",
            str(path),
        ) from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED):
        missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
        raise UserError(f"not a pss checkpoint (missing {', '.join(missing)})", str(path))
    return state


def _why_unreadable(path: Path, exc: Exception) -> str:
    """Why torch.load failed, in a few words: torch's own messages run to a paragraph."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as err:
        return err.strerror or type(err).__name__
    if not head:
        return "the file is empty"
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch's zip format, a legacy pickle
        return f"not a PyTorch file: it starts with {head[:12]!r}"
    text = " ".join(str(exc).split())
    if "Weights only load failed" in text:
        return "it holds Python objects besides tensors, which pss never writes"
    return text.split(". ")[0] or type(exc).__name__


def load_model_weights(
    model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, allow_missing: str = ""
) -> None:
    """Load weights, failing with one clear message when they do not fit the model.

    ``allow_missing``: a key prefix that may be absent (e.g. 'head.pss.' when a
    PSS model starts from a baseline checkpoint in two-step training).
    """
    own = model.state_dict()
    classes = "head.cls_logits.weight"
    if classes in state and classes in own and len(state[classes]) != len(own[classes]):
        raise UserError(
            f"the checkpoint was trained for {len(state[classes])} classes but "
            f"model.num_classes={len(own[classes])}",
            source,
        )
    missing = [
        k for k in own if k not in state and not (allow_missing and k.startswith(allow_missing))
    ]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if wrong:
        k = wrong[0]
        problems.append(f"shape mismatch for {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}")
    if problems:
        raise UserError("checkpoint does not match the model: " + "; ".join(problems), source)
    model.load_state_dict(state, strict=False)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
