"""Reports from a real (temporary SQLite) MLflow store seeded with known runs.

Golden files live in tests/golden/; the tests only read them. After an intended change
of the output, regenerate them with the one explicit command

    .venv/bin/python -m tests.golden_update

and review the diff (run ids, which are random, are replaced by '<cell/sSEED>'). Every
statistic in them (mean, std, n, Welch p, paper difference) is also derived here from
the seeded samples, independently of pss.report (closed forms, scipy.special).
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from test_report_stats import welch_p_closed_form

from pss.report import latex, make_report
from pss.report.cli import main
from pss.report.collect import collect_cells, fetch_runs
from pss.report.figures import figure_panels, mlflow_history
from pss.sweep.expand import expand
from pss.sweep.schema import load_spec
from pss.testing.mlflow_runs import FakeRun, seed_runs, synthetic_runs

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "sweeps"
GOLDEN = Path(__file__).resolve().parent / "golden"
GOLDEN_TABLES = ("table1", "table5")
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "pss/engine/train.py", line 300, in train\n'
    "    loss.backward()\n"
    "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
)


@dataclass
class Store:
    uri: str
    client: MlflowClient
    root: Path
    ids: dict[str, str]  # short run id -> '<cell/sSEED>'

    def seed(self, experiment: str, runs: list[FakeRun]) -> None:
        ids = seed_runs(self.client, experiment, runs, artifact_root=self.root / "artifacts")
        for run_id, fake in zip(ids, runs):
            self.ids[run_id[:8]] = f"<{fake.cell}/s{fake.seed}>"

    def normalize(self, text: str) -> str:
        return re.sub(r"\b[0-9a-f]{8}\b", lambda m: self.ids.get(m[0], m[0]), text)


def _fast_tmp() -> Path:
    """A temporary folder in RAM where there is one: SQLite commits are much faster there."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="pss-report-", dir=base))


@contextmanager
def seeded_store() -> Iterator[Store]:
    """A temporary store holding the golden scenarios, the current MLflow store meanwhile."""
    root = _fast_tmp()
    uri = f"sqlite:///{root}/mlflow.db"
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", uri)
            mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            s = Store(uri, MlflowClient(uri), root, {})
            s.seed("table1", table1_runs())
            s.seed("table5", table5_runs())
            yield s
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def store() -> Iterator[Store]:
    with seeded_store() as s:
        yield s


# ------------------------------------------------------------------ scenarios


def _pss(e2e: tuple[float, float], nms: tuple[float, float] | None = None) -> dict[str, float]:
    """Final metrics of a PSS model: (mAP, mAR) without and with NMS."""
    out = {"mAP_e2e": e2e[0], "mAR_e2e": e2e[1]}
    if nms:
        out |= {"mAP_nms": nms[0], "mAR_nms": nms[1]}
    return out


def table5_runs() -> list[FakeRun]:
    """Table 5: three seeds for some cells, a FAILED run with a traceback, a RUNNING
    seed, a KILLED older run, a finished run missing a metric, a cell never run, a
    run of a cell that is not in the spec, one run of uncommitted code and one cell
    whose seeds ran at different CPU thread counts."""

    def run(cell: str, seed: int, metrics: dict[str, float], **kw) -> FakeRun:
        params = {"model.name": cell.split("-")[0], "model.pss.num_convs": cell[-1]}
        return FakeRun(cell=cell, seed=seed, metrics=metrics, params=params, **kw)

    return [
        run("fcos_pss-convs1", 0, _pss((41.5, 61.3), (41.8, 59.4))),
        run("fcos_pss-convs1", 1, _pss((41.7, 61.5), (42.0, 59.6))),
        run("fcos_pss-convs1", 2, _pss((41.6, 61.4)) | {"mAP_nms": 41.9}),  # no mAR_nms
        run("fcos_pss-convs2", 0, _pss((42.2, 61.5), (42.1, 59.5)), threads=1),
        run("fcos_pss-convs2", 1, _pss((42.4, 61.7), (42.3, 59.7)), threads=1),
        run("fcos_pss-convs2", 2, _pss((42.3, 61.6), (42.2, 59.6)), git_dirty=True, threads=2),
        run("fcos_pss-convs3", 0, {}, status="FAILED", traceback=TRACEBACK),
        run("atss_pss-convs1", 0, _pss((42.0, 61.6), (42.3, 59.2))),
        run("atss_pss-convs1", 1, {}, status="RUNNING"),
        run("atss_pss-convs2", 0, {}, status="KILLED"),  # older; the newer one is used
        run("atss_pss-convs2", 0, _pss((42.5, 62.0), (42.0, 59.6))),
        run("atss_pss-convs2", 1, _pss((42.9, 62.3), (42.6, 59.8))),
        run("atss_pss-convs2", 2, _pss((42.4, 62.0), (42.3, 59.7))),
        run("old-cell", 0, _pss((40.0, 60.0), (40.0, 60.0))),  # not in the spec
        # atss_pss-convs3: never run
    ]


