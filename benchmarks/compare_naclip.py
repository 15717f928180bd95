"""This harness vs the official NACLIP harness: images/s, cold and warm end-to-end time, peak memory.

Run by hand. Each harness runs in its own fresh process on the same image files (and, for the official one,
the same OpenAI CLIP weights file) under one ``ovseg/voc21`` protocol (default ``naclip``: short side 336,
whole image, ``prob_thd`` 0.1, logit scale 40; no PAMR in either):

* cold: wall time of the process from start to the last prediction (imports, weights, text encoding of
  VOC21's 56 queries x 80 templates, every image);
* warm: images/s from the second image on (decode + resize + forward + post-processing, no metric);
* peak memory: the process's peak RSS (CPU) or ``max_memory_allocated`` (CUDA);
* agreement: the share of pixels on which the two class maps agree (when both ran).

The official code is an optional input, never a dependency: with ``--naclip-repo PATH`` (a checkout of
``sinahmr/NACLIP``, in an environment with its mmseg / mmengine / mmcv) its ``NACLIP`` model and mmseg's test
pipeline run as well and the ratios are printed; without it only this harness's numbers are printed.
Without ``--images`` random VOC-sized images are written to a temporary folder; without ``--weights`` this
harness uses random weights (the official ``clip.load`` needs a weights file)::

    python benchmarks/compare_naclip.py [--weights ViT-B-16.pt] [--images DIR] [--limit 20] [--device cpu]
        [--naclip-repo ~/NACLIP] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _settings(protocol: str) -> dict:
    from phreg_bench.registries import TASKS

    _, settings = TASKS.get("ovseg/voc21").protocol(protocol)
    return settings


def run_ours(args: argparse.Namespace, images: list[Path], start: float) -> dict:
    """This harness: ``OVSegPredictor.predict_classes`` on each file (PIL decode, RGB)."""
    import numpy as np
    import torch
    from PIL import Image

    from phreg_bench.backbones.build import build_backbone
    from phreg_bench.registries import METHODS
    from phreg_bench.tasks.ovseg.family import template_file
    from phreg_bench.tasks.ovseg.harness import HarnessSettings, OVSegPredictor
    from phreg_bench.tasks.ovseg.text import class_queries, read_class_names, read_templates
    from phreg_bench.tasks.specs import class_file

    settings = _settings(args.protocol)
    device = torch.device(args.device)
    backbone = build_backbone("openai-clip-vit-b16", weights=args.weights, random_init=args.weights is None)
    model = METHODS.get("naclip")(backbone).to(device).eval()
    classes = read_class_names(class_file("voc21.txt"))
    templates = read_templates(template_file(settings.get("templates", "imagenet_templates.txt")))
    queries = class_queries(model.encode_text, classes, templates, device=device)
    model.set_precision(args.precision)
    predictor = OVSegPredictor(model, queries, HarnessSettings.from_settings(settings), batch_size=args.batch_size,
                               device=device)
    setup_s = time.perf_counter() - start
    predictions, times = [], []
    for path in images:
        tick = time.perf_counter()
        image = np.asarray(Image.open(path).convert("RGB"))
        pred, _ = predictor.predict_classes(image)
        predictions.append(pred.cpu().numpy().astype(np.uint8))
        times.append(time.perf_counter() - tick)
    return {"setup_s": setup_s, "image_s": times, "predictions": predictions}


def run_official(args: argparse.Namespace, images: list[Path], start: float) -> dict:
    """The official harness: ``sinahmr/NACLIP`` ``NACLIP`` + mmseg's test pipeline and ``data_preprocessor``."""
    import numpy as np
    import torch

    repo = Path(args.naclip_repo).expanduser().resolve()
    sys.path.insert(0, str(repo))
    os.chdir(repo)  # naclip.py imports `clip`, `pamr` and `prompts` from the repository root
    try:
        from mmengine.dataset import Compose
        from mmseg.utils import register_all_modules
        from naclip import NACLIP
    except ImportError as error:
        raise SystemExit(f"--naclip-repo {repo}: cannot import the official harness ({error}); it needs the "
                         "NACLIP checkout and its environment (mmseg, mmengine, mmcv; see its README)") from error
    register_all_modules(init_default_scope=True)
    settings = _settings(args.protocol)
    model = NACLIP(clip_path=args.weights, name_path=str(repo / "configs" / "cls_voc21.txt"),
                   device=torch.device(args.device), pamr_steps=0, prob_thd=settings.get("prob_thd", 0.0),
                   logit_scale=settings["logit_scale"], slide_stride=settings["stride"],
                   slide_crop=settings["crop"]).to(args.device).eval()
    # cfg_voc21.py's test_pipeline without LoadAnnotations, as mmseg.apis.inference_model runs it
    pipeline = Compose([dict(type="LoadImageFromFile"),
                        dict(type="Resize", scale=(settings.get("max_long", 2048), settings["resize"]),
                             keep_ratio=True),
                        dict(type="PackSegInputs")])
    setup_s = time.perf_counter() - start
    predictions, times = [], []
    for path in images:
        tick = time.perf_counter()
        data = pipeline(dict(img_path=str(path)))
        with torch.no_grad():  # mmengine BaseModel.test_step: data_preprocessor, then predict
            out = model.test_step({"inputs": [data["inputs"]], "data_samples": [data["data_samples"]]})
        predictions.append(out[0].pred_sem_seg.data[0].cpu().numpy().astype(np.uint8))
        times.append(time.perf_counter() - tick)
    return {"setup_s": setup_s, "image_s": times, "predictions": predictions}


