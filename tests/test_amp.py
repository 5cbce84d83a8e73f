"""Mixed precision: ``train.amp`` (bfloat16 autocast on a CPU here), float32 losses.

float16 with a gradient scaler needs CUDA; ``benchmarks/gpu_check.py`` runs it
on a GPU (and its reduced form, in tests/test_gpu_check.py, the bf16 path here).
Tolerance of the bf16 loss curve against float32: 2 % relative per iteration
(bfloat16 keeps 8 significant bits, 0.4 % per rounding; measured here: at most
0.06 % over 3 iterations at 64 px, 0.13 % over 4 at 128 px).
"""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from pss.config import load_config
from pss.engine.step import amp_dtype, autocast_dtype
from pss.engine.train import RunInfo, TrainingDiverged, train
from pss.errors import UserError
from pss.models import Detector
from pss.models.heads import HeadOutputs
from pss.testing.configs import small_config, tiny_train_overrides
from pss.testing.score_maps import toy_targets
from pss.tracking.logger import search_runs

BF16_RTOL = 0.02
# 96 px, batch 2: bfloat16 convolutions are ~20x slower than float32 on a CPU without
# native bfloat16 (AVX2 only, like the CI machine). Not 64 px: there P6 is 1x1, and
# torch 2.14.1's oneDNN bfloat16 backward of a stride-2 conv on a 1x1 input (P7's)
# returns garbage weight gradients in most steps (docs/method.md, Mixed precision).
SMALLER = [
    "data.train_scales=[96]",
    "data.max_size=144",
    "data.test_scale=96",
    "data.max_val_images=2",
    "train.batch_size=2",
]


def loss_curve(experiment: str) -> list[float]:
    (run,) = search_runs(experiment)
    history = MlflowClient().get_metric_history(run.info.run_id, "loss")
    return [m.value for m in sorted(history, key=lambda m: m.step)]


@pytest.mark.slow
def test_bf16_training_follows_the_float32_loss_curve(shapes_root, tmp_path, tracking):
    for amp in ("false", "bf16"):
        cfg = load_config(
            [],
            [
                *tiny_train_overrides(shapes_root, tmp_path / amp),
                f"train.amp={amp}",
                *SMALLER,
                "train.epochs=1",
                "train.iters_per_epoch=3",
                "eval.modes=[e2e]",
            ],
        )
        train(cfg, run=RunInfo(experiment=f"amp-{amp}"))
    fp32, bf16 = loss_curve("amp-false"), loss_curve("amp-bf16")
    assert len(fp32) == len(bf16) == 3
    gaps = [abs(b - a) / a for a, b in zip(fp32, bf16)]
    print(f"float32 {fp32}\nbfloat16 {bf16}\nrelative gaps {gaps}")
    assert max(gaps) <= BF16_RTOL
    assert max(gaps) > 0  # bf16 really ran: the network's arithmetic changed


def head_outputs(model: Detector, dtype: torch.dtype) -> HeadOutputs:
    """The outputs of a forward pass on two 128 px images, in ``dtype``."""
    with torch.no_grad():
        out = model(torch.randn(2, 3, 128, 128))
    maps = {k: getattr(out, k) for k in ("cls", "reg", "ctr", "pss")}
    return HeadOutputs(**{k: v.to(dtype) for k, v in maps.items()}, sizes=out.sizes)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_losses_are_float32_whatever_the_outputs_and_autocast(dtype):
    model = Detector(small_config().model)
    half = head_outputs(model, dtype)
    as_float = HeadOutputs(
        half.cls.float(), half.reg.float(), half.ctr.float(), half.pss.float(), half.sizes
    )
    reference = model.losses(as_float, toy_targets())
    for context in (torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad()):
        with context:
            got = model.losses(half, toy_targets())
        assert got.keys() == reference.keys()
        for name, value in got.items():
            assert value.dtype == torch.float32, name
            assert torch.equal(value, reference[name]), name


def test_focal_weights_keep_what_float16_would_flush_to_zero():
    # Confident background everywhere (no objects): the focal weight p^2 ~ 3e-10 is 0 in
    # float16 (smallest ~6e-8), so a float16 loss would be exactly 0; float32 keeps it.
    model = Detector(small_config().model)
    out = head_outputs(model, torch.float16)
    out.cls.fill_(-11.0)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    loss = model.losses(out, empty)["loss_cls"]
    p = torch.tensor(-11.0, dtype=torch.float64).sigmoid()
    assert (p.half() * p.half()).item() == 0.0  # float16 itself underflows here
    expected = out.cls.numel() * 0.75 * p**2 * -torch.log1p(-p)  # alpha 0.25, gamma 2
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4) and loss > 0


def test_amp_setting_per_device():
    cpu = torch.device("cpu")
    assert autocast_dtype(False, cpu) is None
    assert autocast_dtype(True, cpu) is None  # the default: half precision on CUDA only
    assert autocast_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(UserError, match="train.amp=fp16 needs a CUDA device.*bf16"):
        autocast_dtype("fp16", cpu)
    assert load_config([], ["train.amp=bf16"]).train.amp == "bf16"
    assert load_config([], ["train.amp=true"]).train.amp is True  # old files still load
    with pytest.raises(UserError, match="train.amp"):
        load_config([], ["train.amp=fp32"])


def test_amp_default_on_cuda_is_bfloat16_where_the_gpu_has_it():
    assert amp_dtype(True, "cuda", bf16_supported=True) == torch.bfloat16  # Ampere, Hopper
    assert amp_dtype(True, "cuda", bf16_supported=False) == torch.float16  # V100: a scaler
    assert amp_dtype("fp16", "cuda", bf16_supported=True) == torch.float16
    assert amp_dtype("bf16", "cuda", bf16_supported=True) == torch.bfloat16
    assert amp_dtype(False, "cuda", bf16_supported=True) is None
    with pytest.raises(UserError, match="train.amp=bf16 but this GPU has no bfloat16.*fp16"):
        amp_dtype("bf16", "cuda", bf16_supported=False)


def test_non_finite_loss_under_bf16_stops_with_a_clear_error(
    shapes_root, tmp_path, tracking, monkeypatch
):
    cfg = load_config(
        [], [*tiny_train_overrides(shapes_root, tmp_path), *SMALLER, "train.amp=bf16"]
    )
    original = Detector.losses

    def poisoned(self, out, targets):
        assert out.cls.dtype == torch.bfloat16  # the network ran under autocast
        losses = original(self, out, targets)
        losses["loss"] = losses["loss"] * float("inf")
        return losses

    monkeypatch.setattr(Detector, "losses", poisoned)
    with pytest.raises(TrainingDiverged, match=r"iteration 0 \(epoch 1, .*non-finite loss"):
        train(cfg, run=RunInfo(experiment="amp-diverged"))
    (run,) = search_runs("amp-diverged")
    assert run.info.status == "FAILED"
    assert not (cfg.run_dir / "last.pth").exists()
