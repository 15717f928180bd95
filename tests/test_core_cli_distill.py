"""`phreg-bench distill` end to end on a generated image folder with the built-in tiny ViT."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from test_core_fixtures import one_thread  # noqa: F401

from phreg_bench.cli import main


def image_folder(root, count: int = 5):
    root.mkdir()
    for i in range(count):
        Image.new("RGB", (72 + 8 * i, 64), (40 * i, 255 - 30 * i, 90)).save(root / f"img{i}.png")
    return root


def test_distill_command_writes_an_adapter_and_resumes(tmp_path):
    data = image_folder(tmp_path / "images")
    out = tmp_path / "run"
    common = ["distill", "--backbone", "tiny-vit", "--data", str(data), "--out", str(out), "--registers", "2",
              "--views", "2", "--batch-size", "2", "--num-workers", "0", "--no-progress", "--checkpoint-every", "2"]
    assert main(common + ["--epochs", "2", "--max-steps", "2"]) == 0
    sidecar = json.loads((out / "adapter.json").read_text())
    assert sidecar["base"]["name"] == "tiny-vit" and sidecar["registers"] == 2 and sidecar["steps"] == 2
    assert sidecar["config"]["resolution"] == 64  # 518 is no multiple of 8: the native resolution
    assert sidecar["config"]["lr"] == 1e-4 and sidecar["config"]["preset"] == "dinov2"
    assert (out / "log.jsonl").exists() and list((out / "checkpoints").glob("step-*.pt"))
    assert main(common + ["--epochs", "2"]) == 2  # refuses to overwrite a run without --resume
    assert main(common + ["--epochs", "3", "--resume"]) == 2  # another schedule cannot resume this run
    assert main(common + ["--epochs", "2", "--resume"]) == 0
    sidecar = json.loads((out / "adapter.json").read_text())
    assert sidecar["steps"] == 4  # 5 images, batch 2: 2 full batches per epoch (drop_last, as the released trainer)


def test_distill_command_needs_data(tmp_path, capsys):
    assert main(["distill", "--backbone", "tiny-vit", "--out", str(tmp_path)]) == 2
    assert "--data" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["--resolution=60"])
def test_distill_command_checks_the_resolution(tmp_path, bad, capsys):
    data = image_folder(tmp_path / "images", 1)
    assert main(["distill", "--backbone", "tiny-vit", "--data", str(data), "--out", str(tmp_path / "o"), bad]) == 2
    assert "multiple of the patch size" in capsys.readouterr().err
