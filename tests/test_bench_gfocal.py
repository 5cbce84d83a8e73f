"""benchmarks/bench_gfocal.py runs end to end and reports its ratios (no timing is asserted:
the targets are judged in its printout on a real-size run)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "bench_gfocal.py"


def test_quick_run_reports_flops_and_the_forward_ratio(tmp_path: Path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    flops = result["flops"]
    # The PSS head adds two 3x3 convs and a 1-channel conv: more FLOPs, not twice as many;
    # GFocalV2's head differs from ATSS's by its 68 box channels and the small DGQP only.
    assert 1.0 < result["flop_ratio"] == flops["gfocalv2_pss"] / flops["gfocalv2"] < 1.5
    assert 1.0 < flops["gfocalv2"] / flops["atss"] < 1.1
    assert math.isfinite(result["forward_ratio"]) and result["forward_ratio"] > 0
    assert "forward GFocalV2_PSS / GFocalV2" in proc.stdout
