"""Distillation settings for the trainer tests: one flat list of values split into what ``distill`` takes."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from phreg_core.recipe import Recipe, RunOptions

IDENTITY = ("base_name", "base_weights_sha256", "teacher_id")


def distill_args(**values: Any) -> dict[str, Any]:
    """``{"recipe": Recipe, "options": RunOptions, <identity>}`` from :class:`Recipe` / :class:`RunOptions`
    field names and the identity keywords of :func:`phreg_core.trainer.distill` (an unknown name raises)."""
    recipe_names = {f.name for f in fields(Recipe)}
    option_names = {f.name for f in fields(RunOptions)}
    unknown = set(values) - recipe_names - option_names - set(IDENTITY)
    if unknown:
        raise TypeError(f"unknown distillation settings {sorted(unknown)}")
    return {"recipe": Recipe(**{k: v for k, v in values.items() if k in recipe_names}),
            "options": RunOptions(**{k: v for k, v in values.items() if k in option_names}),
            **{k: v for k, v in values.items() if k in IDENTITY}}
