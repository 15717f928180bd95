"""A small ViT with planted high-norm artifacts (``planted-vit``) and its artifact-free twin.

Real ViTs grow high-norm "artifact" tokens on low-information background patches from a middle layer on:
the tokens lose their local content, hold global information instead, and other tokens attend to them
(Darcet et al., "Vision Transformers Need Registers", ICLR'24). Jiang et al. ("Vision Transformers Don't
Need Trained Registers", NeurIPS'25) trace them to a sparse set of MLP *register neurons* that fire on the
max-scoring token and write a huge activation into a few fixed channels; moving that maximum onto an
extra token (a test-time register) removes the artifacts from the patches. No pretrained weights can be
downloaded here, so this module *constructs* a genuine timm ``VisionTransformer`` whose weights plant that
mechanism explicitly, and whose truth is known.

Channel layout of the residual stream (width C = 64): ``general`` features | ``texture`` (T, 16 channels)
| ``position score`` (P, one per register neuron) | ``massive`` (U, 4 channels). Blocks never write into
T, P or U (those output rows of ``attn.proj`` and ``mlp.fc2`` are zero), so those channels carry what the
embedding put there.

* **Patch embedding.** General channels are low-pass filters (colour and coarse layout of 2×2 cells);
  T channels are high-pass filters (zero mean on every cell), so their energy measures local texture:
  high on the ground and on textured objects, near zero on the smooth sky and wall and on plain objects.
* **Positional embedding.** General channels get a 2-D sin/cos code; each P channel gets an i.i.d.
  N(0, 0.2²) value per grid position — the position preference of one register neuron.
* **Register neurons** (:class:`RegisterNeurons`, in block ``artifact_layer`` = 2 of 5).
  For every token except CLS — patches *and any register tokens* — neuron k scores
  ``z_k = a·x[P_k] + b·cos(h_k, x[T]) − α·max(0, mean(x[T]²) − E₀)``: its position preference, a random
  readout of the *phase* of the fine texture, and a penalty once the texture energy exceeds E₀ (so only
  smooth, low-information tokens compete). The neuron picks the max-scoring token with a soft argmax
  over tokens (inverse temperature β) and fires where that weight clearly wins (a smoothstep from 0.2 to
  0.6). A fired token is overwritten by ``A·u + g``: a huge vector (norm 30·√C) along the massive
  channels U plus the global mean token ``g`` — it loses its local content, gets a very high norm and
  carries global information instead.
  The neurons are genuine MLP hidden units of that block (:class:`PlantedMlp`): ``num_neurons`` extra
  units at random positions of its hidden layer (:func:`register_neuron_indices` gives them), whose
  activation (read after ``mlp.act``) is ``neuron_activation`` × the neuron's firing — a massive
  activation, as Jiang et al. find — and whose ``fc1`` rows and ``fc2`` columns are zero. The block
  overwrites a token by the firing it reads back from those units, so an intervention on the hidden
  activation (a forward hook on ``mlp.act``, what test-time registers do) moves the artifact with them.
* **Attention to artifacts.** Every later block adds to its query bias the key direction of an
  artifact token, so all tokens put extra attention (``attention_boost`` = 3 nats of logit) on them.
* **Output.** The final LayerNorm has gain ``massive_gain`` = 6 on U (and 0 on the internal P channels):
  normal tokens have ~0 in U, artifact tokens have almost all of their normalised energy there, so they
  stand out in the output norm map (≈ 5× the median norm).

Which patches fire changes under shifts: a whole-patch shift (PH-Reg's TTA views) moves content to grid
positions with other preferences, and the white padding of a shifted view (the smoothest content of all)
enters the race; a sub-patch shift changes the texture phase of every patch. Averaging PH-Reg's shifted
and flipped views therefore dilutes each artifact over the views (the TTA target is almost clean), while
every single view has them.

Registers can absorb the mechanism: the neurons compete over *all* non-CLS tokens, so a register token
whose state scores higher than every patch (a large P value, no texture energy — reachable because blocks
do not write P or T) takes the firing, exactly like a test-time register. A fresh register (``randn/√d``)
scores about 0, below the best smooth patch, so untrained registers change little; the softmax gives the
PH-Reg student's trainable registers the gradient to learn to win. Without registers the student can
only repair artifact tokens in its unlocked last block.

The twin (``planted-vit-twin``) has the same weights (same sha256) with the neurons switched off.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from phreg_bench.backbones.base import Backbone, BackboneIdentity
from phreg_core.errors import ConfigError

__all__ = ["PlantedBlock", "PlantedMlp", "PlantedSpec", "RegisterNeurons", "build_planted_model",
           "build_planted_twin", "build_planted_vit", "firing_maps", "register_neuron_indices", "set_artifacts"]


@dataclass(frozen=True)
class PlantedSpec:
    """Architecture and mechanism constants of the planted ViT (all hashed into the weights)."""

    img_size: int = 40
    patch_size: int = 4
    embed_dim: int = 64
    depth: int = 5
    num_heads: int = 4
    artifact_layer: int = 2  # register neurons act on the output of this block ("from a middle layer on")
    num_neurons: int = 2  # a few artifact tokens per image
    texture_channels: int = 16
    massive_channels: int = 4
    amplitude: float = 30.0  # artifact size, in units of sqrt(C) (a typical token norm)
    sharpness: float = 6.0  # β of the soft argmax over tokens
    fire_low: float = 0.2  # soft-argmax weight below which a neuron does not fire at all
    fire_high: float = 0.6  # weight from which it fires fully (smoothstep in between)
    position_weight: float = 5.0  # a
    position_scale: float = 0.2  # std of the positional preferences in the embedding (a·scale = 1)
    content_weight: float = 1.0  # b
    texture_penalty: float = 10.0  # α
    smooth_energy: float = 0.02  # texture energy below which a patch counts as smooth (no penalty)
    position_code: float = 0.5  # amplitude of the sin/cos positional code on the general channels
    qk_gain: float = 0.5  # scale of the query/key weights (attention logits of order one)
    residual_gain: float = 0.5  # scale of the attention-output and MLP-output weights
    attention_boost: float = 3.0  # extra attention logit on an artifact token in later blocks
    massive_gain: float = 6.0  # final-norm gain on the massive channels
    neuron_activation: float = 30.0  # MLP activation of a fully fired register neuron (a massive activation)
    seed: int = 0

    @property
    def general_channels(self) -> int:
        general = self.embed_dim - self.texture_channels - self.num_neurons - self.massive_channels
        if general < 8:
            raise ConfigError(f"embed_dim {self.embed_dim} leaves {general} general channels; use a wider model")
        return general

    def channels(self) -> dict[str, slice]:
        g, t, k = self.general_channels, self.texture_channels, self.num_neurons
        return {"general": slice(0, g), "texture": slice(g, g + t), "position": slice(g + t, g + t + k),
                "massive": slice(g + t + k, self.embed_dim)}


class RegisterNeurons(nn.Module):
    """The planted register neurons: soft-argmax over non-CLS tokens, then overwrite with a massive token.

    ``enabled=False`` (the twin) makes the module the identity. After each call ``last_firing`` holds the
    firing strength ``[B, N-1]`` of every non-CLS token (for tests and figures).
    """

    def __init__(self, spec: PlantedSpec, generator: torch.Generator):
        super().__init__()
        dim, k = spec.embed_dim, spec.num_neurons
        ch = spec.channels()
        position = torch.zeros(k, dim)
        position[torch.arange(k), torch.arange(dim)[ch["position"]]] = spec.position_weight
        texture = torch.zeros(k, dim)
        direction = torch.randn(k, spec.texture_channels, generator=generator)
        texture[:, ch["texture"]] = spec.content_weight * direction / direction.norm(dim=1, keepdim=True)
        mask = torch.zeros(dim)
        mask[ch["texture"]] = 1.0
        artifact = torch.zeros(dim)
        artifact[ch["massive"]] = spec.amplitude * math.sqrt(dim) / math.sqrt(spec.massive_channels)
        self.register_buffer("position_readout", position)
        self.register_buffer("texture_readout", texture)
        self.register_buffer("texture_mask", mask)
        self.register_buffer("artifact", artifact)
        self.sharpness = spec.sharpness
        self.texture_penalty = spec.texture_penalty
        self.smooth_energy = spec.smooth_energy
        self.fire_low, self.fire_high = spec.fire_low, spec.fire_high
        self.enabled = True
        self.last_firing: Tensor | None = None

    def scores(self, tokens: Tensor) -> Tensor:
        """Neuron pre-activations ``[B, N, K]`` of residual-stream tokens ``[B, N, C]``."""
        h = tokens.float()
        texture = h * self.texture_mask
        energy = texture.square().sum(-1, keepdim=True) / self.texture_mask.sum()
        phase = texture / (texture.norm(dim=-1, keepdim=True) + 1e-4)  # direction of the fine texture
        return (h @ self.position_readout.T + phase @ self.texture_readout.T
                - self.texture_penalty * (energy - self.smooth_energy).clamp(min=0.0))

    def fire(self, x: Tensor) -> Tensor:
        """Per-neuron firing ``[B, N, K]`` in [0, 1] of a sequence ``[B, N, C]`` (0 on CLS, token 0)."""
        weights = torch.softmax(self.sharpness * self.scores(x[:, 1:]), dim=1)  # over tokens, per neuron
        ramp = ((weights - self.fire_low) / (self.fire_high - self.fire_low)).clamp(0.0, 1.0)
        fired = ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep: a token fires only when it clearly wins
        return torch.cat([torch.zeros_like(fired[:, :1]), fired], dim=1)

    def overwrite(self, x: Tensor, fired: Tensor) -> Tensor:
        """Overwrite the non-CLS tokens of ``x`` ``[B, N, C]`` by the per-neuron firing ``[B, N, K]``."""
        cls, tokens = x[:, :1], x[:, 1:]
        fired = fired[:, 1:].float().clamp(0.0, 1.0)
        firing = 1.0 - torch.prod(1.0 - fired, dim=-1, keepdim=True)  # [B, N-1, 1]
        self.last_firing = firing.detach()[..., 0]
        target = self.artifact.to(x.dtype) + tokens.mean(dim=1, keepdim=True)  # massive + global summary
        tokens = tokens + firing.to(x.dtype) * (target - tokens)
        return torch.cat([cls, tokens], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            self.last_firing = None
            return x
        return self.overwrite(x, self.fire(x))


class _NeuronActivation(nn.GELU):
    """``mlp.act`` of the planted block: GELU, except that the register-neuron units carry the firing.

    The block sets ``firing`` ``[B, N, K]`` for the duration of its forward; without it (the twin, or a
    plain call) this is the GELU, and the register-neuron units are GELU(0) = 0.
    """

    def __init__(self, index: Tensor, gain: float):
        super().__init__()
        self.register_buffer("index", index)
        self.gain = gain
        self.firing: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        if self.firing is None:
            return out
        return out.index_copy(-1, self.index, (self.gain * self.firing).to(out.dtype))


class PlantedMlp(Mlp):
    """The planted block's MLP: timm's ``Mlp`` whose hidden layer holds the register neurons.

    ``neuron_output`` ``[B, N, K]`` keeps the register-neuron units as ``fc2`` received them: after
    ``mlp.act`` *and its forward hooks*, so an intervention on the hidden activation reaches the block.
    """

    def __init__(self, mlp: Mlp, index: Tensor, gain: float):
        dim, hidden = mlp.fc1.in_features, mlp.fc1.out_features + len(index)
        super().__init__(dim, hidden, bias=mlp.fc1.bias is not None)
        keep = torch.ones(hidden, dtype=torch.bool)
        keep[index] = False
        with torch.no_grad():
            self.fc1.weight.zero_()
            self.fc1.weight[keep] = mlp.fc1.weight
            self.fc2.weight.zero_()
            self.fc2.weight[:, keep] = mlp.fc2.weight
            if self.fc1.bias is not None:
                self.fc1.bias.zero_()
                self.fc1.bias[keep] = mlp.fc1.bias
                self.fc2.bias.copy_(mlp.fc2.bias)
        self.act = _NeuronActivation(index, gain)
        self.neuron_output: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.act(self.fc1(x))
        self.neuron_output = hidden[..., self.act.index]
        return self.drop2(self.fc2(self.norm(self.drop1(hidden))))


class PlantedBlock(Block):
    """A timm ``Block``; when ``register_neurons`` is set they fire in its MLP and overwrite its output.

    The firing is computed on the block's input: no block writes the texture or score channels, so they
    are the same on its input and its output.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_neurons: RegisterNeurons | None = None

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        neurons = self.register_neurons
        if neurons is None or not neurons.enabled:
            if neurons is not None:
                neurons.last_firing = None
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        mlp: PlantedMlp = self.mlp
        mlp.act.firing = neurons.fire(x)
        try:
            x = super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        finally:
            mlp.act.firing = None
        return neurons.overwrite(x, mlp.neuron_output / mlp.act.gain)


