"""The mmdet configs of experiments/mmdet build, say what the paper says, and stay apart
from the core install."""

from __future__ import annotations

import subprocess
import sys

import pytest
from twins import CONDINST_NAMES, CONFIGS, GFOCAL_NAMES, NAMES, REPO

from pss.config import load_config as load_ours
from pss.errors import UserError
from pss.mmdet.config import build_model, load_config
from pss.mmdet.convert import LEFT_AS_THEY_ARE
from pss.mmdet.heads import GFocalV2Head
from pss.mmdet.translate import config_file
from pss.models import Detector
from pss.models.gfocal import DFL_WEIGHT, DGQP, REG_MAX

SMOKE = CONFIGS / "smoke" / "overlay.py"
# Our experiment file of each model (its model section is what counts here).
OUR_EXPERIMENT = {
    **{name: f"{name}_r50_3x.yaml" for name in NAMES + CONDINST_NAMES},
    "gfocalv2": "gfocalv2_r50_2x.yaml",
    "gfocalv2_pss": "gfocalv2_pss_r50_two_step.yaml",
}


def count(module) -> int:
    """Learnable values: parameters, and the affine of frozen BatchNorm (a buffer in ours)."""
    stats = ("running_mean", "running_var", *LEFT_AS_THEY_ARE)
    return sum(v.numel() for k, v in module.state_dict().items() if not k.endswith(stats))


@pytest.mark.parametrize("name", NAMES)
def test_r50_config_builds_with_the_paper_recipe_and_our_parameter_count(name: str):
    cfg = load_config([CONFIGS / f"{name}_r50_3x.py"])
    assert cfg.train_cfg.max_epochs == 36
    assert cfg.param_scheduler[1].milestones == [24, 33]
    assert cfg.param_scheduler[0].start_factor == pytest.approx(1 / 3)
    assert cfg.param_scheduler[0].end == 501  # the full lr at iteration 500, as ours
    assert cfg.optim_wrapper.optimizer.lr == 0.01 and cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.optim_wrapper.optimizer.weight_decay == 1e-4
    assert cfg.optim_wrapper.clip_grad.max_norm == 35 and "paramwise_cfg" not in cfg.optim_wrapper
    scales = cfg.train_dataloader.dataset.pipeline[2].scales
    assert [s for _, s in scales] == list(range(480, 801, 32)) and {w for w, _ in scales} == {1333}
    assert cfg.test_dataloader.dataset.pipeline[1].scale == (1333, 800)
    test = cfg.model.test_cfg
    assert (test.score_thr, test.nms_pre, test.nms.iou_threshold, test.max_per_img) == (
        0.05,
        1000,
        0.6,
        100,
    )
    head = cfg.model.bbox_head
    assert head.loss_bbox.type == "GIoULoss" and head.loss_bbox.loss_weight == 2.0
    model = build_model(cfg)
    built = model.bbox_head
    if name.startswith("fcos"):
        assert (built.center_sampling, built.center_sample_radius) == (True, 1.5)
        assert built.norm_on_bbox and built.centerness_on_reg
        assert built.regress_ranges[-1] == (512, 1e8)
    else:
        assert built.prior_generator.octave_base_scale == 8 and built.assigner.topk == 9
    if name.endswith("_pss"):
        assert test.mode == "e2e"
        assert built.pss_cfg.num_convs == 2 and built.pss_cfg.stop_grad
        assert built.pss_cfg.branch == "regression"
        assert (built.one_to_one_cfg.alpha, built.one_to_one_cfg.solver) == (0.8, "hungarian")
        loss = built.loss_pss_cfg
        assert (loss.pss_weight, loss.rank_weight, loss.rank_margin) == (1.0, 0.25, 0.5)
        assert (loss.focal_alpha, loss.focal_gamma) == (0.25, 2.0)
    ours = Detector(
        load_ours([REPO / "experiments" / f"{name}_r50_3x.yaml"], ["model.backbone.weights=null"])
        .model
    )
    # One for one: the FCOS config's tower convs have no bias before GroupNorm, as ours.
    assert count(model) == count(ours)
    if name == "fcos":
        assert count(ours) == 32_295_322  # FCOS R50, measured here