def table1_runs() -> list[FakeRun]:
    """Table 1: baselines with NMS metrics only, PSS models with both, timings."""

    def run(cell: str, seed: int, metrics: dict[str, float], **kw) -> FakeRun:
        return FakeRun(
            cell=cell, seed=seed, metrics=metrics, params={"model.name": cell.split("-")[1]}, **kw
        )

    def base(m: float, r: float, fwd: float, post: float) -> dict[str, float]:
        return {"mAP_nms": m, "mAR_nms": r, "forward_ms": fwd, "postprocess_ms_nms": post}

    def pss(m: float, r: float, fwd: float, post: float) -> dict[str, float]:
        return {
            **base(m - 0.1, r - 2.0, fwd, post * 2),
            "mAP_e2e": m,
            "mAR_e2e": r,
            "postprocess_ms_e2e": post,
        }

    return [
        run("r50-fcos", 0, base(41.9, 60.1, 38.70, 2.90)),
        run("r50-fcos", 1, base(42.0, 60.2, 38.80, 2.95)),
        run("r50-fcos", 2, base(42.1, 60.3, 38.75, 2.85)),
        run("r50-atss", 0, base(42.7, 61.3, 38.30, 7.50)),
        run("r50-fcos_pss", 0, pss(42.5, 61.5, 42.30, 1.48)),
        run("r50-fcos_pss", 1, pss(42.6, 61.7, 42.40, 1.50)),
        run("r50-fcos_pss", 2, pss(42.7, 61.6, 42.40, 1.49)),
        run("r50-atss_pss", 0, {}, status="RUNNING"),
        run("r101-fcos", 0, base(43.4, 61.2, 51.50, 3.41)),
        run("r101-atss", 0, base(44.3, 61.8, 51.80, 8.79)),
        run("r101-fcos_pss", 0, pss(44.0, 62.6, 54.90, 2.50)),
        run("r101-atss_pss", 0, pss(44.3, 63.3, 55.60, 4.30)),
        run("x101dcn-atss_pss", 0, {}, status="FAILED"),  # no traceback.txt
        # r2n101dcn-atss_pss: never run
    ]


# -------------------------------------------------------------------- goldens


def render_golden_tables(store: Store, name: str, with_paper: bool, out: Path) -> dict[str, str]:
    """{golden file name: text} of one table's report (md, tex, csv), run ids normalised."""
    report = make_report(SWEEPS / f"{name}.yaml", out_dir=out, with_paper=with_paper)
    assert report.markdown is not None and report.path == out / "REPORT.md"
    suffix = "_paper" if with_paper else ""
    return {
        f"{name}{suffix}.{fmt}": store.normalize((out / f"{name}.{fmt}").read_text("utf-8"))
        for fmt in ("md", "tex", "csv")
    }


