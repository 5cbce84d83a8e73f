"""The benchmarks' one clock, and side-by-side timing: interleaved rounds, medians, ratios.

    clock = Clock(device)
    times = interleaved(clock, {"a": run_a, "b": run_b}, repeats=5, warmup=1)
    report = Report()
    report.line("ratio_key", "b / a", ("a", "b"), (times["a"], times["b"]), "<= 1.0",
                lambda r: r <= 1.0)

Contenders run in turns (A, B, A, B, ...; the order reversed every other round
so that drift cancels) and ratios are of medians; every line also prints the
range of the per-round ratios, which says how noisy the machine was.

:class:`Clock` times a call (``clock(fn)``) or named parts of a loop
(``with clock.part("backward"): ...``, summed until ``clock.take("backward")``), in
wall seconds (CUDA synchronised around what it times) or, with ``cpu_time=True``, in
this thread's CPU seconds: what a part costs on one core, less sensitive than wall time
to what else runs on a shared machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

_CALL = "__call__"  # the part a single call is timed as


class Clock:
    """Seconds of a call or of named parts: wall time, or this thread's CPU time."""

    def __init__(self, device: torch.device | None = None, *, cpu_time: bool = False) -> None:
        self.cuda = device is not None and device.type == "cuda"
        if cpu_time and self.cuda:
            raise ValueError("a thread's CPU time does not count a GPU's work: time CUDA by wall")
        self.now = time.thread_time if cpu_time else time.perf_counter
        self.seconds: dict[str, float] = {}

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Add the seconds of the block to part ``name`` (parts of other names may nest)."""
        self._sync()
        start = self.now()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + self.now() - start

    def take(self, name: str) -> float:
        """The seconds part ``name`` has summed since it was last taken (0 if none)."""
        return self.seconds.pop(name, 0.0)

    def __call__(self, fn: Callable[[], object]) -> float:
        """Seconds of one call of ``fn``."""
        with self.part(_CALL):
            fn()
        return self.take(_CALL)


def interleaved(
    clock: Clock, fns: dict[str, Callable[[], object]], repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of each fn, run in turns (order reversed every other round)."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(clock(fns[name]))
    return times


def med(values: list[float]) -> float:
    return statistics.median(values)


def fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:9.2f} ms" if seconds < 1 else f"{seconds:9.3f} s "


class Report:
    """Prints one line per measured ratio (PASS / MISS against its target) and keeps it."""

    def __init__(self) -> None:
        self.lines: dict[str, dict] = {}

    def line(
        self,
        key: str,
        label: str,
        names: tuple[str, str],
        times: tuple[list[float], list[float]],
        target: str,
        check: Callable[[float], bool] | None,
    ) -> float:
        """Print and keep ``median(times[1]) / median(times[0])``; returns the ratio."""
        a, b = med(times[0]), med(times[1])
        ratio = b / a
        rounds = [y / x for x, y in zip(*times)]
        verdict = "info" if check is None else ("PASS" if check(ratio) else "MISS")
        noise = f"rounds {min(rounds):.3f}-{max(rounds):.3f}" if len(rounds) > 1 else "1 round"
        print(
            f"{label:<36} {names[0]:>9} {fmt_time(a)}  {names[1]:>9} {fmt_time(b)}  "
            f"ratio {ratio:6.3f}  target {target:<15} {verdict}  ({noise})"
        )
        self.lines[key] = {
            "a": names[0],
            "b": names[1],
            "time_a_s": a,
            "time_b_s": b,
            "ratio": ratio,
            "round_ratios": rounds,
            "target": target,
            "verdict": verdict,
        }
        return ratio