@pytest.mark.parametrize("name", GFOCAL_NAMES)
def test_gfocalv2_config_builds_with_its_recipe_and_our_parameter_count(name: str):
    cfg = load_config([config_file(name)])
    assert cfg.train_cfg.max_epochs == 24
    assert cfg.param_scheduler[1].milestones == [16, 22]
    assert cfg.param_scheduler[0].start_factor == pytest.approx(0.001)
    assert cfg.param_scheduler[0].end == 501
    assert cfg.optim_wrapper.optimizer.lr == 0.01 and cfg.optim_wrapper.clip_grad is None
    scales = cfg.train_dataloader.dataset.pipeline[2].scales
    assert [s for _, s in scales] == list(range(480, 961, 32))
    assert cfg.test_dataloader.dataset.pipeline[1].scale == (1333, 800)
    head = cfg.model.bbox_head
    assert (head.loss_cls.type, head.loss_cls.beta) == ("QualityFocalLoss", 2.0)
    assert head.loss_dfl.loss_weight == DFL_WEIGHT and head.reg_max == REG_MAX
    assert head.loss_bbox.type == "GIoULoss" and head.loss_bbox.loss_weight == 2.0
    model = build_model(cfg)
    built = model.bbox_head
    assert isinstance(built, GFocalV2Head) and isinstance(built.quality, DGQP)
    assert built.prior_generator.octave_base_scale == 8 and built.assigner.topk == 9
    if name.endswith("_pss"):
        assert cfg.model.test_cfg.mode == "e2e" and built.pss_cfg.num_convs == 2
        loss = built.loss_pss_cfg
        assert (loss.focal_alpha, loss.focal_gamma) == (0.25, 2.0)  # gamma: the QFL's beta
    ours = Detector(
        load_ours([REPO / "experiments" / OUR_EXPERIMENT[name]], ["model.backbone.weights=null"])
        .model
    )
    assert count(model) == count(ours)


@pytest.mark.parametrize("name", CONDINST_NAMES)
def test_condinst_config_builds_with_its_recipe_and_our_parameter_count(name: str):
    cfg = load_config([config_file(name)])
    assert cfg.train_cfg.max_epochs == 36 and cfg.param_scheduler[1].milestones == [28, 33]
    assert cfg.param_scheduler[0].start_factor == pytest.approx(0.001)
    assert cfg.param_scheduler[0].end == 1001  # the full lr at iteration 1000, as ours
    scales = cfg.train_dataloader.dataset.pipeline[2].scales
    assert [s for _, s in scales] == list(range(640, 801, 32))
    for loader in (cfg.train_dataloader, cfg.test_dataloader):
        loads = [s for s in loader.dataset.pipeline if s.type == "LoadAnnotations"]
        assert loads[0].with_mask and loads[0].poly2mask
    assert cfg.test_evaluator.metric == ["bbox", "segm"] and cfg.model.data_preprocessor.pad_mask
    model = build_model(cfg)
    branch = model.mask_head.mask_feature_head
    # Our mask branch: P3 only, 4 x [conv 3x3 (128), GN(32), ReLU] + 1x1 conv to 8.
    assert (branch.start_level, branch.end_level, len(branch.conv_branch)) == (0, 0, 3)
    assert branch.convs_all_levels[0].conv0.gn.num_groups == 32
    assert (branch.feat_channels, branch.out_channels, branch.mask_stride) == (128, 8, 8)
    head = model.mask_head
    assert (head.num_params, head.mask_out_stride, head.max_masks_to_train) == (169, 4, 300)
    assert model.bbox_head.controller.out_channels == 169
    if name.endswith("_pss"):
        assert cfg.model.test_cfg.mode == "e2e" and model.bbox_head.pss_cfg.num_convs == 2
    ours = Detector(
        load_ours([REPO / "experiments" / OUR_EXPERIMENT[name]], ["model.backbone.weights=null"])
        .model
    )
    assert count(model) == count(ours)


