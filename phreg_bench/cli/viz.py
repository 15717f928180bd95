"""`phreg-bench viz`: PNG panels comparing the dense features of backbones × methods on the same images."""

from __future__ import annotations

import argparse
import hashlib
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np

from phreg_bench.cli import CliError, OptionError, note, say
from phreg_bench.cli._options import (
    add_pos_resample_option,
    device_name,
    non_negative_int,
    parse_assignments,
    positive_int,
    resolve_device,
    with_pos_resample,
)

DEFAULT_BACKBONE = "planted-vit"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "viz", help="figures: PCA-RGB features, patch norms and text heatmaps of models side by side",
        description="For each input image write a PNG with the input and, per backbone × method, a PCA-to-RGB "
        "map of the patch features (one joint PCA per feature width), the patch-norm map (shared scale) and, "
        "with --query and a text backbone, the query's similarity heatmap; plus a histogram of patch norms.")
    parser.add_argument("--backbone", "-b", action="append", help=f"backbone, repeatable (default: {DEFAULT_BACKBONE})")
    parser.add_argument("--method", "-m", action="append", metavar="NAME[:KEY=VALUE,...]",
                        help="method with its options, repeatable (default: raw), e.g. -m naclip -m tta:views=10")
    parser.add_argument("--adapter", type=Path, help="PH-Reg adapter: adds the method 'phreg' with this adapter")
    parser.add_argument("--weights", help="local weights file for the backbone(s)")
    parser.add_argument("--random-init", action="store_true", help="random backbone weights (no download)")
    add_pos_resample_option(parser)
    parser.add_argument("--image", action="append", type=Path, help="an image file, repeatable")
    parser.add_argument("--synthetic", action="append", type=non_negative_int, metavar="INDEX",
                        help="a scene of the built-in synthetic world, repeatable")
    parser.add_argument("--dataset", help="a dataset reader (see `phreg-bench ls datasets`), with --index")
    parser.add_argument("--split", default="val", help="dataset split (default: val)")
    parser.add_argument("--index", action="append", type=non_negative_int, help="dataset sample index, repeatable")
    parser.add_argument("--data-root", type=Path, default=os.environ.get("PHREG_DATA"),
                        help="datasets folder (default: $PHREG_DATA)")
    parser.add_argument("--size", type=positive_int, help="short side of the model input in pixels; the long side "
                        "keeps the aspect ratio, rounded to whole patches, so nothing is cropped (default: the "
                        "first backbone's native resolution)")
    parser.add_argument("--query", help="text query for the similarity heatmap (text backbones)")
    parser.add_argument("--out", type=Path, default=Path("phreg_figures"), help="output folder (default: "
                        "./phreg_figures)")
    parser.add_argument("--device", default="cpu", type=device_name, help="cpu, cuda or cuda:N (default: cpu)")
    parser.set_defaults(handler=handle)


def load_inputs(args: argparse.Namespace) -> list[tuple[str, np.ndarray]]:
    """``(name, uint8 image [H, W, 3])`` for every requested input; names are unique (see :func:`unique_names`)."""
    from phreg_bench.synthetic.scenes import render
    from phreg_core.images import read_rgb  # the project's one RGB rule (16-bit grey, alpha, bombs ...)

    inputs: list[tuple[str, str, np.ndarray]] = []  # (name, source, image)
    for path in args.image or []:
        if not path.is_file():
            raise OptionError(f"--image {path} does not exist")
        inputs.append((path.stem, f"file:{path.resolve()}", read_rgb(path)))
    if args.synthetic:
        inputs += [(f"synthetic-{i}", f"synthetic:{i}", render(i, 256, 0).image) for i in args.synthetic]
    if args.dataset:
        from phreg_bench.registries import DATASETS

        reader = DATASETS.get(args.dataset)(args.data_root, split=args.split)
        for index in args.index or [0]:
            if not 0 <= index < len(reader):
                raise CliError(f"--index {index} is outside {args.dataset} {args.split} (0..{len(reader) - 1})")
            name = f"{args.dataset}-{args.split}-{index}"
            inputs.append((name, f"dataset:{name}", reader[index].image))
    elif args.index:
        raise CliError("--index needs --dataset NAME")
    if not inputs:
        inputs = [("synthetic-100000", "synthetic:100000", render(100_000, 256, 0).image)]
    return unique_names(inputs)