@pytest.mark.parametrize("name", GOLDEN_TABLES)
@pytest.mark.parametrize("with_paper", [False, True], ids=["ours", "paper"])
def test_golden_tables(store: Store, tmp_path: Path, name: str, with_paper: bool, golden):
    for file, text in render_golden_tables(store, name, with_paper, tmp_path / "out").items():
        golden(GOLDEN / file, text)  # tests/conftest.py: compares (or, --update-goldens, writes)


# ------------------------------------------- the goldens' statistics, derived again
# From the scenarios' samples alone, with closed forms and scipy.special's incomplete
# beta (pss.report uses Student's t CDF, scipy.special.stdtr): every mean, std, n, Welch p and
# paper difference the golden files hold.

PAPER = yaml.safe_load((Path(__file__).parent / "data" / "paper_tables.yaml").read_text())
BACKBONE = {"r50": "R50", "r101": "R101", "x101dcn": "X101-32x4d-DCN", "r2n101dcn": "R2N101-DCN"}


@dataclass(frozen=True)
class StatColumn:
    header: str  # the CSV column of the mean
    metric: str  # '{mode}': e2e for PSS models, nms for the baselines
    paper_key: str  # its key in tests/data/paper_tables.yaml
    decimals: int


GOLDEN_COLUMNS = {
    "table1": [
        StatColumn("mAP (%)", "mAP_{mode}", "mAP", 1),
        StatColumn("mAR (%)", "mAR_{mode}", "mAR", 1),
        StatColumn("Network forward (ms)", "forward_ms", "forward_ms", 2),
        StatColumn("Post process. (ms)", "postprocess_ms_{mode}", "postprocess_ms", 2),
    ],
    "table5": [
        StatColumn(f"{title} {label}", metric, metric, 1)
        for title in ("mAP (%)", "mAR (%)")
        for label, mode in (("w/o NMS", "e2e"), ("w/ NMS", "nms"))
        for metric in [f"{title.split()[0]}_{mode}"]
    ],
}


def model_of(table: str, cell: str) -> str:
    return cell.split("-")[1] if table == "table1" else cell.split("-")[0]


def baseline_of(table: str, cell: str) -> str:
    """Table 1: FCOS of the same backbone; Table 5: two conv layers of the same model."""
    group = cell.split("-")[0]
    return f"{group}-fcos" if table == "table1" else f"{group}-convs2"


def paper_value(table: str, cell: str, key: str) -> float | None:
    if table == "table1":
        want = {"backbone": BACKBONE[cell.split("-")[0]], "model": model_of(table, cell)}
    else:
        want = {"model": model_of(table, cell), "pss_num_convs": int(cell[-1])}
    rows = [r for r in PAPER[table]["rows"] if all(r.get(k) == v for k, v in want.items())]
    assert len(rows) <= 1, rows
    return rows[0].get(key) if rows else None


def seed_samples(table: str, cell: str, metric: str) -> list[float]:
    """The metric of the newest FINISHED run of each seed (seeded oldest first)."""
    runs = {"table1": table1_runs, "table5": table5_runs}[table]()
    newest = {r.seed: r for r in runs if r.cell == cell and r.status == "FINISHED"}
    return [r.metrics[metric] for r in newest.values() if metric in r.metrics]


@dataclass(frozen=True)
class Derived:
    n: int
    mean: float | None
    std: float | None
    p: float | None  # against the group's baseline
    within_noise: bool
    paper: float | None
    is_baseline: bool

    @property
    def delta(self) -> float | None:
        return None if self.mean is None or self.paper is None else self.mean - self.paper


def derive(table: str, cell: str, column: StatColumn) -> Derived:
    mode = "e2e" if model_of(table, cell).endswith("_pss") else "nms"
    metric = column.metric.replace("{mode}", mode)
    x = seed_samples(table, cell, metric)
    base_cell = baseline_of(table, cell)
    base_mode = "e2e" if model_of(table, base_cell).endswith("_pss") else "nms"
    y = seed_samples(table, base_cell, column.metric.replace("{mode}", base_mode))
    stds = [statistics.stdev(v) for v in (x, y) if len(v) >= 2]
    is_baseline = cell == base_cell
    diff = statistics.fmean(x) - statistics.fmean(y) if x and y else None
    return Derived(
        n=len(x),
        mean=statistics.fmean(x) if x else None,
        std=statistics.stdev(x) if len(x) >= 2 else None,
        p=None if is_baseline else welch_p_closed_form(x, y),
        within_noise=not is_baseline and bool(stds) and diff is not None and abs(diff) < max(stds),
        paper=paper_value(table, cell, column.paper_key),
        is_baseline=is_baseline,
    )


