"""Figures of dense features, like PH-Reg's Figs. 1 and 3: models side by side on the same input.

For each input image one PNG with a column per model: a PCA-to-RGB map of the patch features (one PCA
fitted jointly over every compared model of the same width, so colours are comparable), the patch-norm
map (one colour scale shared by all models, so high-norm artifacts stand out), and for models with a text
tower the cosine-similarity heatmap of a text query (80 ImageNet templates, as the open-vocabulary
tasks embed class names; one colour scale for all heatmaps). A second PNG holds the histogram of patch
norms of every model.

matplotlib is an optional dependency (``pip install 'phreg-bench[viz]'``); it is imported only here, lazily.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from phreg_bench.methods.base import DenseModel
from phreg_core.atomic import write_atomic
from phreg_core.errors import MissingDependencyError

PCA_CLIP = (1.0, 99.0)  # percentiles mapped to 0 and 1 in the PCA-RGB maps (robust to a few outliers)


def require_matplotlib():
    """``matplotlib.pyplot`` with the non-interactive Agg backend, or a clear error saying how to get it."""
    try:
        import matplotlib
    except ImportError as error:
        raise MissingDependencyError("figures need matplotlib: pip install 'phreg-bench[viz]' "
                                     "(or pip install matplotlib)") \
            from error
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


@dataclass
class Panel:
    """One model's dense output on one image."""

    name: str
    patches: Tensor  # [C, h, w] final-normalised patch tokens
    heatmap: Tensor | None = None  # [h, w] cosine similarity to the text query (text backbones)


def joint_pca_rgb(grids: Sequence[Tensor], clip: tuple[float, float] = PCA_CLIP) -> list[np.ndarray]:
    """PCA-to-RGB ``[h, w, 3]`` maps in [0, 1], one PCA per feature width fitted on all grids of that width.

    Grids ``[C, h, w]`` of models with the same width share the principal axes, the sign of each axis and
    the colour range, so equal colours mean similar features across models.
    """
    out: list[np.ndarray | None] = [None] * len(grids)
    widths = sorted({g.shape[0] for g in grids})
    for width in widths:
        members = [i for i, g in enumerate(grids) if g.shape[0] == width]
        tokens = torch.cat([grids[i].flatten(1).T.double() for i in members])  # [N, C]
        mean = tokens.mean(0)
        _, _, vh = torch.linalg.svd(tokens - mean, full_matrices=False)
        axes = vh[:3]
        signs = torch.sign(axes[torch.arange(len(axes)), axes.abs().argmax(1)])  # deterministic orientation
        axes = axes * signs[:, None]
        projected = (tokens - mean) @ axes.T  # [N, k]
        low = torch.quantile(projected, clip[0] / 100, dim=0)
        high = torch.quantile(projected, clip[1] / 100, dim=0)
        scaled = ((projected - low) / (high - low).clamp(min=1e-12)).clamp(0, 1)
        if scaled.shape[1] < 3:
            scaled = F.pad(scaled, (0, 3 - scaled.shape[1]), value=0.5)
        start = 0
        for i in members:
            h, w = grids[i].shape[-2:]
            out[i] = scaled[start : start + h * w].reshape(h, w, 3).float().numpy()
            start += h * w
    return [o for o in out if o is not None]


def patch_norm_map(grid: Tensor) -> np.ndarray:
    """``[h, w]`` L2 norms of the patch tokens ``[C, h, w]``."""
    return grid.float().norm(dim=0).numpy()


