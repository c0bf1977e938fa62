"""Figures like the paper's Figure 7 and the report's: the only module that imports matplotlib.

Every function returns a `matplotlib.figure.Figure` built without pyplot (so no global backend or figure
registry is touched); `figure_png` renders one with the Agg canvas.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vitkit.atomic import atomic_write_bytes

HEAT = "inferno"


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (Agg)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def save_figure(fig: Figure, path: str, dpi: int = 100) -> None:
    """Write the figure as a PNG file (atomically)."""
    atomic_write_bytes(path, figure_png(fig, dpi))


def _image_hwc(img: torch.Tensor) -> np.ndarray:
    """(C, H, W) uint8 or [0, 1] float -> (H, W) or (H, W, 3) floats in [0, 1] for imshow."""
    x = img.detach().cpu().float()
    if img.dtype == torch.uint8:
        x = x / 255.0
    x = x.clamp(0, 1)
    if x.shape[0] == 1:
        return x[0].numpy()
    if x.shape[0] != 3:
        return x.mean(0).numpy()
    return x.permute(1, 2, 0).numpy()


def _show_image(ax, img: torch.Tensor) -> None:
    arr = _image_hwc(img)
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()


def _show_overlay(ax, img: torch.Tensor, heat: torch.Tensor, alpha: float = 0.6) -> None:
    """The image with a (gh, gw) map over it, scaled to [0, 1] and stretched bilinearly to the image."""
    arr = _image_hwc(img)
    h, w = arr.shape[:2]
    m = heat.detach().cpu().double()
    m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-12)
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.imshow(
        m.numpy(), cmap=HEAT, alpha=alpha, extent=(0, w, h, 0), interpolation="bilinear", vmin=0, vmax=1
    )
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()


def plot_embedding_pca(
    components: torch.Tensor, variance: torch.Tensor | None = None, cols: int = 7
) -> Figure:
    """The principal components of the patch-embedding filters (k, C, P, P) as a grid of small images."""
    k = components.shape[0]
    cols = min(cols, k)
    rows = math.ceil(k / cols)
    fig = Figure(figsize=(1.1 * cols, 1.1 * rows + 0.6))
    for i in range(k):
        ax = fig.add_subplot(rows, cols, i + 1)
        c = components[i].double()
        c = (c - c.min()) / (c.max() - c.min()).clamp_min(1e-12)  # each component on its own scale
        _show_image(ax, c)
        if variance is not None:
            ax.set_title(f"{float(variance[i]):.1%}", fontsize=7)
    fig.suptitle("RGB embedding filters (first principal components)" if components.shape[1] == 3 else
                 "Embedding filters (first principal components)", fontsize=10)  # fmt: skip
    return fig


def plot_posemb_similarity(sim: torch.Tensor) -> Figure:
    """(gh, gw, gh, gw) cosine similarities: a gh x gw grid of small maps, one per input patch."""
    gh, gw = sim.shape[:2]
    pad = 1
    mosaic = np.full((gh * (gh + pad) - pad, gw * (gw + pad) - pad), np.nan)
    s = sim.detach().cpu().double().numpy()
    for i in range(gh):
        for j in range(gw):
            y, x = i * (gh + pad), j * (gw + pad)
            mosaic[y : y + gh, x : x + gw] = s[i, j]
    fig = Figure(figsize=(6.0, 5.4))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.ma.masked_invalid(mosaic), cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks(
        [j * (gw + pad) + (gw - 1) / 2 for j in range(gw)], [str(j + 1) for j in range(gw)], fontsize=6
    )
    ax.set_yticks(
        [i * (gh + pad) + (gh - 1) / 2 for i in range(gh)], [str(i + 1) for i in range(gh)], fontsize=6
    )
    ax.set_xlabel("Input patch column")
    ax.set_ylabel("Input patch row")
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="Cosine similarity")
    ax.set_title("Position embedding similarity")
    return fig


def plot_attention_distance(
    distances: torch.Tensor, max_distance: float | None = None, uniform: float | None = None
) -> Figure:
    """Mean attention distance (L, H) in pixels against depth: one dot per head; `uniform`: a reference line."""
    d = distances.detach().cpu().double().numpy()
    layers, heads = d.shape
    fig = Figure(figsize=(5.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for h in range(heads):
        ax.scatter(np.arange(1, layers + 1), d[:, h], s=14, label=f"head {h + 1}")
    if uniform is not None:
        ax.axhline(uniform, color="gray", linestyle="--", linewidth=1, label="uniform attention")
    ax.set_xlabel("Network depth (layer)")
    ax.set_ylabel("Mean attention distance (pixels)")
    ax.set_xticks(range(1, layers + 1))
    top = max_distance if max_distance else float(d.max()) * 1.1 + 1e-9
    ax.set_ylim(0, top)
    ax.grid(alpha=0.3)
    if heads <= 16:
        ax.legend(fontsize=6, ncol=2, loc="lower right")
    ax.set_title("Mean attention distance per head")
    return fig


def plot_attention_rollout(
    images: torch.Tensor, maps: torch.Tensor, titles: Sequence[str] | None = None, pairs_per_row: int = 4
) -> Figure:
    """Each image (B, C, H, W) beside its rollout map (B, gh, gw) laid over it."""
    n = len(images)
    per_row = max(1, min(pairs_per_row, n))
    rows = math.ceil(n / per_row)
    fig = Figure(figsize=(2.0 * 2 * per_row, 2.2 * rows))
    for i in range(n):
        r, c = divmod(i, per_row)
        ax = fig.add_subplot(rows, 2 * per_row, r * 2 * per_row + 2 * c + 1)
        _show_image(ax, images[i])
        ax.set_title(titles[i] if titles else "input", fontsize=7)
        ax = fig.add_subplot(rows, 2 * per_row, r * 2 * per_row + 2 * c + 2)
        _show_overlay(ax, images[i], maps[i])
        ax.set_title("attention rollout", fontsize=7)
    return fig


def plot_training_curves(metrics: Sequence[dict]) -> Figure:
    """Loss, accuracy and learning rate against the step, from metrics.jsonl records."""
    train = [m for m in metrics if "loss" in m and "split" not in m]
    test = [m for m in metrics if m.get("split") == "test"]
    val = [
        m for m in metrics if m.get("split") == "val"
    ]  # the validation split (data.holdout, or a folder's val/)
    fig = Figure(figsize=(12.0, 3.4))
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]

    def line(ax, recs, key, label, scale=1.0, **kw):
        pts = [(r["step"], r[key] * scale) for r in recs if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), label=label, **kw)

    line(axes[0], train, "loss", "train")
    line(axes[0], test, "loss", "test", marker="o", ms=3)
    line(axes[0], val, "loss", "val", marker="^", ms=3)
    line(axes[1], train, "train_top1", "train", 100)
    tta = any("top1_no_tta" in r for r in test)  # train.eval_tta: the headline is the TTA's
    line(axes[1], test, "top1", "test (TTA)" if tta else "test", 100, marker="o", ms=3)
    line(axes[1], test, "top1_no_tta", "test (no TTA)", 100, marker=".", ms=3, ls=":")
    line(axes[1], test, "ema_top1", "test (EMA)", 100, marker="s", ms=3)
    line(axes[1], val, "top1", "val", 100, marker="^", ms=3)
    line(axes[1], val, "ema_top1", "val (EMA)", 100, marker="v", ms=3)
    fewshot = [m for m in metrics if m.get("split") == "fewshot" and m.get("fewshot")]
    for name in sorted({n for m in fewshot for n in m["fewshot"]}):  # the most shots of each dataset
        shots = max((int(k) for m in fewshot for k in m["fewshot"].get(name, {})), default=None)
        recs = [
            {"step": m["step"], "top1": m["fewshot"][name].get(str(shots))}
            for m in fewshot
            if name in m["fewshot"]
        ]
        line(axes[1], recs, "top1", f"{name} {shots}-shot", 100, marker="x", ms=3, ls="--")
    line(axes[2], train, "lr", "lr")
    for ax, title, ylabel in zip(axes, ("Loss", "Top-1 accuracy", "Learning rate"), ("loss", "%", "lr")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines and ax is not axes[2]:
            ax.legend(fontsize=8)
        if not ax.lines:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return fig


def plot_confusion(confusion: Sequence[Sequence[float]], classes: Sequence[str]) -> Figure:
    """A (K, K) confusion matrix (rows true, columns predicted), counts written in the cells."""
    cm = np.asarray(confusion, dtype=np.float64)
    k = cm.shape[0]
    size = min(12.0, 2.5 + 0.45 * k)
    fig = Figure(figsize=(size + 1.0, size))
    ax = fig.add_subplot(1, 1, 1)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    names = list(classes) if len(classes) == k else [str(i) for i in range(k)]
    ax.set_xticks(range(k), names, rotation=90, fontsize=7)
    ax.set_yticks(range(k), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    color = "white" if frac[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=6, color=color)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_title("Confusion matrix (test)")
    return fig


def plot_predictions(
    images: torch.Tensor,
    maps: torch.Tensor,
    probs: torch.Tensor,
    classes: Sequence[str],
    labels: torch.Tensor | None = None,
    cols: int = 8,
) -> Figure:
    """Test images with the predicted class (red when wrong) and, below each, its rollout overlay."""
    n = len(images)
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(1.6 * cols, 3.4 * rows))
    for i in range(n):
        r, c = divmod(i, cols)
        ax = fig.add_subplot(2 * rows, cols, 2 * r * cols + c + 1)
        _show_image(ax, images[i])
        title, color = "", "black"
        if probs.shape[-1] > 0:
            p, k = probs[i].max(dim=-1)
            name = classes[int(k)] if int(k) < len(classes) else str(int(k))
            title = f"{name} {float(p):.0%}"
            if labels is not None:
                truth = classes[int(labels[i])] if int(labels[i]) < len(classes) else str(int(labels[i]))
                title += f"\ntrue: {truth}"
                color = "black" if int(k) == int(labels[i]) else "red"
        ax.set_title(title, fontsize=7, color=color)
        ax = fig.add_subplot(2 * rows, cols, (2 * r + 1) * cols + c + 1)
        _show_overlay(ax, images[i], maps[i])
    return fig


def plot_message(text: str, title: str = "") -> Figure:
    """A small figure saying why a plot is absent (e.g. a model without a position embedding)."""
    fig = Figure(figsize=(5.0, 1.6))
    ax = fig.add_subplot(1, 1, 1)
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=10)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return fig
