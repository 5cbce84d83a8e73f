"""predict / export / visualize check their output before any work (exit 2, one line naming
it, nothing overwritten); over-size images are skipped with one line each; drawings of
images with the same name do not overwrite each other. Each runs the real command."""

from __future__ import annotations

import json
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from pss.errors import EXIT_OK
from pss.testing.commands import assert_refused as refused
from pss.testing.commands import run_command


def run(module: str, *argv: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return run_command(["-m", module, *argv], cwd)


def assert_refused(proc: subprocess.CompletedProcess, named: Path, said: str) -> None:
    refused(proc, named, said)
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr


def notes(path: Path) -> Path:
    path.write_text("my notes, not to be overwritten\n")
    return path


def oversize_png(path: Path, side: int = 20000) -> Path:
    """A PNG whose header says side x side pixels (over Pillow's limit); no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def test_predict_refuses_a_file_as_out_before_loading_anything(tmp_path, images):
    out = notes(tmp_path / "out")
    # The checkpoint does not exist either: the output is checked first.
    proc = run("pss.predict", tmp_path / "nope.pth", images[0], "--out", out, cwd=tmp_path)
    assert_refused(proc, out, "is a file")
    assert out.read_text() == "my notes, not to be overwritten\n"


def test_predict_refuses_out_below_a_file(tmp_path, checkpoint, images):
    below = notes(tmp_path / "notes.txt")
    out = below / "results"
    proc = run("pss.predict", checkpoint, images[0], "--out", out, cwd=tmp_path)
    assert_refused(proc, out, "is a file, not a folder")
    assert below.read_text() == "my notes, not to be overwritten\n"


def test_predict_refuses_an_unwritable_folder(tmp_path, checkpoint, images):
    """A folder no file can be made in, whoever runs: sysfs refuses even root's mkdir."""
    locked = Path("/sys/kernel")
    out = locked / "results"
    proc = run("pss.predict", checkpoint, images[0], "--out", out, cwd=tmp_path)
    assert_refused(proc, out, f"cannot be written: Permission denied in {locked}")
    assert not out.exists()


def test_export_refuses_to_overwrite_another_kind_of_file(tmp_path, checkpoint):
    out = notes(tmp_path / "notes.txt")
    proc = run("pss.export", tmp_path / "nope.pth", "--out", out, cwd=tmp_path)
    assert_refused(proc, out, "an existing file that is not a .onnx file")
    assert out.read_text() == "my notes, not to be overwritten\n"
    below = tmp_path / "notes.txt" / "model.onnx"
    proc = run("pss.export", tmp_path / "nope.pth", "--out", below, cwd=tmp_path)
    assert_refused(proc, below, "is a file, not a folder")


def test_visualize_out_folder_and_refusals(tmp_path, checkpoint, images):
    folder = tmp_path / "figures"
    folder.mkdir()
    proc = run("pss.visualize", checkpoint, images[0], "--out", folder, cwd=tmp_path)
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    assert (folder / "modes.png").is_file() and f"wrote {folder / 'modes.png'}" in proc.stdout
    out = notes(tmp_path / "notes.txt")
    proc = run("pss.visualize", tmp_path / "nope.pth", images[0], "--out", out, cwd=tmp_path)
    assert_refused(proc, out, "an existing file that is not a .png/.jpg/.jpeg file")
    assert out.read_text() == "my notes, not to be overwritten\n"


def test_predict_skips_oversize_images_and_keeps_names_apart(tmp_path, checkpoint, images):
    """x.jpg and x.png (and a second folder's x.png) get three drawings; an image over
    Pillow's size limit is skipped with one line naming it; images.json says which is which."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "x.png").write_bytes(images[0].read_bytes())
    from PIL import Image

    with Image.open(images[1]) as image:
        image.save(inputs / "x.jpg")
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.png").write_bytes(images[2].read_bytes())
    huge = oversize_png(inputs / "huge.png")
    out = tmp_path / "out"
    proc = run("pss.predict", checkpoint, inputs, other, "--out", out, cwd=tmp_path)
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and str(huge) in warnings[0] and "Pillow's limit" in warnings[0]
    index = json.loads((out / "images.json").read_text())
    files = [i["file_name"] for i in index["images"]]
    assert files == [str(inputs / "x.jpg"), str(inputs / "x.png"), str(other / "x.png")]
    drawings = [i["drawing"] for i in index["images"]]
    assert len(set(drawings)) == 3 and drawings[0] == "x.png"
    assert sorted(p.name for p in out.glob("*.png")) == sorted(drawings)
    for entry in index["images"]:
        with Image.open(out / entry["drawing"]) as png, Image.open(entry["file_name"]) as src:
            assert png.size[0] * src.size[1] == pytest.approx(png.size[1] * src.size[0], rel=0.01)
    assert "3 images" in proc.stdout
