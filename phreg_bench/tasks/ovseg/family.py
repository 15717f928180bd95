"""The ``ovseg`` family: zero-shot open-vocabulary semantic segmentation with a CLIP-like backbone.

A task spec (``tasks/ovseg/<dataset>.yaml``) names the dataset reader, split, class file and protocol
presets; the resolved protocol (resize, crop, stride, logit scale, thresholds, templates) is recorded and
hashed with every result. The harness is :mod:`phreg_bench.tasks.ovseg.harness`, the metrics
:mod:`phreg_bench.metrics.segmentation`, the text side :mod:`phreg_bench.tasks.ovseg.text`.

``RunContext.options`` understood here: ``skip_corrupt`` (bool) — skip unreadable or invalid samples and
count them in ``extra["skipped"]`` instead of failing; ``pearson`` (bool, default True) — also compute the
Table S.4 Pearson metric.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from phreg_bench.datasets.base import DatasetError
from phreg_bench.methods.base import DenseModel
from phreg_bench.metrics.segmentation import PearsonMetric, SegmentationMetric
from phreg_bench.progress import track
from phreg_bench.protocol_settings import NamedSettings, require
from phreg_bench.tasks.base import RunContext, TaskFamily, TaskOutcome, TaskSpec
from phreg_bench.tasks.ovseg.harness import HarnessSettings, OVSegPredictor
from phreg_bench.tasks.ovseg.text import class_queries, read_class_names, read_templates
from phreg_bench.tasks.sharding import gather_messages, rank_zero_first
from phreg_bench.tasks.specs import class_file, spec_root
from phreg_core.distributed import all_sum_int, shard
from phreg_core.errors import ConfigError, MissingFileError
from phreg_core.hashing import file_sha256


@dataclass(frozen=True)
class OVSegSettings(HarnessSettings, NamedSettings):
    """An ovseg protocol: the harness numbers and their checks (:class:`HarnessSettings`) + the templates.

    Defaults are the PH-Reg / NACLIP values where a preset leaves a key out (``tasks/ovseg/_base.yaml``).
    """

    templates: str = field(default="imagenet_templates.txt", kw_only=True)  # a file in tasks/templates/ or a path

    def validate(self) -> None:
        super().validate()
        require("templates", _template_found(self.templates),
                f"file {self.templates!r} not found in {spec_root() / 'templates'} nor as a path")


def _template_found(name: str) -> bool:
    try:
        template_file(name)
    except FileNotFoundError:
        return False
    return True


def template_file(name: str) -> Path:
    """A file name in the shipped ``tasks/templates/``, or a path to your own template file."""
    path = spec_root() / "templates" / name
    if path.exists():
        return path
    if Path(name).expanduser().is_file():
        return Path(name).expanduser()
    raise MissingFileError(f"template file {name!r} not found in {path.parent} nor as a path")


class _Guarded(torch.utils.data.Dataset):
    """Returns the error message instead of raising, so a corrupt sample can be skipped and counted."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            return self.dataset[index]
        except DatasetError as error:
            return str(error)


def _identity(item):
    return item


