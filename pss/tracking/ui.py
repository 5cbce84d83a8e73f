"""How MLflow's UI opens a sweep's runs: model-training view, table columns, a working command.

    publish_view(client, experiment_id, loaded_spec)   # a saved view named after the table
    print(ui_hint(uri, experiment_id, view_id(loaded_spec)))

MLflow 3.17's UI shows an experiment in its GenAI view (an "Overview" of traces)
unless the page's ``workflowType`` is ``machine_learning``: a URL parameter,
else a choice the browser remembers. The experiment tag ``mlflow.experimentKind``
that older UIs read to classify an experiment is set as well (``custom_model_development``:
"Machine learning"), but 3.17's UI does not read it (seen in a browser, and in its
bundle: the workflow switch always wins). So the URL the sweep prints carries
``workflowType=machine_learning``.

The runs table shows no metric column until someone picks them, and the chart view
(``compareRunsMode=CHART``) starts with whatever the runs logged first (training
losses). A *saved view* fixes both: an experiment tag ``mlflow.sharedViewState.<id>``
holding the page state as JSON in the envelope 3.17 reads (``name``, ``createdAt``,
``updatedAt``, ``state``). It lists in the UI's "Views" menu under the table's title
and opens from a URL with ``viewStateShareKey=<id>``: the runs table with the spec's
row keys (params) and table metrics as columns, and the chart view starting with one
section of bar charts of those metrics (a line chart of a figure's metric). MLflow's
separate "Compare runs" page (tick runs, then Compare) cannot be configured from the
server: its parallel-coordinates plot starts with the first metric the runs share in
the order they logged them.

Importing this module loads neither MLflow nor torch (a re-run of a finished sweep prints
:func:`sweep_hint`); :func:`publish_view` takes the caller's client. ``python -m
pss.tracking.ui SPEC [--smoke] [--screenshots DIR]`` publishes the view of an existing
experiment, prints how to open it and, with ``--screenshots``, serves the store with
``mlflow ui`` and takes headless Chromium screenshots of the runs table, the chart view
and the Compare runs page (then stops the server and the browser).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from pss import contract
from pss.errors import EXIT_INVALID, EXIT_OK, UserError
from pss.sweep import process
from pss.sweep.schema import LoadedSpec, load_spec
from pss.sweep.server import free_port, healthy
from pss.tracking.store import current_uri, experiment_tags, retry

VIEW_TAG_PREFIX = "mlflow.sharedViewState."
DEFAULT_PORT = 5000
_SECTION = "pss-table"  # the chart section holding the spec's own charts


def view_id(loaded: LoadedSpec) -> str:
    """The saved view's id (tag suffix and ``viewStateShareKey``): ``pss-<spec name>``."""
    return f"pss-{loaded.spec.name}"


def _modes(metric: str) -> list[str]:
    """A metric with ``{mode}`` stands for both primary modes (e2e, nms)."""
    if contract.MODE_PLACEHOLDER not in metric:
        return [metric]
    return [metric.replace(contract.MODE_PLACEHOLDER, mode) for mode in ("e2e", "nms")]


def primary_metrics(loaded: LoadedSpec) -> list[str]:
    """The spec's primary metric: a search's, else the table's first column (both modes
    for ``{mode}``), else the figure's; then ``gpu_hours``, what each run cost."""
    spec = loaded.spec
    if spec.search is not None:
        first = [spec.search.metric]
    elif spec.table is not None:
        first = _modes(spec.table.columns[0].columns[0].metric)
    elif spec.figure is not None:
        first = [spec.figure.metric]
    else:
        first = []
    return [*first, contract.GPU_HOURS]


def view_columns(loaded: LoadedSpec) -> tuple[list[str], list[str]]:
    """(params, metrics) a spec reports: row keys, then the primary metric and GPU-hours
    (:func:`primary_metrics`), then the other table (or figure, search) metrics.

    A table metric with ``{mode}`` stands for both primary modes (e2e, nms).
    """
    spec = loaded.spec
    params: list[str] = []
    metrics: list[str] = primary_metrics(loaded)
    if spec.table is not None:
        params = [row.key for row in spec.table.rows if row.key != "cell"]
        for group in spec.table.columns:
            for column in group.columns:
                metrics += _modes(column.metric)
    if spec.figure is not None:
        params += [k for k in (spec.figure.panels, spec.figure.series) if k]
        metrics.append(spec.figure.metric)
    if spec.search is not None:
        params += [p.key for p in spec.search.params]
        metrics.append(spec.search.metric)
    return list(dict.fromkeys(params)), list(dict.fromkeys(metrics))


