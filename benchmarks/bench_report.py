"""How fast a sweep's tables build from MLflow at scale (docs/benchmarks.md).

Seeds a temporary SQLite store (in RAM where /dev/shm exists) with 100, 1,000
and 10,000 runs: cells x 10 seeds of a Table 8-like spec, each run with the
full flattened config as params and the contract's metrics, 2 % failed (with a
traceback) and 1 % still running. For each size it times ``make_report``
(Markdown, LaTeX, CSV), prints the growth from size to size, and checks that
the tables are identical to those built through MLflow's own client
(``MlflowClient.search_runs``, the path of any non-SQLite store), whose time it
prints beside. Target: 10,000 runs into tables in under 10 s.

    .venv/bin/python benchmarks/bench_report.py [--sizes 100,1000,10000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEEDS = 10
TARGET_S = 10.0  # for 10,000 runs
TRACEBACK = 'Traceback (most recent call last):\n  File "x.py", line 1\nRuntimeError: boom\n'


def write_spec(folder: Path, name: str, cells: int) -> Path:
    """A Table 8-like spec with ``cells`` cells (match x alpha) and SEEDS seeds."""
    alphas = [round(0.001 * (i + 1), 3) for i in range(cells // 2)]
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
    from pss.sweep.schema import load_spec
    from pss.testing.mlflow_runs import seed_runs, synthetic_runs

    loaded = load_spec(spec)
    runs = synthetic_runs(loaded)
    for i, run in enumerate(runs):  # 2 % failed, 1 % still running
        if i % 50 == 7:
            run.status, run.metrics, run.traceback = "FAILED", {}, TRACEBACK
        elif i % 100 == 13:
            run.status, run.metrics = "RUNNING", {}
    seed_runs(client, loaded.spec.name, runs, artifact_root=artifacts)
    return len(runs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000", help="runs per experiment")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    folder = Path(tempfile.mkdtemp(prefix="pss-bench-report-", dir=base))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        from mlflow.tracking import MlflowClient

        from pss.report import make_report
        from pss.report.collect import fetch_runs

        client = MlflowClient()
        print(f"store: {os.environ['MLFLOW_TRACKING_URI']}")
        times: dict[int, float] = {}
        for size in sizes:
            spec = write_spec(folder, f"bench{size}", size // SEEDS)
            t0 = time.perf_counter()
            n = seed(client, spec, folder / "artifacts")
            seeding = time.perf_counter() - t0
            make_report(spec, out_dir=folder / "warmup")  # imports, caches, store warm-up
            t0 = time.perf_counter()
            report = make_report(spec, out_dir=folder / "out" / spec.stem)
            times[n] = time.perf_counter() - t0
            t0 = time.perf_counter()
            fetch_runs(spec.stem)
            read = time.perf_counter() - t0
            t0 = time.perf_counter()
            through = make_report(spec, out_dir=folder / "client" / spec.stem, client=client)
            mlflow_s = time.perf_counter() - t0
            same = all(
                (report.path.parent / p.name).read_bytes() == p.read_bytes()
                for p in through.files
                if p.name != "REPORT.md"  # its header names the store and the time
            )
            print(
                f"{n:6d} runs ({size // SEEDS} cells x {SEEDS} seeds): tables in "
                f"{times[n]:6.2f} s (reading the store {read:.2f} s); through MLflow's "
                f"search_runs {mlflow_s:6.2f} s; identical tables: {'yes' if same else 'NO'} "
                f"(seeding took {seeding:.0f} s)"
            )
        sizes_done = sorted(times)
        for small, large in zip(sizes_done, sizes_done[1:]):
            print(
                f"growth {small} -> {large} runs: {times[large] / times[small]:.2f}x time "
                f"for {large / small:.0f}x runs"
            )
        if 10_000 in times:
            verdict = "PASS" if times[10_000] < TARGET_S else "MISS"
            print(f"10,000 runs in {times[10_000]:.2f} s, target < {TARGET_S:.0f} s: {verdict}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
