"""Users' own data and specs, more of the mistakes people make (issue 22): each case runs
the real command on the broken input and checks exit 2, one ``error:`` line naming the
file or key, no traceback and nothing written (no run logged, no output folder).

The data cases start from the session's tiny shapes set: its image folders linked, its
annotation files copied and then broken as a person might break them.
"""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from pss.errors import EXIT_INVALID, EXIT_OK
from pss.testing.commands import assert_refused, run_command
from pss.testing.configs import tiny_train_overrides

Json = dict[str, Any]


def own_data(root: Path, shapes_root: Path) -> Path:
    """A copy of the shapes set's annotation files under ``root``, its image folders linked."""
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (root / split).symlink_to(shapes_root / split)
        ann = shapes_root / "annotations" / f"{split}.json"
        (root / "annotations" / f"{split}.json").write_bytes(ann.read_bytes())
    return root


def edit(root: Path, split: str, change: Callable[[Json], Any]) -> Path:
    path = root / "annotations" / f"{split}.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def command(module: str, root: Path, out: Path, *more: str) -> list[str]:
    """``-m MODULE CONFIG --set ...``: the tiny training on ``root`` (no synthetic data),
    the config an empty file beside ``out``."""
    config = out.parent / "empty.yaml"
    config.write_text("{}\n")
    sets = [s for s in tiny_train_overrides(root, out) if not s.startswith("data.synthetic")]
    return ["-m", module, str(config), *(a for s in [*sets, *more] for a in ("--set", s))]


def run_train(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    return run_command(list(argv), tmp_path, env=env)


def runs_logged(tmp_path: Path) -> int:
    store = tmp_path / "mlflow.db"
    if not store.exists():
        return 0
    with sqlite3.connect(store) as db:
        tables = {r[0] for r in db.execute("select name from sqlite_master")}
        return db.execute("select count(*) from runs").fetchone()[0] if "runs" in tables else 0


def check_refused(proc: subprocess.CompletedProcess, named: Path, said: str) -> None:
    """The data check's refusal: exit 2, one ``error:`` line, the problems listed below it
    (each naming its annotation file), no traceback."""
    assert proc.returncode == EXIT_INVALID, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")] == [
        "error: the data check found problems; nothing trains until they are fixed:"
    ], proc.stderr[-3000:]
    assert any(str(named) in ln and said in ln for ln in proc.stderr.splitlines()), proc.stderr


def _huge_id(d: Json) -> None:
    d["images"][0]["id"] = 2**70  # beyond int64: numpy cannot hold it
    for ann in d["annotations"]:
        ann["image_id"] = 2**70 if ann["image_id"] == 1 else ann["image_id"]


def _drop_category(d: Json) -> None:
    d["categories"] = [c for c in d["categories"] if c["id"] != 7]
    d["annotations"] = [a for a in d["annotations"] if a["category_id"] != 7]


def _swap_names(d: Json) -> None:
    names = {1: "square", 3: "circle", 7: "triangle"}  # the training file: circle, square
    for cat in d["categories"]:
        cat["name"] = names[cat["id"]]


