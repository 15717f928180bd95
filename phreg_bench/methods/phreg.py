"""Method ``phreg``: the PH-Reg student (registers + distilled weights) loaded from an adapter file.

``build(backbone, adapter=PATH)`` rebuilds the student on ``backbone.vision`` from the adapter's sidecar and
loads its tensors. An adapter made for other base weights (sha256 in the sidecar vs
``backbone.info.weights_sha256``) is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from phreg_bench.backbones.base import Backbone
from phreg_bench.methods.base import DenseModel
from phreg_bench.methods.options import Option, method_options
from phreg_core.adapter_io import adapter_paths, load_adapter
from phreg_core.student import Student
from phreg_core.vit import TokenOutput


class PHRegModel(DenseModel):
    """The backbone run as its distilled student. Patch tokens never include the new registers."""

    def __init__(self, backbone: Backbone, student: Student, sidecar: dict[str, Any]):
        config = {
            "adapter_sha256": sidecar["tensors_sha256"],
            "student": sidecar["student"],
            "base_weights_sha256": sidecar["base"]["weights_sha256"],
            "steps": sidecar.get("steps"),
        }
        super().__init__(backbone, "phreg", config)
        self.student = student
        self.sidecar = sidecar

    def forward_tokens(self, images: Tensor, *, project: bool = True) -> TokenOutput:
        # project=False gives final-normalised embed_dim tokens (probe tasks), as for every method.
        return self.student.forward_tokens(images, project=project)[0]


@method_options("phreg", adapter=Option(Path, "pass --adapter PATH (written by `phreg-bench distill`)"))
def build(backbone: Backbone, adapter: str | Path) -> DenseModel:
    """Load a PH-Reg adapter (``adapter.safetensors`` + ``adapter.json``, or their folder) onto ``backbone``."""
    tensors_path, _ = adapter_paths(adapter)
    student, sidecar = load_adapter(backbone.vision, tensors_path, weights_sha256=backbone.info.weights_sha256)
    student.to(next(backbone.vision.parameters()).device)
    return PHRegModel(backbone, student, sidecar)
