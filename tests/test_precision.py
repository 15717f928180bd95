"""Issue 10 §2.2: ``--precision bf16`` autocasts only the backbone / method forward.

Every family is run through the runner with bf16 requested on the CPU (torch's CPU autocast has bf16). Spies
record the autocast state where the backbone forward runs (must be on, bf16) and where the fp32 side runs
(probe heads, their parameters and gradients, losses, metric inputs: autocast off, float32).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fixtures_probe import DEPTH_OVERRIDES, SEG_OVERRIDES, write_nyu, write_voc
from fixtures_seg import make_voc, tiny_clip_backbone

from phreg_bench.methods.base import DenseModel
from phreg_bench.precision import autocast, resolve_precision
from phreg_bench.results.store import read_result
from phreg_bench.runner import RunRequest, run
from phreg_bench.tasks.base import RunContext


def _state(*tensors: torch.Tensor) -> dict:
    return {"autocast": torch.is_autocast_enabled("cpu"), "dtypes": {str(t.dtype) for t in tensors}}


@pytest.fixture
def spies(monkeypatch):
    """``forward``: states inside the method forward; ``fp32``: (where, state) of heads, losses and metrics."""
    seen: dict[str, list] = {"forward": [], "fp32": []}
    forward = DenseModel.dense_tokens  # the method's forward, inside the model's own autocast

    def spy_forward(self, images, *args, **kwargs):
        seen["forward"].append({"autocast": torch.is_autocast_enabled("cpu"),
                                "dtype": torch.get_autocast_dtype("cpu")})
        return forward(self, images, *args, **kwargs)

    monkeypatch.setattr(DenseModel, "dense_tokens", spy_forward)

    def wrap(owner, name: str, where: str, tensors):
        original = getattr(owner, name)

        def spy(*args, **kwargs):
            seen["fp32"].append((where, _state(*tensors(*args))))
            out = original(*args, **kwargs)
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                seen["fp32"].append((f"{where} output", _state(out)))
            return out

        monkeypatch.setattr(owner, name, spy)

    from phreg_bench.metrics import depth as depth_metrics
    from phreg_bench.metrics import segmentation
    from phreg_bench.probes import heads
    from phreg_bench.synthetic import family as synthetic
    from phreg_bench.tasks import depth, linseg

    def params_and_grads(head, *inputs):
        grads = [p.grad for p in head.parameters() if p.grad is not None]
        return [*inputs, *head.parameters(), *grads]

    wrap(heads.LinearSegHead, "forward", "linseg head", params_and_grads)
    wrap(heads.BinsDepthHead, "forward", "depth head", params_and_grads)
    wrap(linseg, "seg_cross_entropy", "linseg loss", lambda logits, labels: [logits])
    wrap(depth, "depth_loss", "depth loss", lambda pred, gt, *a, **k: [pred, gt])
    wrap(segmentation.SegmentationMetric, "update", "seg metric", lambda self, pred, label: [])
    wrap(depth_metrics.DepthMeter, "update", "depth metric", lambda self, pred, gt: [torch.from_numpy(pred)])
    wrap(synthetic, "confusion_matrix", "synthetic metric", lambda pred, target, n: [])
    wrap(synthetic, "iou_metrics", "synthetic metric", lambda confusion: [confusion.float()])
    return seen


def _run(tmp_path: Path, tasks, overrides, *, data_root=None, backbone=None):
    request = RunRequest(backbone="tiny-vit", tasks=tasks, protocol_overrides=overrides, random_init=True,
                         results_dir=tmp_path / "results")
    ctx = RunContext(data_root=data_root, cache_dir=tmp_path / "cache", precision="bf16", batch_size=4)
    runs = run(request, ctx, log=lambda message: None, backbone=backbone)
    assert [r.status for r in runs] == ["done"] * len(runs), [r.error for r in runs]
    return [read_result(r.path) for r in runs]


def _check(seen, families: set[str]) -> None:
    assert seen["forward"], "the backbone forward never ran"
    assert all(s == {"autocast": True, "dtype": torch.bfloat16} for s in seen["forward"]), seen["forward"]
    places = {where.split()[0] for where, _ in seen["fp32"]}
    assert families <= places, places
    for where, state in seen["fp32"]:
        assert state["autocast"] is False, f"{where} ran under autocast"
        assert state["dtypes"] <= {"torch.float32", "torch.float64"}, f"{where}: {state['dtypes']}"


def test_synthetic_autocasts_only_the_backbone(tmp_path, spies):
    records = _run(tmp_path, ["synthetic/segmentation"], {"image_size": 32, "num_train": 4, "num_val": 2})
    _check(spies, {"synthetic"})
    assert records[0].identity.precision == "bf16"


def test_probe_heads_losses_and_metrics_stay_fp32(tmp_path, spies):
    root = tmp_path / "data"
    write_voc(root, n_train=2, n_val=1)
    write_nyu(root, n_train=2, n_test=1)
    overrides = {**SEG_OVERRIDES, **DEPTH_OVERRIDES, "iters": 3, "batch_size": 2, "train_source": "labeled"}
    records = _run(tmp_path, ["linseg/voc21", "depth/nyu"], overrides, data_root=root)
    _check(spies, {"linseg", "depth", "seg"})
    assert any(where == "linseg head" and len(state["dtypes"]) == 1 and step > 2
               for step, (where, state) in enumerate(spies["fp32"]))  # gradients were inspected too
    assert {r.identity.precision for r in records} == {"bf16"}


def test_ovseg_autocasts_only_the_image_tower(tmp_path, spies):
    root = tmp_path / "data"
    make_voc(root)
    template = tmp_path / "one.txt"
    template.write_text("a photo of a {c}.\n")
    _run(tmp_path, ["ovseg/voc21"], {"resize": 40, "templates": str(template)}, data_root=root,
         backbone=tiny_clip_backbone())
    _check(spies, {"seg"})


def test_precision_without_autocast_runs_and_records_fp32(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: False)
    assert resolve_precision("cpu", "bf16") == "fp32"
    logs: list[str] = []
    request = RunRequest(backbone="tiny-vit", tasks=["synthetic/segmentation"], results_dir=tmp_path,
                         protocol_overrides={"image_size": 32, "num_train": 4, "num_val": 2})
    result = run(request, RunContext(precision="fp16"), log=logs.append)[0]
    assert read_result(result.path).identity.precision == "fp32"
    assert any("no fp16 autocast" in line for line in logs)


def test_autocast_context_is_a_no_op_for_fp32():
    with autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", "fp16"):
        assert torch.get_autocast_dtype("cpu") == torch.float16
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("cpu", "fp8")
