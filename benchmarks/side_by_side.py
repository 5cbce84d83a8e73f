"""Side-by-side timing for the benchmarks: interleaved rounds, medians, one line per ratio.

    clock = Clock(device)
    times = interleaved(clock, {"a": run_a, "b": run_b}, repeats=5, warmup=1)
    report = Report()
    report.line("ratio_key", "b / a", ("a", "b"), (times["a"], times["b"]), "<= 1.0",
                lambda r: r <= 1.0)

Contenders run in turns (A, B, A, B, ...; the order reversed every other round
so that drift cancels) and ratios are of medians; every line also prints the
range of the per-round ratios, which says how noisy the machine was.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


class Clock:
    """Wall time of a call, synchronising CUDA around it."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start


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
