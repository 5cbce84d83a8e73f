"""benchmarks/bench_smoke.py runs end to end and prints every part (no timing is judged:
only that the clock counted, and that the parts add up to the step).

Two timed steps per config and the earlier smoke overlay beside the current one, so the
side-by-side path runs too; the figures themselves are judged on a real run.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from pss.testing import REPO

SCRIPT = REPO / "benchmarks" / "bench_smoke.py"
PARTS = ("data", "backbone", "head", "assignment", "losses", "backward", "optimizer")


def test_bench_smoke_prints_each_part_side_by_side_and_the_demo_estimate(tmp_path):
    before = tmp_path / "before.yaml"  # the current overlay with a narrower head
    overlay = (REPO / "experiments" / "smoke" / "overlay.yaml").read_text()
    before.write_text(overlay.replace("channels: 64", "channels: 32"))
    argv = [sys.executable, str(SCRIPT), "--steps", "2", "--warmup", "1", "--before", str(before)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    for model in ("fcos_pss", "atss_pss"):
        section = text.split(f"\n{model}: ")[1].split("\ncell: ")[0]
        rows = {}
        for part in (*PARTS, "step"):
            row = re.search(rf"^{part}\s+([\d.]+)\s+([\d.]+)$", section, re.M)
            assert row, part
            rows[part] = [float(ms) for ms in row.groups()]
        for column in (0, 1):  # before, now: the clock counted, and the parts make the step
            step = rows["step"][column]
            assert step > 0 and all(rows[part][column] >= 0 for part in PARTS)
            assert sum(rows[part][column] for part in PARTS) == pytest.approx(step, abs=0.5)
        assert "step now / before:" in section and "COCOeval and the rest" in section
    demo = re.search(r"^demo: .* = (\d+) s expected .*target <= 600 s: (met|MISSED)$", text, re.M)
    assert demo and int(demo.group(1)) > 0
    assert re.search(r"^validation images: 100; target >= 100: met$", text, re.M)