def unique_names(inputs: list[tuple[str, str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    """Drop repeated sources; a name that different sources share (``a/img.png`` and ``b/img.png``, or an
    image file called ``synthetic-5.png`` beside ``--synthetic 5``) gets ``-`` and 8 hex digits of the sha256
    of its source, so that no figure overwrites another."""
    distinct = list({source: (name, source, image) for name, source, image in reversed(inputs)}.values())[::-1]
    counts = Counter(name for name, _, _ in distinct)
    return [(f"{name}-{hashlib.sha256(source.encode()).hexdigest()[:8]}" if counts[name] > 1 else name, image)
            for name, source, image in distinct]


def model_geometry(image: np.ndarray, size: int, multiple: int):
    """The whole ``image`` as a model input of short side ``size`` (see :func:`phreg_bench.viz.model_input`) and
    a note for the figure saying how it was resized."""
    from phreg_bench.viz import model_input

    pixels = model_input(image, size, multiple)
    (height, width), (new_height, new_width) = image.shape[:2], pixels.shape[-2:]
    return pixels, f"{width}×{height} px resized to {new_width}×{new_height} (whole image)"


def parse_method(spec: str) -> tuple[str, dict, str]:
    """``"tta:views=10,inner=naclip"`` -> ``("tta", {"views": 10, "inner": "naclip"}, spec)``."""
    name, _, rest = spec.partition(":")
    if not name:
        raise CliError(f"--method {spec!r}: expected NAME or NAME:KEY=VALUE,...")
    return name, parse_assignments([item for item in rest.split(",") if item], f"--method {name}"), spec


def handle(args: argparse.Namespace) -> int:
    from phreg_bench.backbones.build import build_backbone
    from phreg_bench.methods.options import validate_method_options
    from phreg_bench.registries import METHODS
    from phreg_bench.viz import comparison_figure, model_panel, norm_histogram, require_matplotlib

    require_matplotlib()
    device = resolve_device(args.device)
    methods = [parse_method(spec) for spec in args.method or (["raw"] if args.adapter is None else [])]
    if args.adapter is not None:
        methods.append(("phreg", {"adapter": str(args.adapter)}, "phreg"))
    for method, method_options, _ in methods:  # before any model is built
        validate_method_options(method, method_options)
    inputs = load_inputs(args)  # missing files and bad indices fail before any model is built
    models = []
    for backbone_name in args.backbone or [DEFAULT_BACKBONE]:
        backbone = build_backbone(backbone_name, weights=args.weights, random_init=args.random_init,
                                  **with_pos_resample({}, args.pos_resample))
        for method, method_options, method_label in methods:
            model = METHODS.get(method)(backbone, **method_options).to(device).eval()
            label = backbone_name if len(methods) == 1 else f"{backbone_name} / {method_label}"
            models.append((label, model))
    size = args.size or models[0][1].native_resolution[0]
    patches = {m.patch_size for _, m in models}
    if any(size % p for p in patches):
        raise CliError(f"--size {size} is not a multiple of every patch size {sorted(patches)}")
    if args.query and not any(m.has_text for _, m in models):
        note("--query ignored: no compared backbone has a text tower", style="yellow")
    # the output folder is made by the first figure written (a failed run leaves no empty folder behind)
    norms: dict[str, list[np.ndarray]] = {label: [] for label, _ in models}
    for sample_id, image in inputs:
        pixels, geometry = model_geometry(image, size, math.lcm(*patches))
        panels = []
        for label, model in models:
            normalised = model.normalize(pixels).to(device)
            panel = model_panel(label, model, normalised, args.query)
            norms[label].append(panel.patches.norm(dim=0).numpy().ravel())
            panels.append(panel)
        shown = (pixels[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        path = comparison_figure(shown, panels, args.out / f"viz_{sample_id}.png", title=sample_id, query=args.query,
                                 input_note=geometry)
        say("figure: ", path)
    path = norm_histogram({k: np.concatenate(v) for k, v in norms.items()}, args.out / "norm_histogram.png",
                          title="patch-token norms")
    say("figure: ", path)
    return 0
