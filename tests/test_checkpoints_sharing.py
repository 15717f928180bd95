"""Sharing adapters: `phreg-bench adapter push` against a local fake of the hub HTTP API (tests/fake_hub.py),
then `--adapter hf-hub:<user>/<repo>` through the hub cache; offline, the same fast and clear failure as for
backbone weights. Nothing here touches the network."""

from __future__ import annotations

import json
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from fake_hub import FakeHub
from fixtures_probe import SEG_OVERRIDES, write_voc

from phreg_bench.backbones.builtin import build_tiny_vit
from phreg_bench.backbones.hub import HubUnavailableError
from phreg_bench.checkpoints.sharing import PushError, push_adapter
from phreg_bench.cli import main
from phreg_bench.methods.phreg import build as build_phreg
from phreg_core.adapter_io import save_adapter
from phreg_core.student import Student


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory) -> Path:
    """A small trained-looking adapter for tiny-vit, with one result file measured with it."""
    root = tmp_path_factory.mktemp("shared")
    backbone = build_tiny_vit()
    student = Student(backbone.vision, 2)
    with torch.no_grad():
        student.registers.add_(1.0)
        student.vision.model.blocks[-1].mlp.fc2.bias.add_(0.5)
    folder = root / "adapter"
    save_adapter(student, folder / "adapter.safetensors", base_name="tiny-vit",
                 base_weights_sha256=backbone.identity.weights_sha256,
                 config={"epochs": 3, "lr": 1e-4, "lr_end": 5e-6, "batch_size": 8, "views": 10,
                         "extra": {"recipe": "dinov2"}},
                 steps=12, final_loss=0.25, extra={"skipped_batches": 0, "corrupt_images": 1})
    write_voc(root / "data", n_train=4, n_val=2)
    overrides = [f"--protocol-override={k}={v}" for k, v in {**SEG_OVERRIDES, "iters": 5}.items()]
    assert main(["run", "--backbone", "tiny-vit", "--adapter", str(folder), "--tasks", "linseg/voc21",
                 "--data-root", str(root / "data"), "--results-dir", str(folder / "results"),
                 "--cache-dir", str(root / "cache"), *overrides]) == 0
    return folder


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read at import (conftest sets it)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no saved login leaks in
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        yield fake


def test_push_uploads_the_adapter_with_a_model_card(adapter_dir, hub, capsys):
    assert main(["adapter", "push", str(adapter_dir), "--repo", "me/tiny-phreg", "--token", "hf_test_token"]) == 0
    files = hub.repos["me/tiny-phreg"]["files"]
    assert files["adapter.safetensors"] == (adapter_dir / "adapter.safetensors").read_bytes()
    assert files["adapter.json"] == (adapter_dir / "adapter.json").read_bytes()
    (result,) = [name for name in files if name.startswith("results/")]
    assert json.loads(files[result])["method"]["name"] == "phreg"
    card = files["README.md"].decode()
    sidecar = json.loads(files["adapter.json"])
    for needed in ("library_name: phreg-bench", "# PH-Reg adapter for `tiny-vit`", sidecar["base"]["weights_sha256"],
                   sidecar["tensors_sha256"], "--adapter hf-hub:me/tiny-phreg", "- recipe: `dinov2`", "- epochs: `3`",
                   "- steps: `12`", "- final loss (1 − cos + MSE): `0.25`", "- unreadable images: `1`",
                   "| linseg/voc21 | paper | mIoU |", "Vision Transformers with Self-Distilled Registers"):
        assert needed in card, needed
    assert hub.card_metadata[0]["library_name"] == "phreg-bench" and "registers" in hub.card_metadata[0]["tags"]
    assert all(auth == "Bearer hf_test_token" for method, _, auth in hub.requests if method == "POST")
    assert {path for _, path, _ in hub.requests} >= {"/api/repos/create", "/api/models/me/tiny-phreg/preupload/main",
                                                    "/api/models/me/tiny-phreg/commit/main"}
    # pushing again (the repo exists: 409 is fine) replaces the files
    assert main(["adapter", "push", str(adapter_dir), "--repo", "me/tiny-phreg", "--message", "again"]) == 0
    assert "pushed" in capsys.readouterr().err


def test_hub_adapter_loads_like_the_local_one(adapter_dir, hub, tmp_path, monkeypatch):
    push_adapter(adapter_dir, "me/tiny-phreg")
    local = build_phreg(build_tiny_vit(), adapter=str(adapter_dir))
    shared = build_phreg(build_tiny_vit(), adapter="hf-hub:me/tiny-phreg")
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(local.forward_tokens(images)[0].patches, shared.forward_tokens(images)[0].patches)
    assert shared.method_config == local.method_config
    # now cached: works offline without a single request to the endpoint
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.requests.clear()
    again = build_phreg(build_tiny_vit(), adapter="hf-hub:me/tiny-phreg")
    assert again.method_config["adapter_sha256"] == local.method_config["adapter_sha256"] and not hub.requests


def test_hub_adapter_in_a_folder_and_run_command(adapter_dir, hub, tmp_path):
    push_adapter(adapter_dir, "me/collection/clip-b16")
    assert "clip-b16/adapter.safetensors" in hub.repos["me/collection"]["files"]
    write_voc(tmp_path / "data", n_train=4, n_val=2)
    overrides = [f"--protocol-override={k}={v}" for k, v in {**SEG_OVERRIDES, "iters": 5}.items()]
    assert main(["run", "--backbone", "tiny-vit", "--adapter", "hf-hub:me/collection/clip-b16", "--tasks",
                 "linseg/voc21", "--data-root", str(tmp_path / "data"), "--results-dir", str(tmp_path / "r"),
                 "--cache-dir", str(tmp_path / "c"), *overrides]) == 0
    assert main(["results", "validate", str(tmp_path / "r")]) == 0


def test_offline_hub_adapter_fails_fast_and_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError) as error:
        build_phreg(build_tiny_vit(), adapter="hf-hub:someone/phreg-dinov2")
    assert time.perf_counter() - start < 5
    text = str(error.value)
    for needed in ("someone/phreg-dinov2", "adapter.json", str(tmp_path / "empty"), "HF_HUB_OFFLINE",
                   "--adapter PATH"):
        assert needed in text, needed
    # the command line: one error line, exit status 2
    assert main(["run", "--backbone", "tiny-vit", "--adapter", "hf-hub:someone/phreg-dinov2", "--tasks",
                 "linseg/voc21", "--results-dir", str(tmp_path / "r")]) == 2


def test_dry_run_and_refusals_upload_nothing(adapter_dir, hub, tmp_path, capsys):
    assert main(["adapter", "push", str(adapter_dir), "--repo", "me/dry", "--dry-run"]) == 0
    out = capsys.readouterr()
    assert "# PH-Reg adapter for `tiny-vit`" in out.out and "adapter.safetensors" in out.err
    assert not hub.requests
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("adapter.safetensors", "adapter.json"):
        (damaged / name).write_bytes((adapter_dir / name).read_bytes())
    (damaged / "adapter.safetensors").write_bytes((damaged / "adapter.safetensors").read_bytes()[:-2] + b"\0\0")
    with pytest.raises(PushError, match="damaged or edited"):
        push_adapter(damaged, "me/bad")
    with pytest.raises(PushError, match="main branch"):
        push_adapter(adapter_dir, "me/bad@dev")
    assert main(["adapter", "push", str(tmp_path / "nothing"), "--repo", "me/bad"]) == 2
    assert not hub.requests


def test_push_fails_fast_offline(adapter_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError, match="Nothing was uploaded"):
        push_adapter(adapter_dir, "me/offline")