class OpenVocabSegmentation(TaskFamily):
    name = "ovseg"
    needs_text = True

    settings_class = OVSegSettings

    def run(self, model: DenseModel, spec: TaskSpec, settings: dict[str, Any], ctx: RunContext) -> TaskOutcome:
        """Zero-shot segmentation of ``spec``'s images with ``model``'s projected patch tokens and text tower.

        ``model`` needs a text tower (:attr:`DenseModel.has_text`); its forward runs at its own precision. See
        :meth:`TaskFamily.run` for the arguments; the metrics are mIoU, mAcc, aAcc (and Pearson), in percent.
        """
        from phreg_bench.datasets.catalogue import DATASETS

        resolved = OVSegSettings.from_dict(settings, where=f"{spec.name} settings")
        harness = resolved.harness()
        if spec.classes is None:
            raise ConfigError(f"{spec.name}: the task spec names no class file")
        classes_path = class_file(spec.classes)
        templates_path = template_file(resolved.templates)
        classes, templates = read_class_names(classes_path), read_templates(templates_path)
        reader = DATASETS.get(spec.dataset)
        if reader.num_classes != len(classes):
            raise ConfigError(f"{classes_path} lists {len(classes)} classes but {reader.name} has {reader.num_classes}")
        phases: dict[str, float] = {}

        start = time.perf_counter()
        def embed_classes():
            return class_queries(model.encode_text, classes, templates, tower_identity=model.text_identity,
                                 cache_dir=Path(ctx.cache_dir) / "text", device=ctx.device)

        queries = rank_zero_first(ctx.dist, embed_classes)  # others read rank 0's content-addressed cache
        phases["text_s"] = time.perf_counter() - start

        dataset = reader(ctx.data_root, split=spec.split, limit=ctx.limit)
        predictor = OVSegPredictor(model, queries, harness, batch_size=ctx.batch_size, device=ctx.device)
        metric = SegmentationMetric(reader.num_classes, device=ctx.device)
        pearson = PearsonMetric() if ctx.options.get("pearson", True) else None
        skip = bool(ctx.options.get("skip_corrupt", False))
        mine = shard(len(dataset), ctx.dist)  # this rank's images (all of them in one process)
        loader = torch.utils.data.DataLoader(_Guarded(dataset), batch_size=None, sampler=mine, shuffle=False,
                                             num_workers=ctx.num_workers, collate_fn=_identity)
        skipped: list[tuple[int, str]] = []
        done: list[int] = []  # global indices of the images evaluated here
        waiting = 0.0
        start = time.perf_counter()
        iterator = zip(mine, track(loader, spec.name, total=len(mine), progress=ctx.progress), strict=True)
        while True:
            tick = time.perf_counter()
            index, sample = next(iterator, (None, None))
            waiting += time.perf_counter() - tick
            if sample is None:
                break
            if isinstance(sample, str):
                if not skip:
                    raise DatasetError(f"{sample} (or pass --skip-corrupt to skip such files and count them)")
                skipped.append((index, sample))
                continue
            label = torch.from_numpy(sample.label).to(ctx.device)
            pred, class_logits = predictor.predict_classes(sample.image, out_size=tuple(label.shape))
            metric.update(pred, label)
            if pearson is not None:  # reads the class logits classify used: no second pass over the queries
                with torch.inference_mode():
                    pearson.update(class_logits, label)
            done.append(index)
        phases["evaluate_s"] = time.perf_counter() - start
        phases["data_wait_s"] = waiting
        # exact reductions over ranks: int64 confusion sums, per-image Pearson values gathered in image order
        metric.all_reduce(ctx.dist)
        if pearson is not None:
            pearson.all_gather(ctx.dist, done)
        evaluated = all_sum_int(ctx.dist, len(done))
        skipped = gather_messages(ctx.dist, skipped)
        if evaluated == 0:
            raise DatasetError(f"{spec.name}: no sample was evaluated ({len(skipped)} skipped)")

        result = metric.compute()
        values = {key: float(result[key]) for key in ("mIoU", "mAcc", "aAcc")}
        if any(v != v for v in values.values()):
            raise ConfigError(f"{spec.name}: no labelled pixel in the evaluated samples; metrics are undefined")
        score = pearson.compute() if pearson is not None else None
        if score is not None:
            values["pearson"] = score
        names = [synonyms[0] for synonyms in classes]
        if reader.has_background:
            names[0] = "background"
        return TaskOutcome(
            main_metric=spec.metric, metrics=values, num_samples=evaluated,
            per_class={n: _finite(v) for n, v in zip(names, result["IoU"], strict=True)},
            extra={
                "per_class_acc": {n: _finite(v) for n, v in zip(names, result["Acc"], strict=True)},
                "text_cache": queries.cache, "num_queries": len(queries.names),
                "dataset_samples": dataset.full_count, "skipped": len(skipped), "skipped_files": skipped[:20],
                "class_file": spec.classes, "class_file_sha256": file_sha256(classes_path),
                "templates_sha256": file_sha256(templates_path),
            },
            phases={key: round(value, 3) for key, value in phases.items()},
        )


def _finite(value: float) -> float | None:
    return None if value != value else float(value)