def model_input(image: np.ndarray, short_side: int, multiple: int) -> Tensor:
    """The whole image as a model input: float ``[1, 3, H, W]`` in [0, 1], nothing cropped.

    ``image`` is uint8 ``[H0, W0, 3]``. The short side becomes ``short_side`` pixels (which must be a multiple of
    ``multiple``, the patch size or the least common multiple of several), the long side keeps the aspect
    ratio rounded to the nearest multiple of ``multiple`` (the ViT runs on any grid of whole patches), so the
    aspect ratio changes by at most half a patch over the long side. Bicubic resampling, as the backbones'
    own preprocessing.

    Raises:
        ValueError: ``short_side`` is not a positive multiple of ``multiple``.
    """
    if short_side <= 0 or short_side % multiple:
        raise ValueError(f"input size {short_side} is not a positive multiple of the patch size {multiple}")
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
    height, width = tensor.shape[-2:]
    short = min(height, width)
    # the long side scaled like the short one, to the nearest whole patch (never below short_side)
    size = [short_side if side == short else round(side * short_side / short / multiple) * multiple
            for side in (height, width)]
    return F.interpolate(tensor, size=size, mode="bicubic", align_corners=False).clamp(0, 1)


TITLE_SIZE = 9  # points
CELL_INCHES = 2.3  # width of one figure column
COLORBAR_INCHES = 0.8  # extra figure width for the colour bars and their labels


def wrap_title(text: str, width_inches: float, fontsize: float = TITLE_SIZE, max_lines: int = 3) -> str:
    """``text`` broken into lines that fit ``width_inches`` at ``fontsize`` (at most ``max_lines``, the last
    one shortened with an ellipsis), so that titles of neighbouring panels never overprint.

    The width of a character is taken as 0.62 em, a bound for the default sans-serif font's
    letters, digits and punctuation (DejaVu Sans: 0.61 em for most lowercase letters and digits).
    """
    chars = max(6, int(width_inches * 72 / (fontsize * 0.62)))
    lines = textwrap.wrap(text, chars, break_long_words=True, break_on_hyphens=True) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: chars - 1] + "…"
    return "\n".join(lines)


def comparison_figure(image: np.ndarray, panels: Sequence[Panel], path: str | Path, *, title: str | None = None,
                      query: str | None = None, input_note: str | None = None) -> Path:
    """Write one PNG: the input, then per model its PCA-RGB map, norm map and (if any) query heatmap.

    ``image`` is the model input as uint8 ``[H, W, 3]`` (any aspect ratio); ``input_note`` (e.g. how it was
    resized) goes under the input.
    """
    plt = require_matplotlib()
    fig = comparison(plt, image, panels, title=title, query=query, input_note=input_note)
    return _save(fig, plt, path)


def comparison(plt, image: np.ndarray, panels: Sequence[Panel], *, title: str | None = None,
               query: str | None = None, input_note: str | None = None):
    """The figure of :func:`comparison_figure` (a ``matplotlib.figure.Figure``; the caller closes it)."""
    pca = joint_pca_rgb([p.patches for p in panels])
    norms = [patch_norm_map(p.patches) for p in panels]
    vmax = max(float(n.max()) for n in norms)
    heats = [p.heatmap.float().numpy() for p in panels if p.heatmap is not None]
    has_heat = bool(heats)
    heat_range = (min(float(h.min()) for h in heats), max(float(h.max()) for h in heats)) if heats else (0, 1)
    rows = 3 if has_heat else 2
    cols = len(panels) + 1
    aspect = min(max(image.shape[0] / image.shape[1], 0.35), 2.5)  # cell height / width, clamped for odd images
    width = CELL_INCHES * cols + COLORBAR_INCHES
    # a narrow last column holds the colour bars, so that every row's panels stay aligned
    fig, grid = plt.subplots(rows, cols + 1, figsize=(width, CELL_INCHES * aspect * rows + 0.8), squeeze=False,
                             layout="constrained", gridspec_kw={"width_ratios": [1.0] * cols + [0.06]})
    axes, bars = grid[:, :cols], grid[:, cols]
    for bar_axes in bars:
        bar_axes.set_axis_off()
    label_width = CELL_INCHES * 0.85  # titles wrap to 85 % of a column, so neighbours never touch
    extent = (0, image.shape[1], image.shape[0], 0)
    axes[0, 0].imshow(image)
    axes[0, 0].set_title("input", fontsize=TITLE_SIZE)
    if input_note:
        axes[0, 0].set_xlabel(wrap_title(input_note, label_width, 7), fontsize=7)
    for r in range(1, rows):
        axes[r, 0].imshow(image, alpha=0.35)
    axes[1, 0].text(0.5, 0.5, "patch norm\n(shared scale)", ha="center", va="center", fontsize=8,
                    transform=axes[1, 0].transAxes)
    if has_heat:
        axes[2, 0].text(0.5, 0.5, "text query\n" + wrap_title(repr(query), label_width, 8), ha="center",
                        va="center", fontsize=8, transform=axes[2, 0].transAxes)
    norm_image = heat_image = None
    for c, (panel, rgb, norm) in enumerate(zip(panels, pca, norms, strict=True), start=1):
        axes[0, c].imshow(rgb, interpolation="nearest", extent=extent)
        axes[0, c].set_title(wrap_title(panel.name, label_width), fontsize=TITLE_SIZE)
        norm_image = axes[1, c].imshow(norm, cmap="inferno", vmin=0.0, vmax=vmax, interpolation="nearest",
                                       extent=extent)
        axes[1, c].set_xlabel(f"max {norm.max():.1f} / median {np.median(norm):.1f}", fontsize=7)
        if has_heat:
            if panel.heatmap is None:
                axes[2, c].text(0.5, 0.5, "no text tower", ha="center", va="center", fontsize=8,
                                transform=axes[2, c].transAxes)
            else:
                heat_image = axes[2, c].imshow(panel.heatmap.float().numpy(), cmap="jet", interpolation="bilinear",
                                               extent=extent, vmin=heat_range[0], vmax=heat_range[1])
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for row, mappable, label in ((1, norm_image, "patch-token L2 norm"), (2, heat_image, "cosine similarity")):
        if mappable is not None:
            bars[row].set_axis_on()
            bar = fig.colorbar(mappable, cax=bars[row])
            bar.set_label(label, fontsize=7)
            bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(wrap_title(title, 0.9 * width, 10, max_lines=2), fontsize=10)
    return fig


