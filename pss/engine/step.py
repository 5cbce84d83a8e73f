"""One training step's parts, without the training loop's tracking stack (no MLflow).

    amp = autocast_dtype(cfg.train.amp, device)          # None: float32
    model = to_memory_format(model, cfg.train.channels_last)
    optimizer = build_optimizer(cfg, model)
    loss, losses = forward_losses(model, model, images, targets, amp)
    stepped = optimizer_step(loss, optimizer, scaler, cfg.train.grad_clip)

:mod:`pss.engine.train` runs them in its loop; ``benchmarks/gpu_check.py`` and
``benchmarks/bench_head.py`` time them on machines that have no tracking stack.
"""

from __future__ import annotations

import torch
from torch import nn

from pss import dist
from pss.config import ExperimentConfig
from pss.errors import UserError
from pss.models import Detector


def autocast_dtype(amp: bool | str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``train.amp`` asks for on ``device`` (None: float32).

    true: bfloat16 on a CUDA device that supports it, else float16; float32 on a
    CPU. "fp16": float16 (CUDA only); "bf16": bfloat16 (a CPU, or a GPU that
    supports it); false: float32. See :func:`amp_dtype`.
    """
    cuda = device.type == "cuda"
    try:
        return amp_dtype(amp, device.type, cuda and torch.cuda.is_bf16_supported())
    except UserError as e:
        if cuda and amp == "bf16":
            raise UserError(f"{e} ({torch.cuda.get_device_name(device)})") from None
        raise


def amp_dtype(amp: bool | str, device_type: str, bf16_supported: bool) -> torch.dtype | None:
    """``train.amp`` on a device of type ``device_type`` ("cuda", "cpu") whose bfloat16
    support is ``bf16_supported`` (CUDA's): the autocast dtype, None for float32.

    true on CUDA is bfloat16 where supported (no gradient scaler, float32's range),
    float16 otherwise; true on a CPU is float32 (a CPU's bfloat16 is no faster).
    """
    cuda = device_type == "cuda"
    if amp is False or (amp is True and not cuda):
        return None
    if amp is True:
        return torch.bfloat16 if bf16_supported else torch.float16
    if amp == "bf16":
        if cuda and not bf16_supported:
            raise UserError("train.amp=bf16 but this GPU has no bfloat16; use train.amp=fp16")
        return torch.bfloat16
    if not cuda:
        raise UserError(
            "train.amp=fp16 needs a CUDA device (float16 with a gradient scaler); "
            "on a CPU use train.amp=bf16 or false"
        )
    return torch.float16


def to_memory_format(model: nn.Module, channels_last: bool) -> nn.Module:
    """``model`` (in place) with its 4-d weights in channels-last order when asked; its
    convolutions then return channels-last activations, whatever the input's order."""
    return model.to(memory_format=torch.channels_last) if channels_last else model


def build_optimizer(cfg: ExperimentConfig, detector: Detector) -> torch.optim.Optimizer:
    """``train.optimizer`` on the trainable parameters, lr scaled linearly with the batch."""
    t = cfg.train
    params = [p for p in detector.parameters() if p.requires_grad]
    if t.optimizer == "adamw":
        # Fused: one kernel for all parameters (3.7 vs 13.8 ms a step for the demo's model
        # on one CPU thread, benchmarks/bench_smoke.py), the same update.
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, fused=True)
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


def forward_losses(
    model: nn.Module,
    detector: Detector,
    images: torch.Tensor,
    targets: list[dict[str, torch.Tensor]],
    amp: torch.dtype | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """This rank's loss on its share of the global batch, and every loss averaged over ranks.

    images [b, 3, H, W] (b = global batch / world), targets on the same device. The
    network runs under autocast when ``amp`` is a dtype; the losses in float32. The
    first value is what this rank back-propagates; DDP's gradient average makes it
    one process's gradient. The dict is the global batch's losses, the same on every
    rank, for logging and the divergence check (so all ranks stop together).
    """
    images = dist.pad_to_common_size(images)
    with torch.autocast(images.device.type, dtype=amp, enabled=amp is not None):
        out = model(images)
    losses = detector.losses(out, targets)
    means = dist.reduce_mean(torch.stack([v.detach() for v in losses.values()]))
    return losses["loss"], dict(zip(losses, means.tolist()))


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    grad_clip: float | None,
) -> bool:
    """Backward (scaled for float16), gradient clipping on the true gradients, step.

    Returns False, without stepping, when the gradients are not finite (float32 and
    bfloat16; with float16 the scaler skips such steps and lowers its scale itself).
    Under DDP the gradients are already averaged, so every rank answers the same.
    """
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if grad_clip:
        norm = nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        norm = nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
        return True
    if not bool(torch.isfinite(norm)):
        return False
    optimizer.step()
    return True
