"""`engine: mmdet` in specs: what it expands to, and bad input refused before anything runs.

pss.mmdet.translate translates our config to mmdet's without importing torch or mmdet, so these
tests are part of the core suite; training on mmdet's engine is in tests/mmdet.
"""

from __future__ import annotations

import json
import sys

import pytest

from pss import contract
from pss.config import ExperimentConfig, counts, load_config
from pss.errors import UserError
from pss.mmdet.translate import MMDET_KEYS, MMDET_PACKAGES, NOT_TRANSLATED, mmdet_config
from pss.sweep.driver import main
from pss.testing import REPO
from pss.testing.configs import write_spec

SPEC = """
name: eng
base: @EXP@/fcos_pss_r50_3x.yaml
grid:
  model.name: [fcos_pss, atss_pss]
grid_id: "{model.name}"
"""


def _covers(entry: str, key: str) -> bool:
    """A MMDET_KEYS entry ending in '.' covers a section; otherwise a key and its subkeys."""
    if entry.endswith("."):
        return key.startswith(entry)
    return key == entry or key.startswith(entry + ".")


def test_every_config_key_is_translated_refused_or_not_a_setting():
    keys = set(ExperimentConfig().flat()) | set(
        load_config([], {"data.synthetic": {"train": 1}}).flat()
    )
    answered = [
        k
        for k in keys
        if not counts(k) or k in NOT_TRANSLATED or any(_covers(e, k) for e in MMDET_KEYS)
    ]
    assert sorted(keys - set(answered)) == []
    assert [e for e in MMDET_KEYS if not any(_covers(e, k) for k in keys)] == []  # none stale


def test_the_smoke_cells_translate_to_mmdet_settings():
    smoke = [REPO / "experiments/fcos_pss_r50_3x.yaml", REPO / "experiments/smoke/overlay.yaml"]
    cfg = load_config(smoke, {"model.name": "atss_pss", "model.pss.num_convs": 3})
    files, options = mmdet_config(cfg, classes=["circle", "square", "triangle"])
    assert [f.name for f in files] == ["atss_pss_r50_3x.py"] and files[0].is_file()
    backbone = [options[f"model.backbone.{k}"] for k in ("depth", "base_channels", "init_cfg")]
    assert backbone == [18, 32, None]  # resnet18_half
    # Initialised as ours: no zero-init of the residual BatchNorms, the FPN's convs Kaiming
    # uniform (a=1).
    assert options["model.backbone.zero_init_residual"] is False
    assert options["model.neck.init_cfg"]["type"] == "Kaiming"
    assert options["model.neck.init_cfg"]["a"] == 1
    assert options["model.neck.in_channels"] == [32, 64, 128, 256]
    assert options["model.bbox_head.pss"] == {
        "num_convs": 3,
        "branch": "regression",
        "stop_grad": True,
    }
    assert options["model.train_cfg.assigner.topk"] == 9
    # Our ATSS (tests/mmdet/twins.py BY_DESIGN): anchors on cell centres, P7 from ReLU(P6).
    assert options["model.bbox_head.anchor_generator.center_offset"] == 0.5
    assert options["model.neck.relu_before_extra_convs"] is True
    optimizer = options["optim_wrapper"]["optimizer"]
    assert optimizer == {"type": "AdamW", "lr": pytest.approx(0.008 * 8 / 16),
                         "weight_decay": 0.05, "fused": True}
    assert options["optim_wrapper"]["type"] == "OptimWrapper"  # amp=false, on a CPU
    assert options["train_dataloader.batch_size"] == 8
    assert options["train_dataloader.sampler"]["iters_per_epoch"] == 100
    assert options["train_cfg.max_epochs"] == 10
    assert options["param_scheduler"][1]["milestones"] == [9]
    assert options["val_dataloader.dataset.metainfo"] == {
        "classes": ("circle", "square", "triangle")
    }
    baseline = load_config(smoke, {"model.name": "fcos"})
    _, options = mmdet_config(baseline, world_size=2, cuda=True)
    assert "model.bbox_head.pss" not in options and options["sync_bn"] == "torch"
    assert options["model.bbox_head.center_sample_radius"] == 1.5
    assert options["train_dataloader.batch_size"] == 4  # 8 in all, over 2 processes
    with pytest.raises(UserError, match="norm=bn trains BatchNorm"):
        mmdet_config(load_config(smoke, {}), world_size=2, cuda=False)


