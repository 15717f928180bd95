"""Method ``ttr``: test-time registers (Jiang et al., "Vision Transformers Don't Need Trained Registers",
NeurIPS'25, arXiv:2506.08010) on any backbone, training-free.

``build(backbone, neurons=FILE)`` takes a register-neuron list (a ``phreg-bench ttr find`` file or a
published ``{block: [units]}`` JSON); ``build(backbone, data=DIR, …)`` finds them first on a folder of
images with the finder settings of :class:`phreg_core.ttr.FinderSettings` (``threshold``,
``detect_layer``, ``highest_layer``, ``lowest_layer``, ``top_k``, ``sparsity_filter``) and ``num_images``,
``resolution``, ``batch_size``, ``seed``. ``registers`` (default 1) zero tokens are appended and every
register neuron's activation is moved onto them (``rule="max"``, or ``"sign_max"`` as in the released
DINOv2 hub model). The algorithm lives in :mod:`phreg_core.ttr`; this module adds the files and folders.

The method config (and so the result's identity) holds the neurons themselves, not the file path.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from phreg_bench.backbones.base import Backbone
from phreg_bench.methods.base import DenseModel
from phreg_core.atomic import write_text_atomic
from phreg_core.ttr import (
    DEFAULT_REGISTERS,
    FinderSettings,
    NeuronScorer,
    RegisterNeuronsError,
    TestTimeRegisters,
    as_mapping,
    check_neurons,
    parse_neurons,
)
from phreg_core.vit import TokenOutput

FILE_FORMAT = "phreg-bench/ttr-neurons"
FILE_VERSION = 1
CITATION = {"source": "arXiv:2506.08010", "title": "Vision Transformers Don't Need Trained Registers",
            "venue": "NeurIPS 2025", "code": "https://github.com/nickjiang2378/test-time-registers"}
DEFAULT_NUM_IMAGES = 500  # reference shared/algorithms.py: processed_image_cnt=500
CANDIDATES_KEPT = 100  # how much of the full ranking a neurons file keeps for inspection


class TTRModel(DenseModel):
    """A backbone run with test-time registers. Patch tokens never include the appended registers."""

    def __init__(self, backbone: Backbone, intervention: TestTimeRegisters):
        super().__init__(backbone, "ttr", intervention.config())
        self.intervention = intervention

    def dense_tokens(self, images: Tensor, layers: Sequence[int] = (-1,), *,
                     project: bool = False) -> list[TokenOutput]:
        """Every layer of the backbone run with the appended registers (in the sequence from the first block)
        and the register neurons moved in their blocks; ``prefix`` ends with the appended registers. Shapes:
        :meth:`DenseModel.forward_tokens`."""
        return self.intervention.forward_tokens(self.backbone.vision, images, layers, project=project)


def backbone_identity(backbone: Backbone) -> dict[str, Any]:
    identity = backbone.identity
    return {"name": identity.name, "architecture": identity.architecture, "weights_id": identity.weights_id,
            "weights_sha256": identity.weights_sha256}


def load_neurons_file(path: str | Path, backbone: Backbone) -> tuple[dict[int, list[int]], dict[str, Any]]:
    """Read a neurons JSON file and check it against ``backbone``; returns ``(neurons, document)``.

    A file written by ``ttr find`` for other weights (its ``backbone.weights_sha256``) is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise RegisterNeuronsError(f"neurons file {path} does not exist; write one with `phreg-bench ttr find`")
    try:
        document = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RegisterNeuronsError(f"neurons file {path} is not valid JSON: {error}") from None
    neurons = parse_neurons(document, source=f"neurons file {path}")
    found_on = document.get("backbone", {}).get("weights_sha256") if isinstance(document, dict) else None
    mine = backbone.identity.weights_sha256
    if found_on and mine and found_on != mine:
        raise RegisterNeuronsError(
            f"neurons file {path} was found on other weights (sha256 {found_on[:12]}…, backbone "
            f"{document['backbone'].get('name')!r}) than {backbone.name!r} ({mine[:12]}…); run "
            "`phreg-bench ttr find` for this backbone")
    check_neurons(neurons, backbone.vision, source=f"neurons file {path}")
    return neurons, document


