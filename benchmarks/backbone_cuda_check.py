"""CUDA checks of the backbone layer that CPU tests cannot make (prints numbers, asserts nothing).

* dense tokens on CUDA (fp32, and bf16 autocast) versus the CPU fp32 result, full-size random weights;
* the truncated text context versus open_clip's own full-context ``encode_text`` on CUDA (fp32, bf16).

    python benchmarks/backbone_cuda_check.py --backbones openai-clip-vit-b16,dinov2-vit-b14-reg4
"""

from __future__ import annotations

import argparse

import torch

from phreg_bench.backbones.build import build_backbone

PROMPTS = [f"a photo of a {c}." for c in ("cat", "dog", "traffic light", "potted plant", "person")] + [
    "a bad photo of the large red double-decker bus parked by the station."]


def dense_check(name: str, size: int) -> None:
    backbone = build_backbone(name, random_init=True).eval()
    size -= size % backbone.patch_size
    images = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        cpu = backbone.forward_tokens(images, project=backbone.has_text)[0].patches
        backbone.cuda()
        gpu = backbone.forward_tokens(images.cuda(), project=backbone.has_text)[0].patches.cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = backbone.forward_tokens(images.cuda(), project=backbone.has_text)[0].patches.float().cpu()
    scale = cpu.abs().mean().item()
    print(f"{name} {size}px dense tokens {tuple(cpu.shape)}: |cuda fp32 - cpu| max {(gpu - cpu).abs().max():.2e}, "
          f"|cuda bf16 - cpu| max {(bf16 - cpu).abs().max():.2e} (mean |x| {scale:.2e}), "
          f"cosine bf16 {torch.nn.functional.cosine_similarity(bf16.flatten(1), cpu.flatten(1)).min():.5f}")
    if backbone.has_text:
        text_check(name, backbone)


def text_check(name: str, backbone) -> None:
    tower = backbone.text
    tokens = tower.tokenizer(PROMPTS).cuda()
    for label, ctx in (("fp32", torch.autocast("cuda", enabled=False)),
                       ("bf16", torch.autocast("cuda", dtype=torch.bfloat16))):
        with torch.inference_mode(), ctx:
            cut = tower.encode_tokens(tower.truncate(tokens)).float()
            tower.can_truncate, was = False, tower.can_truncate
            full = tower.encode_tokens(tokens).float()
            tower.can_truncate = was
        print(f"{name} text {label}: context {tower.truncate(tokens).shape[1]} vs 77, "
              f"|cut - full| max {(cut - full).abs().max():.2e} (mean |x| {full.abs().mean():.2e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="openai-clip-vit-b16,dinov2-vit-b14-reg4")
    parser.add_argument("--resolution", type=int, default=448)
    args = parser.parse_args()
    print(torch.__version__, torch.cuda.get_device_name(0))
    for name in args.backbones.split(","):
        dense_check(name.strip(), args.resolution)


if __name__ == "__main__":
    main()
