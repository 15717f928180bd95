"""Building schema-v1 records, measured and reported."""

from __future__ import annotations

from typing import Any

from phreg_bench.results.hashing import config_hash
from phreg_bench.results.schema import SCHEMA_VERSION, validate


def _metrics(main: str, higher_is_better: bool, values: dict[str, float], per_class: dict | None) -> dict:
    return {"main": main, "higher_is_better": higher_is_better, "values": values, "per_class": per_class or {}}


def measured_record(
    *,
    task: dict[str, Any],
    backbone: dict[str, Any],
    method: dict[str, Any],
    protocol: dict[str, Any],
    seed: int,
    limit: int | None,
    precision: str,
) -> dict[str, Any]:
    """The identity part of a measured record (metrics, status, timings and provenance are filled later).

    ``precision`` is the one that ran (``fp32``, ``bf16`` or ``fp16``; see :mod:`phreg_bench.precision`).
    """
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "measured",
        "task": task,
        "backbone": backbone,
        "method": method,
        "protocol": protocol,
        "precision": precision,
        "config_hash": config_hash(task=task, backbone=backbone, method=method,
                                   protocol=protocol["settings"], seed=seed, limit=limit, precision=precision),
    }


def reported_record(
    *,
    task: dict[str, Any],
    backbone: str,
    method: str,
    protocol: str,
    main_metric: str,
    higher_is_better: bool,
    values: dict[str, float],
    citation: dict[str, str],
    budget: str = "full",
) -> dict[str, Any]:
    """A number quoted from a paper: ``citation`` needs ``source`` (e.g. ``arXiv:2505.21501``) and ``table``.

    No provenance or timings are claimed. ``task`` needs ``name``, ``family`` and ``version``.
    """
    backbone_info = {"name": backbone, "weights_id": "as reported", "weights_sha256": None}
    method_info = {"name": method, "config": {}}
    settings = {"name": protocol, "budget": budget}
    record = {
        "schema_version": SCHEMA_VERSION,
        "kind": "reported",
        "task": {"spec_hash": None, **task},
        "backbone": backbone_info,
        "method": method_info,
        "protocol": {"name": protocol, "settings": settings},
        "metrics": _metrics(main_metric, higher_is_better, values, None),
        "status": {"complete": True, "num_samples": 0, "expected_samples": None, "limit": None},
        "citation": citation,
        "config_hash": config_hash(task={"spec_hash": None, **task}, backbone=backbone_info, method=method_info,
                                   protocol=settings, seed=0, limit=None, precision=None),
    }
    return validate(record)