def agrees(golden: str, value: float | None) -> bool:
    """The CSV holds round(value, 6) with 6 significant digits, '' for none."""
    if value is None:
        return golden == ""
    return golden != "" and abs(float(golden) - value) <= 5e-7 + 5e-6 * abs(value)


def golden_csv(name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO((GOLDEN / f"{name}.csv").read_text("utf-8"))))


@pytest.mark.parametrize("name", GOLDEN_TABLES)
@pytest.mark.parametrize("with_paper", [False, True], ids=["ours", "paper"])
def test_golden_csv_statistics_are_derived_independently(name: str, with_paper: bool):
    rows = golden_csv(name + ("_paper" if with_paper else ""))
    checked = {"p": 0, "unequal_n_p": 0, "std": 0}
    for row in rows:
        for column in GOLDEN_COLUMNS[name]:
            h = column.header
            if row["cell"] == "(paper)":  # Table 1's DeFCN row: the paper's value alone
                (defcn,) = [r for r in PAPER[name]["rows"] if r["model"] == "defcn"]
                assert agrees(row[h], defcn.get(column.paper_key)), row
                continue
            d = derive(name, row["cell"], column)
            where = (row["cell"], h, d)
            assert row[f"{h} n"] == str(d.n), where
            assert agrees(row[h], d.mean) and agrees(row[f"{h} std"], d.std), where
            assert agrees(row[f"{h} p"], d.p), (where, row[f"{h} p"])
            if with_paper:
                assert agrees(row[f"{h} paper"], d.paper), where
                assert agrees(row[f"{h} Δ"], d.delta), where
            checked["std"] += d.std is not None
            checked["p"] += d.p is not None
            base = derive(name, baseline_of(name, row["cell"]), column)
            checked["unequal_n_p"] += d.p is not None and d.n != base.n
    assert checked["std"] >= 8 and checked["p"] >= 4
    if name == "table5":
        assert checked["unequal_n_p"] == 1  # fcos_pss-convs1 mAR w/ NMS: n=2 against n=3


def fmt_fixed(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def expected_cell(d: Derived, decimals: int) -> tuple[str, set[str]]:
    """The text of a value cell (no bold, no note) and its marks."""
    if d.n == 0:
        return "–", set()
    text = fmt_fixed(d.mean, decimals)
    if d.std is not None:
        text += f" ± {fmt_fixed(d.std, decimals)} (n={d.n})"
    marks = {"†"} if d.p is not None and d.p < 0.05 else set()
    return text, marks | ({"≈"} if d.within_noise else set())


def expected_delta(d: Derived, decimals: int) -> str:
    if d.delta is None:
        return "–"
    rounded = round(d.delta, decimals)
    return fmt_fixed(0.0, decimals) if rounded == 0 else f"{rounded:+.{decimals}f}"


def md_cells(name: str, rows: int) -> list[list[str]]:
    """The cells of the last ``rows`` lines of the Markdown table (its data rows)."""
    lines = (GOLDEN / f"{name}.md").read_text("utf-8").splitlines()
    table = [line for line in lines if line.startswith("| ")]
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in table[-rows:]]


def tex_cells(name: str, rows: int) -> list[list[str]]:
    """The cells of the last ``rows`` lines of the LaTeX tabular (its data rows)."""
    body = (GOLDEN / f"{name}.tex").read_text("utf-8").split("\\bottomrule", 1)[0]
    lines = [line for line in body.splitlines() if line.endswith("\\\\")]
    return [[c.strip() for c in line[:-2].split(" & ")] for line in lines[-rows:]]


