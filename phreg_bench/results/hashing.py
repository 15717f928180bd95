"""The config hash: what changes the numbers, and nothing else."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)


def config_hash(
    *,
    task: dict[str, Any],
    backbone: dict[str, Any],
    method: dict[str, Any],
    protocol: dict[str, Any],
    seed: int,
    limit: int | None,
) -> str:
    """sha256 over task identity, weights identity (with the positional-embedding resampling policy), method
    config, resolved protocol, seed and limit.

    Device, precision-independent run options, worker counts, batch sizes of inference and paths are
    deliberately left out: they do not change what is measured.
    """
    payload = {
        "task": {key: task[key] for key in ("name", "version", "spec_hash")},
        "backbone": {key: backbone.get(key) for key in ("name", "architecture", "weights_sha256", "weights_id")},
        "method": {"name": method["name"], "config": method.get("config", {})},
        "protocol": protocol,
        "seed": seed,
        "limit": limit,
    }
    if backbone.get("weights_sha256"):
        payload["backbone"].pop("weights_id")  # identical bytes from another path are the same weights
    if backbone.get("pos_resample") is not None:  # positional-embedding resampling changes the features
        payload["backbone"]["pos_resample"] = backbone["pos_resample"]
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()
