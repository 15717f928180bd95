"""Test-time registers: move the register neurons' activation onto one extra token, training-free.

Jiang, Dravid, Efros, Gandelsman, "Vision Transformers Don't Need Trained Registers" (NeurIPS'25,
arXiv:2506.08010; code ``nickjiang2378/test-time-registers``, referred to below as *the reference*). A
sparse set of MLP hidden units — *register neurons* — writes the high-norm outlier tokens. Two steps:

**Finding them** (reference ``shared/algorithms.py: find_register_neurons``). For each image, the
*outlier positions* are the tokens (CLS included) whose residual-stream norm at the output of block
``detect_layer`` exceeds ``threshold``; images without one are skipped. A hidden unit's score for an
image is its mean absolute activation (the MLP's hidden activation, after the nonlinearity: timm
``mlp.act``, open_clip ``mlp.gelu``) over those positions; its final score is the mean over the images
that had outliers. Optionally (``sparsity_filter``) a unit scores 0 on an image unless it is below
``sparsity_activation`` on at least ``sparsity_fraction`` of the tokens. All units of all blocks are
ranked by score; the reference notebook (``register_neurons.ipynb``) then keeps the blocks in
[``lowest_layer``, ``highest_layer``] (``shared/utils.py: filter_layers``) and the first ``top_k``.

**Using them** (reference ``shared/hook_fn.py: activate_on_registers`` with ``normal_values="zero"``,
registered as a forward hook on the MLP activation module of each block that has register neurons).
``registers`` (default 1) tokens initialised to zero are appended after the patches — after the
positional embedding, before ``ln_pre`` (reference ``clip/clip/transformer.py``: ``extra_tokens``;
``dinov2/dinov2/models/vision_transformer.py``: ``prepare_tokens_with_masks``). At each register neuron,
in its block's hidden activation, every appended token gets the neuron's maximum over *all* tokens of the
image (CLS, patches and the appended tokens themselves), the patch tokens get 0, and every other token
(CLS, built-in registers) keeps its value; the forward pass then continues. ``rule="sign_max"`` is the
variant of the released ``dinov2_vitl14_tt_reg`` hub model (``dinov2/dinov2/hub/hook_fn.py``): one value
per block, the largest-magnitude activation (sign kept) over all tokens and all of that block's register
neurons. The appended tokens are counted in ``TokenLayout.num_appended``, so they never reach the patch
grid.

Defaults and their sources: ``threshold`` 30 (``find_register_neurons(register_norm_threshold=30)``,
``configs/openclip_base.yaml``; DINOv2-L uses 150), ``detect_layer`` −1 (CLIP configs; DINOv2-L −2),
``top_k`` 10 (``configs/openclip_base.yaml``, ``configs/openai_clip_base.yaml``; DINOv2-L 50),
``highest_layer`` none (the configs set 5 for ViT-B CLIP, 17 for DINOv2-L: the block after which the
outliers appear), 500 images (``processed_image_cnt``), sparsity filter off (the function's default; the
notebook turns it on with 0.5 / 0.5).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from phreg_core.hashing import canonical_json
from phreg_core.ttr_settings import FinderSettings, RegisterNeuronsError
from phreg_core.vit import TokenOutput, TokenViT

__all__ = [
    "DEFAULT_REGISTERS",
    "RULES",
    "FinderSettings",
    "NeuronScorer",
    "RegisterNeuronsError",
    "TestTimeRegisters",
    "as_mapping",
    "check_neurons",
    "find_register_neurons",
    "mlp_activation",
    "move_to_registers",
    "neurons_sha256",
    "parse_neurons",
]

DEFAULT_REGISTERS = 1  # the paper's default; more in its App. A.5 (reference: num_registers = 1)
RULES = ("max", "sign_max")


# -- where the neurons live ---------------------------------------------------------------------------
def mlp_activation(block: nn.Module) -> tuple[nn.Module, int]:
    """The module whose output is ``block``'s MLP hidden activation ``[B, N, H]``, and ``H``.

    timm ``Mlp`` (``fc1 → act → fc2``): ``mlp.act``; open_clip (``c_fc → gelu → c_proj``): ``mlp.gelu``.
    Gated MLPs (SwiGLU, GLU) have no single hidden activation and are refused, as in the reference
    (its README lists SwiGLU as unsupported).
    """
    mlp = getattr(block, "mlp", None)
    for first, act_name, last in (("fc1", "act", "fc2"), ("c_fc", "gelu", "c_proj")):
        fc_in, act, fc_out = (getattr(mlp, name, None) for name in (first, act_name, last))
        if (isinstance(fc_in, nn.Linear) and isinstance(fc_out, nn.Linear) and isinstance(act, nn.Module)
                and fc_in.out_features == fc_out.in_features):
            return act, fc_in.out_features
    raise RegisterNeuronsError(
        f"block {type(block).__name__} has no plain MLP hidden activation (fc1 → act → fc2 or c_fc → gelu → "
        f"c_proj; found {type(mlp).__name__}); gated MLPs such as SwiGLU are not supported by test-time registers")


def _sites(vit: TokenViT) -> list[tuple[nn.Module, int]]:
    sites = [mlp_activation(block) for block in vit.blocks]
    if len({id(module) for module, _ in sites}) != len(sites):
        raise RegisterNeuronsError("the blocks share one MLP activation module; hooks on it would fire in every block")
    return sites


# -- neuron lists -------------------------------------------------------------------------------------
def parse_neurons(data: Any, source: str = "neurons") -> dict[int, list[int]]:
    """``{block: [units]}`` from a published list in one of three shapes.

    * ``{"17": [884, 133], "16": [2301]}`` (the reference's ``LARGE_REGISTER_NEURONS``);
    * ``[[layer, unit], …]`` or ``[[layer, unit, score], …]`` (``find_register_neurons``' output);
    * ``[{"layer": l, "neuron": i, …}, …]`` or a dict with such a list under ``"neurons"`` (``ttr find``).

    Units keep their order; duplicates are refused.
    """
    if isinstance(data, Mapping) and "neurons" in data:
        data = data["neurons"]
    pairs: list[tuple[Any, Any]] = []
    if isinstance(data, Mapping):
        for layer, units in data.items():
            if not isinstance(units, list):
                raise RegisterNeuronsError(f"{source}: block {layer!r} must map to a list of unit indices")
            pairs += [(layer, unit) for unit in units]
    elif isinstance(data, list):
        for item in data:
            if isinstance(item, Mapping) and {"layer", "neuron"} <= set(item):
                pairs.append((item["layer"], item["neuron"]))
            elif isinstance(item, (list, tuple)) and len(item) in (2, 3):
                pairs.append((item[0], item[1]))
            else:
                raise RegisterNeuronsError(f"{source}: entry {item!r} is neither {{layer, neuron}} nor [layer, unit]")
    else:
        raise RegisterNeuronsError(f"{source}: expected a {{block: [units]}} mapping or a list, got "
                                   f"{type(data).__name__}")
    neurons: dict[int, list[int]] = {}
    for layer, unit in pairs:
        layer_i, unit_i = _index(layer), _index(unit)
        if layer_i is None or unit_i is None:
            raise RegisterNeuronsError(f"{source}: block {layer!r} / unit {unit!r} must be non-negative integers")
        units = neurons.setdefault(layer_i, [])
        if unit_i in units:
            raise RegisterNeuronsError(f"{source}: unit {unit_i} of block {layer_i} is listed twice")
        units.append(unit_i)
    if not neurons:
        raise RegisterNeuronsError(f"{source}: the register-neuron list is empty")
    return dict(sorted(neurons.items()))


def _index(value: Any) -> int | None:
    """A non-negative integer from an int, an integral float or a decimal string; else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return int(value) if value >= 0 else None
    return None


def check_neurons(neurons: Mapping[int, Sequence[int]], vit: TokenViT, source: str = "neurons") -> None:
    """Refuse blocks or units the model does not have (before any work starts)."""
    sites = _sites(vit)
    for layer, units in neurons.items():
        if not 0 <= layer < len(sites):
            raise RegisterNeuronsError(f"{source}: block {layer} does not exist; the model has blocks "
                                       f"0..{len(sites) - 1} (were the neurons found on another model?)")
        width = sites[layer][1]
        bad = [u for u in units if not 0 <= u < width]
        if bad:
            raise RegisterNeuronsError(f"{source}: block {layer} has {width} MLP hidden units; units {bad} are out of "
                                       "range (were the neurons found on another model?)")


def neurons_sha256(neurons: Mapping[int, Sequence[int]]) -> str:
    """A stable hash of a neuron list (block order and unit order as given)."""
    text = canonical_json([[int(k), [int(u) for u in v]] for k, v in sorted(neurons.items())])
    return hashlib.sha256(text.encode()).hexdigest()


# -- the intervention ---------------------------------------------------------------------------------
def move_to_registers(hidden: Tensor, units: Tensor, num_prefix: int, registers: int, rule: str = "max") -> Tensor:
    """Move register-neuron activations onto the appended registers (one image or a batch).

    ``hidden`` ``[B, N, H]`` is an MLP hidden activation of a sequence ``[prefix (num_prefix), patches,
    registers (last registers tokens)]``; ``units`` ``[K]`` the register neurons of that block. Returns a
    new tensor: registers ← the per-image maximum over all ``N`` tokens (``rule="max"``) or the
    largest-magnitude value over all tokens and units (``"sign_max"``), patches ← 0, prefix unchanged.
    """
    acts = hidden[..., units]  # [B, N, K]
    if rule == "max":
        value = acts.amax(dim=1, keepdim=True)  # [B, 1, K]
    elif rule == "sign_max":
        flat = acts.flatten(1)
        high, low = flat.amax(dim=1), flat.amin(dim=1)
        value = torch.where(high.abs() > low.abs(), high, low).view(-1, 1, 1).expand(-1, 1, acts.shape[-1])
    else:
        raise RegisterNeuronsError(f"test-time register rule {rule!r} is unknown; use one of {RULES}")
    length = acts.shape[1]
    moved = acts.clone()
    moved[:, length - registers :] = value
    moved[:, num_prefix : length - registers] = 0
    return hidden.index_copy(-1, units.to(hidden.device), moved)


def _hook(module: nn.Module, inputs: Any, output: Tensor, *, units: Tensor, num_prefix: int, registers: int,
          rule: str) -> Tensor:
    return move_to_registers(output, units, num_prefix, registers, rule)


class TestTimeRegisters:
    """The test-time-register intervention on a :class:`TokenViT` (see the module notes).

    ``neurons`` maps block index → register-neuron units of that block's MLP hidden layer. Hooks are
    attached only while :meth:`forward_tokens` runs, so the model stays unmodified for other users.
    """

    __test__ = False  # not a pytest class despite the name

    def __init__(self, neurons: Mapping[int, Sequence[int]], registers: int = DEFAULT_REGISTERS, rule: str = "max"):
        if int(registers) < 1:
            raise RegisterNeuronsError(f"test-time registers: registers must be ≥ 1, got {registers}")
        if rule not in RULES:
            raise RegisterNeuronsError(f"test-time registers: rule {rule!r} is unknown; use one of {RULES}")
        self.neurons = {int(k): [int(u) for u in v] for k, v in sorted(neurons.items()) if len(v)}
        if not self.neurons:
            raise RegisterNeuronsError("test-time registers: the register-neuron list is empty")
        self.registers = int(registers)
        self.rule = rule

    def config(self) -> dict[str, Any]:
        """Everything that changes the numbers (JSON-ready)."""
        return {"registers": self.registers, "rule": self.rule,
                "neurons": {str(k): v for k, v in self.neurons.items()},
                "num_neurons": sum(len(v) for v in self.neurons.values()),
                "neurons_sha256": neurons_sha256(self.neurons)}

    @contextmanager
    def hooks(self, vit: TokenViT) -> Iterator[None]:
        """Attach the intervention to ``vit``'s MLP activations for the duration of the block."""
        check_neurons(self.neurons, vit)
        sites = _sites(vit)
        handles = []
        try:
            for layer, units in self.neurons.items():
                hook = partial(_hook, units=torch.tensor(units, dtype=torch.long),
                               num_prefix=vit.num_prefix_tokens, registers=self.registers, rule=self.rule)
                handles.append(sites[layer][0].register_forward_hook(hook))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def forward_tokens(self, vit: TokenViT, images: Tensor, layers: Sequence[int] = (-1,),
                       **kwargs: Any) -> list[TokenOutput]:
        """:meth:`TokenViT.forward_tokens` with ``registers`` zero tokens appended and the neurons moved.

        The appended tokens come back in ``TokenOutput.prefix`` (after CLS), never in ``patches``.
        """
        zeros = images.new_zeros(self.registers, vit.embed_dim)
        with self.hooks(vit):
            return vit.forward_tokens(images, layers, registers=zeros, register_placement="append", **kwargs)


# -- finding the neurons ------------------------------------------------------------------------------
class NeuronScorer:
    """Scores every MLP hidden unit of ``vit`` over batches of images (``update``), then ranks them.

    Memory: one batch keeps every block's hidden activation (``B × N × H`` floats per block).
    """

    def __init__(self, vit: TokenViT, settings: FinderSettings = FinderSettings()):
        settings.check(vit.depth)
        self.vit, self.settings = vit, settings
        self.sites = _sites(vit)
        self.detect = settings.detect_layer % vit.depth
        self.sums = [torch.zeros(width, dtype=torch.float64) for _, width in self.sites]
        self.images_seen = 0
        self.images_with_outliers = 0
        self.max_norm = 0.0

    @torch.no_grad()
    def update(self, images: Tensor) -> None:
        """Add the per-image scores of normalised ``images`` ``[B, 3, H, W]``."""
        captured: dict[int, Tensor] = {}
        detected: dict[str, Tensor] = {}

        def keep(module, inputs, output, layer):
            captured[layer] = output.detach()

        handles = [module.register_forward_hook(partial(keep, layer=i)) for i, (module, _) in enumerate(self.sites)]
        handles.append(self.vit.blocks[self.detect].register_forward_hook(
            lambda module, inputs, output: detected.setdefault("tokens", output.detach())))
        try:
            self.vit.forward_tokens(images, (-1,), final_norm=False)
        finally:
            for handle in handles:
                handle.remove()
        norms = detected["tokens"].float().norm(dim=-1)  # [B, N], every token (CLS included)
        self.max_norm = max(self.max_norm, float(norms.max()))
        outliers = norms > self.settings.threshold
        has = outliers.any(dim=1)
        self.images_seen += len(images)
        self.images_with_outliers += int(has.sum())
        if not has.any():
            return
        weights = outliers[has].float()
        weights = weights / weights.sum(dim=1, keepdim=True)  # mean over each image's outlier positions
        for layer, acts in captured.items():
            acts = acts[has].float()  # [B', N, H]
            scores = torch.einsum("bn,bnh->bh", weights, acts.abs())
            if self.settings.sparsity_filter:
                quiet = (acts < self.settings.sparsity_activation).sum(dim=1)  # [B', H]
                scores = scores * (quiet >= self.settings.sparsity_fraction * acts.shape[1]).float()
            self.sums[layer] += scores.sum(dim=0).double().cpu()

    def ranked(self) -> list[tuple[int, int, float]]:
        """Every ``(block, unit, score)``, best first (ties: lower block, then lower unit)."""
        if self.images_with_outliers == 0:
            raise RegisterNeuronsError(
                f"no image had a token with norm > {self.settings.threshold} at the output of block {self.detect} "
                f"({self.images_seen} images; the largest norm was {self.max_norm:.1f}): lower --threshold or "
                "use more images")
        rows = [(layer, unit, float(score))
                for layer, sums in enumerate(self.sums)
                for unit, score in enumerate((sums / self.images_with_outliers).tolist())]
        return sorted(rows, key=lambda row: (-row[2], row[0], row[1]))

    def select(self, ranked: Sequence[tuple[int, int, float]] | None = None) -> list[tuple[int, int, float]]:
        """The reference notebook's choice: the layer filter, then the first ``top_k``."""
        s = self.settings
        ranked = self.ranked() if ranked is None else ranked
        high = len(self.sites) - 1 if s.highest_layer is None else s.highest_layer
        return [row for row in ranked if s.lowest_layer <= row[0] <= high][: s.top_k]


def find_register_neurons(vit: TokenViT, batches: Iterable[Tensor],
                          settings: FinderSettings = FinderSettings()) -> tuple[list[tuple[int, int, float]],
                                                                                 NeuronScorer]:
    """Score every hidden unit over ``batches`` of normalised images; returns (selected, scorer)."""
    scorer = NeuronScorer(vit, settings)
    for images in batches:
        scorer.update(images)
    return scorer.select(), scorer


def as_mapping(selected: Iterable[tuple[int, int, float]]) -> dict[int, list[int]]:
    """``[(block, unit, score), …]`` → ``{block: [units]}`` in rank order."""
    neurons: dict[int, list[int]] = {}
    for layer, unit, _ in selected:
        neurons.setdefault(int(layer), []).append(int(unit))
    return dict(sorted(neurons.items()))
