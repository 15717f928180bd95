"""The register-neuron finder's settings (:class:`FinderSettings`) and the error type of test-time registers.

Split from :mod:`phreg_core.ttr` because they need no torch: ``phreg-bench --help`` shows the finder's
defaults without loading torch. The defaults' sources are in :mod:`phreg_core.ttr`'s module notes; both
names are re-exported there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from phreg_core.errors import PhregError

__all__ = ["FinderSettings", "RegisterNeuronsError"]


class RegisterNeuronsError(PhregError, ValueError):
    """A bad register-neuron list, finder setting, or a model the intervention cannot hook."""


@dataclass(frozen=True)
class FinderSettings:
    """How register neurons are scored and selected (defaults: the reference's, see the module notes)."""

    threshold: float = 30.0  # residual-stream norm above which a token is an outlier position
    detect_layer: int = -1  # block whose output norms define the outlier positions
    highest_layer: int | None = None  # keep neurons of blocks ≤ this (None: every block)
    lowest_layer: int = 0  # keep neurons of blocks ≥ this
    top_k: int = 10  # neurons kept after the layer filter
    sparsity_filter: bool = False
    sparsity_fraction: float = 0.5
    sparsity_activation: float = 0.5

    def check(self, depth: int) -> None:
        """Refuse settings that cannot work on a model with ``depth`` blocks."""
        if not self.threshold > 0:
            raise RegisterNeuronsError(f"threshold must be a positive norm, got {self.threshold}")
        if not -depth <= self.detect_layer < depth:
            raise RegisterNeuronsError(f"detect_layer {self.detect_layer} is not a block of this {depth}-block model")
        if self.top_k < 1:
            raise RegisterNeuronsError(f"top_k must be ≥ 1, got {self.top_k}")
        if not 0 <= self.lowest_layer < depth:
            raise RegisterNeuronsError(f"lowest_layer {self.lowest_layer} is not a block of this {depth}-block model")
        if self.highest_layer is not None and not self.lowest_layer <= self.highest_layer < depth:
            raise RegisterNeuronsError(f"highest_layer {self.highest_layer} must be a block in "
                                       f"[lowest_layer={self.lowest_layer}, {depth - 1}]")
        if not 0.0 <= self.sparsity_fraction <= 1.0:
            raise RegisterNeuronsError(f"sparsity_fraction must be in [0, 1], got {self.sparsity_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
