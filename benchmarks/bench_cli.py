"""How fast the sweep CLI's quick commands answer, measured as whole processes (docs/benchmarks.md).

Seeds a temporary MLflow store with a FINISHED run for every job of Table 5's
smoke sweep, then times, as separate processes started from the shell (Python
start-up and imports included), the median of ``--repeats`` runs of:

    sweeps/run.py status sweeps/table5.yaml --smoke
    sweeps/run.py sweeps/table5.yaml --smoke --dry-run --json
    sweeps/run.py sweeps/table5.yaml --smoke --executor local   (finished: nothing to do)
    reports/make_tables.py sweeps/table5.yaml --smoke

Target: each under 2 s. ``--split`` also prints where one process's time goes
(imports, spec expansion, reading the store).

    .venv/bin/python benchmarks/bench_cli.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 2.0
SPEC = ROOT / "sweeps" / "table5.yaml"
COMMANDS = {
    "status": ["sweeps/run.py", "status", str(SPEC), "--smoke"],
    "dry-run --json": ["sweeps/run.py", str(SPEC), "--smoke", "--dry-run", "--json"],
    "re-run (finished)": ["sweeps/run.py", str(SPEC), "--smoke", "--executor", "local"],
    "make_tables": ["reports/make_tables.py", str(SPEC), "--smoke"],
}


def seed(folder: Path) -> str:
    from mlflow.tracking import MlflowClient

    from pss.sweep.schema import load_spec
    from pss.testing.mlflow_runs import seed_runs, synthetic_runs

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    runs = synthetic_runs(load_spec(SPEC), smoke=True)
    seed_runs(MlflowClient(uri), "table5-smoke", runs, artifact_root=folder / "artifacts")
    return uri


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Seconds one process of ``argv`` (a script of the repository and its arguments) takes."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / argv[0]), *argv[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return seconds


def split(cwd: Path, env: dict[str, str]) -> str:
    """Where one `status` process spends its time (measured inside a fresh process)."""
    code = (
        "import time; t0 = time.perf_counter()\n"
        "from pss.sweep.driver import plan, print_status\n"
        "t1 = time.perf_counter()\n"
        f"loaded, jobs = plan({str(SPEC)!r}, True)\n"
        "t2 = time.perf_counter()\n"
        "from pss.tracking.store import read_runs\n"
        "runs = read_runs('table5-smoke')\n"
        "t3 = time.perf_counter()\n"
        "print(f'imports {t1 - t0:.2f} s, spec + 6 configs {t2 - t1:.2f} s, '\n"
        "      f'reading {len(runs)} runs {t3 - t2:.3f} s')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    folder = Path(tempfile.mkdtemp(prefix="pss-bench-cli-", dir=base))
    try:
        env = {**os.environ, "MLFLOW_TRACKING_URI": seed(folder)}
        print(f"store: {env['MLFLOW_TRACKING_URI']} (6 finished runs of table5-smoke)")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        print(f"a bare interpreter starts in {(time.perf_counter() - start) * 1e3:.0f} ms")
        for name, command in COMMANDS.items():
            times = [timed(command, folder, env) for _ in range(args.repeats)]
            med = statistics.median(times)
            verdict = "PASS" if med < TARGET_S else "MISS"
            print(
                f"{name:<20} median {med:5.2f} s over {args.repeats} processes "
                f"(min {min(times):.2f}, max {max(times):.2f})  "
                f"target < {TARGET_S:.0f} s  {verdict}"
            )
        print("status, inside the process: " + split(folder, env))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
