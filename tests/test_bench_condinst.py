"""benchmarks/bench_condinst.py runs end to end and reports its ratios (no timing is
asserted: the targets are judged in its printout on a real-size run)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from pss.testing import REPO
from pss.testing.commands import run_command


def test_quick_run_reports_flops_forward_and_mask_postprocessing(tmp_path: Path):
    out = tmp_path / "bench.json"
    script = REPO / "benchmarks" / "bench_condinst.py"
    proc = run_command([script, "--quick", "--threads", "1", "--json", out], cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    flops = result["flops"]
    # The PSS head adds two 3x3 convs and a 1-channel conv; CondInst adds to FCOS the
    # controller (169 outputs a location) and the mask branch on P3.
    assert 1.0 < result["flop_ratio"] == flops["condinst_pss"] / flops["condinst"] < 1.5
    assert 1.0 < flops["condinst"] / flops["fcos"] < 1.5
    for key in ("forward_ratio", "mask_postprocess_ratio"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    # e2e keeps its 100 best instances; NMS gets hundreds of candidates in the crowded maps
    assert result["masks_per_image"]["e2e"] == 100 and result["nms_candidates"] >= 100
    assert "mask post-processing e2e / nms" in proc.stdout