@pytest.mark.parametrize("name", NAMES + GFOCAL_NAMES)
def test_smoke_overlay_fits_every_config(name: str):
    cfg = load_config([config_file(name), SMOKE])
    backbone = cfg.model.backbone
    assert (backbone.depth, backbone.base_channels, backbone.init_cfg) == (18, 32, None)
    assert cfg.model.bbox_head.num_classes == 3 and cfg.model.neck.out_channels == 64
    assert cfg.train_dataloader.dataset.ann_file == "annotations/train.json"
    assert cfg.train_dataloader.dataset.pipeline[2].scales == [(192, 96)]
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr, optimizer.weight_decay) == ("AdamW", 0.004, 0.05)
    assert "momentum" not in optimizer and cfg.train_cfg.max_epochs == 10
    model = build_model(cfg)
    ours = Detector(
        load_ours(
            [REPO / "experiments" / OUR_EXPERIMENT[name], REPO / "experiments/smoke/overlay.yaml"]
        ).model
    )
    assert count(model) == count(ours)  # one for one: no tower conv biases


def test_plugin_heads_come_from_custom_imports_and_check_their_arguments():
    # As a plain mmdet user would: mmengine's Config, mmdet's registry, nothing from pss.
    code = (
        "import sys\n"
        "from mmengine.config import Config\n"
        "from mmdet.registry import MODELS\n"
        "from mmdet.utils import register_all_modules\n"
        "register_all_modules()\n"
        "assert 'pss.mmdet.heads' not in sys.modules\n"
        f"cfg = Config.fromfile({str(CONFIGS / 'atss_pss_r50_3x.py')!r})\n"
        "assert 'pss.mmdet.heads' in sys.modules\n"
        "cfg.model.backbone.depth = 18\n"
        "cfg.model.neck.in_channels = [64, 128, 256, 512]\n"
        "print(type(MODELS.build(cfg.model).bbox_head).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ATSSPSSHead"
    for bad, message in [
        ({"model.bbox_head.pss": {"num_conv": 2}}, "'pss': unknown keys \\['num_conv'\\]"),
        ({"model.bbox_head.one_to_one": {"alpha": 2.0}}, "'one_to_one': alpha: .*2.0"),
        ({"model.bbox_head.loss_pss": {"focal_gamma": 1.0}}, "'loss_pss': unknown keys"),
    ]:
        cfg = load_config([CONFIGS / "fcos_pss_r50_3x.py", SMOKE], bad)
        with pytest.raises(UserError, match=message):
            build_model(cfg)
    # GFocalV2PSSHead takes L_pss's alpha in loss_pss (its QFL has none), its gamma from
    # the QFL's beta; the quality predictor is built for 17 bins.
    for bad, message in [
        ({"model.bbox_head.loss_pss": {"focal_gamma": 1.0}}, "'loss_pss': unknown keys"),
        ({"model.bbox_head.reg_max": 8}, "'reg_max': .* takes 16"),
    ]:
        with pytest.raises(UserError, match=message):
            build_model(load_config([config_file("gfocalv2_pss"), SMOKE], bad))
    options = {"model.bbox_head.loss_pss.focal_alpha": 0.5, "model.bbox_head.loss_cls.beta": 1.5}
    head = build_model(load_config([config_file("gfocalv2_pss"), SMOKE], options)).bbox_head
    assert (head.loss_pss_cfg.focal_alpha, head.loss_pss_cfg.focal_gamma) == (0.5, 1.5)
    with pytest.raises(UserError, match="not found"):
        load_config([CONFIGS / "fcos_pss_r18.py"])


def test_core_never_imports_mmdet():
    code = (
        "import sys\n"
        "import pss, pss.models, pss.models.selector, pss.engine.train, pss.mmdet.translate\n"
        "import pss.sweep.driver, pss.report.cli\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('mmdet', 'mmcv', 'mmengine')]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
