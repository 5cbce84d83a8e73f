"""ONNX export: no NMS op in the e2e graph, and ONNX Runtime gives PyTorch's detections.

Each export takes tens of seconds on 2 cores (torch.export + ONNX translation),
so every exported file is made once per module and shared by its checks.
"""

from __future__ import annotations

import json
import re
import tomllib

import onnx
import pytest

from pss import predict
from pss.deploy.inference import META_CATEGORIES, META_MODE, META_PREPROCESS
from pss.export import NMS_OPS, main, op_types
from pss.testing import REPO
from pss.testing.deploy import (
    BOX_ATOL,
    CATEGORIES,
    SCORE_ATOL,
    assert_same_detections,
    exporter,
    run_both,
    write_checkpoint,
    write_images,
)

pytestmark = pytest.mark.slow

FIXED = (128, 160)
# (batch, H, W) run through the dynamic graphs; 64x64 has fewer than K=100 locations.
DYNAMIC_INPUTS = [(2, 128, 160), (1, 96, 224), (3, 160, 96), (1, 64, 64)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, mode, shape) -> (checkpoint, onnx path), exported on first use."""
    return exporter(tmp_path_factory.mktemp("export"), FIXED)


@pytest.mark.parametrize("name", ["fcos_pss", "atss_pss"])
@pytest.mark.parametrize("shape", ["fixed", "dynamic"])
def test_e2e_graph_has_no_nms_and_gives_pytorchs_detections(exported, name, shape, capsys):
    ckpt, path = exported(name, "e2e", shape)
    ops = op_types(path)
    assert not NMS_OPS & set(ops), ops
    assert {"Conv", "TopK"} <= set(ops) and not any("nms" in op.lower() for op in ops)
    inputs = [(1, *FIXED), (1, *FIXED)] if shape == "fixed" else DYNAMIC_INPUTS
    total, worst = 0, {"box": 0.0, "score": 0.0}
    for reference, (boxes, scores, labels) in run_both(ckpt, path, "e2e", inputs):
        assert boxes.shape == (len(reference), 100, 4) and labels.dtype == "int64"
        got = assert_same_detections(reference, boxes, scores, labels)
        total += int((scores > 0.3).sum())
        worst = {k: max(worst[k], got[k]) for k in worst}
    assert total >= 10 * len(inputs)  # confident detections, not near-ties at the prior
    with capsys.disabled():
        print(
            f"\n  {name} e2e {shape}: max |box diff| {worst['box']:.2e} px, "
            f"max |score diff| {worst['score']:.2e}; ops: {' '.join(ops)}"
        )


def test_nms_graph_uses_onnx_nms_and_gives_pytorchs_detections(exported, capsys):
    ckpt, path = exported("fcos_pss", "nms", "dynamic")
    assert "NonMaxSuppression" in op_types(path)
    singles = [(1, h, w) for _, h, w in DYNAMIC_INPUTS]  # the nms graph's batch is fixed
    kept = 0
    for reference, outputs in run_both(ckpt, path, "nms", singles):
        worst = assert_same_detections(reference, *outputs)
        kept += worst["detections"]
    assert kept > 20
    with capsys.disabled():
        print(f"\n  fcos_pss nms dynamic: {kept} detections, max |box diff| {worst['box']:.2e}")


def test_export_carries_what_predict_needs(exported, tmp_path):
    _, path = exported("fcos_pss", "e2e", "fixed")
    # a fixed-size export shrinks larger images to fit its input: any image size works
    write_images(tmp_path / "in", sizes=((200, 140), (60, 300), (128, 160)))
    out = tmp_path / "out"
    assert predict.main(["--onnx", str(path), str(tmp_path / "in"), "--out", str(out)]) == 0
    index = json.loads((out / "images.json").read_text())
    sizes = {i["id"]: (i["width"], i["height"]) for i in index["images"]}
    results = json.loads((out / "detections.json").read_text())
    assert {r["image_id"] for r in results} == {1, 2, 3}
    for r in results:
        x, y, w, h = r["bbox"]
        assert x + w <= sizes[r["image_id"]][0] and y + h <= sizes[r["image_id"]][1]
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[META_MODE] == "e2e"
    assert json.loads(meta[META_CATEGORIES]) == CATEGORIES
    assert json.loads(meta[META_PREPROCESS])["fixed"] == list(FIXED)
    (image,) = model.graph.input
    dims = [d.dim_value for d in image.type.tensor_type.shape.dim]
    assert dims == [1, 3, *FIXED]
    assert [o.name for o in model.graph.output] == ["boxes", "scores", "labels"]


def test_e2e_export_of_a_model_without_pss_head_is_a_clear_error(tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "fcos.pth", "fcos")
    out = tmp_path / "model.onnx"
    assert main([str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "needs a model with a PSS head" in err and "'fcos'" in err and "--mode nms" in err
    assert err.count("\n") == 1 and not out.exists() and list(tmp_path.iterdir()) == [ckpt]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.pth", "--out", "m.onnx"], "checkpoint not found"),
        (["CKPT", "--out", "m.onnx", "--size", "big"], "--size must be HxW"),
    ],
)
def test_export_bad_input(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    ckpt = write_checkpoint(tmp_path / "c.pth")
    args = [str(ckpt) if a == "CKPT" else a for a in args]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_predict_with_the_onnx_export_writes_the_same_results(exported, tmp_path):
    ckpt, path = exported("fcos_pss", "e2e", "dynamic")
    images = write_images(tmp_path / "photos", sizes=((120, 160), (96, 96), (200, 140), (50, 300)))
    results = {}
    for backend, model in [("torch", [str(ckpt)]), ("onnx", ["--onnx", str(path)])]:
        out = tmp_path / backend
        args = [*model, str(images[0].parent), "--out", str(out), "--score-thresh", "0.05"]
        assert predict.main(args) == 0
        results[backend] = json.loads((out / "detections.json").read_text())
        assert len(list(out.glob("*.png"))) == 4
    assert len(results["torch"]) == len(results["onnx"]) > 40
    for a, b in zip(results["torch"], results["onnx"]):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["score"] == pytest.approx(b["score"], abs=SCORE_ATOL + 1e-5)  # json rounding
        assert a["bbox"] == pytest.approx(b["bbox"], abs=BOX_ATOL * 4)  # in file pixels


def test_predict_onnx_mode_must_match_the_export(exported, tmp_path, capsys):
    _, path = exported("fcos_pss", "e2e", "dynamic")
    images = write_images(tmp_path / "photos", sizes=((64, 64),))
    args = ["--onnx", str(path), str(images[0]), "--out", str(tmp_path / "o"), "--mode", "nms"]
    assert predict.main(args) == 2
    assert "exported with --mode e2e" in capsys.readouterr().err


def test_make_setup_installs_the_onnx_extra():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert {r.split("==")[0] for r in extras["onnx"]} == {"onnx", "onnxruntime", "onnxscript"}
    install = re.search(
        r'pip install --quiet -e "\.\[([a-z,]+)\]"', (REPO / "Makefile").read_text()
    )
    assert install and "onnx" in install.group(1).split(",")
