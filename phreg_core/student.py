"""The PH-Reg student: the teacher's ViT, ``m`` new register tokens and its own copies of the unlocked weights.

The frozen weights are the base's own tensors (shared, not copied): a student costs one tower plus the
unlocked blocks.

Reference notes §1.4–§1.5:

* registers: ``randn(m, d) / sqrt(d)``, no positional embedding, default ``m = 16``;
* placement: open_clip towers append them after the patches (``[CLS, patches, regs]``, after the
  positional embedding, before ``ln_pre``); timm towers put them right after the prefix, the way timm's own
  ``reg_tokens`` sit (DINOv2's code prepends them before CLS; both keep them out of the patch grid);
* last block: CLIP students use the MaskCLIP value path ``out_proj(v(ln_1 x))`` (no attention mixing, no
  residual, no FFN; ``models/OpenaiMaskCLIP/clip_reg.py``); other ViTs keep their last block;
* CLIP's positional embedding is resampled once to the training grid and that copy is the trainable
  parameter; other input sizes re-interpolate from it. By default both steps use the base's ``pos_resample``
  policy (the official student, ``CLIP/zero_shot/models/student_CLIP.py`` ``StudentCLIP``, resamples 14×14 ->
  28×28 at construction and 28×28 -> any eval grid with the same offset-0.1 bicubic call as its NACLIP
  teacher); a student may carry its own (the authors' released ``clip_reg.py`` ``ModifiedImageEncoder``
  resamples its stored table by size, so imported official students use ``"bicubic"``). The policy's name is
  part of :meth:`Student.spec`, so an adapter reproduces its student whatever the base's policy;
* unlocked (official code): registers, positional embedding, patch-embedding conv (+ bias), the last
  block — for CLIP the last **two** blocks. The paper's text ("the final transformer layer") is the
  ``"paper"`` unlock set.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from phreg_core.errors import ConfigError, UnsupportedModelError
from phreg_core.last_block import PRESETS, LastBlockConfig
from phreg_core.pos_embed import PosResample, get_policy, resample_table
from phreg_core.recipe import DEFAULT_REGISTERS
from phreg_core.teacher import is_clip_family
from phreg_core.vit import TokenOutput, TokenViT

__all__ = ["Student", "UnlockSet", "embedding_paths"]

LEGACY_POLICY = "bicubic"  # what phreg-bench resampled with before named policies (specs without the field)


@dataclass(frozen=True)
class UnlockSet:
    """Which student weights train. Everything else stays frozen."""

    registers: bool = True
    pos_embed: bool = True
    patch_embed: bool = True
    last_blocks: int = 1

    @classmethod
    def official(cls, clip: bool) -> UnlockSet:
        """The released code: CLIP unlocks ``resblocks[-2]`` and ``[-1]``, DINOv2 ``encoder.layer[-1]``."""
        return cls(last_blocks=2 if clip else 1)

    @classmethod
    def paper(cls) -> UnlockSet:
        """The paper's wording (§3.2, App. B.3): registers, pos-emb, patch conv and the final layer."""
        return cls(last_blocks=1)

    @classmethod
    def parse(cls, spec: str | dict | UnlockSet, clip: bool) -> UnlockSet:
        """``"official"``, ``"paper"``, a dict, or ``"registers,pos_embed,patch_embed,last_blocks=2"``."""
        if isinstance(spec, UnlockSet):
            return spec
        if isinstance(spec, dict):
            return cls(**spec)
        if spec == "official":
            return cls.official(clip)
        if spec == "paper":
            return cls.paper()
        fields: dict[str, Any] = {"registers": False, "pos_embed": False, "patch_embed": False, "last_blocks": 0}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, sep, value = item.partition("=")
            key = key.strip().replace("-", "_")
            if key not in fields:
                raise ConfigError(f"unknown unlock item {key!r} in {spec!r}; use 'official', 'paper' or a list "
                                 "of registers, pos_embed, patch_embed, last_blocks=K")
            fields[key] = int(value) if key == "last_blocks" else (True if not sep else value.lower() == "true")
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def embedding_paths(vit: TokenViT) -> tuple[str, str]:
    """``(pos_embed_path, patch_embed_path)``: dotted paths, relative to ``vit``, of its positional-embedding
    parameter and its patch-embedding conv, from the attributes of those names every TokenViT class declares.

    Raises :class:`UnsupportedModelError` for a TokenViT that does not declare them.
    """
    pos, patch = getattr(vit, "pos_embed_path", None), getattr(vit, "patch_embed_path", None)
    if pos is None or patch is None:
        raise UnsupportedModelError(f"{type(vit).__name__} does not say where its positional and patch "
                                    "embeddings are; set `pos_embed_path` and `patch_embed_path` on the TokenViT "
                                    "class")
    return pos, patch


