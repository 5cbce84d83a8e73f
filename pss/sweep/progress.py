"""What a waiting sweep shows: one line per job with its state, epoch, latest mAP and ETA.

    shown = Progress(sys.stderr)
    shown.update(states)        # after every poll
    shown.close()

On a terminal the lines are redrawn in place (with a summary line under them);
in a log file (no TTY) a line is written when a job changes state or finishes
an epoch, and every job's line again every ``interval_s`` seconds, so a log
says the same as the screen, with timestamps.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TextIO

from pss import contract
from pss.sweep.state import FINISHED_S, RUNNING_S, STATES, JobState

CLEAR_LINE, UP = "\x1b[2K", "\x1b[F"


def _duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def describe(state: JobState, now: float) -> tuple[str, ...]:
    """The columns of a job's line: key, state, epoch, mAP, ETA, note."""
    job, run = state.job, state.run
    mode = contract.primary_mode(job.config.model.name)
    metric = contract.metric_name(contract.MAP, mode)
    total = job.config.train.epochs
    epoch = run.steps.get(metric) if run is not None else None
    value = run.metrics.get(metric) if run is not None else None
    eta = ""
    if state.state == RUNNING_S and run is not None:
        epoch, eta = _progress(state, metric, now)
    return (
        job.key,
        state.state,
        f"epoch {epoch or 0}/{total}" if state.state in (RUNNING_S, FINISHED_S) else "",
        f"{metric} {value:.1f}" if value is not None else "",
        eta,
        state.reason,
    )


def _progress(state: JobState, metric: str, now: float) -> tuple[int, str]:
    """A running job's finished epochs and its ETA.

    From the training loss, logged every few iterations with step = global
    iteration, where the config caps an epoch's iterations (smoke runs, the
    demo); otherwise from the evaluated epochs. Past the estimate the ETA says
    so rather than showing zero.
    """
    run, train = state.run, state.job.config.train
    assert run is not None
    if train.iters_per_epoch and run.steps.get(contract.LOSS):
        done, total = run.steps[contract.LOSS], train.epochs * train.iters_per_epoch
        at, epoch = run.times[contract.LOSS] / 1000, done // train.iters_per_epoch
    elif run.steps.get(metric):
        done, total = run.steps[metric], train.epochs
        at, epoch = run.times[metric] / 1000, done
    else:
        return 0, "ETA after epoch 1"
    if done >= total:
        return epoch, "evaluating"
    left = (at - run.start_time / 1000) / done * (total - done) - (now - at)
    return epoch, f"ETA {_duration(left)}" if left >= 1 else "ETA overdue"


class Progress:
    def __init__(self, stream: TextIO = sys.stderr, interval_s: float = 60.0) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.interval_s = interval_s
        self.drawn = 0  # lines drawn last time (terminal)
        self.said: dict[str, tuple[str, ...]] = {}  # what the log last said of each job
        self.last_all = 0.0

    def update(self, states: list[JobState]) -> None:
        now = time.time()
        rows = [describe(s, now) for s in states]
        counts = Counter(s.state for s in states)
        summary = ", ".join(f"{counts[k]} {k}" for k in STATES if counts[k])
        if self.live:
            self._redraw(rows, summary)
        else:
            self._log(rows, summary, now)

    def _redraw(self, rows: list[tuple[str, ...]], summary: str) -> None:
        widths = [max((len(r[i]) for r in rows), default=0) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        out = UP * self.drawn + "".join(f"{CLEAR_LINE}{line}\n" for line in [*lines, summary])
        self.stream.write(out)
        self.stream.flush()
        self.drawn = len(lines) + 1

    def _log(self, rows: list[tuple[str, ...]], summary: str, now: float) -> None:
        everything = now - self.last_all >= self.interval_s
        stamp = time.strftime("%H:%M:%S", time.localtime(now))
        changed = False
        for row in rows:
            # A job's line when its state, latest metric or note changes (the epoch and ETA
            # tick too often for a log), and every job's every interval_s.
            key, what = row[0], (row[1], row[3], *row[5:])
            if everything or self.said.get(key) != what:
                text = "  ".join(c for c in row if c)
                self.stream.write(f"{stamp} {text}\n")
                self.said[key] = what
                changed = True
        if changed or everything:
            self.stream.write(f"{stamp} sweep: {summary}\n")
            self.stream.flush()
        if everything:
            self.last_all = now

    def close(self) -> None:
        self.drawn = 0