def view_state(loaded: LoadedSpec) -> dict[str, Any]:
    """The experiment page's state (search facets + UI state) of the spec's saved view."""
    params, metrics = view_columns(loaded)
    line = {loaded.spec.figure.metric} if loaded.spec.figure is not None else set()
    charts = []
    for metric in metrics:
        chart: dict[str, Any] = {
            "uuid": f"pss-{metric}",
            "type": "LINE" if metric in line else "BAR",
            "metricKey": metric,
            "metricSectionId": _SECTION,
            "runsCountToCompare": 100,
            "deleted": False,
            "isGenerated": False,
        }
        if metric in line:
            chart |= {"selectedMetricKeys": [metric], "xAxisKey": "step", "scaleType": "linear"}
        charts.append(chart)
    return {
        # search facets: every active run, newest first
        "searchFilter": "",
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        # UI state: the reported columns, the reported metrics' charts first
        "selectedColumns": [f"params.`{p}`" for p in params]
        + [f"metrics.`{m}`" for m in metrics],
        "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": charts,
        "compareRunSections": [
            {
                "uuid": _SECTION,
                "name": _title(loaded),
                "display": True,
                "isReordered": False,
                "deleted": False,
                "isGenerated": False,
            }
        ],
        "isAccordionReordered": False,
        "viewMaximized": False,
        "runListHidden": False,
        "hideEmptyCharts": True,
    }


def _title(loaded: LoadedSpec) -> str:
    spec = loaded.spec
    if spec.table is not None:
        return spec.table.title
    if spec.figure is not None:
        return spec.figure.title
    return spec.description or spec.name


def view_tags(loaded: LoadedSpec, now_ms: int | None = None) -> dict[str, str]:
    """The experiment tags to set: the model-training kind and the saved view."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    envelope = {
        "name": _title(loaded),
        "createdAt": now_ms,
        "updatedAt": now_ms,
        "state": json.dumps(view_state(loaded), separators=(",", ":")),
    }
    return {
        contract.TAG_EXPERIMENT_KIND: contract.EXPERIMENT_KIND_TRAINING,
        VIEW_TAG_PREFIX + view_id(loaded): json.dumps(envelope, separators=(",", ":")),
    }


def is_published(loaded: LoadedSpec, tags: dict[str, str]) -> bool:
    """Whether an experiment's ``tags`` already hold :func:`view_tags` as the spec is now
    (the times of the saved view aside)."""
    def timeless(envelope: str) -> dict[str, Any]:
        stamps = ("createdAt", "updatedAt")
        return {k: v for k, v in json.loads(envelope).items() if k not in stamps}

    for key, value in view_tags(loaded, now_ms=0).items():
        if key not in tags:
            return False
        try:
            same = (
                timeless(tags[key]) == timeless(value)
                if key.startswith(VIEW_TAG_PREFIX)
                else tags[key] == value
            )
        except ValueError:  # a view tag that is not our JSON: publish ours again
            return False
        if not same:
            return False
    return True


def publish_view(client: Any, experiment_id: str, loaded: LoadedSpec) -> str:
    """Set :func:`view_tags` on the experiment through ``client`` (an MlflowClient); its id."""
    for key, value in view_tags(loaded).items():
        retry(client.set_experiment_tag, experiment_id, key, value)
    return view_id(loaded)


def runs_url(
    base: str, experiment_id: str, view: str | None = None, charts: bool = False
) -> str:
    """The experiment's runs table (``charts``: its chart view) in the model-training view."""
    query = {"workflowType": "machine_learning"}
    if view:
        query["viewStateShareKey"] = view
    if charts:
        query["compareRunsMode"] = "CHART"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


def mlflow_executable() -> Path:
    """The ``mlflow`` command of this environment (beside its Python)."""
    return Path(sys.executable).parent / "mlflow"


def ui_hint(uri: str, experiment_id: str | None, view: str | None, port: int = DEFAULT_PORT) -> str:
    """A command that serves the store (as printed, venv or not), the URL of the runs
    table and, with a saved view, of its chart view.

    ``uri`` is the tracking URI; an ``http(s)://`` server needs no command.
    """
    if uri.startswith(("http://", "https://")):
        base = uri
        command = None
    else:
        base = f"http://127.0.0.1:{port}"
        command = f"{mlflow_executable()} ui --backend-store-uri {uri} --port {port}"
    url = runs_url(base, experiment_id, view) if experiment_id else f"{base}/#/experiments"
    lines = [f"  serve:  {command}"] if command else []
    lines.append(f"  open:   {url}")
    if experiment_id and view:  # the chart view, on the primary metric and GPU-hours first
        lines.append(f"  charts: {runs_url(base, experiment_id, view, charts=True)}")
    return "\n".join(lines)


