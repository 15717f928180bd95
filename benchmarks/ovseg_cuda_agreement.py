"""CPU vs CUDA agreement of the ovseg harness (dense logits and class maps), fp32 and bf16 autocast.

A full-size random-init ViT-B/16 with each training-free method on one 448 × 597 image under the ``phreg``
protocol of ``ovseg/voc21``; prints the largest logit difference and the share of pixels whose class
differs from the CPU fp32 result::

    python benchmarks/ovseg_cuda_agreement.py
"""

from __future__ import annotations

import numpy as np
import torch

from phreg_bench.backbones.build import build_backbone
from phreg_bench.registries import METHODS, TASKS
from phreg_bench.tasks.ovseg.harness import HarnessSettings, OVSegPredictor
from phreg_bench.tasks.ovseg.text import ClassQueries, read_class_names
from phreg_bench.tasks.specs import class_file


def main() -> None:
    backbone = build_backbone("openai-clip-vit-b16", random_init=True)
    spec = TASKS.get("ovseg/voc21")
    settings = HarnessSettings.from_settings(spec.protocol("phreg")[1])
    classes = read_class_names(class_file(spec.classes))
    query_class = torch.tensor([c for c, names in enumerate(classes) for _ in names])
    text = torch.nn.functional.normalize(torch.randn(len(query_class), backbone.output_dim), dim=-1)
    image = np.random.default_rng(0).integers(0, 256, size=(448, 597, 3), dtype=np.uint8)
    for method in ("raw", "maskclip", "maskclip-official", "sclip", "clearclip", "naclip"):
        results = {}
        for device, dtype in (("cpu", None), ("cuda", None), ("cuda", torch.bfloat16)):
            model = METHODS.get(method)(backbone).to(device).eval().set_precision("bf16" if dtype else "fp32")
            queries = ClassQueries(text.to(device), query_class.to(device), [], len(classes))
            predictor = OVSegPredictor(model, queries, settings, batch_size=8, device=device)
            pred, logits = predictor.predict(image)
            results[(device, dtype)] = (pred.cpu(), logits.float().cpu())
        ref_pred, ref_logits = results[("cpu", None)]
        line = [f"{method:18s}"]
        for key, label in ((("cuda", None), "cuda fp32"), (("cuda", torch.bfloat16), "cuda bf16")):
            pred, logits = results[key]
            line.append(f"{label}: max |dlogit| {(logits - ref_logits).abs().max():.2e}, "
                        f"class differs on {100 * (pred != ref_pred).float().mean():.3f} % of pixels")
        print("  ".join(line))


if __name__ == "__main__":
    main()