def parse_md(cell: str) -> tuple[str, set[str]]:
    cell = re.sub(r"\[\d+\]$", "", cell)
    marks = {m for m in "†≈" if m in cell}
    return cell.replace("**", "").rstrip("†≈"), marks


def parse_tex(cell: str) -> tuple[str, set[str]]:
    sup = re.search(r"\$\^\{([^}]*)\}\$$", cell)
    marks = set()
    if sup:
        cell = cell[: sup.start()]
        marks = {"†" if m == "\\dagger" else "≈" for m in sup[1].split(",") if "\\" in m}
    cell = re.sub(r"^\\textbf\{(.*)\}$", r"\1", cell).replace(" $\\pm$ ", " ± ")
    return ("–" if cell == "--" else cell.strip("$")), marks


@pytest.mark.parametrize("name", GOLDEN_TABLES)
@pytest.mark.parametrize("fmt", ["md", "tex"])
@pytest.mark.parametrize("with_paper", [False, True], ids=["ours", "paper"])
def test_golden_table_cells_are_derived_independently(name: str, fmt: str, with_paper: bool):
    """mean ± std (n), † (Welch p < 0.05), ≈ (within seed noise), paper and Δ columns."""
    file = name + ("_paper" if with_paper else "")
    cells = [r["cell"] for r in golden_csv(file)]  # one line per table row, in order
    rows = (md_cells if fmt == "md" else tex_cells)(file, len(cells))
    parse = parse_md if fmt == "md" else parse_tex
    columns = GOLDEN_COLUMNS[name]
    width = 3 if with_paper else 1
    for cell, row in zip(cells, rows):
        values = row[len(row) - width * len(columns) :]
        for i, column in enumerate(columns):
            text, marks = parse(values[i * width])
            if cell == "(paper)":
                continue
            d = derive(name, cell, column)
            assert (text, marks) == expected_cell(d, column.decimals), (cell, column.header)
            if with_paper:
                paper, delta = (parse(v)[0] for v in values[i * width + 1 : i * width + 3])
                want = "" if d.paper is None else fmt_fixed(d.paper, column.decimals)
                assert paper == want, (cell, column.header, paper)
                assert delta == expected_delta(d, column.decimals), (cell, column.header)


def test_table5_content(store: Store, tmp_path: Path):
    """What the goldens must show, spelled out."""
    report = make_report(SWEEPS / "table5.yaml", out_dir=tmp_path)
    md = store.normalize(report.markdown or "")
    # three seeds: mean ± std (n); convs1 vs the convs2 baseline: Welch p = 0.001 -> †
    assert "41.6 ± 0.1 (n=3)†" in md
    assert "**42.3 ± 0.1 (n=3)**" in md  # the best of its group, the baseline itself
    # atss_pss-convs1 mAP w/ NMS 42.3 vs the baseline's 42.3 ± 0.3: within seed noise
    assert "**42.3**≈[" in md
    assert "fcos_pss-convs3: failed (run <fcos_pss-convs3/s0>): RuntimeError: CUDA out of" in md
    assert "atss_pss-convs1: seed 1 running (run <atss_pss-convs1/s1>)" in md
    assert "atss_pss-convs3: not run yet" in md
    assert "fcos_pss-convs1: mAR_nms missing (run <fcos_pss-convs1/s2>)" in md
    assert md.count("| ATSS_PSS |") == 1 and md.count("| FCOS_PSS |") == 1  # groups shown once
    report_md = (tmp_path / "REPORT.md").read_text()
    assert "Not in the spec (ignored): 1 runs of cells old-cell" in report_md
    # the reported runs' code, and how many of them ran uncommitted edits besides
    assert "from 10 finished runs (code: git 0123456789; 1 of 10 runs with uncommitted" in report_md
    assert "Torch CPU threads: 1, 2; seeds at different counts in fcos_pss-convs2 (a" in report_md
    assert "](table5.tex)" in report_md and "Generated " in report_md and "sqlite:///" in report_md


