"""A training step's parts (pss.engine.step): no tracking stack, half-precision dtypes
through the backbone, channels-last memory order."""

from __future__ import annotations

import subprocess
import sys

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d as TorchvisionFrozenBN

from pss.config import load_config
from pss.engine.step import build_optimizer, forward_losses, optimizer_step, to_memory_format
from pss.models import Detector
from pss.models.backbone import FrozenBatchNorm2d
from pss.testing.configs import small_config
from pss.testing.score_maps import toy_targets


def test_the_step_imports_no_tracking_stack():
    code = (
        "import sys, pss.engine.step, pss.models; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'pss.tracking')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_frozen_bn_keeps_its_input_dtype_and_torchvision_arithmetic():
    ours, theirs = FrozenBatchNorm2d(8), TorchvisionFrozenBN(8)
    g = torch.Generator().manual_seed(0)
    for key in ("weight", "bias", "running_mean", "running_var"):
        value = torch.rand(8, generator=g) + 0.5
        getattr(ours, key).copy_(value)
        getattr(theirs, key).copy_(value)
    x = torch.randn(2, 8, 5, 5, generator=g)
    assert torch.equal(ours(x), theirs(x))
    assert theirs(x.bfloat16()).dtype == torch.float32  # why ours exists
    assert ours(x.bfloat16()).dtype == torch.bfloat16


def test_half_precision_runs_through_the_whole_backbone():
    # Under autocast no module of the backbone hands float32 to the next conv (a frozen
    # BN used to, and with it the ReLUs, the pooling and the residual sums).
    model = Detector(small_config("fcos_pss").model).eval()
    dtypes: dict[str, torch.dtype] = {}
    for name, module in model.backbone.named_modules():
        if not list(module.children()):
            module.register_forward_hook(lambda m, i, o, name=name: dtypes.update({name: o.dtype}))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(1, 3, 96, 96))
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.modules())
    assert dtypes and {n for n, d in dtypes.items() if d != torch.bfloat16} == set()


def test_channels_last_gives_the_same_outputs_and_steps():
    cfg = small_config("fcos_pss")
    torch.manual_seed(0)
    plain = Detector(cfg.model)
    nhwc = Detector(cfg.model)
    nhwc.load_state_dict(plain.state_dict())
    to_memory_format(nhwc, True)
    convs = [m for m in nhwc.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    images = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        a, b = plain.eval()(images), nhwc.eval()(images)
    for key in ("cls", "reg", "ctr", "pss"):
        assert torch.allclose(getattr(a, key), getattr(b, key), atol=1e-4), key
    targets = toy_targets()
    losses = {}
    for name, model in (("plain", plain), ("nhwc", nhwc)):
        model.train()
        loss, losses[name] = forward_losses(model, model, images, targets, None)
        assert optimizer_step(loss, build_optimizer(cfg, model), None, cfg.train.grad_clip)
    for key, value in losses["plain"].items():
        assert abs(losses["nhwc"][key] - value) <= 1e-4 * max(1.0, abs(value)), key


def test_channels_last_is_no_part_of_a_fingerprint():
    on = load_config([], ["train.channels_last=true"])
    assert on.train.channels_last and on.fingerprint() == load_config([]).fingerprint()
