"""pss.predict and pss.visualize in PyTorch: results, pictures, class names, bad input.

(The ONNX side of predict is in test_export.py, next to the exports it needs.)
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from pss import predict, visualize
from pss.deploy.draw import MIN_SIDE, draw_modes
from pss.deploy.graph import DeployedDetector
from pss.models import MODES, Detector
from pss.testing.deploy import (
    CATEGORIES,
    assert_same_detections,
    lively,
    small_deploy_config,
    write_checkpoint,
)


@pytest.mark.parametrize("name", ["fcos", "atss", "fcos_pss", "atss_pss"])
def test_deployed_graph_gives_the_detections_of_detector_predict(name):
    """The batched, export-ready post-processing against Detector.predict, every mode."""
    torch.manual_seed(0)
    detector = lively(Detector(small_deploy_config(name).model))
    for mode in [m for m in MODES if m != "e2e" or detector.cfg.has_pss]:
        graph = DeployedDetector(detector, mode).eval()
        for b, h, w in [(2, 128, 160), (1, 64, 64)]:
            images = torch.randn(b, 3, h, w)
            with torch.no_grad():
                reference = detector.predict(detector(images), [(h, w)] * b, mode)
                boxes, scores, labels = graph(images)
            assert boxes.shape == (b, 100, 4)
            worst = assert_same_detections(reference, boxes, scores, labels)
            assert worst["box"] == 0 and worst["score"] == 0  # same ops, same numbers
            assert int((scores > 0.3).sum()) >= 10 * b


def test_predict_writes_coco_results_and_drawn_pngs(checkpoint, images, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict.main([str(checkpoint), str(images[0].parent), "--out", str(out)]) == 0
    assert "3 images" in capsys.readouterr().out
    index = json.loads((out / "images.json").read_text())
    assert [i["file_name"] for i in index["images"]] == [str(p) for p in images]
    assert index["categories"] == CATEGORIES  # names and ids from the checkpoint
    results = json.loads((out / "detections.json").read_text())
    assert len({r["image_id"] for r in results}) == 3
    sizes = {i["id"]: (i["width"], i["height"]) for i in index["images"]}
    for r in results:
        x, y, w, h = r["bbox"]
        width, height = sizes[r["image_id"]]
        assert r["score"] > 0.3 and r["category_id"] in (7, 42, 1000)
        assert 0 <= x <= x + w <= width and 0 <= y <= y + h <= height
    scores = [r["score"] for r in results if r["image_id"] == 1]
    assert scores == sorted(scores, reverse=True)
    for path in images:
        with Image.open(out / f"{path.stem}.png") as png, Image.open(path) as original:
            assert min(png.size) == MIN_SIDE  # small images are enlarged, labels readable
            assert png.size[0] * original.size[1] == pytest.approx(
                png.size[1] * original.size[0], rel=0.01
            )


def test_predict_mode_and_threshold(checkpoint, images, tmp_path):
    counts = {}
    for mode, thresh in [("e2e", "0.3"), ("e2e", "0.6"), ("nms", "0.3"), ("raw", "0.3")]:
        out = tmp_path / f"{mode}-{thresh}"
        args = [str(checkpoint), str(images[1]), "--out", str(out), "--mode", mode]
        assert predict.main([*args, "--score-thresh", thresh, "--no-draw"]) == 0
        results = json.loads((out / "detections.json").read_text())
        assert all(r["score"] > float(thresh) for r in results)
        assert not list(out.glob("*.png"))
        counts[mode, thresh] = len(results)
    assert 0 < counts["e2e", "0.6"] < counts["e2e", "0.3"]
    assert counts["raw", "0.3"] >= counts["nms", "0.3"]  # NMS only removes


def test_old_checkpoint_without_names_falls_back_to_class_n(images, tmp_path, capsys):
    old = write_checkpoint(tmp_path / "old.pth", categories=None)
    out = tmp_path / "out"
    assert predict.main([str(old), str(images[0]), "--out", str(out)]) == 0
    assert "holds no category names" in capsys.readouterr().err
    index = json.loads((out / "images.json").read_text())
    assert index["categories"] == [{"id": i, "name": f"class {i}"} for i in range(3)]


def _write_bad_inputs(tmp_path, checkpoint, images):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    empty = tmp_path / "empty"
    empty.mkdir()
    fcos = write_checkpoint(tmp_path / "fcos.pth", "fcos")
    return {
        "missing checkpoint": (
            [str(tmp_path / "nope.pth"), str(images[0])],
            "checkpoint not found",
        ),
        "non-image file": ([str(checkpoint), str(images[0]), str(text)], "not an image file"),
        "unreadable image": ([str(checkpoint), str(images[0]), str(corrupt)], "cannot read image"),
        "missing image": ([str(checkpoint), str(tmp_path / "gone.jpg")], "no such file or folder"),
        "folder without images": ([str(checkpoint), str(empty)], "no image files"),
        "not a checkpoint": ([str(text), str(images[0])], "cannot read checkpoint"),
        "e2e without PSS": ([str(fcos), str(images[0]), "--mode", "e2e"], "needs a PSS head"),
    }


def test_bad_input_is_one_clear_error_and_writes_nothing(checkpoint, images, tmp_path, capsys):
    for case, (args, message) in _write_bad_inputs(tmp_path, checkpoint, images).items():
        out = tmp_path / "out"
        assert predict.main([*args, "--out", str(out)]) == 2, case
        err = capsys.readouterr().err
        assert message in err and err.startswith("error: ") and err.count("\n") == 1, (case, err)
        assert not out.exists(), case  # nothing half-written (the corrupt image is the 2nd)
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], case


def test_visualize_draws_raw_nms_e2e_side_by_side(checkpoint, images, tmp_path, capsys):
    out = tmp_path / "modes.png"
    assert visualize.main([str(checkpoint), str(images[0]), str(images[1]), "--out", str(out)]) == 0
    assert "2 images x raw / nms / e2e" in capsys.readouterr().out
    with Image.open(out) as figure:
        width, height = figure.size
    # img0 (120x160) is drawn at 384x512 per panel: three panels and two 6 px gaps wide
    assert width == 3 * 512 + 2 * 6 and height > 2 * MIN_SIDE
    fcos = write_checkpoint(tmp_path / "fcos.pth", "fcos")
    figure = draw_modes(fcos, [images[0]])
    assert figure.size[0] == 2 * 512 + 6  # raw and nms only: no PSS head, no e2e column


def test_visualize_bad_input(checkpoint, tmp_path, capsys):
    assert visualize.main([str(checkpoint), str(tmp_path / "x.png"), "--out", "m.png"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