def test_table1_content(store: Store, tmp_path: Path):
    report = make_report(SWEEPS / "table1.yaml", out_dir=tmp_path, formats="md")
    md = store.normalize(report.markdown or "")
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    labels = [re.split(r"\s*\|\s*", r)[2] for r in rows[2:]]
    assert labels[:3] == ["FCOS", "ATSS", "DeFCN[1]"]  # DeFCN placed after r50-atss
    defcn = rows[2 + 2]
    assert "41.5" in defcn and "61.4" in defcn
    assert "[1] DeFCN: value from the paper (Wang et al.), not trained here" in md
    # FCOS_PSS: w/o NMS (42.6), FCOS: w/ NMS (42.0); times with two decimals, min is bold
    fcos_pss = rows[2 + 3]
    assert "42.6 ± 0.1 (n=3)†" in fcos_pss and "**1.49 ± 0.01 (n=3)**" in fcos_pss
    assert "42.0 ± 0.1 (n=3)" in rows[2] and "**38.30**" in rows[3]
    assert "x101dcn-atss_pss: failed (run <x101dcn-atss_pss/s0>), no traceback.txt" in md
    assert "r50-atss_pss: running (run <r50-atss_pss/s0>)" in md
    assert "r2n101dcn-atss_pss: not run yet" in md
    assert sorted(p.name for p in tmp_path.iterdir()) == ["REPORT.md", "cost.md", "table1.md"]


# --------------------------------------------------------------------- LaTeX


@pytest.fixture(scope="module")
def all_tables(store: Store) -> Path:
    """Tables 1-9 from synthetic runs: two seeds each, one failed and one missing cell."""
    out = store.root / "all"
    for i in range(1, 10):
        loaded = load_spec(SWEEPS / f"table{i}.yaml")
        runs = synthetic_runs(loaded, seeds=[0, 1], rng_seed=i, with_params=False)
        failed = FakeRun(cell=runs[0].cell, seed=2, status="FAILED", traceback=TRACEBACK)
        runs = [r for r in runs if r.cell != runs[-1].cell] + [failed]
        store.seed(f"all-table{i}", runs)
        for with_paper in (False, True):
            spec = _renamed_spec(SWEEPS / f"table{i}.yaml", f"all-table{i}", store.root)
            make_report(
                spec,
                out_dir=out / f"table{i}{'_paper' if with_paper else ''}",
                with_paper=with_paper,
                formats="tex",
            )
    return out


def _renamed_spec(path: Path, name: str, tmp: Path) -> Path:
    """A copy of a spec under another name (its own experiment), bases made absolute."""
    text = path.read_text()
    text = re.sub(r"^name: .*$", f"name: {name}", text, count=1, flags=re.M)
    text = text.replace("../experiments/", f"{ROOT}/experiments/")
    text += f"\nsmoke: {ROOT}/experiments/smoke/overlay.yaml\n"
    copy = tmp / "specs" / f"{name}.yaml"
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(text)
    return copy


def pdflatex(tex: str, where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "doc.tex").write_text(tex, encoding="utf-8")
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=600,  # only catches a hang
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    return where / "doc.pdf"


@pytest.mark.parametrize("i", range(1, 10))
def test_latex_compiles(all_tables: Path, tmp_path: Path, i: int):
    fragments = [
        (all_tables / f"table{i}{suffix}" / f"all-table{i}.tex").read_text(encoding="utf-8")
        for suffix in ("", "_paper")
    ]
    assert all(r"\toprule" in f and r"\bottomrule" in f for f in fragments)
    assert "--$^{" in fragments[0]  # the missing cell: a dash with a footnote
    pdf = pdflatex(latex.document(*fragments), tmp_path)
    assert pdf.read_bytes().startswith(b"%PDF-")


# ------------------------------------------------------------------- figures


