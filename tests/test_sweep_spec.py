"""Sweep specs: the --dry-run --json contract for every paper spec, and bad specs (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pss.config import load_config
from pss.sweep.driver import main
from pss.sweep.expand import expand
from pss.sweep.schema import load_spec
from pss.testing import REPO
from pss.testing.configs import write_spec

TRAINED_CELLS = {
    "table1": 10, "table2": 4, "table3": 2, "table4": 4, "table5": 6, "table6": 4,
    "table7": 3, "table8": 8, "table9": 4, "fig3": 4, "fig4": 3, "authors_readme": 14,
    "condinst": 5,
}
KEYS = {
    "cell", "seed", "overrides", "fingerprint", "stage", "depends_on", "engine",
    "gpu_hours", "cost_source",
}


@pytest.fixture
def clean_cwd(tmp_path, monkeypatch):
    """Run in an empty folder with its own store, and check nothing gets created there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield tmp_path
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "specs") == []


def dry_run(spec: Path, capsys, *flags: str) -> list[dict]:
    assert main([str(spec), "--dry-run", "--json", *flags]) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # stdout carries the JSON alone


@pytest.mark.parametrize("name", sorted(TRAINED_CELLS))
@pytest.mark.parametrize("smoke", [False, True])
def test_dry_run_json_contract(name, smoke, clean_cwd, capsys):
    cells = dry_run(REPO / "sweeps" / f"{name}.yaml", capsys, *(["--smoke"] if smoke else []))
    assert len({c["cell"] for c in cells}) == TRAINED_CELLS[name]
    for cell in cells:
        assert set(cell) == KEYS
        assert isinstance(cell["seed"], int) and cell["seed"] == 0
        assert len(cell["fingerprint"]) == 12 and int(cell["fingerprint"], 16) >= 0
        assert all(isinstance(k, str) for k in cell["overrides"])
        assert all(d in {c["cell"] for c in cells} for d in cell["depends_on"])
        assert cell["cost_source"] in {"learned", "measured", "derived", "unknown"}
        assert (cell["gpu_hours"] is None) == (cell["cost_source"] == "unknown")
    jobs = {(c["cell"], c["stage"], c["seed"]) for c in cells}
    assert len(jobs) == len(cells)


def test_table3_two_step_cell_is_stage2_of_a_baseline(clean_cwd, capsys):
    cells = dry_run(REPO / "sweeps" / "table3.yaml", capsys)
    stages = {c["stage"]: c for c in cells if c["cell"] == "two_step"}
    assert stages["stage1"]["overrides"]["model.name"] == "atss"
    assert stages["stage2"]["overrides"]["train.trainable"] == "pss"
    assert stages["stage2"]["depends_on"] == ["two_step"] and stages["stage1"]["depends_on"] == []
    assert stages["stage1"]["fingerprint"] != stages["stage2"]["fingerprint"]


def test_authors_readme_two_step_stages_are_the_gfocalv2_experiment_files(clean_cwd, capsys):
    """Each GFocalV2_PSS cell: stage 1 trains experiments/gfocalv2_<bb>_2x.yaml, stage 2
    is experiments/gfocalv2_pss_<bb>_two_step.yaml started from stage 1's checkpoint;
    the reference values are headed as the README's."""
    loaded = load_spec(REPO / "sweeps" / "authors_readme.yaml")
    assert loaded.spec.paper_source == "authors' README"
    jobs = {(j.cell, j.stage): j for j in expand(loaded)}
    ignored = {"name", "output_dir", "train.init_from"}
    for bb, cell in [
        ("r50", "r50"), ("x101_32x4d_dcn", "x101dcn"), ("r2n101_dcn", "r2n101dcn")
    ]:  # fmt: skip
        stage1, stage2 = (jobs[(f"{cell}-gfocalv2_pss-two_step", s)] for s in ("stage1", "stage2"))
        for job, file in ((stage1, f"gfocalv2_{bb}_2x"), (stage2, f"gfocalv2_pss_{bb}_two_step")):
            expected = load_config(REPO / "experiments" / f"{file}.yaml").flat()
            got = job.config.flat()
            assert {k for k in got if got[k] != expected[k]} <= ignored, file
        assert stage2.config.train.init_from == str(stage1.config.run_dir / "last.pth")
        assert stage2.after == ["stage1"] and not stage1.after


