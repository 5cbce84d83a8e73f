"""How fast a sweep's tables build from MLflow at scale (DESIGN.md section 10).

Seeds 100 and then 1,000 finished runs (each with the full flattened config as
params and the contract's metrics; a few failed or still running) into a
temporary SQLite store, builds the tables (Markdown, LaTeX, CSV) with
``build_report`` and prints both times and their ratio. Target: 1,000 runs in
under 5 s on the 2-core CI machine; collection is one paged ``search_runs``
per experiment, so the time should grow about linearly with the runs.

    .venv/bin/python benchmarks/bench_report.py
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEEDS = 10
TARGET_S = 5.0
TRACEBACK = 'Traceback (most recent call last):\n  File "x.py", line 1\nRuntimeError: boom\n'


def write_spec(folder: Path, name: str, cells: int) -> Path:
    """A Table 8-like spec with ``cells`` cells (match x alpha) and SEEDS seeds."""
    alphas = [round(0.02 * (i + 1), 2) for i in range(cells // 2)]
    text = f"""
name: {name}
base: {ROOT}/experiments/fcos_pss_r50_3x.yaml
smoke: {ROOT}/experiments/smoke/overlay.yaml
overrides: {{model.name: fcos_pss}}
seeds: {list(range(SEEDS))}
grid:
  model.assign.match: [add, mul]
  model.assign.alpha: {alphas}
grid_id: "{{model.assign.match}}-alpha{{model.assign.alpha}}"
table:
  title: "Benchmark: {cells} cells x {SEEDS} seeds"
  rows:
    - {{key: model.assign.match, header: Method, labels: {{add: Add, mul: Mul.}}}}
    - {{key: model.assign.alpha, header: "α"}}
  columns:
    - title: mAP (%)
      columns:
        - {{metric: mAP_e2e, label: w/o NMS}}
        - {{metric: mAP_nms, label: w/ NMS}}
    - title: mAR (%)
      columns:
        - {{metric: mAR_e2e, label: w/o NMS}}
        - {{metric: mAR_nms, label: w/ NMS}}
  baseline: {{model.assign.alpha: {alphas[-1]}}}
"""
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def seed(client, spec: Path, artifacts: Path) -> int:
    from pss.report.seeding import seed_runs, synthetic_runs
    from pss.sweep.spec import load_spec

    loaded = load_spec(spec)
    runs = synthetic_runs(loaded)
    for i, run in enumerate(runs):  # 2 % failed, 1 % still running
        if i % 50 == 7:
            run.status, run.metrics, run.traceback = "FAILED", {}, TRACEBACK
        elif i % 100 == 13:
            run.status, run.metrics = "RUNNING", {}
    seed_runs(client, loaded.spec.name, runs, artifact_root=artifacts)
    return len(runs)


def main() -> None:
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    folder = Path(tempfile.mkdtemp(prefix="pss-bench-report-", dir=base))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        from mlflow.tracking import MlflowClient

        from pss.report import build_report
        from pss.report.collect import fetch_runs

        client = MlflowClient()
        print(f"store: {os.environ['MLFLOW_TRACKING_URI']}")
        times = {}
        for cells in (10, 100):
            spec = write_spec(folder, f"bench{cells}", cells)
            t0 = time.perf_counter()
            n = seed(client, spec, folder / "artifacts")
            seeding = time.perf_counter() - t0
            build_report(spec, out_dir=folder / "warmup")  # imports, caches, store warm-up
            t0 = time.perf_counter()
            build_report(spec, out_dir=folder / "out" / spec.stem)
            times[n] = time.perf_counter() - t0
            t0 = time.perf_counter()
            fetch_runs(spec.stem, client)
            search = time.perf_counter() - t0
            print(
                f"{n:5d} runs ({cells} cells x {SEEDS} seeds): tables built in "
                f"{times[n]:.2f} s, of which ~{search:.2f} s in MLflow's search_runs "
                f"(seeding took {seeding:.1f} s)"
            )
        (small, t_small), (large, t_large) = sorted(times.items())
        verdict = "OK" if t_large < TARGET_S else "SLOWER THAN TARGET"
        print(
            f"ratio {large}/{small} runs: {t_large / t_small:.2f}x time for "
            f"{large / small:.0f}x runs; {large} runs in {t_large:.2f} s "
            f"(target < {TARGET_S:.0f} s): {verdict}"
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
