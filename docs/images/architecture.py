"""Draw docs/images/architecture.png: the layers of ``pss`` and the data path through them.

    .venv/bin/python docs/images/architecture.py

The layers and modules are listed here once; ``tests/test_repo.py`` checks that every
module named exists, so the picture cannot drift from the code unnoticed.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = Path(__file__).with_suffix(".png")

# Top to bottom: each layer imports only the layers below it.
LAYERS: list[tuple[str, str, list[str]]] = [
    (
        "commands",
        "what people type",
        [
            "sweeps/run.py",
            "reports/make_tables.py",
            "pss/train.py",
            "pss/predict.py",
            "pss/export.py",
            "pss/visualize.py",
            "pss/proof.py",
            "pss/mmdet/train.py",
            "pss/data/check.py",
        ],
    ),
    (
        "pss.report",
        "runs -> frame -> tables, figures",
        [f"pss/report/{m}.py" for m in ("collect", "stats", "layout", "markdown", "latex",
                                         "figures", "build")],
    ),
    (
        "pss.sweep",
        "spec -> cells -> jobs -> runs",
        [f"pss/sweep/{m}.py" for m in ("schema", "expand", "driver", "slurm", "executors",
                                        "worker", "state", "search")]
        + ["pss/tracking/ui.py"],
    ),
    (
        "engine | mmdet | deploy",
        "training, evaluation | images -> detections",
        ["pss/engine/train.py", "pss/engine/evaluate.py", "pss/engine/lifecycle.py",
         "pss/engine/checkpoint.py", "pss/mmdet/heads.py", "pss/mmdet/translate.py",
         "pss/deploy/graph.py", "pss/deploy/inference.py", "pss/deploy/draw.py"],
    ),
    (
        "pss.tracking",
        "MLflow: write runs, read them back fast",
        ["pss/tracking/logger.py", "pss/tracking/store.py"],
    ),
    (
        "pss.models  |  pss.data",
        "the maths  |  COCO, transforms, data check",
        [f"pss/models/{m}.py" for m in ("backbone", "heads", "detector", "assign", "selector",
                                         "losses", "boxes", "decode")]
        + ["pss/data/coco.py", "pss/data/transforms.py"],
    ),
    (
        "base",
        "names and settings every layer shares",
        ["pss/config.py", "pss/contract.py", "pss/errors.py", "pss/dist.py"],
    ),
]

# The data path of a sweep, left to right: (what the data is, the module that makes it).
PATH: list[tuple[str, str]] = [
    ("spec", "pss/sweep/schema.py"),
    ("cell", "pss/sweep/expand.py"),
    ("train", "pss/engine/train.py"),
    ("decode", "pss/models/decode.py"),
    ("metrics", "pss/engine/evaluate.py"),
    ("table", "pss/report/build.py"),
]

LAYER_COLOURS = ["#dbe9f6", "#e8dff5", "#fde2cf", "#fff3bf", "#d8f3dc", "#ffd6e0", "#e9ecef"]


def _wrap(words: list[str], width: int) -> list[str]:
    """The words joined by three spaces, in lines of at most ``width`` characters."""
    lines = [""]
    for word in words:
        if lines[-1] and len(lines[-1]) + 3 + len(word) > width:
            lines.append("")
        lines[-1] = f"{lines[-1]}   {word}" if lines[-1] else word
    return lines


def draw(out: Path = OUT) -> Path:
    fig = plt.figure(figsize=(12, 8.4), dpi=110)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 12)
    ax.set_ylim(-1.75, len(LAYERS) + 0.3)
    ax.axis("off")
    for row, ((name, role, modules), colour) in enumerate(zip(LAYERS, LAYER_COLOURS)):
        y = len(LAYERS) - 1 - row
        ax.add_patch(
            FancyBboxPatch(
                (0.1, y + 0.08), 11.8, 0.84, boxstyle="round,pad=0.02",
                facecolor=colour, edgecolor="#495057", linewidth=1.0,
            )
        )
        ax.text(0.3, y + 0.62, name, fontsize=12, weight="bold", va="center")
        ax.text(0.3, y + 0.3, role, fontsize=9, style="italic", va="center", color="#343a40")
        lines = _wrap([m.removeprefix("pss/") for m in modules], width=84)
        for k, line in enumerate(lines):
            ax.text(3.3, y + 0.5 + (len(lines) - 1) * 0.13 - k * 0.26, line, fontsize=8.5,
                    va="center", family="monospace")
    ax.text(
        11.8, len(LAYERS) + 0.12, "each layer imports only the layers below it",
        fontsize=9, ha="right", color="#495057",
    )
    # The data path.
    ax.text(0.3, -0.35, "data path of a sweep", fontsize=12, weight="bold", va="center")
    step = 11.6 / len(PATH)
    for i, (what, module) in enumerate(PATH):
        x = 0.2 + i * step
        ax.add_patch(
            FancyBboxPatch(
                (x, -1.55), step - 0.45, 0.8, boxstyle="round,pad=0.02",
                facecolor="#ffffff", edgecolor="#1c7ed6", linewidth=1.5,
            )
        )
        ax.text(x + (step - 0.45) / 2, -1.0, what, fontsize=12, ha="center", weight="bold")
        folder, _, name = module.rpartition("/")
        ax.text(x + (step - 0.45) / 2, -1.27, folder + "/", fontsize=7.5, ha="center",
                family="monospace")
        ax.text(x + (step - 0.45) / 2, -1.42, name, fontsize=7.5, ha="center",
                family="monospace")
        if i + 1 < len(PATH):
            ax.add_patch(
                FancyArrowPatch(
                    (x + step - 0.43, -1.15), (x + step + 0.02, -1.15),
                    arrowstyle="-|>", mutation_scale=14, color="#1c7ed6",
                )
            )
    fig.savefig(out)
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(draw())