def fingerprints(spec: Path, capsys) -> dict[str, str]:
    return {f"{c['cell']}@{c['stage']}": c["fingerprint"] for c in dry_run(spec, capsys)}


def table3_variant(folder: Path, old: str = "", new: str = "") -> Path:
    """A copy of table3.yaml with one edit, if given (bases made absolute)."""
    text = (REPO / "sweeps" / "table3.yaml").read_text()
    if old:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    text = text.replace("../experiments/", f"{REPO}/experiments/")
    folder.mkdir(exist_ok=True)
    path = folder / f"table3_{len(list(folder.iterdir()))}.yaml"
    path.write_text(text)
    return path


def test_changing_stage1_changes_both_stage_fingerprints_and_nothing_else(clean_cwd, capsys):
    """Stage 2 starts from stage 1's weights: its fingerprint follows stage 1's settings;
    a change to stage 2 alone leaves stage 1 (and the other cell) as they were."""
    specs = clean_cwd / "specs"
    base = fingerprints(table3_variant(specs), capsys)
    assert base == fingerprints(REPO / "sweeps" / "table3.yaml", capsys)
    stage1 = fingerprints(
        table3_variant(
            specs,
            "overrides: {model.name: atss}",
            "overrides: {model.name: atss, train.base_lr: 0.02}",
        ),
        capsys,
    )
    stage2 = fingerprints(
        table3_variant(
            specs,
            "overrides: {model.name: atss_pss, train.trainable: pss,",
            "overrides: {model.name: atss_pss, train.base_lr: 0.02, train.trainable: pss,",
        ),
        capsys,
    )
    changed = {k for k in base if stage1[k] != base[k]}
    assert changed == {"two_step@stage1", "two_step@stage2"}
    changed = {k for k in base if stage2[k] != base[k]}
    assert changed == {"two_step@stage2"}
    assert stage1["two_step@stage2"] != stage2["two_step@stage2"]


def test_where_outputs_go_changes_no_fingerprint():
    """A stage started from another is told that stage's checkpoint path; moving the
    outputs moves that path but must not make finished cells look new."""
    loaded = load_spec(REPO / "sweeps" / "table3.yaml")
    here = {j.key: j.fingerprint for j in expand(loaded, output_root=Path("outputs"))}
    there = {j.key: j.fingerprint for j in expand(loaded, output_root=Path("/elsewhere/out"))}
    assert here == there and any(j.stage == "stage2" for j in expand(loaded))


def test_fingerprints_distinguish_cells_and_smoke(clean_cwd, capsys):
    real = dry_run(REPO / "sweeps" / "table5.yaml", capsys)
    smoke = dry_run(REPO / "sweeps" / "table5.yaml", capsys, "--smoke")
    assert len({c["fingerprint"] for c in real}) == 6
    assert not {c["fingerprint"] for c in real} & {c["fingerprint"] for c in smoke}


def paper_rows(spec: dict) -> list[dict]:
    return [{**row["where"], **row["values"]} for row in spec.get("paper", [])]


@pytest.mark.parametrize("name", [f"table{i}" for i in range(1, 10)])
def test_spec_reference_values_are_the_papers(name):
    shared = yaml.safe_load((Path(__file__).parent / "data" / "paper_tables.yaml").read_text())
    spec = yaml.safe_load((REPO / "sweeps" / f"{name}.yaml").read_text())
    ours = sorted(sorted(row["values"].items()) for row in spec["paper"])
    columns = {"mAP", "mAR", "forward_ms", "postprocess_ms", "mAP_e2e", "mAP_nms", "mAR_e2e",
               "mAR_nms"}
    theirs = sorted(
        sorted((k, v) for k, v in row.items() if k in columns)
        for row in shared[name]["rows"]
        if row.get("model") != "defcn"
    )
    assert ours == theirs


