"""What trains a sweep cell, and what our config means on mmdet's engine.

    files, options = mmdet_config(cfg)          # cfg: a resolved ExperimentConfig
    require_installed({"mmdet"})                # UserError where mmdet or mmcv is missing

A cell trains on one of ``contract.ENGINES``: ``torch``, this project's own loop
(:mod:`pss.engine`), or ``mmdet``, mmengine's Runner on an MMDetection config
(:mod:`pss.mmdet`). An mmdet cell starts from the config of its model in
``experiments/mmdet/`` (:func:`config_file`: ``<model.name>_r50_3x.py``, mmdet's own
FCOS / ATSS and the paper's recipe (CondInst: mmdet's CondInst on that FCOS, with
CondInst's recipe), or ``<model.name>_r50_2x.py``, mmdet's GFL with GFocalV2's quality
predictor and GFocalV2's recipe; the PSS head) and
:func:`mmdet_config` sets, from the cell's resolved config, every setting that config
has a counterpart for (``MMDET_KEYS``): the backbone, FPN and head, the one-to-many
and one-to-one assignment, the losses, the post-processing, the data and its scales,
the schedule and the optimizer. The settings without one (``NOT_TRANSLATED``) may
keep their default only; anything else is a :class:`~pss.errors.UserError` naming the
key, raised when a spec is expanded, before anything is submitted.

What a job knows only where it runs comes in as arguments: the number of processes
(``train.batch_size`` is their total), whether it has CUDA (``train.amp``) and the
class names of the annotations. Imports neither torch nor mmdet.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pss.config import ExperimentConfig, TrainConfig
from pss.contract import MMDET, PSS_SUFFIX
from pss.errors import UserError

# The mmdet config each model starts from (in this checkout).
MMDET_CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "mmdet"
# Our backbones that mmdet's ResNet builds: name -> (depth, base_channels).
RESNETS = {
    "resnet18": (18, 64),
    "resnet18_half": (18, 32),  # stem and stages at half width, as pss.models.backbone's
    "resnet34": (34, 64),
    "resnet50": (50, 64),
    "resnet101": (101, 64),
}
# The keys of our config that have no counterpart in mmdet's engine here: a cell may
# leave them at their default only.
NOT_TRANSLATED = {
    "model.head.centerness": "mmdet's FCOS and ATSS heads always have the center-ness branch",
    "data.max_val_images": "mmdet's CocoMetric evaluates every image of the annotation file",
    "train.init_from": "two-step training (a stage started from another) runs on torch only",
    "train.trainable": "two-step training (only the PSS head trained) runs on torch only",
}
# Every key of our config that becomes an mmdet setting (tests check that every key of
# ExperimentConfig is here, in NOT_TRANSLATED or not a setting of the training: one that
# a fingerprint does not count, pss.config.NOT_COUNTED).
MMDET_KEYS = (
    "model.name",
    "model.num_classes",
    "model.backbone.name",
    "model.backbone.weights",
    "model.backbone.norm",
    "model.backbone.frozen_stages",
    "model.backbone.dcn",
    "model.head.channels",
    "model.head.num_convs",
    "model.head.prior_prob",
    "model.pss.",
    "model.assign.",
    "model.loss.",
    "model.inference.",
    "data.root",
    "data.train_images",
    "data.train_annotations",
    "data.val_images",
    "data.val_annotations",
    "data.synthetic",
    "data.train_scales",
    "data.max_size",
    "data.test_scale",
    "data.flip_prob",
    "data.size_divisibility",
    "data.num_workers",
    "train.epochs",
    "train.batch_size",
    "train.base_lr",
    "train.reference_batch",
    "train.optimizer",
    "train.momentum",
    "train.weight_decay",
    "train.lr_steps",
    "train.lr_gamma",
    "train.warmup_iters",
    "train.warmup_factor",
    "train.grad_clip",
    "train.amp",
    "train.seed",
    "train.iters_per_epoch",
    "train.log_interval",
    "eval.",
)
# Each head's classification conv, whose bias starts at the prior probability.
CLS_CONV = {"fcos": "conv_cls", "atss": "atss_cls", "gfocalv2": "gfl_cls", "condinst": "conv_cls"}
# The schedule in the name of each base's config file (its own recipe's).
SCHEDULES = {"fcos": "3x", "atss": "3x", "gfocalv2": "2x", "condinst": "3x"}
# The sampler of an mmdet cell's training data (registered by pss.mmdet.train).
EPOCH_SAMPLER = "EpochSampler"
# What a job on mmdet's engine imports (installed by `make mmdet`).
MMDET_PACKAGES = ("mmdet", "mmcv", "mmengine")


def require_installed(engines: Iterable[str], source: str | None = None) -> None:
    """One UserError (naming ``source``, the spec) when a job of these engines could not
    start here: mmdet, mmcv or mmengine missing."""
    if MMDET in set(engines):
        missing = [m for m in MMDET_PACKAGES if importlib.util.find_spec(m) is None]
        if missing:
            raise UserError(
                f"engine: mmdet needs {', '.join(missing)}, not installed in this environment "
                "(run `make mmdet`, see the README's MMDetection section)",
                source,
            )


def untranslated(cfg: ExperimentConfig) -> list[str]:
    """The keys of NOT_TRANSLATED that ``cfg`` sets to something but their default."""
    default = ExperimentConfig().flat()
    flat = cfg.flat()
    return [k for k in NOT_TRANSLATED if flat[k] != default[k]]


def check_translatable(cfg: ExperimentConfig) -> None:
    """UserError for a setting of ``cfg`` that mmdet's engine cannot train (what a spec's
    expansion checks: a job on one process, as on a GPU, whose annotations it cannot
    read yet)."""
    mmdet_config(cfg, cuda=True)


def mmdet_config(
    cfg: ExperimentConfig,
    *,
    world_size: int = 1,
    cuda: bool = False,
    classes: Sequence[str] | None = None,
) -> tuple[list[Path], dict[str, Any]]:
    """The mmdet config file of ``cfg.model.name`` and the options (mmdet's dotted keys,
    as ``--cfg-options`` takes them) that make it train what ``cfg`` says.

    world_size: processes of the job (each loads ``train.batch_size / world_size``);
    cuda: whether they train on GPUs (``train.amp``); classes: the category names of the
    annotations, in their file's order (the datasets' ``metainfo``).
    """
    refused = untranslated(cfg)
    if refused:
        key = refused[0]
        raise UserError(f"{key} is not translated to mmdet ({NOT_TRANSLATED[key]})")
    if cfg.model.base not in CLS_CONV:
        raise UserError(
            f"model.name={cfg.model.name} is not translated to mmdet "
            f"(mmdet cells: {', '.join(CLS_CONV)} and their _pss models)"
        )
    if cfg.train.batch_size % world_size:
        raise UserError(
            f"train.batch_size={cfg.train.batch_size} is not divisible by {world_size} processes"
        )
    options = {
        **_model(cfg),
        **_data(cfg, classes),
        **_schedule(cfg, world_size, cuda),
    }
    return [config_file(cfg.model.name)], options


def config_file(model_name: str) -> Path:
    """The mmdet config of ``experiments/mmdet/`` a model's cells start from."""
    base = model_name.removesuffix(PSS_SUFFIX)
    return MMDET_CONFIGS / f"{model_name}_r50_{SCHEDULES[base]}.py"