def _sincos_2d(grid: int, dim: int) -> Tensor:
    """A 2-D sin/cos positional code ``[grid*grid, dim]`` (half the channels for rows, half for columns)."""
    quarter = dim // 4
    omega = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float32) / max(quarter, 1)))
    coords = torch.arange(grid, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    parts = []
    for axis in (yy.flatten(), xx.flatten()):
        angle = axis[:, None] * omega[None]
        parts += [angle.sin(), angle.cos()]
    code = torch.cat(parts, dim=1)
    return F.pad(code, (0, dim - code.shape[1]))


@torch.no_grad()
def _plant_weights(model: nn.Module, spec: PlantedSpec, gen: torch.Generator) -> None:
    dim, p = spec.embed_dim, spec.patch_size
    ch = spec.channels()
    g_sl, t_sl, p_sl, u_sl = ch["general"], ch["texture"], ch["position"], ch["massive"]
    reserved = torch.zeros(dim, dtype=torch.bool)
    for sl in (t_sl, p_sl, u_sl):
        reserved[sl] = True
    cell = max(p // 2, 1)

    # Patch embedding: low-pass general channels, high-pass texture channels, nothing else.
    conv = model.patch_embed.proj
    weight = torch.zeros_like(conv.weight)
    coarse = torch.randn(spec.general_channels, 3, p // cell, p // cell, generator=gen)
    coarse = coarse / math.sqrt(3 * (p // cell) ** 2)
    weight[g_sl] = coarse.repeat_interleave(cell, 2).repeat_interleave(cell, 3) / cell**2
    high = torch.randn(spec.texture_channels, 3, p, p, generator=gen)
    cells = F.avg_pool2d(high, cell).repeat_interleave(cell, 2).repeat_interleave(cell, 3)
    high = high - cells  # zero mean on every cell: blind to flat colour, sensitive to fine texture
    weight[t_sl] = high / high.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * 2.0
    conv.weight.copy_(weight)
    conv.bias.zero_()

    # Positional embedding: sin/cos code on general channels, i.i.d. preferences on the score channels.
    grid = spec.img_size // p
    pos = torch.zeros_like(model.pos_embed)
    prefix = pos.shape[1] - grid * grid
    pos[0, prefix:, g_sl] = spec.position_code * _sincos_2d(grid, spec.general_channels)
    pos[0, prefix:, p_sl] = spec.position_scale * torch.randn(grid * grid, spec.num_neurons, generator=gen)
    model.pos_embed.copy_(pos)
    model.cls_token.copy_(0.5 * torch.randn(model.cls_token.shape, generator=gen))

    # Blocks: fan-in initialised, never writing into the texture, score or massive channels.
    heads, head_dim = spec.num_heads, dim // spec.num_heads
    for block in model.blocks:
        for norm in (block.norm1, block.norm2):
            norm.weight.fill_(1.0)
            norm.bias.zero_()
        qkv = block.attn.qkv
        qkv.weight.copy_(torch.randn(qkv.weight.shape, generator=gen) / math.sqrt(dim))
        qkv.weight[: 2 * dim] *= spec.qk_gain
        qkv.bias.zero_()
        proj, fc1, fc2 = block.attn.proj, block.mlp.fc1, block.mlp.fc2
        proj.weight.copy_(spec.residual_gain * torch.randn(proj.weight.shape, generator=gen) / math.sqrt(dim))
        fc1.weight.copy_(torch.randn(fc1.weight.shape, generator=gen) / math.sqrt(dim))
        fc2.weight.copy_(spec.residual_gain * torch.randn(fc2.weight.shape, generator=gen) / math.sqrt(fc2.in_features))
        for layer in (proj, fc1, fc2):
            layer.bias.zero_()
        proj.weight[reserved] = 0.0
        fc2.weight[reserved] = 0.0

    # Later blocks: bias every query towards the key of an artifact token.
    artifact_dir = torch.zeros(dim)
    artifact_dir[u_sl] = 1.0
    normed = F.layer_norm(artifact_dir[None], (dim,))[0]
    for block in list(model.blocks)[spec.artifact_layer + 1 :]:
        key = block.attn.qkv.weight[dim : 2 * dim] @ normed  # norm1 is the identity affine here
        bias = torch.zeros(dim)
        for h in range(heads):
            k_h = key[h * head_dim : (h + 1) * head_dim]
            bias[h * head_dim : (h + 1) * head_dim] = spec.attention_boost * math.sqrt(head_dim) * k_h / k_h.dot(k_h)
        block.attn.qkv.bias[:dim] = bias

    # Final norm: a large gain on the massive channels makes artifact tokens stand out in the output.
    model.norm.weight.fill_(1.0)
    model.norm.weight[u_sl] = spec.massive_gain
    model.norm.weight[p_sl] = 0.0  # the neurons' position preferences are internal, not output features
    model.norm.bias.zero_()


def build_planted_model(spec: PlantedSpec = PlantedSpec(), artifacts: bool = True) -> nn.Module:
    """The timm ``VisionTransformer`` with planted weights; ``artifacts=False`` gives the twin."""
    if not 0 <= spec.artifact_layer < spec.depth - 1:
        raise ConfigError(f"artifact_layer {spec.artifact_layer} must be a block before the last of {spec.depth}")
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        model = VisionTransformer(img_size=spec.img_size, patch_size=spec.patch_size, embed_dim=spec.embed_dim,
                                  depth=spec.depth, num_heads=spec.num_heads, num_classes=0, qkv_bias=True,
                                  dynamic_img_size=True, block_fn=PlantedBlock)
    gen = torch.Generator().manual_seed(spec.seed)
    _plant_weights(model, spec, gen)
    block = model.blocks[spec.artifact_layer]
    block.register_neurons = RegisterNeurons(spec, gen)
    hidden = block.mlp.fc1.out_features + spec.num_neurons
    index = torch.randperm(hidden, generator=gen)[: spec.num_neurons].sort().values
    block.mlp = PlantedMlp(block.mlp, index, spec.neuron_activation)
    set_artifacts(model, artifacts)
    return model.eval()


def set_artifacts(module: nn.Module, enabled: bool) -> None:
    """Switch every planted register-neuron module inside ``module`` on or off (the twin is 'off')."""
    for sub in module.modules():
        if isinstance(sub, RegisterNeurons):
            sub.enabled = bool(enabled)


def register_neuron_indices(model: nn.Module) -> dict[int, list[int]]:
    """The planted register neurons of a planted ViT ``model``: ``{block index: [hidden-unit indices]}``.

    This is the known truth a register-neuron finder should recover (units of ``blocks[i].mlp.act``).
    """
    return {i: [int(v) for v in block.mlp.act.index] for i, block in enumerate(model.blocks)
            if isinstance(block.mlp, PlantedMlp)}


def firing_maps(module: nn.Module) -> list[Tensor]:
    """The ``last_firing`` tensors of every register-neuron module inside ``module`` (after a forward)."""
    return [sub.last_firing for sub in module.modules() if isinstance(sub, RegisterNeurons)
            and sub.last_firing is not None]


def build_planted_vit(argument: str | None = None, *, name: str | None = None, weights: str | None = None,
                      random_init: bool = False, artifacts: bool = True, pos_resample: str | None = None,
                      **options) -> Backbone:
    """Backbone factory for ``planted-vit`` (options: any :class:`PlantedSpec` field, e.g. ``seed=1``), named
    ``name`` (default ``planted-vit``, or ``planted-vit-twin`` without ``artifacts``).

    The weights are constructed, not drawn, so ``random_init`` changes nothing; ``weights`` loads a
    safetensors state dict over them. ``pos_resample`` names the positional-embedding resampling policy
    (default ``"bicubic"``, the built-in models' policy; :mod:`phreg_core.pos_embed`).
    """
    from phreg_bench.backbones.builtin import BUILTIN_POLICY
    from phreg_bench.backbones.weights import state_dict_sha256
    from phreg_core.pos_embed import get_policy
    from phreg_core.towers import TimmTokenViT

    if argument:
        raise ConfigError(f"planted-vit takes no argument, got {argument!r}")
    known = set(PlantedSpec.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"planted-vit has no option {unknown}; choose from {sorted(known)}")
    spec = replace(PlantedSpec(), **options)
    policy = get_policy(pos_resample or BUILTIN_POLICY)
    model = build_planted_model(spec, artifacts)
    weights_id = f"planted(seed={spec.seed})"
    if weights:
        from phreg_bench.backbones.weights import load_into

        load_into(model, weights)
        weights_id = weights
    identity = BackboneIdentity(
        name=name or ("planted-vit" if artifacts else "planted-vit-twin"), family="builtin",
        architecture=f"planted-vit(p{spec.patch_size},w{spec.embed_dim},d{spec.depth},h{spec.num_heads})",
        weights_id=weights_id, weights_sha256=state_dict_sha256(model),
        extra={"artifacts": bool(artifacts), "planted": asdict(spec),
               "register_neurons": {str(layer): units for layer, units in register_neuron_indices(model).items()}},
    )
    return Backbone(TimmTokenViT(model, policy), identity)


def build_planted_twin(argument: str | None = None, *, name: str | None = None, **kwargs) -> Backbone:
    """Backbone factory for ``planted-vit-twin``: the same weights with the register neurons off."""
    return build_planted_vit(argument, name=name, artifacts=False, **kwargs)