def test_condinst_reference_values_are_the_authors_readmes():
    """Box and mask AP of each CondInst row, in the mode the README reports it in."""
    shared = yaml.safe_load((Path(__file__).parent / "data" / "paper_tables.yaml").read_text())
    spec = yaml.safe_load((REPO / "sweeps" / "condinst.yaml").read_text())
    assert spec["paper_source"] == "authors' README"
    labels = {c["id"]: c["labels"] for c in spec["cells"]}
    ours = sorted(
        (tuple(sorted(labels[row["where"]["cell"]].items())), sorted(row["values"].items()))
        for row in spec["paper"]
    )
    theirs = []
    for row in shared["authors_readme"]["instance_segmentation"]["rows"]:
        mode = "nms" if row["nms"] else "e2e"
        where = {k: row[k] for k in ("backbone", "model", "schedule")}
        values = {f"mAP_{mode}": row["mAP"], f"mAP_segm_{mode}": row["mAP_segm"]}
        theirs.append((tuple(sorted(where.items())), sorted(values.items())))
    assert ours == sorted(theirs)
    for cell in spec["cells"]:  # each cell trains its row's model, backbone and schedule
        cfg = load_config([REPO / "sweeps" / cell["base"]])
        epochs = {"1x": 12, "3x": 36}[cell["labels"]["schedule"]]
        assert cfg.model.name == cell["labels"]["model"] and cfg.train.epochs == epochs
        assert cfg.model.backbone.name == {"R50": "resnet50", "R101": "resnet101"}[
            cell["labels"]["backbone"]
        ]


GOOD = """
name: tiny
base: @EXP@/fcos_pss_r50_3x.yaml
grid:
  model.pss.num_convs: [1, 2]
"""

BAD_SPECS = {
    "unknown_key": (GOOD + "sedes: [0]\n", "unknown key 'sedes' (did you mean 'seeds'?)"),
    "unknown_nested_key": (
        GOOD + "resources: {gpus_per_nod: 2}\n",
        "unknown key 'resources.gpus_per_nod' (did you mean 'gpus_per_node'?)",
    ),
    "wrong_type": (GOOD + "seeds: zero\n", "seeds: Input should be a valid list"),
    "empty_axis": (GOOD.replace("[1, 2]", "[]"), "grid.model.pss.num_convs: empty axis"),
    "unknown_base": (
        GOOD.replace("fcos_pss_r50_3x", "nope"),
        "base: experiment file not found",
    ),
    "unknown_config_key": (
        GOOD.replace("model.pss.num_convs", "model.pss.numconvs"),
        "unknown key 'model.pss.numconvs' (did you mean 'model.pss.num_convs'?)",
    ),
    "wrong_config_type": (
        GOOD.replace("[1, 2]", "[one, two]"),
        "model.pss.num_convs: Input should be a valid integer",
    ),
    "unknown_stage": (
        GOOD
        + "cells:\n  - id: ts\n    stages:\n      - {name: s1}\n"
        + "      - {name: s2, depends_on: [s0]}\n",
        "cells.ts.stages.s2: unknown stage 's0'",
    ),
    "cyclic_stages": (
        GOOD
        + "cells:\n  - id: ts\n    stages:\n      - {name: a, depends_on: [b]}\n"
        + "      - {name: b, depends_on: [a]}\n",
        "cyclic dependency",
    ),
    "python_tag": (
        GOOD + "description: !!python/object/apply:os.system ['touch pwned']\n",
        "YAML tags such as !!python/... are not allowed",
    ),
    "alias_bomb": (
        "name: bomb\nbase: x\n"
        + "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n"
            for i in range(6)
        ),
        "alias bomb",
    ),
    "not_a_mapping": ("- just\n- a list\n", "a spec must be a mapping"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_exits_2_with_one_clear_message(case, clean_cwd, capsys):
    body, expected = BAD_SPECS[case]
    (clean_cwd / "specs").mkdir()
    spec = write_spec(clean_cwd / "specs" / f"{case}.yaml", body)
    for argv in ([str(spec)], [str(spec), "--dry-run", "--json"], ["status", str(spec)]):
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        err = captured.err.strip()
        assert err.startswith(f"error: {spec}: "), err
        assert expected in err, err
        assert len(err.splitlines()) == 1, err
    assert not Path("pwned").exists()