def _dry_run(spec, capsys, *extra: str) -> list[dict]:
    capsys.readouterr()
    assert main([str(spec), "--smoke", "--dry-run", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_gfocalv2_translates_to_the_plugin_heads_on_gfl_and_its_two_step_is_refused():
    cfg = load_config([REPO / "experiments/gfocalv2_r50_2x.yaml"], {"model.loss.focal_gamma": 1.5})
    files, options = mmdet_config(cfg)
    assert [f.name for f in files] == ["gfocalv2_r50_2x.py"] and files[0].is_file()
    # QFL's beta is our focal_gamma; GFL has neither center-ness nor focal alpha.
    assert options["model.bbox_head.loss_cls.beta"] == 1.5
    assert not any("centerness" in k or k.endswith("alpha") for k in options)
    assert options["model.bbox_head.init_cfg"]["override"]["name"] == "gfl_cls"
    assert options["model.train_cfg.assigner.topk"] == 9 and "model.bbox_head.pss" not in options
    pss = load_config([REPO / "experiments/gfocalv2_r50_2x.yaml"], {"model.name": "gfocalv2_pss"})
    files, options = mmdet_config(pss)
    assert [f.name for f in files] == ["gfocalv2_pss_r50_2x.py"] and files[0].is_file()
    assert options["model.bbox_head.loss_pss"]["focal_alpha"] == 0.25
    two_step = load_config([REPO / "experiments/gfocalv2_pss_r50_two_step.yaml"])
    with pytest.raises(UserError, match="train.init_from is not translated"):
        mmdet_config(two_step)


@pytest.mark.parametrize("name", ["condinst", "condinst_pss"])
def test_condinst_translates_to_mmdet_condinst_with_masks(name: str):
    cfg = load_config([REPO / f"experiments/{name}_r50_1x.yaml"], {"model.head.channels": 128})
    files, options = mmdet_config(cfg)
    assert [f.name for f in files] == [f"{name}_r50_3x.py"] and files[0].is_file()
    assert options["model.mask_head.mask_feature_head.in_channels"] == 128
    assert options["model.bbox_head.center_sample_radius"] == 1.5  # FCOS's assignment
    assert options["model.bbox_head.init_cfg"]["override"]["name"] == "conv_cls"
    for split in ("train", "val"):
        steps = options[f"{split}_dataloader.dataset.pipeline"]
        loads = [s for s in steps if s["type"] == "LoadAnnotations"]
        assert len(loads) == 1 and loads[0]["with_mask"] and loads[0]["poly2mask"]
    assert options["val_evaluator.metric"] == ["bbox", "segm"]
    assert options["param_scheduler"][1]["milestones"] == [8, 11]
    assert ("model.bbox_head.pss" in options) == name.endswith("_pss")


def test_engine_of_a_spec_a_cell_and_the_command_line(tmp_path, capsys):
    torch_spec = write_spec(tmp_path / "eng.yaml", SPEC)
    on_torch = {j["cell"]: j for j in _dry_run(torch_spec, capsys)}
    assert {j["engine"] for j in on_torch.values()} == {contract.TORCH}
    mmdet_spec = write_spec(tmp_path / "eng_mmdet.yaml", SPEC + "engine: mmdet\n")
    on_mmdet = {j["cell"]: j for j in _dry_run(mmdet_spec, capsys)}
    assert {j["engine"] for j in on_mmdet.values()} == {contract.MMDET}
    # A run of one engine never counts as the other's: the fingerprints differ.
    assert all(on_mmdet[c]["fingerprint"] != on_torch[c]["fingerprint"] for c in on_torch)
    assert _dry_run(torch_spec, capsys, "--engine", "mmdet") == list(on_mmdet.values())
    assert _dry_run(mmdet_spec, capsys, "--engine", "torch") == list(on_torch.values())
    # One cell on mmdet, the other on the spec's engine.
    cells = SPEC.split("grid:")[0] + (
        "cells:\n  - {id: fcos_pss, overrides: {model.name: fcos_pss}}\n"
        "  - {id: atss_pss, overrides: {model.name: atss_pss}, engine: mmdet}\n"
    )
    mixed = {j["cell"]: j for j in _dry_run(write_spec(tmp_path / "mixed.yaml", cells), capsys)}
    assert mixed["fcos_pss"] == on_torch["fcos_pss"]
    assert mixed["atss_pss"]["engine"] == contract.MMDET
    assert mixed["atss_pss"]["fingerprint"] == on_mmdet["atss_pss"]["fingerprint"]


def test_experiment_names_say_the_engine():
    assert contract.experiment_name("table5", True) == "table5-smoke"
    assert contract.experiment_name("table5", True, contract.MMDET) == "table5-smoke-mmdet"
    assert contract.experiment_name("table5", False, contract.MMDET) == "table5-mmdet"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.head.centerness: false", "model.head.centerness is not translated to mmdet"),
        ("model.backbone.name: resnext101_32x4d", "model.backbone.name=resnext101_32x4d"),
        ("train.amp: fp16", None),  # translated: mixed precision where the job has a GPU
    ],
    ids=["centerness", "backbone", "amp"],
)
def test_a_setting_mmdet_cannot_train_is_refused_naming_spec_and_key(
    tmp_path, monkeypatch, capsys, override, message
):
    monkeypatch.chdir(tmp_path)
    body = SPEC + "engine: mmdet\noverrides: {" + override + "}\n"
    spec = write_spec(tmp_path / "bad.yaml", body)
    capsys.readouterr()
    code = main([str(spec), "--smoke", "--dry-run"])
    err = capsys.readouterr().err
    if message is None:
        assert code == 0, err
        return
    assert code == 2
    assert err.count("error:") == 1 and str(spec) in err
    assert "cells.fcos_pss (engine mmdet)" in err and message in err
    assert not (tmp_path / "outputs").exists()


