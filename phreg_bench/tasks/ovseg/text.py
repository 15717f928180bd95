"""Text side of open-vocabulary segmentation: templates, synonym class files, class embeddings, cache.

* A class file has one class per line; a line may list comma-separated synonyms ("queries"), as in
  ``sinahmr/NACLIP:configs/cls_*.txt``. A pixel's class score is the max over its class's queries.
* Each query name is embedded as NACLIP / SCLIP / PH-Reg do (``zero_shot/segmentor.py``): fill all 80
  OpenAI ImageNet templates, encode, L2-normalise each, average, re-normalise.
* Template files (:func:`read_templates`, the ``templates=FILE`` protocol setting) come in the formats of
  ``LAION-AI/CLIP_benchmark`` (``metrics/zeroshot_classification.py``, ``datasets/*_templates.json``):
  a plain text file with one template per line; a ``.json`` list of templates; both using the ``{c}``
  placeholder for the class name; or a ``.json`` object mapping each class name to its own list of full
  prompts (class-specific prompts such as CuPL's, no placeholder). Any other content is refused.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from phreg_core.atomic import write_bytes_atomic
from phreg_core.errors import ConfigError, FileFormatError, PhregError
from phreg_core.hashing import canonical_json

CACHE_FORMAT = 1  # bump when the stored layout or the averaging changes
PLACEHOLDER = "{c}"

# Generic templates (``{c}`` filled with each name), or class-specific prompts: name -> its full prompts.
Templates = Sequence[str] | Mapping[str, Sequence[str]]

TEMPLATE_FORMATS = (
    "a text file with one template per line, each containing '{c}'; a .json list of such templates "
    '(["a photo of a {c}.", ...]); or a .json object mapping each class name to its list of full prompts '
    '({"cat": ["a photo of a small cat.", ...], ...}, CLIP_benchmark / CuPL class-specific prompts)'
)


class TemplateFileError(PhregError, ValueError):
    """A template file in no supported format; the message names the file and the formats."""


def _bad(path: Path, why: str) -> TemplateFileError:
    return TemplateFileError(f"template file {path}: {why}. Supported formats: {TEMPLATE_FORMATS}")


def _generic(templates: list, path: Path, where: str) -> list[str]:
    if not templates:
        raise _bad(path, f"{where} is empty")
    for template in templates:
        if not isinstance(template, str):
            raise _bad(path, f"{where} holds {template!r}, not a string")
        if PLACEHOLDER not in template:
            raise _bad(path, f"template {template!r} in {where} has no {PLACEHOLDER!r} placeholder")
    return list(templates)


def _per_class(data: dict, path: Path) -> dict[str, list[str]]:
    out = {}
    for name, prompts in data.items():
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip()
                                                                   for p in prompts):
            raise _bad(path, f"the entry {name!r} is not a non-empty list of prompt strings")
        out[name] = list(prompts)
    templated = sorted(name for name, prompts in out.items() if any(PLACEHOLDER in p for p in prompts))
    if len(templated) == len(out):
        raise _bad(path, f"it maps {', '.join(repr(k) for k in list(out)[:6])} to {PLACEHOLDER!r} templates, "
                   "i.e. holds template lists of several datasets (CLIP_benchmark's *_templates.json); save the "
                   "list you want as its own .json file")
    if templated:
        raise _bad(path, f"the prompts of {templated[:4]} contain {PLACEHOLDER!r} but the others are full "
                   "prompts; use one kind per file")
    return out


def read_templates(path: str | os.PathLike) -> list[str] | dict[str, list[str]]:
    """The prompt templates of a file: a list of ``{c}`` templates, or ``{class name: [prompts]}``.

    Formats (CLIP_benchmark's, see the module docstring): ``*.json`` holding a list of template strings or
    an object of class name → list of prompts; any other file: one template per line. Raises
    :class:`TemplateFileError` naming the file for anything else (including JSON in a non-``.json`` file).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise TemplateFileError(f"template file {path} cannot be read ({error})") from error
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise _bad(path, f"it is not valid JSON ({error})") from error
        if isinstance(data, list):
            return _generic(data, path, "the list")
        if isinstance(data, dict) and data:
            return _per_class(data, path)
        raise _bad(path, f"its JSON is a {type(data).__name__}{' (empty)' if not data else ''}")
    stripped = text.strip()
    if stripped[:1] in ("[", "{") and stripped[-1:] in ("]", "}"):
        try:
            json.loads(stripped)
        except json.JSONDecodeError:
            pass
        else:
            raise _bad(path, "it holds JSON but is read as one template per line; give it a .json suffix")
    templates = [line.rstrip("\n") for line in text.splitlines() if line.strip()]
    return _generic(templates, path, "the file")


def prompts_for(name: str, templates: Templates) -> list[str]:
    """The prompts of one class name: each template filled, or the name's own prompts."""
    if isinstance(templates, Mapping):
        return list(templates[name])
    return [fill(t, name) for t in templates]


def check_names_have_prompts(names: Sequence[str], templates: Templates, source: str = "the template file") -> None:
    """Class-specific prompts must cover every query name; raises :class:`TemplateFileError` otherwise."""
    if not isinstance(templates, Mapping):
        return
    missing = [name for name in dict.fromkeys(names) if name not in templates]
    if missing:
        raise TemplateFileError(f"{source} has no prompts for {len(missing)} class name(s), e.g. "
                                f"{missing[:5]}; its keys must be the class names of the class file "
                                f"(known keys: {sorted(templates)[:5]} ...)")


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


class SynonymPlan:
    """How to reduce ``[Q, ...]`` query scores to ``[C, ...]`` class scores (max over each class's queries).

    Class files list a class's synonyms on one line, so each class's queries are one contiguous run of
    query indices: the reduction is one ``amax`` (or copy) per class over a slice, with no gather of the
    ``[Q, H, W]`` scores. Queries in any other order are first put in class order (one gather).
    """

    def __init__(self, query_class: Tensor, num_classes: int):
        classes = query_class.detach().cpu().long()
        counts = torch.bincount(classes, minlength=num_classes)
        if classes.numel() == 0 or len(counts) > num_classes or (counts == 0).any():
            raise ConfigError(f"every one of the {num_classes} classes needs at least one query, and only those")
        self.num_classes = num_classes
        self.identity = torch.equal(classes, torch.arange(num_classes))
        order = torch.argsort(classes, stable=True)
        self.order = None if torch.equal(order, torch.arange(len(classes))) else order
        bounds = [0, *torch.cumsum(counts, 0).tolist()]
        self.runs = [(bounds[c], bounds[c + 1]) for c in range(num_classes)]

    def __call__(self, scores: Tensor) -> Tensor:
        """``[C, ...]`` class scores of ``[Q, ...]`` query scores (``scores`` itself when queries are classes)."""
        if self.identity:
            return scores
        if self.order is not None:
            scores = scores.index_select(0, self.order.to(scores.device))
        out = scores.new_empty((self.num_classes, *scores.shape[1:]))
        for c, (start, stop) in enumerate(self.runs):
            if stop - start == 1:
                out[c].copy_(scores[start])
            else:
                torch.amax(scores[start:stop], 0, out=out[c])
        return out


@dataclass
class ClassQueries:
    """Unit-norm query embeddings ``[Q, D]`` and the class each query belongs to (``[Q]``)."""

    embeddings: Tensor
    query_class: Tensor
    names: list[str]
    num_classes: int
    cache: str = "off"  # "hit", "miss" or "off"

    @functools.cached_property
    def synonym_plan(self) -> SynonymPlan:
        """The query → class max reduction (:class:`SynonymPlan`), built once."""
        return SynonymPlan(self.query_class, self.num_classes)


def encode_names(encode: Callable[[list[str]], Tensor], names: Sequence[str], templates: Templates,
                 batch_size: int = 256) -> Tensor:
    """``[len(names), D]``: per name, the re-normalised mean of its L2-normalised prompt embeddings.

    ``templates``: ``{c}`` templates filled with each name, or a mapping name → its own prompts.
    """
    unique = list(dict.fromkeys(names))
    check_names_have_prompts(unique, templates)
    per_name = [prompts_for(n, templates) for n in unique]
    prompts = [p for group in per_name for p in group]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    out: Tensor | None = None
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        feats = encode([prompts[i] for i in chunk]).float()
        if out is None:
            out = feats.new_empty(len(prompts), feats.shape[-1])
        out[torch.tensor(chunk, device=feats.device)] = F.normalize(feats, dim=-1)
    assert out is not None
    counts = {len(group) for group in per_name}
    if len(counts) == 1:  # the same number of prompts per name: one view and one mean
        means = out.view(len(unique), counts.pop(), -1).mean(1)
    else:
        bounds = np.cumsum([0] + [len(group) for group in per_name]).tolist()
        means = torch.stack([out[a:b].mean(0) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
    per_name_emb = F.normalize(means, dim=-1)
    index = {name: i for i, name in enumerate(unique)}
    return per_name_emb[torch.tensor([index[n] for n in names], device=per_name_emb.device)]


def _templates_json(templates: Templates):
    if isinstance(templates, Mapping):
        return {str(k): list(v) for k, v in templates.items()}
    return list(templates)


def cache_key(tower_identity: str, templates: Templates, classes: Sequence[Sequence[str]]) -> str:
    """sha256 of the canonical JSON of the format, text tower identity, templates and classes."""
    payload = {"format": CACHE_FORMAT, "tower": tower_identity, "templates": _templates_json(templates),
               "classes": [list(c) for c in classes]}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


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
                  templates: Templates, *, tower_identity: str | None = None,
                  cache_dir: str | os.PathLike | None = None, batch_size: int = 256,
                  device: torch.device | str = "cpu") -> ClassQueries:
    """Embed every query of every class, through the cache when ``tower_identity`` and ``cache_dir`` are set."""
    names = [name for synonyms in classes for name in synonyms]
    check_names_have_prompts(names, templates)
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
