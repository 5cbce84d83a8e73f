"""The benchmarks' one clock (benchmarks/side_by_side.py): wall or thread CPU seconds, of a
call or of named parts; and the interleaved rounds every side-by-side figure comes from."""

from __future__ import annotations

import time

import pytest
import torch

from side_by_side import Clock, interleaved

NAP_S = 0.05


def busy(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_wall_time_counts_a_nap_cpu_time_only_work():
    assert Clock()(lambda: time.sleep(NAP_S)) >= NAP_S
    cpu = Clock(cpu_time=True)
    assert cpu(lambda: time.sleep(NAP_S)) < NAP_S / 5  # asleep, the thread costs nothing
    assert cpu(lambda: busy(NAP_S)) >= NAP_S


def test_parts_add_up_nest_and_start_over_when_taken():
    clock = Clock(cpu_time=True)
    for _ in range(2):
        with clock.part("step"):
            busy(0.01)
            with clock.part("inner"):
                busy(0.02)
    inner, step = clock.take("inner"), clock.take("step")
    assert inner >= 0.04 and step >= inner + 0.02
    assert clock.take("step") == 0.0  # taken: the next sum starts from nothing
    assert clock(lambda: busy(0.01)) < step  # a call is timed on its own, not into a part


def test_thread_cpu_time_of_cuda_work_is_refused():
    with pytest.raises(ValueError, match="GPU"):
        Clock(torch.device("cuda"), cpu_time=True)


def test_interleaved_rounds_alternate_the_order_and_time_each_call():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "ab"}
    times = interleaved(Clock(), fns, repeats=4, warmup=1)
    assert calls == ["a", "b"] + ["a", "b", "b", "a"] * 2  # warm-up, then turns
    assert [len(t) for t in times.values()] == [4, 4]
    assert all(s >= 0 for t in times.values() for s in t)
