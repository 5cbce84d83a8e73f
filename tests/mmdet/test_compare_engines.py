"""Both engines trained side by side (python -m pss.mmdet.compare_engines).

The smoke recipe with a 5-step warm-up: the learning rate climbs to its full value
within the steps compared, and an epoch of 4 steps ends among them (mmengine's
epoch-based scheduler steps there). A translation one step off in the warm-up, the
first difference this comparison found, is caught at the step where it shows.
"""

from __future__ import annotations

import io
from pathlib import Path

import mmcv
import pytest
from twins import REPO

from pss.config import load_config
from pss.data.transforms import resized_shape
from pss.errors import EXIT_OK
from pss.mmdet import compare_engines
from pss.testing.commands import run_command

EXPERIMENTS = REPO / "experiments"
SHORT = [
    "train.warmup_iters=5",
    "train.iters_per_epoch=4",
    "train.lr_steps=[2]",
    "train.epochs=3",
    "data.train_scales=[80, 96, 112]",  # resized, so that both pipelines resize
    "data.max_size=160",
]
LOSSES = {
    "fcos_pss": ("loss_cls", "loss_box", "loss_ctr", "loss_pss", "loss_rank"),
    "atss_pss": ("loss_cls", "loss_box", "loss_ctr", "loss_pss", "loss_rank"),
    "gfocalv2_pss": ("loss_cls", "loss_box", "loss_dfl", "loss_pss", "loss_rank"),
    "condinst_pss": ("loss_cls", "loss_box", "loss_ctr", "loss_mask", "loss_pss", "loss_rank"),
}
# Each model's experiment file and what turns it into that model, trained end to end
# (GFocalV2_PSS's own file is two-step, which runs on our engine only).
EXPERIMENT = {
    "fcos_pss": ("fcos_pss_r50_3x.yaml", []),
    "atss_pss": ("atss_pss_r50_3x.yaml", []),
    "gfocalv2_pss": ("gfocalv2_r50_2x.yaml", ["model.name=gfocalv2_pss"]),
    "condinst_pss": ("condinst_pss_r50_3x.yaml", []),
}


def _argv(name: str, steps: int, data: Path) -> list[str]:
    file, settings = EXPERIMENT[name]
    argv = [EXPERIMENTS / file, EXPERIMENTS / "smoke" / "overlay.yaml"]
    for item in [*settings, *SHORT, f"data.root={data}"]:
        argv += ["--set", item]
    return [*map(str, argv), "--steps", str(steps)]


@pytest.mark.parametrize("name", ["fcos_pss", "atss_pss", "gfocalv2_pss"])
def test_the_engines_train_to_the_same_place(name, tmp_path):
    argv = ["-m", "pss.mmdet.compare_engines", *_argv(name, 10, tmp_path / "shapes")]
    proc = run_command(argv, REPO, timeout=600)
    assert proc.returncode == EXIT_OK, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = lines[0].split()  # every loss, on both sides below, then the weights
    assert header[:7] == ["lr", *LOSSES[name], "loss"] and "weights" in header, lines[0]
    assert len([line for line in lines if line.startswith("step ")]) == 10
    apart = [line.split() for line in lines if line.split()[:1] == ["apart"]]
    assert len(apart) == 10 and all("data:" in line for line in apart)
    assert "<- apart" not in proc.stdout
    assert "the engines agree" in proc.stdout


def test_a_warm_up_one_step_off_is_caught_where_it_shows(monkeypatch, tmp_path):
    """mmengine's LinearLR reaches the full rate at its ``end - 1``: translated with
    ``end = warmup_iters``, as it was, the rates part from the second step on."""
    translate = compare_engines.mmdet_config

    def one_step_off(cfg, **kwargs):
        files, options = translate(cfg, **kwargs)
        for scheduler in options["param_scheduler"]:
            if scheduler["type"] == "LinearLR":
                scheduler["end"] -= 1
        return files, options

    monkeypatch.setattr(compare_engines, "mmdet_config", one_step_off)
    out = io.StringIO()
    assert not compare_engines.compare(_config("fcos_pss", 3, tmp_path / "shapes"), 3, out)
    assert "the engines part at step 1: lr apart" in out.getvalue(), out.getvalue()


def _config(name: str, steps: int, data: Path):
    args = _argv(name, steps, data)
    cfg = load_config(args[:2], [a for a in args[2:-2] if a != "--set"])
    cfg.data.num_workers = 0
    return cfg


def test_condinst_pss_trains_to_the_same_place_on_mmdets_own_condinst(tmp_path):
    """mmdet's CondInst as shipped (center sampling around mask centroids, AdelaiDet's
    upsampling and pixel-sampled mask targets, as ours) with the plugin head, the
    translation, the optimizer, the schedule and the data: the engines agree for 8 steps."""
    out = io.StringIO()
    agree = compare_engines.compare(_config("condinst_pss", 8, tmp_path / "shapes"), 8, out)
    lines = out.getvalue().splitlines()
    assert agree, out.getvalue()
    assert lines[0].split()[:8] == ["lr", *LOSSES["condinst_pss"], "loss"], lines[0]
    assert len([line for line in lines if line.startswith("step ")]) == 8
    data = [line for line in lines if "data:" in line]
    assert len(data) == 8 and all(", masks " in line for line in data)  # mmdet's masks too
    assert "the engines agree" in out.getvalue()


@pytest.mark.parametrize("short", [80, 96, 480, 800])
def test_both_pipelines_resize_to_the_same_size(short):
    """Our RandomResize and mmdet's RandomChoiceResize (mmcv's keep-ratio rule) give every
    image the same size, so the same decision is the same image."""
    for height in range(20, 1400, 37):
        for width in range(20, 1400, 41):
            ours = resized_shape(height, width, short, 1333)[:2]
            new_w, new_h = mmcv.rescale_size((width, height), (1333, short))
            assert ours == (new_h, new_w), (height, width, short)