@pytest.mark.parametrize("name,panels,curves", [("fig3", 2, [2, 2]), ("fig4", 1, [3])])
def test_figures(store: Store, tmp_path: Path, name: str, panels: int, curves: list[int]):
    loaded = load_spec(SWEEPS / f"{name}.yaml")
    runs = synthetic_runs(loaded, seeds=[0, 1], epochs=6, with_params=False)
    runs.append(FakeRun(cell=runs[0].cell, seed=2, status="RUNNING"))
    store.seed(name, runs)
    report = make_report(SWEEPS / f"{name}.yaml", out_dir=tmp_path)
    png, pdf = tmp_path / f"{name}.png", tmp_path / f"{name}.pdf"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    text = report.path.read_text()
    assert f"]({name}.png)" in text and f"]({name}.pdf)" in text
    assert "running (run" in text  # the running seed is listed under the figure
    results = collect_cells(loaded, expand(loaded), fetch_runs(name, store.client))
    got, _ = figure_panels(loaded, results, mlflow_history(store.client))
    assert [len(p.curves) for p in got] == curves and len(got) == panels
    assert all(c.epochs == tuple(range(1, 7)) and c.n == 2 for p in got for c in p.curves)


# ------------------------------------------------------------------ CLI, scale


def test_cli_prints_markdown(store: Store, tmp_path: Path, capsys):
    assert main([str(SWEEPS / "table5.yaml"), "--out", str(tmp_path), "--format", "csv"]) == 0
    out = capsys.readouterr()
    assert "| FCOS_PSS |" in out.out and "wrote " in out.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["REPORT.md", "table5.csv"]


def _bad_spec(tmp_path: Path, old: str, new: str) -> Path:
    text = (SWEEPS / "table5.yaml").read_text().replace(old, new)
    text = text.replace("../experiments/", f"{ROOT}/experiments/")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text + f"\nsmoke: {ROOT}/experiments/smoke/overlay.yaml\n")
    return bad


def test_bad_spec_exits_2(store: Store, tmp_path: Path, capsys):
    out = tmp_path / "out"
    bad = _bad_spec(tmp_path, "mAP_e2e, label", "mAP_e2ee, label")
    assert main([str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown metric 'mAP_e2ee'" in err and "did you mean 'mAP_e2e'" in err
    assert len(err.splitlines()) == 1 and not out.exists()
    bad = _bad_spec(tmp_path, "key: model.pss.num_convs", "key: model.pss.num_conv")
    assert main([str(bad), "--out", str(out)]) == 2
    assert "table.rows.1.key: 'model.pss.num_conv'" in capsys.readouterr().err
    assert main([str(SWEEPS / "search_pss_loss.yaml"), "--out", str(out)]) == 2  # no table
    assert main([str(SWEEPS / "table5.yaml"), "--format", "html", "--out", str(out)]) == 2
    assert not out.exists()
    proc = subprocess.run(
        [sys.executable, "reports/make_tables.py", str(tmp_path / "missing.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,  # only catches a hang
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "cannot read spec" in proc.stderr


def test_smoke_reads_the_smoke_experiment(store: Store, tmp_path: Path):
    loaded = load_spec(SWEEPS / "table7.yaml")
    runs = synthetic_runs(loaded, smoke=True, with_params=False)
    store.seed("table7-smoke", runs[:1])
    report = make_report(SWEEPS / "table7.yaml", smoke=True, out_dir=tmp_path, formats="md")
    assert report.experiment == "table7-smoke"
    md = report.markdown or ""
    assert md.count("–[") == 4 and "fcos_pss-lambda1_1.0: not run yet" in md
    assert "Smoke run: the CPU variant" in md  # smoke tables say they are not the paper's


class CountingClient(MlflowClient):
    """A real client that counts its searches."""

    searches = 0

    def search_runs(self, *args, **kwargs):
        CountingClient.searches += 1
        return super().search_runs(*args, **kwargs)


def test_one_search_per_experiment(store: Store, tmp_path: Path):
    CountingClient.searches = 0
    make_report(SWEEPS / "table5.yaml", out_dir=tmp_path, client=CountingClient(store.uri))
    assert CountingClient.searches == 1