def child(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    images = [Path(p) for p in json.loads(Path(args.image_list).read_text())]
    result = (run_ours if args.role == "ours" else run_official)(args, images, start)
    np.savez_compressed(args.out, *result.pop("predictions"))
    result["peak_mb"] = peak_memory_mb(args.device)
    print(json.dumps(result))


def list_images(args: argparse.Namespace, folder: Path) -> list[Path]:
    if args.images is not None:
        files = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SystemExit(f"--images {args.images}: no .jpg / .png files")
        return files[: args.limit]
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    files = []
    for index in range(args.limit):
        size = (375, 500) if index % 2 == 0 else (500, 375)  # VOC's two common shapes
        path = folder / f"random_{index:03d}.png"
        Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(path)
        files.append(path)
    return files


def launch(role: str, args: argparse.Namespace, image_list: Path, folder: Path) -> dict:
    out = folder / f"{role}.npz"
    command = [sys.executable, os.path.abspath(__file__), "--role", role, "--image-list", str(image_list),
               "--out", str(out), "--device", args.device, "--protocol", args.protocol,
               "--batch-size", str(args.batch_size), "--precision", args.precision,
               "--threads", str(args.threads or 0)]
    if args.weights:
        command += ["--weights", str(Path(args.weights).expanduser().resolve())]
    if args.naclip_repo:
        command += ["--naclip-repo", str(args.naclip_repo)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                      os.environ.get("PYTHONPATH")])))
    tick = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    cold_s = time.perf_counter() - tick
    if done.returncode:
        raise SystemExit(f"{role} harness failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["cold_s"] = cold_s
    result["out"] = str(out)
    return result


def summary(name: str, result: dict) -> dict:
    warm = result["image_s"][1:] or result["image_s"]
    row = {"cold_s": result["cold_s"], "setup_s": result["setup_s"], "first_image_s": result["image_s"][0],
           "warm_images_per_s": len(warm) / sum(warm), "peak_mb": result["peak_mb"]}
    print(f"  {name:9s}: cold {row['cold_s']:7.2f} s (setup {row['setup_s']:.2f} s, first image "
          f"{row['first_image_s']:.2f} s)  warm {row['warm_images_per_s']:6.3f} images/s  "
          f"peak {row['peak_mb']:7.0f} MiB")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", help="OpenAI CLIP ViT-B/16 weights file (both harnesses load it)")
    parser.add_argument("--images", help="folder of .jpg / .png images (default: random VOC-sized images)")
    parser.add_argument("--limit", type=int, default=20, help="number of images (default: 20)")
    parser.add_argument("--naclip-repo", help="a checkout of sinahmr/NACLIP (optional; needs its environment)")
    parser.add_argument("--protocol", default="naclip", help="ovseg/voc21 protocol (default: naclip)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                        help="this harness's tower autocast (the official harness runs CLIP as loaded)")
    parser.add_argument("--batch-size", type=int, default=1, help="this harness's windows per forward pass")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads in both processes")
    parser.add_argument("--role", choices=("ours", "official"), help=argparse.SUPPRESS)
    parser.add_argument("--image-list", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        args.threads = args.threads or None
        child(args)
        return
    if args.naclip_repo and not args.weights:
        parser.error("--naclip-repo needs --weights: the official harness loads CLIP from a weights file")
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="compare-naclip-") as temp:
        folder = Path(temp)
        images = list_images(args, folder)
        image_list = folder / "images.json"
        image_list.write_text(json.dumps([str(p.resolve()) for p in images]))
        print(f"ovseg/voc21 protocol {args.protocol}, {len(images)} images, {args.device}, "
              f"weights {args.weights or 'random init (this harness only)'}")
        ours = summary("this", launch("ours", args, image_list, folder))
        if not args.naclip_repo:
            print("  (no --naclip-repo: the official harness was not run)")
            return
        official_result = launch("official", args, image_list, folder)
        official = summary("official", official_result)
        print(f"  this / official: cold {ours['cold_s'] / official['cold_s']:.2f}x time, warm "
              f"{ours['warm_images_per_s'] / official['warm_images_per_s']:.2f}x images/s, peak memory "
              f"{ours['peak_mb'] / official['peak_mb']:.2f}x")
        mine, theirs = np.load(folder / "ours.npz"), np.load(folder / "official.npz")
        agree = [float((mine[k] == theirs[k]).mean()) for k in mine.files if mine[k].shape == theirs[k].shape]
        if agree:
            print(f"  class maps agree on {100 * float(np.mean(agree)):.2f} % of pixels "
                  f"({len(agree)} of {len(mine.files)} images compared)")


if __name__ == "__main__":
    main()