def test_a_search_trains_on_torch_only(tmp_path, capsys):
    spec = write_spec(
        tmp_path / "search.yaml",
        "name: s\nbase: @EXP@/fcos_pss_r50_3x.yaml\nengine: mmdet\n"
        "search:\n  params: [{key: model.loss.rank_margin, low: 0.1, high: 1.0}]\n"
        "  n_trials: 2\n  metric: mAP_e2e\n",
    )
    capsys.readouterr()
    assert main([str(spec), "--smoke", "--dry-run"]) == 2
    assert "a search trains on torch only" in capsys.readouterr().err


def test_mmdet_not_installed_is_refused_before_anything_is_submitted(
    tmp_path, monkeypatch, capsys, shapes_root
):
    """Where mmdet cannot be imported (None in sys.modules: Python's own way to make an
    import fail), a sweep on mmdet's engine stops with one error and submits nothing."""
    for name in MMDET_PACKAGES:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    spec = write_spec(tmp_path / "eng.yaml", SPEC)
    capsys.readouterr()
    assert main([str(spec), "--smoke", "--executor", "local", "--engine", "mmdet"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and str(spec) in err
    assert "engine: mmdet needs mmdet, mmcv, mmengine, not installed" in err
    from pss.tracking.logger import search_runs

    assert search_runs("eng-smoke-mmdet") == []
    assert not list(tmp_path.glob("outputs/sweeps/*/ledger.json"))
