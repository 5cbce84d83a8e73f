"""Numbers and grids as people write them (issue 22, points 4 and 5).

``1e-4`` and ``5E-3`` are floats in configs, ``--set`` values and specs (YAML 1.2's rule,
in pss.config's one loader); a non-finite value (.inf, .nan, 1e999) of a setting is
refused before anything runs. A grid without ``grid_id`` gets valid, readable, distinct and
stable cell ids; a grid of more than ``max_cells`` (5000 unless the spec raises it) is
refused. Each bad case runs the real command in a fresh folder and checks: exit 2, one
line naming the file and the key, no traceback, nothing written.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pss.config import load_config, parse_override
from pss.sweep.schema import ID_PATTERN, MAX_ID_LENGTH, id_text
from pss.testing import REPO

EXPERIMENT = REPO / "experiments" / "fcos_pss_r50_3x.yaml"
RUN = REPO / "sweeps" / "run.py"


def run(folder: Path, *argv: str) -> subprocess.CompletedProcess:
    """``python ARGV...`` in ``folder`` with no tracking URI set (a store would be ./mlflow.db)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [sys.executable, *argv], cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )


def refused(folder: Path, inputs: set[str], proc: subprocess.CompletedProcess, *names: str) -> str:
    """Exit 2 with one line on stderr naming each of ``names``; nothing but ``inputs`` in
    ``folder`` (no outputs/, no mlflow.db, no mlruns/)."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, err)
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    for name in names:
        assert name in err, (name, err)
    assert sorted(p.name for p in folder.iterdir()) == sorted(inputs)
    return err


def write(path: Path, text: str) -> Path:
    path.write_text(text.replace("@BASE@", str(EXPERIMENT)))
    return path


# ------------------------------------------------------------------- 1e-4 is a float


def test_exponent_floats_read_as_floats_in_files_overrides_and_specs(tmp_path):
    plain = load_config([EXPERIMENT], ["train.base_lr=0.0001", "train.weight_decay=0.005"])
    file = write(tmp_path / "cfg.yaml", "train:\n  base_lr: 1e-4\n  weight_decay: 5E-3\n")
    assert load_config([EXPERIMENT, file]) == plain
    assert load_config([EXPERIMENT], ["train.base_lr=1e-4", "train.weight_decay=5E-3"]) == plain
    assert load_config([EXPERIMENT], ["train.base_lr=1.0e-4", "train.weight_decay=.5e-2"]) == plain
    assert [parse_override(f"k={v}")[1] for v in ("-.5e0", "+2E+1", "1.e3", "1e", "e4")] == [
        -0.5, 20.0, 1000.0, "1e", "e4"
    ]

    jobs = {}
    for name, values in (("written", "[1e-4, 5E-3]"), ("plain", "[0.0001, 0.005]")):
        spec = write(
            tmp_path / f"{name}.yaml",
            f"name: {name}\nbase: @BASE@\ngrid:\n  train.base_lr: {values}\n"
            "overrides: {train.weight_decay: 5E-3}\n",
        )
        proc = run(tmp_path, str(RUN), str(spec), "--dry-run", "--json")
        assert proc.returncode == 0, proc.stderr
        jobs[name] = json.loads(proc.stdout)
    assert jobs["written"] == jobs["plain"]
    assert [j["overrides"]["train.base_lr"] for j in jobs["plain"]] == [0.0001, 0.005]
    assert all(j["overrides"]["train.weight_decay"] == 0.005 for j in jobs["plain"])


def test_exponent_floats_meet_the_same_checks_as_others():
    with pytest.raises(Exception, match="greater than or equal to 0"):
        load_config([EXPERIMENT], ["model.loss.rank_weight=-1e-3"])


# ------------------------------------------------------------------- non-finite values

NON_FINITE_CONFIGS = {
    # case: (config file text or None, --set value or None, key named in the message)
    "file_base_lr_inf": ("train:\n  base_lr: .inf\n", None, "train.base_lr"),
    "set_weight_decay_nan": (None, "train.weight_decay=.nan", "train.weight_decay"),
    "set_loss_weight_1e999": (None, "model.loss.giou_weight=1e999", "model.loss.giou_weight"),
    "set_grad_clip_inf": (None, "train.grad_clip=.inf", "train.grad_clip"),
}


@pytest.mark.parametrize("case", sorted(NON_FINITE_CONFIGS))
def test_train_refuses_non_finite_settings_before_anything(case, tmp_path):
    text, override, key = NON_FINITE_CONFIGS[case]
    argv = ["-m", "pss.train", str(EXPERIMENT)]
    inputs: set[str] = set()
    named = [str(EXPERIMENT)]
    if text is not None:
        write(tmp_path / "cfg.yaml", text)
        argv.append("cfg.yaml")
        inputs.add("cfg.yaml")
        named.append("cfg.yaml")
    if override is not None:
        argv += ["--set", override]
    err = refused(tmp_path, inputs, run(tmp_path, *argv), key, *named)
    assert "finite" in err, err


NON_FINITE_SPECS = {
    "grid_inf": ("grid:\n  train.base_lr: [0.01, .inf]\n", "train.base_lr"),
    "grid_1e999": ("grid:\n  model.loss.pss_weight: [1, 1e999]\n", "model.loss.pss_weight"),
    "overrides_nan": (
        "grid:\n  model.pss.num_convs: [1]\noverrides: {train.momentum: .nan}\n",
        "train.momentum",
    ),
    "search_range_inf": (
        "search:\n  params:\n    - {key: train.base_lr, low: 1e-4, high: .inf, log: true}\n",
        "search.params.0.high",
    ),
}


@pytest.mark.parametrize("case", sorted(NON_FINITE_SPECS))
def test_dry_run_refuses_non_finite_values_in_a_spec(case, tmp_path):
    body, key = NON_FINITE_SPECS[case]
    write(tmp_path / "spec.yaml", f"name: nonfinite\nbase: @BASE@\n{body}")
    proc = run(tmp_path, str(RUN), "spec.yaml", "--dry-run")
    err = refused(tmp_path, {"spec.yaml"}, proc, "spec.yaml", key)
    assert err.startswith("error: spec.yaml: "), err
    assert proc.stdout == ""


# ------------------------------------------------------------------- grid cell ids

ID = re.compile(ID_PATTERN)


def dry_run_json(folder: Path, spec: Path) -> list[dict]:
    proc = run(folder, str(RUN), str(spec), "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_a_grid_without_grid_id_gets_valid_readable_distinct_stable_ids(tmp_path):
    spec = write(
        tmp_path / "spec.yaml",
        "name: ids\nbase: @BASE@\ngrid:\n"
        "  model.name: [fcos_pss, atss_pss]\n"
        "  train.base_lr: [1e-4, 0.01]\n"
        "  model.backbone.frozen_stages: [-1, 1]\n"
        '  data.root: ["my data/coco", "my data coco", data/coco]\n'
        "  train.seed: [0]\n"
        "  data.synthetic.seed: [1]\n",
    )
    jobs = dry_run_json(tmp_path, spec)
    ids = [j["cell"] for j in jobs]
    assert len(ids) == 24 and len(set(ids)) == 24
    assert all(ID.match(i) and len(i) <= MAX_ID_LENGTH for i in ids), ids
    assert dry_run_json(tmp_path, spec) == jobs  # stable
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]
    # Readable: each axis by its shortest distinct name, its value as written.
    two = write(
        tmp_path / "two.yaml",
        "name: two\nbase: @BASE@\ngrid:\n  model.name: [fcos_pss]\n"
        "  model.pss.num_convs: [1]\n  train.base_lr: [1e-4]\n"
        "  model.backbone.frozen_stages: [-1]\n  model.pss.stop_grad: [true]\n",
    )
    assert [j["cell"] for j in dry_run_json(tmp_path, two)] == [
        "name=fcos_pss+num_convs=1+base_lr=0.0001+frozen_stages=-1+stop_grad=true"
    ]


def test_id_text_keeps_clean_values_and_tells_apart_the_others():
    assert [id_text(v) for v in (True, 1e-4, -1, "fcos_pss", None)] == [
        "true", "0.0001", "-1", "fcos_pss", "null"
    ]
    odd = [id_text(v) for v in ("a b", "a/b", "a  b", [1, 2], {"a": 1})]
    assert len(set(odd)) == len(odd) and all(ID.match(f"k={t}") for t in odd), odd
    assert odd[0].startswith("a-b-") and odd[1].startswith("a-b-")


BAD_GRIDS = {
    # case: (spec body after base, words the one line must hold)
    "ids_collide": ('grid:\n  data.root: ["1", 1]\n', ["grid:", "root=1", "grid_id"]),
    "grid_id_invalid": (
        "grid:\n  model.backbone.frozen_stages: [-1, 1]\n"
        'grid_id: "{model.backbone.frozen_stages}"\n',
        ["grid_id:", "'-1'", "not valid"],
    ),
    "grid_id_collide": (
        'grid:\n  model.name: [fcos_pss, atss_pss]\n  model.pss.num_convs: [1, 2]\n'
        'grid_id: "{model.name}"\n',
        ["grid_id:", "fcos_pss", "both get the id"],
    ),
    "over_the_limit": (
        "grid:\n" + "".join(
            f"  {k}: [{', '.join(str(i) for i in range(1, 11))}]\n"
            for k in ("train.seed", "data.num_workers", "train.epochs", "train.log_interval",
                      "train.warmup_iters", "data.max_val_images")
        ),
        ["grid: 1000000 cells", "10 x 10", "limit of 5000", "max_cells"],
    ),
    "over_a_lowered_limit": (
        "max_cells: 3\ngrid:\n  model.name: [fcos_pss, atss_pss]\n"
        "  model.pss.num_convs: [1, 2]\n",
        ["grid: 4 cells (2 x 2)", "limit of 3", "max_cells: 4"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_GRIDS))
def test_dry_run_refuses_bad_grids_in_one_line(case, tmp_path):
    body, words = BAD_GRIDS[case]
    write(tmp_path / "spec.yaml", f"name: grids\nbase: @BASE@\n{body}")
    proc = run(tmp_path, str(RUN), "spec.yaml", "--dry-run")
    err = refused(tmp_path, {"spec.yaml"}, proc, *words)
    assert err.startswith("error: spec.yaml: "), err
    assert proc.stdout == ""


def test_max_cells_raises_the_limit(tmp_path):
    spec = write(
        tmp_path / "spec.yaml",
        "name: raised\nbase: @BASE@\nmax_cells: 4\ngrid:\n  model.name: [fcos_pss, atss_pss]\n"
        "  model.pss.num_convs: [1, 2]\n",
    )
    assert len(dry_run_json(tmp_path, spec)) == 4
