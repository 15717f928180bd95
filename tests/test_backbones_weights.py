"""Weights: local files in every accepted format, refusal of pickled objects, hub cache and offline errors.

Every file is written by the test itself (tiny reduced models) in the exact on-disk format.
"""

from __future__ import annotations

import os
import pickle
import socket
import time
import zipfile

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from phreg_bench.backbones import hub
from phreg_bench.backbones.weights import WeightsError, read_state_dict
from phreg_bench.registries import BACKBONES
from phreg_core.hashing import file_sha256

DINO = "timm:vit_small_patch14_reg4_dinov2.lvd142m"
TOL = 1e-5


def _build(name, **options):
    return BACKBONES.get(name)(reduced=True, **options)


def _same_features(a, b, images):
    torch.testing.assert_close(a.forward_tokens(images)[0].patches, b.forward_tokens(images)[0].patches,
                               atol=TOL, rtol=0)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil(marker) -> _Evil:
    obj = _Evil()
    obj.marker = marker
    return obj


# -- timm, every local format --------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["safetensors", "pt", "bin", "legacy-pt", "wrapped-ddp"])
def test_timm_local_weights_in_each_format(tmp_path, fmt):
    source = _build(DINO, random_init=True, seed=3)
    state = source.vision.model.state_dict()
    path = tmp_path / {"safetensors": "w.safetensors", "bin": "pytorch_model.bin"}.get(fmt, "w.pt")
    if fmt == "safetensors":
        save_file(state, path)
    elif fmt == "legacy-pt":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    elif fmt == "wrapped-ddp":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    else:
        torch.save(state, path)
    loaded = _build(DINO, weights=str(path))
    assert loaded.identity.weights_id == str(path.resolve())
    assert loaded.identity.weights_sha256 == file_sha256(path)
    _same_features(loaded, source, torch.randn(1, 3, 56, 70))