def _resolve(module: nn.Module, path: str) -> tuple[nn.Module, str]:
    *parents, leaf = path.split(".")
    for name in parents:
        module = getattr(module, name)
    return module, leaf


def resample_pos_parameter(pos: Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int],
                           policy: str | PosResample) -> Tensor:
    """Resample the patch rows of a positional embedding (``[1, P+N, C]`` or ``[P+N, C]``) with ``policy``.

    The first ``P = rows − h·w`` rows (CLS/prefix positions, if any) are kept as they are.
    """
    return resample_table(pos, src_grid, dst_grid, policy)


def _share_frozen(base: nn.Module, copied_modules: list[nn.Module],
                  copied_parameters: list[nn.Parameter]) -> nn.Module:
    """A structural copy of ``base`` that shares every module and tensor the student leaves frozen.

    ``copied_modules`` (the unlocked patch embedding and last blocks) are deep-copied and widened to
    float32, ``copied_parameters`` (the positional embedding) are cloned to float32; every module on the path
    from ``base`` to one of them is a shallow copy (its own child / parameter / buffer / hook dictionaries);
    everything else is the base's own object. Aliased modules (a TokenViT's ``blocks`` is also
    ``model.blocks``) stay aliased. ``base`` itself is never modified.
    """
    module_ids = {id(m) for m in copied_modules}
    parameter_ids = {id(p) for p in copied_parameters}
    on_path: dict[int, bool] = {}

    def needs_copy(module: nn.Module) -> bool:
        key = id(module)
        if key not in on_path:
            on_path[key] = key in module_ids or any(id(p) in parameter_ids for p in module._parameters.values()) \
                or any(needs_copy(child) for child in module._modules.values() if child is not None)
        return on_path[key]

    memo: dict[int, Any] = {}

    def structural_copy(module: nn.Module) -> nn.Module:
        key = id(module)
        if key in memo:
            return memo[key]
        if key in module_ids:
            memo[key] = copy.deepcopy(module).float()
            return memo[key]
        if not needs_copy(module):
            memo[key] = module
            return module
        new = copy.copy(module)
        for name, value in module.__dict__.items():  # _modules, _parameters, _buffers, hooks: own dictionaries
            if name.startswith("_") and isinstance(value, (dict, set)):
                setattr(new, name, copy.copy(value))
        memo[key] = new
        for name, child in module._modules.items():
            if child is not None:
                new._modules[name] = structural_copy(child)
        for name, param in module._parameters.items():
            if param is not None and id(param) in parameter_ids:
                new._parameters[name] = memo.setdefault(
                    id(param), nn.Parameter(param.detach().clone().float(), requires_grad=param.requires_grad))
        return new

    on_path[id(base)] = True  # the root is always the student's own (placement and grid are set on it)
    return structural_copy(base)


