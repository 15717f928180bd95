"""Test-time registers (Jiang et al., NeurIPS'25): the reference's intervention and neuron scoring, literally
transcribed, equal ours on random weights; on the planted ViT the finder recovers the planted register
neurons and the intervention removes the planted outliers."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from phreg_bench.backbones.build import build_backbone
from phreg_bench.synthetic.planted import build_planted_vit, firing_maps, register_neuron_indices
from phreg_bench.synthetic.scenes import render
from phreg_core.diagnostics import outlier_rate
from phreg_core.losses import token_cosine
from phreg_core.ttr import (
    FinderSettings,
    NeuronScorer,
    RegisterNeuronsError,
    TestTimeRegisters,
    as_mapping,
    mlp_activation,
    parse_neurons,
)

# -- literal transcriptions of the reference code (nickjiang2378/test-time-registers) ------------------


# shared/hook_fn.py: activate_on_registers (the list-free branch), normal_values="zero"
def reference_activate_on_registers(module, input, output, num_registers, neuron_indices, scale=1.0,
                                    normal_values="zero"):
    output[0, -num_registers:, neuron_indices] = scale * torch.max(
        output[0, :, neuron_indices], dim=0).values.unsqueeze(0).expand(num_registers, -1)
    if normal_values == "zero":
        output[0, 1:-num_registers, neuron_indices] = 0


# dinov2/dinov2/hub/hook_fn.py: sign_max and activate_on_registers (the released dinov2_vitl14_tt_reg)
def reference_sign_max(tensor):
    pos_max = torch.max(tensor)
    neg_max = torch.min(tensor)
    return pos_max if abs(pos_max) > abs(neg_max) else neg_max


def reference_activate_on_registers_hub(module, input, output, num_registers, neuron_indices, scale=1.0):
    output[0, -num_registers:, neuron_indices] = scale * reference_sign_max(output[0, :, neuron_indices]).unsqueeze(
        0).expand(num_registers, -1)
    output[0, 1:-num_registers, neuron_indices] = 0


NEURONS = {0: [3, 17, 40], 1: [5]}


def _timm_backbone():
    """A reduced timm ViT with random weights; its layer scales (DeiT-III init 1e-5) set to 1 so that the MLP
    (where the intervention acts) matters for the output."""
    backbone = build_backbone("timm:deit3_small_patch16_224.fb_in1k", random_init=True, reduced=True)
    with torch.no_grad():
        for block in backbone.vision.blocks:
            block.ls1.gamma.fill_(1.0)
            block.ls2.gamma.fill_(1.0)
    return backbone


def _timm_reference(model, image, neurons, hook, registers=1):
    """One image through timm's own modules with the reference's extra zero tokens and hooks.

    The zero tokens are appended after the positional embedding (dinov2/dinov2/models/vision_transformer.py:
    prepare_tokens_with_masks), the hooks sit on ``blocks[l].mlp.act`` (dinov2/dinov2/hub/backbones.py).
    """
    handles = [model.blocks[layer].mlp.act.register_forward_hook(
        partial(hook, num_registers=registers, neuron_indices=units)) for layer, units in neurons.items()]
    try:
        x = model._pos_embed(model.patch_embed(image))
        x = torch.cat((x, torch.zeros((1, registers, x.shape[-1]))), dim=1)
        x = model.norm(model.blocks(model.norm_pre(x)))
    finally:
        for handle in handles:
            handle.remove()
    return x


@pytest.mark.parametrize("rule, hook", [("max", reference_activate_on_registers),
                                        ("sign_max", reference_activate_on_registers_hub)])
def test_timm_output_equals_the_reference_intervention(rule, hook, tmp_path):
    from phreg_bench.registries import METHODS

    backbone = _timm_backbone()
    model, vision = backbone.vision.model, backbone.vision
    images = torch.randn(3, 3, 64, 64)  # the reduced model's native 4x4 grid
    (tmp_path / "neurons.json").write_text(json.dumps({str(k): v for k, v in NEURONS.items()}))
    method = METHODS.get("ttr")(backbone, neurons=str(tmp_path / "neurons.json"), rule=rule)
    with torch.no_grad():
        ours = method.forward_tokens(images, project=True)[0]
        reference = torch.cat([_timm_reference(model, images[i : i + 1], NEURONS, hook) for i in range(3)])
        raw = vision.forward_tokens(images)[0].patches
    grid = ours.grid
    patches = reference[:, 1:-1].transpose(1, 2).reshape(3, -1, *grid)
    assert torch.allclose(ours.patches, patches, atol=1e-6, rtol=0)
    assert torch.allclose(ours.prefix, torch.cat([reference[:, :1], reference[:, -1:]], 1), atol=1e-6, rtol=0)
    assert (ours.patches - raw).abs().max() > 1e-3  # the intervention does change the features
    assert all(not mlp_activation(b)[0]._forward_hooks for b in vision.blocks)  # hooks gone afterwards


def test_open_clip_output_equals_the_reference_intervention_at_another_size():
    backbone = build_backbone("open_clip:ViT-B-32/laion2b_s34b_b79k", random_init=True, reduced=True)
    vision, visual = backbone.vision, backbone.vision.visual
    images = torch.randn(2, 3, 160, 96)  # not the native grid: positional embeddings resampled by the seam
    neurons = {0: [1, 9], 1: [30, 2]}
    with torch.no_grad():
        ours = TestTimeRegisters(neurons, registers=2).forward_tokens(vision, images, project=True)[0]
        references = []
        for i in range(2):
            # clip/clip/transformer.py VisionTransformer.forward(extra_tokens=2), hooks on resblocks[l].mlp.gelu
            # (clip/clip_hook_manager.py neuron_activation_component); embedding through the adapter's seam
            handles = [visual.transformer.resblocks[layer].mlp.gelu.register_forward_hook(
                partial(reference_activate_on_registers, num_registers=2, neuron_indices=units))
                for layer, units in neurons.items()]
            try:
                x, _ = vision.embed(images[i : i + 1])
                x = torch.cat([x, torch.zeros(1, 1, x.shape[-1]), torch.zeros(1, 1, x.shape[-1])], dim=1)
                x = visual.ln_pre(x)
                for block in visual.transformer.resblocks:
                    x = block(x)
                references.append(visual.ln_post(x) @ visual.proj)
            finally:
                for handle in handles:
                    handle.remove()
        reference = torch.cat(references)
    patches = reference[:, 1:-2].transpose(1, 2).reshape(2, -1, *ours.grid)
    assert ours.grid == (5, 3) and ours.prefix.shape[1] == 3  # CLS + two registers, never in the grid
    assert torch.allclose(ours.patches, patches, atol=1e-6, rtol=0)


@pytest.mark.parametrize("rule, hook", [("max", reference_activate_on_registers),
                                        ("sign_max", reference_activate_on_registers_hub)])
def test_the_move_equals_the_reference_hook_on_any_activation(rule, hook):
    from phreg_core.ttr import move_to_registers

    hidden = torch.randn(4, 1 + 9 + 2, 16)  # [B, CLS + 9 patches + 2 registers, H]
    hidden[0, -1] += 5.0  # a register holds the maximum: it counts too
    hidden[1, 0] -= 9.0  # the CLS holds the largest magnitude (negative)
    units = [2, 11, 5]
    ours = move_to_registers(hidden, torch.tensor(units), num_prefix=1, registers=2, rule=rule)
    for b in range(4):
        expected = hidden[b : b + 1].clone()
        hook(None, None, expected, num_registers=2, neuron_indices=units)
        assert torch.equal(ours[b : b + 1], expected)


# shared/algorithms.py: find_register_neurons, per-image body (layer outputs / neuron activations of one image)
def reference_scores(baseline_layer_outputs, baseline_neuron_acts, register_norm_threshold, detect_outliers_layer,
                     apply_sparsity_filter, sparsity_frac_threshold=0.5, sparsity_activation_threshold=0.5):
    num_layers, num_neurons = baseline_neuron_acts.shape[0], baseline_neuron_acts.shape[-1]
    scores = torch.zeros((num_layers, num_neurons))
    norm_map = torch.norm(baseline_layer_outputs[detect_outliers_layer], dim=1)
    filtered_norms = norm_map.clone()
    filtered_norms[filtered_norms < register_norm_threshold] = 0
    register_locations = torch.where(filtered_norms > register_norm_threshold)[0]
    if len(register_locations) == 0:
        return None
    for layer in range(num_layers):
        act_layer = baseline_neuron_acts[layer]
        register_values = torch.abs(act_layer[register_locations])
        if apply_sparsity_filter:
            sparse_neurons = torch.sum(act_layer < sparsity_activation_threshold, dim=0) >= (
                sparsity_frac_threshold * act_layer.shape[0])
            if not torch.any(sparse_neurons):
                continue
            scores[layer] = register_values.mean(dim=0) * sparse_neurons.float()
        else:
            scores[layer] = register_values.mean(dim=0)
    return scores


@pytest.mark.parametrize("sparsity", [False, True])
def test_neuron_scores_equal_the_reference_scoring(sparsity):
    vision = _timm_backbone().vision
    images = torch.randn(5, 3, 64, 64)
    outputs, acts = [], []
    handles = [b.register_forward_hook(lambda m, i, o: outputs.append(o[0])) for b in vision.blocks]
    handles += [b.mlp.act.register_forward_hook(lambda m, i, o: acts.append(o[0])) for b in vision.blocks]
    per_image = []
    with torch.no_grad():
        for i in range(5):
            outputs.clear(), acts.clear()
            vision.forward_tokens(images[i : i + 1])
            per_image.append((torch.stack(outputs), torch.stack(acts)))
    for handle in handles:
        handle.remove()
    threshold = float(torch.quantile(torch.cat([o[-1].norm(dim=1) for o, _ in per_image]), 0.85))
    expected = [reference_scores(o, a, threshold, -1, sparsity) for o, a in per_image]
    expected = torch.stack([s for s in expected if s is not None]).mean(0)
    scorer = NeuronScorer(vision, FinderSettings(threshold=threshold, sparsity_filter=sparsity, top_k=7))
    with torch.no_grad():
        scorer.update(images[:2]), scorer.update(images[2:])
    got = torch.zeros_like(expected)
    for layer, unit, score in scorer.ranked():
        got[layer, unit] = score
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    order = sorted((-float(expected[layer, unit]), layer, unit) for layer in range(expected.shape[0])
                    for unit in range(expected.shape[1]))[:7]
    assert [(layer, unit) for _, layer, unit in order] == [(layer, unit) for layer, unit, _ in scorer.select()]


# -- known truth: the planted ViT ---------------------------------------------------------------------------
def _scenes(backbone, start, count):
    pixels = np.stack([render(start + i, 40, 0).image for i in range(count)])
    return backbone.normalize(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255)


@pytest.fixture(scope="module")
def planted():
    teacher, twin = build_planted_vit(), build_planted_vit(artifacts=False)
    return teacher, twin, _scenes(teacher, 0, 64), _scenes(teacher, 100_000, 32)


def test_planted_neurons_are_units_of_the_mlp_activation(planted):
    teacher, _, images, _ = planted
    truth = register_neuron_indices(teacher.vision.model)
    assert teacher.describe()["extra"]["register_neurons"] == {str(k): v for k, v in truth.items()}
    (layer, units), = truth.items()
    seen = {}
    site, width = mlp_activation(teacher.vision.blocks[layer])
    handle = site.register_forward_hook(lambda m, i, o: seen.setdefault("acts", o))
    with torch.no_grad():
        teacher.forward_tokens(images[:8])
    handle.remove()
    firing = firing_maps(teacher.vision)[0]  # [B, N-1]
    planted_acts = seen["acts"][:, 1:, units].amax(-1)  # [B, N-1]
    fired = firing > 0.9
    assert fired.any() and planted_acts[fired].min() > 10.0 > planted_acts[firing < 0.01].max()
    assert width == teacher.vision.blocks[layer].mlp.fc2.in_features


def test_finder_recovers_the_planted_neurons_and_ttr_removes_the_outliers(planted):
    teacher, twin, images, evaluation = planted
    truth = {(layer, unit) for layer, units in register_neuron_indices(teacher.vision.model).items() for unit in units}
    scorer = NeuronScorer(teacher.vision, FinderSettings())  # the reference defaults: threshold 30, top 10
    with torch.no_grad():
        for batch in images.split(16):
            scorer.update(batch)
    selected = {(layer, unit) for layer, unit, _ in scorer.select()}
    best = {(layer, unit) for layer, unit, _ in scorer.ranked()[: len(truth)]}
    assert len(truth & selected) / len(truth) >= 0.8  # recall@10
    assert len(truth & best) / len(truth) >= 0.8  # R-precision: the top-|truth| are the planted ones
    ttr = TestTimeRegisters(as_mapping(scorer.select()))
    with torch.no_grad():
        raw = teacher.forward_tokens(evaluation)[0].patches
        moved = ttr.forward_tokens(teacher.vision, evaluation)[0]
        firing = firing_maps(teacher.vision)[0]  # [B, N-1]: patches, then the appended register
        clean = twin.forward_tokens(evaluation)[0].patches
    assert outlier_rate(raw) > 0.01
    assert outlier_rate(moved.patches) <= 0.2 * outlier_rate(raw)  # ≥ 80 % fewer outliers
    assert firing[:, -1].min() > 0.9 and firing[:, :-1].max() < 0.05  # the artifact went to the register
    worst = lambda x: float(torch.quantile(token_cosine(clean, x).flatten(), 0.01))  # noqa: E731
    assert worst(raw) < 0.0 and worst(moved.patches) > 0.9  # the artifact patches got their content back


# -- inputs and files ---------------------------------------------------------------------------------------
def test_neuron_lists_in_every_published_shape():
    published = {"17": [884, 133], "12": [3168]}  # dinov2/dinov2/hub/register_neurons.py
    assert parse_neurons(published) == {12: [3168], 17: [884, 133]}
    assert parse_neurons([[17, 884, 3.5], [12, 3168, 1.0], [17, 133, 0.5]]) == {12: [3168], 17: [884, 133]}
    assert parse_neurons({"neurons": [{"layer": 2, "neuron": 7, "score": 1.0}]}) == {2: [7]}
    for bad, hint in (([[1, 2], [1, 2]], "twice"), ({"1": [-3]}, "non-negative"), ([], "empty"),
                      ({"a": [1]}, "non-negative"), ([[1.5, 2]], "non-negative"), ("17", "mapping")):
        with pytest.raises(RegisterNeuronsError, match=hint):
            parse_neurons(bad)


def test_bad_neurons_settings_and_models_are_refused_before_work():
    backbone = build_backbone("timm:deit3_small_patch16_224.fb_in1k", random_init=True, reduced=True)
    images = torch.randn(1, 3, 64, 64)
    for neurons, hint in (({5: [1]}, "block 5 does not exist"), ({0: [10_000]}, "out of range")):
        with pytest.raises(RegisterNeuronsError, match=hint):
            TestTimeRegisters(neurons).forward_tokens(backbone.vision, images)
    for kwargs, hint in (({"registers": 0}, "registers"), ({"rule": "mean"}, "rule")):
        with pytest.raises(RegisterNeuronsError, match=hint):
            TestTimeRegisters({0: [1]}, **kwargs)
    for settings, hint in ((FinderSettings(detect_layer=9), "detect_layer"), (FinderSettings(top_k=0), "top_k"),
                           (FinderSettings(highest_layer=7), "highest_layer"),
                           (FinderSettings(threshold=0), "threshold")):
        with pytest.raises(RegisterNeuronsError, match=hint):
            NeuronScorer(backbone.vision, settings)
    scorer = NeuronScorer(backbone.vision, FinderSettings(threshold=1e9))
    with torch.no_grad():
        scorer.update(images)
    with pytest.raises(RegisterNeuronsError, match="largest norm was"):
        scorer.ranked()
    from timm.layers import GluMlp, SwiGLU

    for gated in (SwiGLU(8, 16), GluMlp(8, 16)):
        block = nn.Module()
        block.mlp = gated
        with pytest.raises(RegisterNeuronsError, match="gated"):
            mlp_activation(block)


def test_method_options_files_and_identity(tmp_path):
    from phreg_bench.registries import METHODS

    build = METHODS.get("ttr")
    teacher = build_planted_vit()
    for options, hint in (({}, "exactly one"), ({"neurons": "a", "data": "b"}, "exactly one"),
                          ({"neurons": "x", "colour": 1}, "unknown options"),
                          ({"neurons": str(tmp_path / "none.json")}, "does not exist")):
        with pytest.raises(RegisterNeuronsError, match=hint):
            build(teacher, **options)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RegisterNeuronsError, match="not valid JSON"):
        build(teacher, neurons=str(tmp_path / "bad.json"))
    other = {"backbone": {"name": "x", "weights_sha256": "0" * 64}, "neurons": [{"layer": 2, "neuron": 1}]}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(RegisterNeuronsError, match="other weights"):
        build(teacher, neurons=str(tmp_path / "other.json"))
    truth = {str(k): v for k, v in register_neuron_indices(teacher.vision.model).items()}
    (tmp_path / "plain.json").write_text(json.dumps(truth))
    model = build(teacher, neurons=str(tmp_path / "plain.json"))
    config = model.describe()["config"]
    assert config["neurons"] == truth and config["registers"] == 1 and config["rule"] == "max"
    with torch.no_grad():
        out = model.forward_tokens(_scenes(teacher, 0, 2), project=False)[0]
    assert out.patches.shape == (2, 64, 10, 10) and out.prefix.shape == (2, 2, 64)
    # -o data=DIR: found inside the method, with finder options as -o options
    _write_scenes(tmp_path / "images", 8)
    found = build(teacher, data=str(tmp_path / "images"), top_k=2, num_images=6, batch_size=4, highest_layer=3)
    assert {k: sorted(v) for k, v in found.describe()["config"]["neurons"].items()} == truth


def _write_scenes(folder, count):
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(render(i, 40, 0).image).save(folder / f"{i}.png")


def test_cli_find_writes_the_neurons_and_run_uses_them(tmp_path, capsys):
    from phreg_bench.cli import main
    from phreg_bench.results.store import read_result

    _write_scenes(tmp_path / "images" / "nested", 12)
    out = tmp_path / "neurons.json"
    assert main(["ttr", "find", "-b", "planted-vit", "--data", str(tmp_path / "images"), "--out", str(out),
                 "--device", "cpu", "--batch-size", "5", "--no-progress"]) == 0
    document = json.loads(out.read_text())
    truth = register_neuron_indices(build_planted_vit().vision.model)
    assert {(r["layer"], r["neuron"]) for r in document["neurons"][:2]} == {(k, u) for k, v in truth.items()
                                                                           for u in v}
    assert document["images"] == {"seen": 12, "with_outliers": 12} and len(document["neurons"]) == 10
    assert document["backbone"]["name"] == "planted-vit" and document["settings"]["threshold"] == 30.0
    assert not list(tmp_path.glob(".neurons.json.*"))  # nothing half-written left behind
    assert main(["ttr", "find", "-b", "planted-vit", "--data", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    results = tmp_path / "results"
    assert main(["run", "-b", "planted-vit", "-m", "ttr", "-o", f"neurons={out}", "-t", "synthetic/segmentation",
                 "--results-dir", str(results), "--device", "cpu", "--protocol-override", "image_size=40",
                 "--protocol-override", "num_train=4", "--protocol-override", "num_val=2"]) == 0
    (path,) = results.rglob("*.json")
    record = read_result(path)
    assert record.identity.method.name == "ttr" and record.identity.method.config["num_neurons"] == 10