def image_batches(data: str | Path, backbone: Backbone, *, num_images: int, resolution: int | None,
                  batch_size: int, seed: int, device: torch.device | str = "cpu"):
    """Normalised image batches from a folder: a seeded sample of ``num_images`` files (all if fewer),
    short side resized to ``resolution`` (default: the backbone's native one) and a seeded square crop.

    Returns ``(batches, used)``: an iterator of ``[B, 3, R, R]`` tensors on ``device`` and the number of
    files sampled. Unreadable files are skipped (with a warning) by the dataset.
    """
    from phreg_core.data import ImageFolderDataset

    patch = backbone.patch_size
    resolution = int(resolution or backbone.native_resolution[0])
    if resolution % patch:
        raise RegisterNeuronsError(f"resolution {resolution} is not a multiple of the patch size {patch}")
    if num_images < 1 or batch_size < 1:
        raise RegisterNeuronsError(f"num_images and batch_size must be ≥ 1, got {num_images} and {batch_size}")
    dataset = ImageFolderDataset(data, resolution, backbone.mean, backbone.std, seed=seed,
                                 fixed_crops=True)
    order = np.arange(len(dataset))
    if num_images < len(order):
        order = np.sort(np.random.default_rng(seed).choice(order, num_images, replace=False))

    def batches():
        for start in range(0, len(order), batch_size):
            items = [dataset[int(i)] for i in order[start : start + batch_size]]
            images = [item["image"] for item in items if item is not None]
            if images:
                yield torch.stack(images).to(device)

    return batches(), len(order)


def neurons_document(backbone: Backbone, scorer: NeuronScorer, settings: dict[str, Any]) -> dict[str, Any]:
    """The JSON a ``ttr find`` run writes: selected neurons with scores, settings, backbone identity."""
    ranked = scorer.ranked()
    selected = scorer.select(ranked)
    return {
        "format": FILE_FORMAT, "version": FILE_VERSION, "method": "test-time registers", "citation": CITATION,
        "backbone": backbone_identity(backbone),
        "settings": settings,
        "images": {"seen": scorer.images_seen, "with_outliers": scorer.images_with_outliers},
        "neurons": [{"layer": layer, "neuron": unit, "score": score} for layer, unit, score in selected],
        "register_neurons": {str(k): v for k, v in as_mapping(selected).items()},
        "candidates": [{"layer": layer, "neuron": unit, "score": score}
                       for layer, unit, score in ranked[:CANDIDATES_KEPT]],
    }


def find_neurons(backbone: Backbone, data: str | Path, settings: FinderSettings = FinderSettings(), *,
                 num_images: int = DEFAULT_NUM_IMAGES, resolution: int | None = None, batch_size: int = 16,
                 seed: int = 0, device: torch.device | str | None = None, progress=None) -> dict[str, Any]:
    """Score the register neurons of ``backbone`` on a folder of images; returns the neurons document."""
    from phreg_bench.progress import track

    vision = backbone.vision
    settings.check(vision.depth)
    device = torch.device(device) if device is not None else next(vision.parameters()).device
    scorer = NeuronScorer(vision, settings)
    batches, used = image_batches(data, backbone, num_images=num_images, resolution=resolution,
                                  batch_size=batch_size, seed=seed, device=device)
    total = -(-used // batch_size)
    for images in track(batches, "scoring MLP neurons", total=total, progress=progress):
        scorer.update(images)
    run = {**settings.to_dict(), "num_images": num_images, "seed": seed, "data": str(data),
           "resolution": resolution or backbone.native_resolution[0]}
    return neurons_document(backbone, scorer, run)


def write_neurons(path: str | Path, document: dict[str, Any]) -> Path:
    """Write a neurons document atomically (strict JSON)."""
    return write_text_atomic(path, json.dumps(document, indent=2, allow_nan=False) + "\n")


FINDER_OPTIONS = tuple(FinderSettings.__dataclass_fields__)
SEARCH_OPTIONS = ("num_images", "resolution", "batch_size", "seed")


def build(backbone: Backbone, neurons: str | None = None, data: str | None = None,
          registers: int = DEFAULT_REGISTERS, rule: str = "max", **options: Any) -> DenseModel:
    """Test-time registers on ``backbone`` with ``neurons=FILE`` or neurons found on ``data=DIR``."""
    unknown = sorted(set(options) - set(FINDER_OPTIONS) - set(SEARCH_OPTIONS))
    if unknown:
        raise RegisterNeuronsError(
            f"method 'ttr' got unknown options {unknown}; it accepts neurons, data, registers, rule, "
            f"{', '.join(FINDER_OPTIONS + SEARCH_OPTIONS)}")
    if (neurons is None) == (data is None):
        raise RegisterNeuronsError("method 'ttr' needs exactly one of -o neurons=FILE (a `phreg-bench ttr find` "
                                   "or published list) or -o data=DIR (images to find the neurons on)")
    if neurons is not None:
        if options:
            raise RegisterNeuronsError(f"method 'ttr': {sorted(options)} only apply with -o data=DIR, not with a "
                                       "neurons file")
        mapping, _ = load_neurons_file(neurons, backbone)
    else:
        finder = FinderSettings(**{k: options[k] for k in FINDER_OPTIONS if k in options})
        search = {k: options[k] for k in SEARCH_OPTIONS if k in options}
        document = find_neurons(backbone, data, finder, **search)
        mapping = parse_neurons(document)
    return TTRModel(backbone, TestTimeRegisters(mapping, registers=int(registers), rule=str(rule)))