def test_timm_original_dinov2_checkpoint_is_converted_by_timm(tmp_path):
    """Meta's DINOv2 layout (register_tokens, mask_token, CLS slot in pos_embed) goes through timm's filter."""
    source = _build(DINO, random_init=True, seed=4)
    state = dict(source.vision.model.state_dict())
    cls_pos = torch.randn(1, 1, state["cls_token"].shape[-1])
    original = {k: v for k, v in state.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    original.update(register_tokens=state["reg_token"], mask_token=torch.zeros(1, state["cls_token"].shape[-1]),
                    cls_token=state["cls_token"] - cls_pos, pos_embed=torch.cat([cls_pos, state["pos_embed"]], 1))
    torch.save(original, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    loaded = _build(DINO, weights=str(tmp_path / "dinov2_vits14_reg4_pretrain.pth"))
    _same_features(loaded, source, torch.randn(1, 3, 56, 56))


def test_weights_that_do_not_fit_name_the_file(tmp_path):
    other = _build("timm:deit_small_patch16_224.fb_in1k", random_init=True)
    save_file(other.vision.model.state_dict(), tmp_path / "deit.safetensors")
    with pytest.raises(WeightsError, match="deit.safetensors"):
        _build(DINO, weights=str(tmp_path / "deit.safetensors"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _build(DINO, weights=str(tmp_path / "missing.safetensors"))


# -- open_clip, including OpenAI's TorchScript checkpoints ----------------------------------------------
def _open_clip_source():
    """A tiny open_clip CLIP whose weights survive an fp16 round trip (OpenAI files are fp16)."""
    import open_clip

    from phreg_bench.backbones import open_clip_backbones as ocb

    overrides = ocb._reduce(open_clip.get_model_config("ViT-B-16"), ocb.reduced_config(True))
    model = ocb._create("ViT-B-16", seed=5, quick_gelu=True, preprocess={}, overrides=overrides, img_size=None)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    return model


def _torchscript_archive(state: dict[str, torch.Tensor], path) -> None:
    """A TorchScript archive holding ``state`` under the same dotted names, like OpenAI's CLIP ``.pt``."""
    root = nn.Module()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        module.register_buffer(leaf, value.clone())
    torch.jit.save(torch.jit.script(root), str(path))


def _check_open_clip_load(model, path):
    loaded = _build("open_clip:ViT-B-16/openai", weights=str(path))
    native = torch.randn(1, 3, 64, 64)
    model.visual.output_tokens = True
    with torch.no_grad():
        _, tokens = model.visual(native)
        expected_text = model.encode_text(loaded.text.tokenizer(["a photo of a cat."]))
    torch.testing.assert_close(loaded.forward_tokens(native)[0].patches.flatten(2).transpose(1, 2), tokens,
                               atol=TOL, rtol=0)
    torch.testing.assert_close(loaded.encode_text(["a photo of a cat."]), expected_text, atol=TOL, rtol=0)
    assert loaded.identity.weights_sha256 == file_sha256(path) and loaded.identity.weights_id == str(path.resolve())


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
@pytest.mark.parametrize("fmt", ["safetensors", "bin", "openai-torchscript", "openai-state-dict"])
def test_open_clip_local_weights_in_each_format(tmp_path, fmt):
    model = _open_clip_source()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        path = tmp_path / "open_clip_model.safetensors"
        save_file(state, path)
    elif fmt == "bin":
        path = tmp_path / "open_clip_pytorch_model.bin"
        torch.save(state, path)
    else:  # OpenAI layout: fp16 tensors plus three integer attributes open_clip drops
        openai = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        openai.update(input_resolution=torch.tensor(64), context_length=torch.tensor(77),
                      vocab_size=torch.tensor(49408))
        path = tmp_path / "ViT-B-16.pt"
        if fmt == "openai-torchscript":
            _torchscript_archive(openai, path)
            trusted = torch.jit.load(str(path)).state_dict()  # only because this test wrote the file
            ours = read_state_dict(path)
            assert sorted(ours) == sorted(trusted)
            assert all(torch.equal(ours[k], trusted[k]) and ours[k].dtype == trusted[k].dtype for k in trusted)
        else:
            torch.save(openai, path)
    _check_open_clip_load(model, path)


# -- refusing pickled objects ----------------------------------------------------------------------------
def test_pickled_objects_are_refused_without_running_them(tmp_path):
    marker = tmp_path / "pwned"
    tensors = {"weight": torch.ones(2)}
    zip_path, legacy_path = tmp_path / "evil.pt", tmp_path / "evil_legacy.bin"
    torch.save({"state_dict": tensors, "payload": _evil(marker)}, zip_path)
    legacy_path.write_bytes(pickle.dumps({"weight": _evil(marker)}, protocol=2))
    for path in (zip_path, legacy_path):
        with pytest.raises(WeightsError, match="refusing to unpickle arbitrary Python objects"):
            read_state_dict(path)
    with pytest.raises(WeightsError, match="safetensors"):  # the message says how to convert
        read_state_dict(zip_path)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_a_torchscript_archive_with_a_foreign_global_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    good = tmp_path / "good.pt"
    _torchscript_archive({"visual.proj": torch.ones(2, 2)}, good)
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("/data.pkl"):
                data = pickle.dumps(_evil(marker), protocol=2)
            dst.writestr(item, data)
    with pytest.raises(WeightsError, match="refusing pickled global"):
        read_state_dict(bad)
    assert not marker.exists()
    assert sorted(read_state_dict(good)) == ["visual.proj"]


def test_unreadable_files_give_a_clear_error(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint at all")
    (tmp_path / "junk.safetensors").write_bytes(b"nope")
    for name in ("junk.bin", "junk.safetensors"):
        with pytest.raises(WeightsError, match=name):
            read_state_dict(tmp_path / name)


# -- the hub: cache first, fast and clear failure offline ------------------------------------------------
def _fake_hub_cache(root, repo_id: str, files: dict) -> None:
    """The huggingface_hub cache layout: refs/main -> snapshots/<commit>/<file>; ``files``: name -> writer."""
    repo_dir = root / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for filename, write in files.items():
        write(snapshot / filename)


@pytest.fixture()
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def test_hub_weights_come_from_the_cache_without_network(empty_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = _build(DINO, random_init=True, seed=7)
    _fake_hub_cache(empty_cache, "timm/vit_small_patch14_reg4_dinov2.lvd142m",
                    {"model.safetensors": lambda path: save_file(source.vision.model.state_dict(), path)})
    loaded = _build(DINO)
    assert loaded.identity.weights_id == "hf-hub:timm/vit_small_patch14_reg4_dinov2.lvd142m/model.safetensors"
    assert loaded.identity.extra["hub_repo"] == "timm/vit_small_patch14_reg4_dinov2.lvd142m"
    _same_features(loaded, source, torch.randn(1, 3, 56, 56))


def test_hf_hub_open_clip_repo_from_the_cache(empty_cache, monkeypatch):
    """``hf-hub:<repo>`` with open_clip_config.json: config, preprocessing and weights all from the repo."""
    import json

    import open_clip

    from phreg_bench.backbones import open_clip_backbones as ocb

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = _open_clip_source()
    model_cfg = {**ocb._reduce(open_clip.get_model_config("ViT-B-16"), ocb.reduced_config(True)), "quick_gelu": True}
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    _fake_hub_cache(empty_cache, "test-org/tiny-clip", {
        "open_clip_config.json": lambda path: path.write_text(json.dumps(config)),
        "open_clip_model.safetensors": lambda path: save_file(model.state_dict(), path)})
    loaded = BACKBONES.get("hf-hub:test-org/tiny-clip")()
    assert loaded.identity.weights_id == "hf-hub:test-org/tiny-clip/open_clip_model.safetensors"
    assert loaded.mean == (0.5, 0.5, 0.5) and loaded.has_text and loaded.identity.extra["quick_gelu"] is True
    native = torch.randn(1, 3, 64, 64)
    model.visual.output_tokens = True
    with torch.no_grad():
        _, tokens = model.visual(native)
    torch.testing.assert_close(loaded.forward_tokens(native)[0].patches.flatten(2).transpose(1, 2), tokens,
                               atol=TOL, rtol=0)


def test_hf_hub_timm_repo_from_the_cache(empty_cache, monkeypatch):
    """``hf-hub:<repo>`` without open_clip_config.json is a timm repo (config.json + model.safetensors)."""
    import json

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = _build(DINO, random_init=True, seed=8)
    config = {"architecture": "vit_small_patch14_reg4_dinov2", "num_classes": 0,
              "pretrained_cfg": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                 "interpolation": "bicubic", "input_size": [3, 518, 518], "num_classes": 0}}
    _fake_hub_cache(empty_cache, "test-org/tiny-dino", {
        "config.json": lambda path: path.write_text(json.dumps(config)),
        "model.safetensors": lambda path: save_file(source.vision.model.state_dict(), path)})
    loaded = _build("hf-hub:test-org/tiny-dino")
    assert loaded.identity.family == "timm" and loaded.num_registers == 4
    assert loaded.identity.weights_id == "hf-hub:test-org/tiny-dino/model.safetensors"
    _same_features(loaded, source, torch.randn(1, 3, 56, 42))


def _assert_fast_clear_failure(name, repo, filename, cache, *, reason):
    factory = BACKBONES.get(name)
    start = time.perf_counter()
    with pytest.raises(hub.HubUnavailableError) as caught:
        factory()
    elapsed = time.perf_counter() - start
    message = str(caught.value)
    assert elapsed < 5.0, f"offline failure took {elapsed:.1f} s"
    for needed in (repo, filename, str(cache), "HF_HOME", "HF_HUB_OFFLINE", "--weights", reason):
        assert needed in message, f"{needed!r} missing from: {message}"


@pytest.mark.parametrize(("name", "repo", "filename"), [
    ("dinov2-vit-b14", "timm/vit_base_patch14_dinov2.lvd142m", "model.safetensors"),
    ("openai-clip-vit-b16", "timm/vit_base_patch16_clip_224.openai", "open_clip_model.safetensors"),
    ("dfn-clip-vit-b16", "apple/DFN2B-CLIP-ViT-B-16", "open_clip_pytorch_model.bin"),
    ("hf-hub:laion/CLIP-ViT-B-16-laion2B-s34B-b88K", "laion/CLIP-ViT-B-16-laion2B-s34B-b88K", "open_clip_config.json"),
])
def test_offline_flag_fails_fast_with_what_to_download(empty_cache, monkeypatch, name, repo, filename):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _assert_fast_clear_failure(name, repo, filename, empty_cache, reason="HF_HUB_OFFLINE is set")


def test_unreachable_endpoint_fails_fast(empty_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    _assert_fast_clear_failure("dinov2-vit-s14", "timm/vit_small_patch14_dinov2.lvd142m", "model.safetensors",
                               empty_cache, reason="127.0.0.1:9")


def test_a_network_that_never_answers_fails_fast(empty_cache, monkeypatch):
    """Simulates a black-holed route / hanging DNS: connecting blocks far longer than the budget."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def hang(*args, **kwargs):
        time.sleep(30)
        raise TimeoutError("simulated")

    monkeypatch.setattr(socket, "create_connection", hang)
    _assert_fast_clear_failure("openclip-vit-b16-laion2b", "laion/CLIP-ViT-B-16-laion2B-s34B-b88K",
                               "open_clip_model.safetensors", empty_cache, reason="no answer")


def test_cli_run_with_a_hub_name_offline_exits_with_the_message(empty_cache, monkeypatch, tmp_path, capsys):
    from phreg_bench.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    code = main(["run", "--backbone", "dinov2-vit-s14", "--tasks", "synthetic/segmentation",
                 "--results-dir", str(tmp_path / "results"), "--device", "cpu"])
    assert code == 2 and time.perf_counter() - start < 5.0
    err = capsys.readouterr().err
    assert "timm/vit_small_patch14_dinov2.lvd142m" in err and "HF_HUB_OFFLINE" in err
