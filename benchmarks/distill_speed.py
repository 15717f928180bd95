"""Distillation speed and memory for a ViT-B/16 at 448 px with random weights (prints numbers; not a test).

Measures, for the CLIP recipe (NACLIP teacher, MaskCLIP student with 16 registers, 10 views):

* teacher-target time per image (build 10 views, one teacher pass, inverse mapping) and the bare teacher
  forward it contains;
* the bare student step (forward, loss, backward, AdamW) on precomputed targets;
* a full trainer step (``phreg_core.trainer.distill`` on a folder of JPEGs: data loading, views, teacher,
  student) and its ratio to the bare compute it contains (teacher forward + student step): the harness
  overhead, goal < 1.15;
* with ``--cache-targets``: a cached epoch's step time over the bare student step (goal <= 1.2);
* peak memory (CUDA: ``max_memory_allocated``; CPU: peak RSS).

    python benchmarks/distill_speed.py                    # CPU: batch 1, 2 timed steps (a few minutes)
    python benchmarks/distill_speed.py --device cuda      # GPU: batch 16, 8 timed steps
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from phreg_core.data import ImageFolderDataset
from phreg_core.losses import distill_loss
from phreg_core.recipe import DEFAULT_REGISTERS, Recipe, RunOptions
from phreg_core.student import Student
from phreg_core.targets import view_rng
from phreg_core.teacher import default_teacher
from phreg_core.towers import OpenClipTokenViT, TimmTokenViT
from phreg_core.trainer import distill
from phreg_core.tta import TTADenoiser, make_views, normalised_white, patch_teacher, plan_views


def build_base(family: str, resolution: int):
    if family == "clip":  # OpenAI CLIP ViT-B/16 tower shape (open_clip "ViT-B-16"), random weights
        from open_clip.transformer import VisionTransformer

        visual = VisionTransformer(image_size=224, patch_size=16, width=768, layers=12, heads=12, mlp_ratio=4.0,
                                   output_dim=512)
        return OpenClipTokenViT(visual.eval())
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=resolution, patch_size=16, embed_dim=768, depth=12, num_heads=12,
                              num_classes=0, dynamic_img_size=True)
    return TimmTokenViT(model.eval())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int) -> float:
    fn()  # warm-up
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_images(folder: Path, count: int, resolution: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 256, size=(resolution, resolution * 4 // 3, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)


def peak_memory(device: torch.device) -> str:
    """Peak since the last call (CUDA max allocated), or the process's peak RSS so far (CPU)."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
        return f"{peak:.2f} GiB CUDA max allocated"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB process peak RSS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="clip", choices=("clip", "timm"))
    parser.add_argument("--resolution", type=int, default=448)
    parser.add_argument("--views", type=int, default=Recipe.default("views"))
    parser.add_argument("--registers", type=int, default=DEFAULT_REGISTERS)
    parser.add_argument("--batch-size", type=int, help="default: 16 on CUDA (CLIP recipe), 1 on CPU")
    parser.add_argument("--steps", type=int, help="timed steps (default: 8 on CUDA, 2 on CPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--no-cache", action="store_true", help="skip the cached-epoch measurement")
    args = parser.parse_args()

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    batch = args.batch_size or (16 if device.type == "cuda" else 1)
    steps = args.steps or (8 if device.type == "cuda" else 2)
    repeats = max(1, steps // 2)
    bf16 = device.type == "cuda"
    torch.manual_seed(0)
    base = build_base(args.family, args.resolution).to(device)
    grid = base.grid_for(args.resolution, args.resolution)
    teacher = default_teacher(base)
    fill = normalised_white(base.mean, base.std)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"{args.family} ViT-B/16 at {args.resolution} (grid {grid[0]}x{grid[1]}), batch {batch}, "
          f"{args.views} views, {args.registers} registers, precision {'bf16 autocast' if bf16 else 'fp32'}")

    images = torch.randn(batch, 3, args.resolution, args.resolution, device=device)
    plans = [plan_views(view_rng(0, 0, i), grid, args.views) for i in range(batch)]
    denoiser = TTADenoiser(base.patch_size, fill)
    views, _ = make_views(images, plans, base.patch_size, fill)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def teacher_targets():
        with torch.no_grad(), autocast():
            return denoiser(patch_teacher(teacher), images, plans)[0].patches

    def teacher_bare():
        with torch.no_grad(), autocast():
            return teacher(views)

    peak_memory(device)
    t_targets = timed(teacher_targets, device, repeats)
    t_teacher = timed(teacher_bare, device, repeats)
    targets = teacher_targets().float()
    print(f"teacher targets: {1000 * t_targets / batch:.1f} ms/image ({t_targets:.3f} s per batch; bare teacher "
          f"forward {t_teacher:.3f} s; views + inverse mapping {100 * (t_targets / t_teacher - 1):.1f} % on top); "
          f"peak {peak_memory(device)}")

    student = Student(base, args.registers, train_grid=grid).to(device).train()
    optimizer = torch.optim.AdamW([p for _, p in student.trainable_named_parameters()], lr=1e-5, weight_decay=1e-2)

    def student_step():
        with autocast():
            pred = student(images)
        loss, _ = distill_loss(targets, pred, Recipe().mse_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    t_student = timed(student_step, device, repeats)
    print(f"bare student step (fwd + loss + bwd + AdamW): {t_student:.3f} s per batch, "
          f"{1000 * t_student / batch:.1f} ms/image; peak {peak_memory(device)}")
    bare = t_teacher + t_student
    print(f"teacher share of the bare compute: {100 * t_teacher / bare:.1f} %")

    workdir = Path(tempfile.mkdtemp(prefix="phreg-bench-distill-"))
    try:
        folder = workdir / "images"
        write_images(folder, batch * (steps + 1), args.resolution)
        dataset = ImageFolderDataset(folder, args.resolution, base.mean, base.std, seed=0)
        recipe = Recipe(epochs=1, batch_size=batch, views=args.views, lr=1e-5, lr_end=1e-6)
        options = RunOptions(progress=False, device=str(device), num_workers=args.num_workers)
        run = distill(teacher, Student(base, args.registers, train_grid=grid), dataset, recipe, options)
        t_step = statistics.median(run.step_seconds[1:])  # the first step starts the data workers
        print(f"trainer step (data + views + teacher + student): {t_step:.3f} s per batch, "
              f"{batch / t_step:.2f} images/s")
        print(f"harness ratio: step / (bare teacher fwd + bare student step) = {t_step / bare:.3f} (goal < 1.15); "
              f"peak {peak_memory(device)}")
        if not args.no_cache:
            cached = RunOptions(progress=False, device=str(device), num_workers=args.num_workers,
                                cache_targets=str(workdir / "cache"))
            dataset = ImageFolderDataset(folder, args.resolution, base.mean, base.std, seed=0, fixed_crops=True)
            run = distill(teacher, Student(base, args.registers, train_grid=grid), dataset,
                          replace(recipe, epochs=2), cached, base_weights_sha256="random-benchmark")
            per_epoch = len(run.step_seconds) // 2
            epoch2 = run.step_seconds[per_epoch + 1:]  # skip the first step of the epoch as well
            t_cached = statistics.median(epoch2)
            files = list((workdir / "cache").rglob("*.safetensors"))
            size = sum(f.stat().st_size for f in files) / max(1, len(files))
            print(f"cached epoch: {t_cached:.3f} s per batch; ratio to the bare student step = "
                  f"{t_cached / t_student:.3f} (goal <= 1.2); epoch 1 vs 2 per step "
                  f"{statistics.median(run.step_seconds[1:per_epoch]):.3f} / {t_cached:.3f} s; "
                  f"cache {size / 2**20:.2f} MiB per image ({run.cache_hits} hits, {run.cache_misses} misses)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
