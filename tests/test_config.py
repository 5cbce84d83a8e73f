"""Typed configs: YAML merging, dotted overrides, validation messages, fingerprints."""

from __future__ import annotations

import pytest

from pss.config import load_config
from pss.errors import UserError


def test_defaults_are_the_papers_recipe():
    cfg = load_config([])
    m, t = cfg.model, cfg.train
    assert (m.pss.num_convs, m.pss.branch, m.pss.stop_grad) == (2, "regression", True)
    assert (m.assign.match, m.assign.alpha, m.assign.solver) == ("mul", 0.8, "hungarian")
    assert (m.loss.pss_weight, m.loss.rank_weight, m.loss.rank_margin) == (1.0, 0.25, 0.5)
    assert m.loss.rank_negatives == 100 and m.assign.center_sampling_radius == 1.5
    assert (t.base_lr, t.batch_size, t.momentum, t.weight_decay) == (0.01, 16, 0.9, 1e-4)
    assert (t.epochs, t.lr_steps, t.warmup_iters, t.grad_clip) == (36, [24, 33], 500, 35.0)
    assert cfg.data.train_scales == list(range(480, 801, 32)) and cfg.data.test_scale == 800
    inf = m.inference
    assert (inf.score_thresh, inf.nms_iou, inf.pre_nms_topk, inf.max_per_image) == (
        0.05,
        0.6,
        1000,
        100,
    )


def test_files_merge_left_to_right_then_overrides(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("name: a\nmodel: {name: atss_pss, pss: {num_convs: 3}}\n")
    b = tmp_path / "b.yaml"
    b.write_text("model: {backbone: {name: resnet18}}\n")
    cfg = load_config([a, b], ["model.pss.stop_grad=false", "train.lr_steps=[8, 11]"])
    assert cfg.model.name == "atss_pss" and cfg.model.pss.num_convs == 3
    assert cfg.model.backbone.name == "resnet18" and cfg.model.pss.stop_grad is False
    assert cfg.train.lr_steps == [8, 11] and cfg.model.base == "atss" and cfg.model.has_pss


@pytest.mark.parametrize(
    ("body", "override", "message"),
    [
        (
            "model: {pss: {num_conv: 3}}",
            None,
            "bad.yaml: unknown key 'model.pss.num_conv' (did you mean 'model.pss.num_convs'?)",
        ),
        (
            "model: {pss: {num_convs: two}}",
            None,
            "bad.yaml: model.pss.num_convs: Input should be a valid integer (got 'two')",
        ),
        ("model: {name: yolo}", None, "model.name: Input should be 'fcos', 'atss'"),
        ("", "train.baselr=0.1", "unknown key 'train.baselr' (did you mean 'train.base_lr'?)"),
        ("", "train.epochs=1.5", "train.epochs: Input should be a valid integer"),
        ("", "model.assign.alpha=2", "model.assign.alpha: Input should be less than or equal"),
        ("", "novalue", "override 'novalue' is not of the form key=value"),
        ("model: [1, 2", None, "bad.yaml: not valid YAML"),
        ("- a list", None, "bad.yaml: an experiment config must be a mapping"),
    ],
)
def test_bad_configs_name_file_key_and_problem(tmp_path, body, override, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(body)
    with pytest.raises(UserError) as err:
        load_config([bad], [override] if override else [])
    assert message in str(err.value)


def test_missing_file_and_unset_variable(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="nope.yaml: cannot read"):
        load_config([tmp_path / "nope.yaml"])
    monkeypatch.delenv("PSS_TEST_ROOT", raising=False)
    with pytest.raises(UserError, match="PSS_TEST_ROOT is not set"):
        load_config([], ["data.root=${PSS_TEST_ROOT}"])
    assert load_config([], ["data.root=${PSS_TEST_ROOT:-x/y}"]).data.root == "x/y"
    monkeypatch.setenv("PSS_TEST_ROOT", "/data/coco")
    assert load_config([], ["data.root=${PSS_TEST_ROOT}"]).data.root == "/data/coco"


def test_fingerprint_follows_what_is_trained_not_where():
    base = load_config([])
    assert len(base.fingerprint()) == 12
    assert load_config([], ["model.pss.num_convs=3"]).fingerprint() != base.fingerprint()
    for where in ("data.root=/elsewhere", "data.num_workers=0", "output_dir=/tmp/x", "name=y"):
        assert load_config([], [where]).fingerprint() == base.fingerprint()
    assert base.flat()["model.pss.num_convs"] == 2


def test_two_step_needs_a_pss_model():
    with pytest.raises(UserError, match="trainable='pss' needs a \\*_pss model"):
        load_config([], ["model.name=fcos", "train.trainable=pss"])
