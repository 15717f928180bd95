"""Text side of open-vocabulary segmentation: templates, synonym class files, class embeddings, cache.

* A class file has one class per line; a line may list comma-separated synonyms ("queries"), as in
  ``sinahmr/NACLIP:configs/cls_*.txt``. A pixel's class score is the max over its class's queries.
* Each query name is embedded as NACLIP / SCLIP / PH-Reg do (``zero_shot/segmentor.py``): fill all 80
  OpenAI ImageNet templates, encode, L2-normalise each, average, re-normalise.
* All prompts of all classes are encoded together, sorted by length and cut into batches, so a text tower
  that trims the context to each batch's longest prompt does little padding work.
* Embeddings are cached on disk, content-addressed: the key hashes the text tower identity, the template
  strings and the class names, so any change is a miss, never a silent reuse. Writes are atomic.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from phreg_core.atomic import write_bytes_atomic
from phreg_core.errors import FileFormatError

CACHE_FORMAT = 1  # bump when the stored layout or the averaging changes
PLACEHOLDER = "{c}"


def read_templates(path: str | os.PathLike) -> list[str]:
    """One template per line, each containing ``{c}`` where the class name goes."""
    path = Path(path)
    templates = [line.rstrip("\n") for line in path.read_text().splitlines() if line.strip()]
    bad = [t for t in templates if PLACEHOLDER not in t]
    if not templates or bad:
        raise FileFormatError(f"{path}: every template line must contain {PLACEHOLDER!r}"
                         + (f"; bad line {bad[0]!r}" if bad else "; the file is empty"))
    return templates


def read_class_names(path: str | os.PathLike) -> list[list[str]]:
    """Synonym lists, one per class line (``"person, person in shirt"`` → ``["person", "person in shirt"]``)."""
    path = Path(path)
    classes = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        names = [name.strip() for name in line.split(",") if name.strip()]
        if not names:
            raise FileFormatError(f"{path}: line {number} names no class")
        classes.append(names)
    if not classes:
        raise FileFormatError(f"{path}: no classes")
    return classes


def fill(template: str, name: str) -> str:
    return template.replace(PLACEHOLDER, name)


@dataclass
class ClassQueries:
    """Unit-norm query embeddings ``[Q, D]`` and the class each query belongs to (``[Q]``)."""

    embeddings: Tensor
    query_class: Tensor
    names: list[str]
    num_classes: int
    cache: str = "off"  # "hit", "miss" or "off"

    @functools.cached_property
    def synonym_plan(self):
        """The query → class max reduction (:class:`phreg_bench.inference.SynonymPlan`), built once."""
        from phreg_bench.inference import SynonymPlan

        return SynonymPlan(self.query_class, self.num_classes)


def encode_names(encode: Callable[[list[str]], Tensor], names: Sequence[str], templates: Sequence[str],
                 batch_size: int = 256) -> Tensor:
    """``[len(names), D]``: per name, the re-normalised mean of its L2-normalised template embeddings."""
    unique = list(dict.fromkeys(names))
    prompts = [fill(t, n) for n in unique for t in templates]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    out: Tensor | None = None
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            feats = encode([prompts[i] for i in chunk]).float()
        if out is None:
            out = feats.new_empty(len(prompts), feats.shape[-1])
        out[torch.tensor(chunk, device=feats.device)] = F.normalize(feats, dim=-1)
    assert out is not None
    per_name = F.normalize(out.view(len(unique), len(templates), -1).mean(1), dim=-1)
    index = {name: i for i, name in enumerate(unique)}
    return per_name[torch.tensor([index[n] for n in names], device=per_name.device)]


def cache_key(tower_identity: str, templates: Sequence[str], classes: Sequence[Sequence[str]]) -> str:
    payload = {"format": CACHE_FORMAT, "tower": tower_identity, "templates": list(templates),
               "classes": [list(c) for c in classes]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()





class TextEmbeddingCache:
    """``<root>/<key>.safetensors`` with the query embeddings; the key is :func:`cache_key`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def load(self, key: str, num_queries: int) -> Tensor | None:
        """The stored embeddings, or ``None`` on a miss or a damaged / mismatching file (fail-closed)."""
        from safetensors import SafetensorError
        from safetensors.torch import safe_open

        path = self.path(key)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as stream:
                if (stream.metadata() or {}).get("key") != key:
                    return None
                embeddings = stream.get_tensor("embeddings")
        except (SafetensorError, OSError, ValueError, KeyError):
            return None
        if embeddings.ndim != 2 or embeddings.shape[0] != num_queries or not torch.isfinite(embeddings).all():
            return None
        return embeddings

    def save(self, key: str, embeddings: Tensor, info: dict) -> Path:
        from safetensors.torch import save

        metadata = {"key": key, "info": json.dumps(info, sort_keys=True)}
        data = save({"embeddings": embeddings.detach().float().cpu().contiguous()}, metadata=metadata)
        path = self.path(key)
        write_bytes_atomic(path, data)
        return path


def class_queries(encode: Callable[[list[str]], Tensor], classes: Sequence[Sequence[str]],
                  templates: Sequence[str], *, tower_identity: str | None = None,
                  cache_dir: str | os.PathLike | None = None, batch_size: int = 256,
                  device: torch.device | str = "cpu") -> ClassQueries:
    """Embed every query of every class, through the cache when ``tower_identity`` and ``cache_dir`` are set."""
    names = [name for synonyms in classes for name in synonyms]
    query_class = torch.tensor([c for c, synonyms in enumerate(classes) for _ in synonyms], device=device)
    cache = TextEmbeddingCache(cache_dir) if (cache_dir is not None and tower_identity) else None
    key = cache_key(tower_identity or "", templates, classes)
    if cache is not None:
        stored = cache.load(key, len(names))
        if stored is not None:
            return ClassQueries(stored.to(device), query_class, names, len(classes), cache="hit")
    embeddings = encode_names(encode, names, templates, batch_size=batch_size).float()
    status = "off"
    if cache is not None:
        cache.save(key, embeddings, {"tower": tower_identity, "num_templates": len(templates),
                                     "num_classes": len(classes), "num_queries": len(names)})
        status = "miss"
    return ClassQueries(embeddings.to(device), query_class, names, len(classes), cache=status)


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