def norm_histogram(norms: dict[str, np.ndarray], path: str | Path, *, title: str | None = None,
                   bins: int = 60) -> Path:
    """Histogram of patch-token norms per model (log counts), on shared bins."""
    plt = require_matplotlib()
    values = {name: np.asarray(v, dtype=np.float64).ravel() for name, v in norms.items()}
    top = max(float(v.max()) for v in values.values())
    edges = np.linspace(0.0, top * 1.02, bins + 1)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name, v in values.items():
        ax.hist(v, bins=edges, histtype="step", linewidth=1.5,
                label=wrap_title(f"{name} (max {v.max():.1f})", 3.0, 8, max_lines=2))
    ax.set_yscale("log")
    ax.set_xlabel("patch-token norm")
    ax.set_ylabel("tokens")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(wrap_title(title, 6.0, 10, max_lines=2), fontsize=10)
    return _save(fig, plt, path)


def _save(fig, plt, path: str | Path) -> Path:
    try:
        return write_atomic(path, lambda temp: fig.savefig(temp, dpi=110, bbox_inches="tight", format="png"),
                            suffix=".png")
    finally:
        plt.close(fig)


@torch.inference_mode()
def model_panel(name: str, model: DenseModel, image: Tensor, query: str | None = None) -> Panel:
    """Run ``model`` on one normalised image ``[1, 3, H, W]``: its unprojected final patch tokens ``[C, h, w]``
    and, with ``query`` and a text tower, the cosine map ``[h, w]`` of its projected tokens with the query."""
    patches = model.forward_tokens(image)[0].patches[0].cpu()
    heatmap = None
    if query is not None and model.has_text:
        from phreg_bench.tasks.ovseg.family import template_file
        from phreg_bench.tasks.ovseg.text import encode_names, read_templates

        text = encode_names(model.encode_text, [query], read_templates(template_file("imagenet_templates.txt")))
        projected = model.forward_tokens(image, project=True)[0].patches[0]
        heatmap = torch.einsum("chw,c->hw", F.normalize(projected, dim=0), F.normalize(text[0].float(), dim=0))
        heatmap = heatmap.cpu()
    return Panel(name, patches, heatmap)
