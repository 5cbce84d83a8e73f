"""benchmarks/bench_head.py runs end to end and reports every ratio (no timing is asserted).

The benchmark's targets are judged in its printout (PASS/MISS) on a real-size
run; here only its plumbing is checked: a --quick run (128x128, one round)
writes a JSON with every ratio, finite numbers, a plausible FLOP ratio and
sparse, trained-looking post-processing inputs. One thread: on the shared 2-core CI machine a
2-thread run stalls on every op whenever another process holds a core (seen:
150 s instead of 10 s).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "bench_head.py"

RATIOS = (
    "flop_ratio",
    "forward_ratio",
    "train_ratio",
    "postprocess_ratio",
    "tv_forward_ratio",
    "tv_train_ratio",
    "tv_forward_ratio_bn",
    "tv_train_ratio_bn",
    "train_flop_ratio",
    "postprocess_ratio_crowded",
)
TARGETS = (
    "forward_ratio",
    "train_ratio",
    "postprocess_ratio",
    "tv_forward_ratio",
    "tv_train_ratio",
)


def numbers(tree, path="$"):
    """Every (path, value) of an int or float in a JSON tree."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from numbers(value, f"{path}.{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from numbers(value, f"{path}[{i}]")
    elif isinstance(tree, int | float) and not isinstance(tree, bool):
        yield path, tree


def test_quick_run_reports_every_ratio(tmp_path: Path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,  # only catches a hang: a loaded machine has made 10 s into 150 s
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())

    missing = [key for key in RATIOS if key not in result]
    assert not missing, f"ratios missing from the JSON: {missing}"
    bad = [(path, value) for path, value in numbers(result) if not math.isfinite(value)]
    assert not bad, f"non-finite numbers: {bad}"
    assert all(result[key] > 0 for key in RATIOS)
    assert 1.0 < result["flop_ratio"] < 1.3

    # The header and one PASS/MISS line per target are printed (what they say is not tested).
    for word in ("torch", "threads", "input 128x128", "batch 1"):
        assert word in proc.stdout
    for key in TARGETS:
        assert result["lines"][key]["verdict"] in {"PASS", "MISS"}
    assert proc.stdout.count("PASS") + proc.stdout.count("MISS") >= len(TARGETS)

    # The post-processing inputs are sparse like a trained model's: candidates for NMS,
    # and detections above the threshold in both modes.
    for key in ("postprocess_inputs", "postprocess_inputs_crowded"):
        inputs = result[key]
        assert 0 < inputs["nms_candidates"] < 0.1 * inputs["pairs_per_image"]
        assert min(inputs["detections_above_thresh"].values()) > 0