DATA_CASES = {  # split, change, what the message says
    "id beyond 64 bits": ("train", _huge_id, "'id' must be an integer of 64 bits at most"),
    "empty file_name": (
        "train",
        lambda d: d["images"][0].update(file_name=""),
        "images[0] (id 1): 'file_name' must be a non-empty string, got ''",
    ),
    "area not a number": (
        "train",
        lambda d: d["annotations"][0].update(area="big"),
        "'area' must be a number of square pixels >= 0 (or left out), got 'big'",
    ),
    "val lacks a category": ("val", _drop_category, "missing here: 7 'triangle'"),
    "val names swapped": ("val", _swap_names, "id 1 is 'square' here, 'circle' there"),
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_broken_annotation_files_are_refused_by_the_check(case, tmp_path, shapes_root):
    root = own_data(tmp_path / "data", shapes_root)
    split, change, said = DATA_CASES[case]
    ann = edit(root, split, change)
    proc = run_train(tmp_path, *command("pss.data.check", root, tmp_path / "out"))
    check_refused(proc, ann, said)


def test_an_empty_annotation_file_and_an_image_folder_that_is_a_file(tmp_path, shapes_root):
    root = own_data(tmp_path / "data", shapes_root)
    (root / "annotations" / "train.json").write_text("")
    (root / "val").unlink()
    (root / "val").write_text("not a folder\n")
    proc = run_train(tmp_path, *command("pss.data.check", root, tmp_path / "out"))
    check_refused(proc, root / "annotations" / "train.json", "the annotation file is empty")
    assert f"image directory {root / 'val'} is a file, not a folder" in proc.stderr


def test_training_refuses_a_val_file_with_other_categories_before_any_epoch(
    tmp_path, shapes_root
):
    """Evaluation maps the model's classes (the training file's categories) through the
    validation file's: with one category fewer there, the first evaluation used to fail
    with an IndexError after a whole epoch."""
    root = own_data(tmp_path / "data", shapes_root)
    ann = edit(root, "val", _drop_category)
    out = tmp_path / "out"
    proc = run_train(tmp_path, *command("pss.train", root, out))
    check_refused(proc, ann, f"its categories are not those of {root / 'annotations'}")
    assert not out.exists() and runs_logged(tmp_path) == 0


def test_boxes_without_area_train_and_evaluate(tmp_path, shapes_root):
    """Many converters leave COCO's 'area' out; COCOeval sorts boxes into sizes by it and
    used to fail with KeyError: 'area' after the first epoch. It is w * h when absent."""
    root = own_data(tmp_path / "data", shapes_root)
    for split in ("train", "val"):
        edit(root, split, lambda d: [a.pop("area", None) for a in d["annotations"]])
    out = tmp_path / "out"
    argv = command("pss.train", root, out, "train.epochs=1", "train.lr_steps=[1]")
    proc = run_train(tmp_path, *argv)
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    metrics = json.loads((out / "eval" / "epoch_001" / "metrics.json").read_text())
    assert all(math.isfinite(v) for v in _numbers(metrics))


def _numbers(tree: Any) -> list[float]:
    if isinstance(tree, dict):
        return [v for x in tree.values() for v in _numbers(x)]
    return [float(tree)] if isinstance(tree, int | float) else []


CONFIG_CASES = {  # overrides, the key named, what the message says
    "no eval mode": (["eval.modes=[]"], "eval.modes", "at least 1 item"),
    "a mode twice": (["eval.modes=[nms, nms]"], "eval.modes", "a mode is named twice"),
    "e2e only, no PSS head": (
        ["model.name=fcos", "eval.modes=[e2e]"],
        "eval.modes=['e2e']",
        "e2e needs a PSS head and model.name=fcos has none",
    ),
    "negative train scale": (["data.train_scales=[-5]"], "data.train_scales.0", "32"),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_settings_that_would_fail_after_an_epoch_are_refused_at_the_door(
    case, tmp_path, shapes_root
):
    overrides, key, said = CONFIG_CASES[case]
    out = tmp_path / "out"
    proc = run_train(tmp_path, *command("pss.train", shapes_root, out, *overrides))
    assert_refused(proc, key, said)
    assert not out.exists() and runs_logged(tmp_path) == 0


def test_an_output_dir_that_is_a_file_is_refused_before_anything(tmp_path, shapes_root):
    out = tmp_path / "out"
    out.write_text("a file, not a folder\n")
    proc = run_train(tmp_path, *command("pss.train", shapes_root, out))
    assert_refused(proc, out, "output_dir names a folder")
    assert out.read_text() == "a file, not a folder\n" and runs_logged(tmp_path) == 0


def _whole_model(path: Path) -> None:
    torch.save(torch.nn.Linear(2, 2), path)  # a pickled module, not a state dict


CHECKPOINT_CASES = {  # what the file is, what the message says
    "a YAML file": (lambda p: p.write_text("name: mine\n"), "not a PyTorch file"),
    "an empty file": (lambda p: p.write_bytes(b""), "the file is empty"),
    "a whole pickled model": (_whole_model, "holds Python objects besides tensors"),
}


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_a_file_that_is_not_a_checkpoint_is_named_in_a_few_words(case, tmp_path, images):
    make, said = CHECKPOINT_CASES[case]
    fake = tmp_path / "model.pth"
    make(fake)
    out = tmp_path / "predictions"
    proc = run_command(["-m", "pss.predict", fake, images[0], "--out", out], tmp_path)
    line = assert_refused(proc, fake, said)
    assert len(line) - len(str(fake)) < 200 and "PyTorch 2.6" not in line  # not torch's paragraph
    assert not out.exists()


@pytest.mark.parametrize(
    "command,value", [("pss.predict", "2"), ("pss.predict", "nan"), ("pss.visualize", "-1")]
)
def test_a_score_threshold_outside_0_1_is_refused(command, value, tmp_path, checkpoint, images):
    out = tmp_path / ("predictions" if command == "pss.predict" else "modes.png")
    argv = ["-m", command, checkpoint, images[0], "--out", out, "--score-thresh", value]
    assert_refused(run_command(argv, tmp_path), "--score-thresh", "from 0 to 1")
    assert not out.exists()