def _backbone(cfg: ExperimentConfig) -> dict[str, Any]:
    b = cfg.model.backbone
    if b.name not in RESNETS:
        raise UserError(
            f"model.backbone.name={b.name} is not translated to mmdet "
            f"(mmdet cells: {', '.join(RESNETS)})"
        )
    depth, width = RESNETS[b.name]
    init = None  # mmdet's ResNet initialisation, as torchvision's (Kaiming, fan out)
    if b.weights is not None:
        if width != 64:
            raise UserError(f"model.backbone.weights: {b.name} has no pretrained weights")
        if Path(b.weights).suffix or "/" in b.weights:
            raise UserError(
                f"model.backbone.weights={b.weights}: a weights file is not translated to "
                "mmdet (name torchvision's weights, e.g. IMAGENET1K_V1, or none)"
            )
        # mmengine's name for torchvision's weights enum member (the same file).
        init = {"type": "Pretrained", "checkpoint": f"torchvision://{b.name}.{b.weights.lower()}"}
    norm = {
        "frozen_bn": ({"type": "BN", "requires_grad": False}, True),
        "bn": ({"type": "BN", "requires_grad": True}, False),
        "gn": ({"type": "GN", "num_groups": 32, "requires_grad": True}, False),
    }[b.norm]
    if b.dcn and depth < 50:
        raise UserError(f"model.backbone.dcn: mmdet's {b.name} (basic blocks) has no DCN")
    return {
        "model.backbone.depth": depth,
        "model.backbone.base_channels": width,
        "model.backbone.init_cfg": init,
        # From scratch, each block's last BatchNorm starts at 1 as in torchvision's ResNet
        # (mmdet's default is 0: blocks start as identities; with it and mmdet's FPN init
        # the FCOS_PSS smoke cell reached 18.1 mAP e2e at seed 0, 28.6 without).
        "model.backbone.zero_init_residual": False,
        "model.backbone.norm_cfg": norm[0],
        "model.backbone.norm_eval": norm[1],
        "model.backbone.frozen_stages": b.frozen_stages,
        # DCNv2 in the 3x3 convs of C3-C5, as ours.
        "model.backbone.dcn": (
            {"type": "DCNv2", "deform_groups": 1, "fallback_on_stride": False} if b.dcn else None
        ),
        "model.backbone.stage_with_dcn": (False, b.dcn, b.dcn, b.dcn),
        # The channels of C2-C5: 4 x wider in bottleneck blocks (ResNet-50 and deeper).
        "model.neck.in_channels": [width * 2**i * (1 if depth < 50 else 4) for i in range(4)],
        # The FPN's convs as ours (torchvision's kaiming_uniform_(a=1), zero bias), where
        # mmdet's FPN starts from Xavier.
        "model.neck.init_cfg": {
            "type": "Kaiming",
            "layer": "Conv2d",
            "a": 1,
            "mode": "fan_in",
            "nonlinearity": "leaky_relu",
            "distribution": "uniform",
        },
    }


