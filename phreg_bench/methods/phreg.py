"""Method ``phreg``: the PH-Reg student (registers + distilled weights) loaded from an adapter file.

``build(backbone, adapter=PATH)`` rebuilds the student on ``backbone.vision`` from the adapter's sidecar and
loads its tensors. An adapter made for other base weights (sha256 in the sidecar vs
``backbone.identity.weights_sha256``) is refused. ``adapter="hf-hub:<user>/<repo>[/<folder>][@rev]"`` reads an
adapter shared on the Hugging Face hub (``phreg-bench adapter push``) through the local hub cache, with the
same fast offline failure as backbone weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from phreg_bench.backbones.base import Backbone
from phreg_bench.checkpoints.hub_spec import is_hub_spec
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

    def dense_tokens(self, images: Tensor, layers: Sequence[int] = (-1,), *,
                     project: bool = False) -> list[TokenOutput]:
        """Every layer of the student (its registers attend from the first block, so intermediate layers are the
        student's own too); ``prefix`` ends with the ``num_registers`` new registers. Shapes:
        :meth:`DenseModel.forward_tokens`."""
        return self.student.forward_tokens(images, layers, project=project)


def _adapter_missing(value: str) -> str | None:
    """A local adapter path must exist; ``hf-hub:<user>/<repo>`` is fetched (or refused) when the method is built."""
    return None if is_hub_spec(value) or Path(value).exists() else \
        "is neither an existing adapter file or folder nor hf-hub:<user>/<repo>"


# a string, not a Path option: ``hf-hub:<user>/<repo>`` names an adapter on the hub, not a local path
@method_options("phreg", adapter=Option(str, "an adapter file or folder (written by `phreg-bench distill` or "
                                             "`adapter import`), or hf-hub:<user>/<repo>",
                                        check=_adapter_missing))
def build(backbone: Backbone, adapter: str | Path) -> DenseModel:
    """Load a PH-Reg adapter (``adapter.safetensors`` + ``adapter.json``, or their folder, or
    ``hf-hub:<user>/<repo>``) onto ``backbone``."""
    if is_hub_spec(str(adapter)):
        from phreg_bench.checkpoints.sharing import fetch_adapter

        tensors_path = fetch_adapter(str(adapter))
    else:
        tensors_path, _ = adapter_paths(adapter)
    student, sidecar = load_adapter(backbone.vision, tensors_path, weights_sha256=backbone.identity.weights_sha256)
    student.to(next(backbone.vision.parameters()).device)
    return PHRegModel(backbone, student, sidecar)
