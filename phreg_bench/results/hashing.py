"""The config hash: what changes the numbers, and nothing else."""

from __future__ import annotations

import hashlib
from typing import Any

from phreg_core.hashing import canonical_json as canonical_json  # the project's one canonical JSON

BACKBONE_IDENTITY_KEYS = ("name", "architecture", "weights_sha256", "weights_id")
BASE_NAME_KEY = "phreg_base"  # backbone.extra key of records by the removed ``phreg:<base>`` prefix: their base


def backbone_identity(backbone: dict[str, Any]) -> dict[str, Any]:
    """The part of a record's ``backbone`` that enters the hash (and keys leaderboard rows).

    ``weights_id`` (a path or tag) is dropped when the weights' sha256 is known: identical bytes from another
    path are the same weights. The positional-embedding resampling policy (``pos_resample``) changes the
    features at every non-native size, so it is part of the identity; records without one (numbers quoted
    from papers) keep the identity they had.
    """
    identity = {key: backbone.get(key) for key in BACKBONE_IDENTITY_KEYS}
    if backbone.get("weights_sha256"):
        identity.pop("weights_id")
    if backbone.get("pos_resample") is not None:
        identity["pos_resample"] = backbone["pos_resample"]
    return identity


def base_backbone_identity(backbone: dict[str, Any]) -> dict[str, Any]:
    """The identity of the backbone a record's backbone *is*: records written under the removed ``phreg:<base>``
    backbone prefix ran the base's weights under another name and recorded the base in ``extra['phreg_base']``;
    their base identity is the base's name with the same weights. Any other backbone is its own base.
    """
    identity = backbone_identity(backbone)
    base = (backbone.get("extra") or {}).get(BASE_NAME_KEY)
    if base:
        identity["name"] = base
    return identity


def config_hash(
    *,
    task: dict[str, Any],
    backbone: dict[str, Any],
    method: dict[str, Any],
    protocol: dict[str, Any],
    seed: int,
    limit: int | None,
    precision: str | None,
) -> str:
    """sha256 over task identity, weights identity (with the positional-embedding resampling policy), method
    config, resolved protocol, seed, limit and precision.

    ``protocol`` is the resolved settings after overrides (every field of the family's settings dataclass);
    ``precision`` is the autocast precision that ran the backbone forward
    (:func:`phreg_bench.precision.resolve_precision`), or ``None`` for a number quoted from a paper (not
    known; left out of the payload). Device, worker counts, inference batch sizes and paths are deliberately
    left out: they do not change what is measured.
    """
    payload = {
        "task": {key: task[key] for key in ("name", "version", "spec_hash")},
        "backbone": backbone_identity(backbone),
        "method": {"name": method["name"], "config": method.get("config", {})},
        "protocol": protocol,
        "seed": seed,
        "limit": limit,
    }
    if precision is not None:
        payload["precision"] = precision
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()