class Student(nn.Module):
    """``base`` with new registers and the PH-Reg unlock set; frozen weights are shared with ``base``.

    ``last_block="auto"`` picks MaskCLIP's value path for CLIP towers and keeps the last block otherwise;
    ``project="auto"`` returns projected (512-d) tokens for CLIP; ``train_grid`` with
    ``resample_pos_embed="auto"`` stores CLIP's positional embedding at the training grid.
    """

    def __init__(
        self,
        base: TokenViT,
        num_registers: int = DEFAULT_REGISTERS,
        *,
        placement: str | None = None,
        last_block: str | LastBlockConfig | dict | None = "auto",
        unlock: str | dict | UnlockSet = "official",
        train_grid: Sequence[int] | None = None,
        resample_pos_embed: bool | str = "auto",
        project: bool | str = "auto",
        seed: int = 0,
        pos_resample: str | PosResample | None = None,
        share_frozen: bool = True,
    ):
        super().__init__()
        if pos_resample is None and base.pos_resample is None:
            raise TypeError(f"{type(base).__name__} declares no positional-embedding resampling policy "
                            "(`pos_resample`); the student resamples its position table with the base's policy")
        clip = is_clip_family(base)
        self.unlock = UnlockSet.parse(unlock, clip)
        self.train_grid = tuple(int(v) for v in train_grid) if train_grid is not None else None
        self.resample_pos_embed = (clip if resample_pos_embed == "auto" else bool(resample_pos_embed))
        self.vision = self._vision_from(base, share_frozen)  # never ``base`` itself
        if pos_resample is not None:  # the student's own table policy (e.g. an imported official student's)
            self.vision.pos_resample = get_policy(pos_resample)
        self.num_registers = int(num_registers)
        self.placement = placement or base.register_placement
        self.vision.register_placement = self.placement
        if last_block == "auto":
            last_block = PRESETS["maskclip"] if clip else None
        elif isinstance(last_block, str):
            last_block = PRESETS[last_block]
        elif isinstance(last_block, dict):
            last_block = LastBlockConfig(**last_block)
        self.last_block: LastBlockConfig | None = last_block
        self.project = clip if project == "auto" else bool(project)
        self.seed = seed
        if self.resample_pos_embed and self.train_grid is not None:
            self._store_pos_embed_at(self.train_grid)
        generator = torch.Generator().manual_seed(seed)
        dim = base.embed_dim
        self.registers = nn.Parameter(torch.randn(self.num_registers, dim, generator=generator) / math.sqrt(dim))
        self._apply_unlock()
        self.initial_trainable = {name: p.detach().cpu().clone() for name, p in self.trainable_named_parameters()}

    # -- construction -------------------------------------------------------------------------------
    def _vision_from(self, base: TokenViT, share_frozen: bool) -> TokenViT:
        """The student's tower: the frozen parts shared with ``base``, the unlocked ones its own float32 copies.

        Only the unlocked modules (patch embedding, last blocks) and the positional embedding (unlocked, or
        resampled to the training grid) are new: the student costs one tower plus those, not two towers.
        A base with non-float32 weights, or ``share_frozen=False``, gets the previous full float32 deep copy
        (frozen float16 blocks could not take the float32 tokens of the unlocked ones without autocast).
        """
        floating = [t for t in [*base.parameters(), *base.buffers()] if t.is_floating_point()]
        self._shared_ids: frozenset[int] = frozenset()  # modules of the base the student runs
        self._shared_parameter_ids: frozenset[int] = frozenset()  # parameters of the base in the student
        if not share_frozen or any(t.dtype != torch.float32 for t in floating):
            return copy.deepcopy(base).float()
        pos_path, patch_path = embedding_paths(base)
        parameters = []
        if self.unlock.pos_embed or (self.resample_pos_embed and self.train_grid is not None):
            parent, leaf = _resolve(base, pos_path)
            parameters.append(getattr(parent, leaf))
        modules = list(base.blocks[-self.unlock.last_blocks:]) if self.unlock.last_blocks else []
        if self.unlock.patch_embed:
            parent, leaf = _resolve(base, patch_path)
            modules.append(getattr(parent, leaf))
        vision = _share_frozen(base, modules, parameters)
        base_modules, base_parameters = {id(m) for m in base.modules()}, {id(p) for p in base.parameters()}
        self._shared_ids = frozenset(id(m) for m in vision.modules() if id(m) in base_modules)
        self._shared_parameter_ids = frozenset(id(p) for p in vision.parameters() if id(p) in base_parameters)
        return vision

    def shared_modules(self) -> list[nn.Module]:
        """The base's own modules the student runs (frozen; their parameters are the base's)."""
        return [m for m in self.vision.modules() if id(m) in self._shared_ids]

    def train(self, mode: bool = True) -> Student:
        """Set the student's own modules to ``mode``; shared frozen modules keep the base's mode (eval for a
        teacher), so training the student never switches the frozen teacher into training mode."""
        for module in self.modules():
            if id(module) not in self._shared_ids:
                module.training = mode
        return self

    def _store_pos_embed_at(self, grid: tuple[int, int]) -> None:
        pos_path, _ = embedding_paths(self.vision)
        parent, leaf = _resolve(self.vision, pos_path)
        old = getattr(parent, leaf)
        with torch.no_grad():
            new = resample_pos_parameter(old.detach(), tuple(self.vision.native_grid), grid,
                                         self.vision.pos_resample)
        setattr(parent, leaf, nn.Parameter(new.clone().contiguous()))
        self.vision.native_grid = tuple(grid)  # later inputs re-interpolate from the stored training grid

    def _apply_unlock(self) -> None:
        self.requires_grad_(False)
        unlock = self.unlock
        self.registers.requires_grad_(unlock.registers and self.num_registers > 0)
        pos_path, patch_path = embedding_paths(self.vision)
        if unlock.pos_embed:
            parent, leaf = _resolve(self.vision, pos_path)
            getattr(parent, leaf).requires_grad_(True)
        if unlock.patch_embed:
            parent, leaf = _resolve(self.vision, patch_path)
            getattr(parent, leaf).requires_grad_(True)  # conv weight and bias (if any)
        if unlock.last_blocks:
            for block in self.vision.blocks[-unlock.last_blocks:]:
                block.requires_grad_(True)

    # -- parameters ---------------------------------------------------------------------------------
    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(name, p) for name, p in self.named_parameters() if p.requires_grad]

    def changed_state(self, atol: float = 0.0) -> dict[str, Tensor]:
        """Trainable tensors that differ from their initial value, plus the registers (always new)."""
        out = {}
        for name, param in self.trainable_named_parameters():
            value = param.detach().cpu()
            initial = self.initial_trainable.get(name)
            if name == "registers" or initial is None or initial.shape != value.shape or \
                    not torch.allclose(value, initial, rtol=0.0, atol=atol):
                out[name] = value.contiguous()
        if "registers" not in out and self.num_registers:
            out["registers"] = self.registers.detach().cpu().contiguous()
        return out

    def load_changed_state(self, state: dict[str, Tensor]) -> None:
        """Load tensors saved by :meth:`changed_state`; unknown names or shapes are an error."""
        own = dict(self.named_parameters())
        frozen = sorted(name for name in state if name in own and id(own[name]) in self._shared_parameter_ids)
        if frozen:
            raise KeyError(f"adapter tensors {frozen[:5]} are frozen weights this student shares with its base "
                           "(made with another unlock set?); they cannot be loaded without changing the base")
        unknown = sorted(set(state) - set(own))
        if unknown:
            raise KeyError(f"adapter tensors {unknown[:5]} do not exist in this student; was it made for "
                           "another architecture or student configuration?")
        with torch.no_grad():
            for name, value in state.items():
                if own[name].shape != value.shape:
                    raise ValueError(f"adapter tensor {name!r} has shape {tuple(value.shape)}, the student "
                                     f"expects {tuple(own[name].shape)}")
                own[name].copy_(value)

    # -- forward ------------------------------------------------------------------------------------
    def forward_tokens(self, images: Tensor, layers: Sequence[int] = (-1,), *,
                       project: bool = False) -> list[TokenOutput]:
        """The student's dense outputs, with the contract of :meth:`TokenViT.forward_tokens`.

        Normalised ``[B, 3, H, W]`` (sides multiples of the patch size) -> one :class:`TokenOutput` per entry
        of ``layers``: ``patches`` ``[B, C, h, w]`` never include the new registers; ``prefix`` ``[B, P, C]``
        holds CLS, built-in registers, then the ``num_registers`` new ones. ``project`` defaults to ``False``
        like everywhere; the distillation output (:meth:`forward`) uses the student's own ``self.project``.
        """
        registers = self.registers if self.num_registers else None
        return self.vision.forward_tokens(images, layers, registers=registers, last_block=self.last_block,
                                          project=project)

    def forward(self, images: Tensor) -> Tensor:
        """The distillation output: final (CLIP: projected, per ``self.project``) patch tokens ``[B, C, h, w]``."""
        return self.forward_tokens(images, project=self.project)[0].patches

    def spec(self) -> dict[str, Any]:
        """Everything needed to rebuild this student from the same base (stored in adapter sidecars)."""
        return {
            "num_registers": self.num_registers,
            "placement": self.placement,
            "last_block": self.last_block.to_dict() if self.last_block is not None else None,
            "unlock": self.unlock.to_dict(),
            "train_grid": list(self.train_grid) if self.train_grid is not None else None,
            "resample_pos_embed": self.resample_pos_embed,
            "project": self.project,
            "seed": self.seed,
            "pos_resample": self.pos_resample,
        }

    @property
    def pos_resample(self) -> str:
        """Name of the policy that resampled the stored table and resamples it to other input grids."""
        return self.vision.pos_resample.name

    @classmethod
    def from_spec(cls, base: TokenViT, spec: dict[str, Any]) -> Student:
        """Rebuild on ``base``. The student resamples its position table with the policy in the spec, whatever
        the base's (a spec without ``pos_resample`` predates policies and was made with ``"bicubic"``)."""
        return cls(base, spec["num_registers"], placement=spec["placement"], last_block=spec["last_block"],
                   unlock=spec["unlock"], train_grid=spec["train_grid"],
                   resample_pos_embed=spec["resample_pos_embed"], project=spec["project"], seed=spec["seed"],
                   pos_resample=spec.get("pos_resample", LEGACY_POLICY))
