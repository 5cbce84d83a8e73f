"""How reports show the tracked metrics (their names live in :mod:`pss.contract`).

Accuracy metrics are in percent, one decimal, higher is better; times are in
milliseconds, two decimals (as the paper prints them: at 5,000 val images a
per-image mean is resolved well below 0.01 ms), lower is better; the cost metrics
(``gpu_hours``, ``sec_per_iter``, ``images_per_sec``) two decimals, lower is better but
for images per second. ``{mode}`` in
a spec's metric stands for the cell's primary mode (``e2e`` for the PSS
models, ``nms`` for the baselines).
"""

from __future__ import annotations

from pss.contract import COST, GPU_HOURS, IMAGES_PER_SEC, MODE_PLACEHOLDER, SEC_PER_ITER

MODE = MODE_PLACEHOLDER
MODE_LABELS = {"e2e": "w/o NMS", "nms": "w/ NMS", "raw": "raw"}  # column and axis text
COST_LABELS = {GPU_HOURS: "GPU-hours", SEC_PER_ITER: "s / iteration", IMAGES_PER_SEC: "images / s"}


def is_time(metric: str) -> bool:
    return "ms" in metric.split("_")


def mode_of(metric: str) -> str | None:
    """The mode a metric is of ('e2e' for mAP_e2e, postprocess_ms_e2e), or None (forward_ms)."""
    last = metric.rsplit("_", 1)[-1]
    return last if last in MODE_LABELS else None


def decimals(metric: str) -> int:
    return 2 if is_time(metric) or metric in COST else 1


def lower_is_better(metric: str) -> bool:
    return is_time(metric) or metric in (SEC_PER_ITER, GPU_HOURS)


def resolve(metric: str, mode: str) -> str:
    """The tracked metric name: '{mode}' replaced by the cell's primary mode."""
    return metric.replace(MODE, mode)


def paper_keys(metric: str, mode: str | None) -> list[str]:
    """Keys under which a paper row may hold ``metric``, most specific first.

    Table 1's paper values drop the mode ('mAP' for 'mAP_{mode}'); the others use
    the full metric name.
    """
    keys = [resolve(metric, mode)] if mode else []
    keys += [metric.replace("_" + MODE, ""), metric.replace(MODE, ""), metric]
    return list(dict.fromkeys(keys))


def axis_label(metric: str) -> str:
    """'mAP w/o NMS (%)' for mAP_e2e, 'mAP segm w/ NMS (%)' for mAP_segm_nms, 'forward
    (ms)' for forward_ms."""
    parts = metric.split("_")
    mode = MODE_LABELS.get(parts[-1]) if len(parts) > 1 else None
    if metric in COST:
        return COST_LABELS[metric]
    if is_time(metric):
        name = metric.split("_ms")[0].replace("_", " ")
        return f"{name}{' ' + mode if mode else ''} (ms)"
    name = " ".join(parts[:-1] if mode else parts)  # 'mAP', 'mAP segm' (masks)
    return f"{name}{' ' + mode if mode else ''} (%)"
