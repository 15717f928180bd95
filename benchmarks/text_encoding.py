"""Text-embedding time of the ovseg harness: cold, warm (cache hit) and the reference harness's way.

Reference (NACLIP / SCLIP / PH-Reg ``segmentor.py``): for each query name, tokenise its 80 templates at the
full 77-token context and encode them as one batch. Ours (:func:`phreg_bench.tasks.ovseg.text.class_queries`): every
prompt of every name at once, sorted by length, in batches the text tower trims to their longest prompt,
then the same per-name averaging; a warm run reads the content-addressed cache.

Weights are random (the timing does not depend on them). By default only the first 4 query names are
timed so the reference side stays short on a CPU; ``--names 0`` times the whole class file (VOC21: 56
names × 80 templates; minutes on a CPU for the reference)::

    python benchmarks/text_encoding.py [--class-file voc21.txt] [--names 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from phreg_bench.backbones.build import build_backbone
from phreg_bench.tasks.ovseg.text import class_queries, read_class_names, read_templates
from phreg_bench.tasks.specs import class_file, spec_root


def reference_encoding(tower, names: list[str], templates: list[str]) -> torch.Tensor:
    """One batch of 80 full-context prompts per name (what the reference harnesses do)."""
    out = []
    for name in names:
        tokens = tower.tokenizer([t.replace("{c}", name) for t in templates]).to(tower.device)
        feats = F.normalize(tower.encode_tokens(tokens).float(), dim=-1)  # 77 tokens, no trimming
        out.append(F.normalize(feats.mean(0), dim=0))
    return torch.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="openai-clip-vit-b16")
    parser.add_argument("--class-file", default="voc21.txt")
    parser.add_argument("--names", type=int, default=4, help="first N query names (0 = all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    backbone = build_backbone(args.backbone, random_init=True).to(args.device).eval()
    tower = backbone.text
    templates = read_templates(spec_root() / "templates" / "imagenet_templates.txt")
    names = [n for synonyms in read_class_names(class_file(args.class_file)) for n in synonyms]
    names = names[: args.names] if args.names else names
    classes = [[n] for n in names]
    print(f"{args.backbone} (random init) on {args.device}, {torch.get_num_threads()} threads: "
          f"{len(names)} names x {len(templates)} templates = {len(names) * len(templates)} prompts")

    with torch.inference_mode():
        start = time.perf_counter()
        reference = reference_encoding(tower, names, templates)
        reference_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        cold = class_queries(tower.encode, classes, templates, tower_identity=tower.identity,
                             cache_dir=Path(cache), device=args.device)
        cold_s = time.perf_counter() - start
        start = time.perf_counter()
        warm = class_queries(tower.encode, classes, templates, tower_identity=tower.identity,
                             cache_dir=Path(cache), device=args.device)
        warm_s = time.perf_counter() - start
    assert cold.cache == "miss" and warm.cache == "hit"
    diff = (cold.embeddings.cpu() - reference.cpu()).abs().max().item()
    print(f"reference (per name, 77-token context): {reference_s:8.2f} s")
    print(f"ours, cold (batched, trimmed context):  {cold_s:8.2f} s   speed-up {reference_s / cold_s:5.2f}x")
    print(f"ours, warm (cache hit):                 {warm_s:8.4f} s")
    print(f"max |ours - reference| over embeddings:  {diff:.2e}")


if __name__ == "__main__":
    main()