def _model(cfg: ExperimentConfig) -> dict[str, Any]:
    m = cfg.model
    head = "model.bbox_head"
    options = {
        **_backbone(cfg),
        "model.neck.out_channels": m.head.channels,
        f"{head}.num_classes": m.num_classes,
        f"{head}.in_channels": m.head.channels,
        f"{head}.feat_channels": m.head.channels,
        f"{head}.stacked_convs": m.head.num_convs,
        # Our towers' GroupNorm: 32 groups, fewer for narrow heads (pss.models.heads).
        f"{head}.norm_cfg": {
            "type": "GN",
            "num_groups": math.gcd(32, max(m.head.channels // 2, 1)),
            "requires_grad": True,
        },
        f"{head}.init_cfg": {  # mmdet's own initialisation, with our prior probability
            "type": "Normal",
            "layer": "Conv2d",
            "std": 0.01,
            "override": {
                "type": "Normal",
                "name": CLS_CONV[m.base],
                "std": 0.01,
                "bias_prob": m.head.prior_prob,
            },
        },
        f"{head}.loss_bbox.loss_weight": m.loss.giou_weight,
        "model.test_cfg.score_thr": m.inference.score_thresh,
        "model.test_cfg.nms.iou_threshold": m.inference.nms_iou,
        "model.test_cfg.nms_pre": m.inference.pre_nms_topk,
        "model.test_cfg.max_per_img": m.inference.max_per_image,
        "model.data_preprocessor.pad_size_divisor": cfg.data.size_divisibility,
    }
    if m.base == "gfocalv2":
        # QFL's beta is loss.focal_gamma (pss.models.gfocal); no center-ness branch, so
        # neither its loss weight nor loss.focal_alpha (L_pss's only) has a use here.
        options[f"{head}.loss_cls.beta"] = m.loss.focal_gamma
    else:
        options[f"{head}.loss_cls.alpha"] = m.loss.focal_alpha
        options[f"{head}.loss_cls.gamma"] = m.loss.focal_gamma
        options[f"{head}.loss_centerness.loss_weight"] = m.loss.centerness_weight
    if m.has_masks:  # CondInst's mask branch reads P3 of the FPN
        options["model.mask_head.mask_feature_head.in_channels"] = m.head.channels
    a = m.assign
    if m.box_base == "fcos":
        options[f"{head}.center_sample_radius"] = a.center_sampling_radius
        options[f"{head}.regress_ranges"] = [tuple(r) for r in a.regress_ranges]
    else:
        options["model.train_cfg.assigner.topk"] = a.atss_topk
        options[f"{head}.anchor_generator.octave_base_scale"] = a.anchor_scale
        # Our ATSS's (and GFocalV2's) anchors sit on the centres of their cells (mmdet's
        # on the corners) and our FPN computes P7 from ReLU(P6) (mmdet's ATSS and GFL
        # configs from P6).
        options[f"{head}.anchor_generator.center_offset"] = 0.5
        options["model.neck.relu_before_extra_convs"] = True
    if m.has_pss:
        options[f"{head}.pss"] = m.pss.model_dump()
        options[f"{head}.one_to_one"] = {"match": a.match, "alpha": a.alpha, "solver": a.solver}
        options[f"{head}.loss_pss"] = {
            "pss_weight": m.loss.pss_weight,
            "rank_weight": m.loss.rank_weight,
            "rank_margin": m.loss.rank_margin,
            "rank_negatives": m.loss.rank_negatives,
        }
        if m.base == "gfocalv2":  # GFocalV2PSSHead: QFL has no alpha to take it from
            options[f"{head}.loss_pss"]["focal_alpha"] = m.loss.focal_alpha
        options["model.test_cfg.e2e_score_thr"] = m.inference.e2e_score_thresh
    return options


# Images decoded and resized by Pillow, as our engine (and detectron2, the paper's) does:
# OpenCV's bilinear resize, mmdet's default, moves pixels by up to 0.77 normalised units
# (45 grey levels) from Pillow's at 96 -> 112 px (found by pss.mmdet.compare_engines).
LOAD_IMAGE = {"type": "LoadImageFromFile", "imdecode_backend": "pillow"}
RESIZE = {"keep_ratio": True, "backend": "pillow", "interpolation": "bilinear"}


def _data(cfg: ExperimentConfig, classes: Sequence[str] | None) -> dict[str, Any]:
    d = cfg.data
    # CondInst: the annotations' masks too (polygons and RLE as bitmaps), evaluated as
    # mask AP beside box AP.
    masks = {"with_mask": True, "poly2mask": True} if cfg.model.has_masks else {}
    load_annotations = {"type": "LoadAnnotations", "with_bbox": True, **masks}
    train_pipeline = [
        LOAD_IMAGE,
        load_annotations,
        {
            "type": "RandomChoiceResize",
            "scales": [(d.max_size, s) for s in d.train_scales],
            **RESIZE,
        },
        {"type": "RandomFlip", "prob": d.flip_prob},
        {"type": "PackDetInputs"},
    ]
    val_pipeline = [
        LOAD_IMAGE,
        {"type": "Resize", "scale": (d.max_size, d.test_scale), **RESIZE},
        load_annotations,
        {
            "type": "PackDetInputs",
            "meta_keys": ("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"),
        },
    ]
    options: dict[str, Any] = {
        "data_root": d.root,
        "pss_synthetic": d.synthetic.model_dump() if d.synthetic else None,
    }
    splits = {
        "train": (d.train_images, d.train_annotations, train_pipeline),
        "val": (d.val_images, d.val_annotations, val_pipeline),
        "test": (d.val_images, d.val_annotations, val_pipeline),
    }
    for split, (images, ann_file, pipeline) in splits.items():
        loader = f"{split}_dataloader"
        options[f"{loader}.num_workers"] = d.num_workers
        options[f"{loader}.persistent_workers"] = d.num_workers > 0
        options[f"{loader}.dataset.data_root"] = d.root
        options[f"{loader}.dataset.ann_file"] = ann_file
        options[f"{loader}.dataset.data_prefix"] = {"img": images.rstrip("/") + "/"}
        options[f"{loader}.dataset.pipeline"] = pipeline
        if classes is not None:
            options[f"{loader}.dataset.metainfo"] = {"classes": tuple(classes)}
        if split != "train":
            options[f"{split}_evaluator.ann_file"] = os.path.join(d.root, ann_file)
            if masks:
                options[f"{split}_evaluator.metric"] = ["bbox", "segm"]
    return options


def _schedule(cfg: ExperimentConfig, world_size: int, cuda: bool) -> dict[str, Any]:
    t = cfg.train
    scheduler = []
    if t.warmup_iters:
        # Ours (detectron2's) reaches the full lr at iteration warmup_iters; mmengine's
        # LinearLR at end - 1, so it ends one later (found by pss.mmdet.compare_engines).
        scheduler.append(
            {
                "type": "LinearLR",
                "start_factor": t.warmup_factor,
                "by_epoch": False,
                "begin": 0,
                "end": t.warmup_iters + 1,
            }
        )
    scheduler.append(
        {
            "type": "MultiStepLR",
            "begin": 0,
            "end": t.epochs,
            "by_epoch": True,
            "milestones": list(t.lr_steps),
            "gamma": t.lr_gamma,
        }
    )
    options: dict[str, Any] = {
        "train_dataloader.batch_size": t.batch_size // world_size,
        # Each epoch: the first iters_per_epoch batches of a new shuffle (no last
        # partial batch), as our loop takes them (pss.mmdet.train.EpochSampler).
        "train_dataloader.sampler": {
            "type": EPOCH_SAMPLER,
            "shuffle": True,
            "iters_per_epoch": t.iters_per_epoch,
            "global_batch": t.batch_size,
        },
        "val_dataloader.batch_size": cfg.eval.batch_size,
        "train_cfg.max_epochs": t.epochs,
        "train_cfg.val_interval": cfg.eval.interval,
        "val_cfg.modes": list(cfg.eval.modes),
        "param_scheduler": scheduler,
        "optim_wrapper": {
            "_delete_": True,
            **_amp(t.amp, cuda),
            "optimizer": _optimizer(t),
            "clip_grad": {"max_norm": t.grad_clip, "norm_type": 2} if t.grad_clip else None,
        },
        "randomness": {"seed": t.seed},
        "default_hooks.logger.interval": t.log_interval,
        # A job resumes from its newest checkpoint only; mmengine deletes the oldest
        # before it writes the next, so two are kept: one whole while the next is written.
        "default_hooks.checkpoint.max_keep_ckpts": 2,
        "launcher": "pytorch" if world_size > 1 else "none",
    }
    if world_size > 1:
        if cfg.model.backbone.norm == "bn":
            if not cuda:
                raise UserError(
                    f"model.backbone.norm=bn trains BatchNorm, which {world_size} CPU processes "
                    "cannot synchronise; use model.backbone.norm=gn or frozen_bn, or one process"
                )
            options["sync_bn"] = "torch"
        # mmengine wraps the model in DDP with device_ids=[LOCAL_RANK]: none on a CPU.
        options["model_wrapper_cfg"] = {
            "type": "MMDistributedDataParallel",
            "broadcast_buffers": False,
            **({} if cuda else {"device_ids": None}),
        }
    return options


def _optimizer(t: TrainConfig) -> dict[str, Any]:
    """mmengine's optimizer of ``train.optimizer`` (torch's, so the same update as ours)."""
    if t.optimizer == "adamw":
        return {"type": "AdamW", "lr": t.lr, "weight_decay": t.weight_decay, "fused": True}
    return {"type": "SGD", "lr": t.lr, "momentum": t.momentum, "weight_decay": t.weight_decay}


def _amp(amp: bool | str, cuda: bool) -> dict[str, Any]:
    """The optimizer wrapper of ``train.amp``: true is float16 on CUDA only (our engine's
    true takes bfloat16 where the GPU has it; this config names one dtype for any GPU)."""
    if amp is False or (amp is True and not cuda):
        return {"type": "OptimWrapper"}
    if not cuda:
        raise UserError(f"train.amp={amp}: mmengine's mixed precision needs a GPU")
    dtype = "bfloat16" if amp == "bf16" else "float16"
    return {"type": "AmpOptimWrapper", "dtype": dtype, "loss_scale": "dynamic"}