def sweep_hint(loaded: LoadedSpec, experiment: str) -> str:
    """:func:`ui_hint` for a sweep's experiment, with the spec's saved view published
    (through MLflow's client only when it is not there yet: a re-run of a finished sweep
    on a local store imports no MLflow)."""
    uri = current_uri()
    known = experiment_tags(experiment, uri)
    if known is not None and is_published(loaded, known[1]):
        return ui_hint(uri, known[0], view_id(loaded))
    from pss.tracking.logger import client

    mlflow = client(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return ui_hint(uri, None, None)
    return ui_hint(uri, found.experiment_id, publish_view(mlflow, found.experiment_id, loaded))


# --------------------------------------------------------------------------- in a browser

BROWSER_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
WINDOW = (1600, 1000)
RENDER_BUDGET_MS = 60_000  # virtual time for the page's scripts and charts to settle
BROWSER_TIMEOUT_S = 300.0


def chromium() -> str:
    """The Chromium executable (Debian's ``chromium``)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise UserError(
            "no chromium on PATH: apt-get install chromium (`make system-deps` does)"
        )
    return found


def _browse(url: str, action: list[str]) -> str:
    """Run headless Chromium on ``url`` with ``action`` flags, in a fresh profile; stdout."""
    with tempfile.TemporaryDirectory(prefix="pss-chromium-") as profile:
        command = [
            chromium(),
            *BROWSER_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--virtual-time-budget={RENDER_BUDGET_MS}",
            *action,
            url,
        ]
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # Chromium's helpers go with it
        )
        try:
            out, _ = proc.communicate(timeout=BROWSER_TIMEOUT_S)
        finally:
            process.stop_group(proc.pid)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited with status {proc.returncode} on {url}")
    return out


def screenshot(url: str, path: Path) -> Path:
    """A PNG of ``url`` as a 1600x1000 window shows it, once its scripts have settled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _browse(url, [f"--screenshot={path}"])
    if not path.is_file():
        raise RuntimeError(f"chromium wrote no screenshot of {url}")
    return path


def page_dom(url: str) -> str:
    """The page's DOM (HTML) once its scripts have settled."""
    return _browse(url, ["--dump-dom"])


@contextlib.contextmanager
def served(uri: str, wait_s: float = 300.0) -> Iterator[str]:
    """``mlflow ui`` on store ``uri`` (local port, no job runner) while the block runs; its URL.

    Started in its own session and stopped as a whole process group afterwards.
    """
    port = free_port("127.0.0.1")
    url = f"http://127.0.0.1:{port}"
    command = [str(mlflow_executable()), "ui", "--backend-store-uri", uri, "--port", str(port)]
    command += ["--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            deadline = time.monotonic() + wait_s
            while not healthy(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"mlflow ui did not start on {uri}:\n{tail}")
                time.sleep(0.5)
            yield url
        finally:
            process.stop_group(proc.pid)
            proc.wait()


def take_screenshots(
    uri: str, experiment_id: str, view: str, run_ids: list[str], out: Path
) -> list[Path]:
    """runs.png (runs table), charts.png (chart view) and compare.png (Compare runs page)."""
    with served(uri) as base:
        compare = (
            f"{base}/#/compare-runs?"
            + urlencode({"runs": json.dumps(run_ids), "experiments": json.dumps([experiment_id])})
        )
        return [
            screenshot(runs_url(base, experiment_id, view), out / "runs.png"),
            screenshot(runs_url(base, experiment_id, view, charts=True), out / "charts.png"),
            screenshot(compare, out / "compare.png"),
        ]


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pss.tracking.ui",
        description="Give a sweep's MLflow experiment its saved view (the table's columns and "
        "charts) and print how to open it; optionally take screenshots in headless Chromium.",
    )
    parser.add_argument("spec", help="sweep spec YAML (e.g. sweeps/table5.yaml)")
    parser.add_argument("--smoke", action="store_true", help="the spec's -smoke experiment")
    parser.add_argument(
        "--engine",
        choices=contract.ENGINES,
        default=None,
        help="the runs of `sweeps/run.py --engine E`",
    )
    parser.add_argument("--screenshots", type=Path, metavar="DIR", help="write PNGs here")
    args = parser.parse_args(argv)
    try:
        loaded = load_spec(args.spec, args.engine)
        name = loaded.experiment(args.smoke)
        uri = current_uri()
        from pss.tracking.logger import client as tracking_client  # MLflow: seconds to import

        mlflow = tracking_client(uri)
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            raise UserError(f"no MLflow experiment '{name}' in {uri}: run the sweep first")
        view = publish_view(mlflow, experiment.experiment_id, loaded)
        print(f"MLflow UI on experiment '{name}':\n{ui_hint(uri, experiment.experiment_id, view)}")
        if args.screenshots is not None:
            runs = mlflow.search_runs([experiment.experiment_id], max_results=10)
            paths = take_screenshots(
                uri, experiment.experiment_id, view, [r.info.run_id for r in runs], args.screenshots
            )
            print("screenshots: " + ", ".join(str(p) for p in paths))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
