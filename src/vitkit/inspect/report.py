"""The inspection files (four PNGs, inspect.json) and the self-contained HTML report of a run or model.

The report embeds every image as a base64 data URI and carries its own CSS: no network, no external files.
A tiny inline script records, once the page has loaded, how many images it holds and how many failed to load
(`data-img-total`, `data-img-broken` on <body>), so a headless browser can check it.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from vitkit.atomic import atomic_write_bytes, json_bytes, refuse_folder_in_way
from vitkit.inspect import plots
from vitkit.inspect.analysis import Analysis

FIGURES = {  # file name -> (heading, caption)
    "embedding_pca.png": (
        "Patch-embedding filters",
        "Top principal components of the linear patch-embedding filters, each on its own colour scale, with the "
        "fraction of the filters' variance it explains (the paper's Figure 7, left); for a hybrid, its ResNet's "
        "standardised 7x7 root filters.",
    ),
    "posemb_similarity.png": (
        "Position-embedding similarity",
        "Cosine similarity between the position embedding of the patch at each row and column and those of "
        "all other patches (Figure 7, centre).",
    ),
    "attention_distance.png": (
        "Mean attention distance",
        "For each head of each layer, the attention-weighted distance in pixels between query and key patches, "
        "averaged over queries and images (Figure 7, right; Appendix D.7). Attention to the class token is "
        "left out and each query's patch attention renormalised. Dashed: uniform attention over all patches.",
    ),
    "attention_rollout.png": (
        "Attention rollout",
        "Each input beside its attention-rollout map (Abnar & Zuidema, 2020): the class token's (or, for "
        "GAP models, the patches' mean) attention to the input patches through all layers (Figure 6).",
    ),
}


@dataclass
class Section:
    """One figure of the report: heading, caption and PNG bytes."""

    heading: str
    caption: str
    png: bytes


@dataclass
class Report:
    """What a report shows: a title, key facts, figures and optional notes."""

    title: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def inspection_figures(analysis: Analysis, images: torch.Tensor, titles: Sequence[str] | None = None) -> dict:
    """The four figures of `vitkit inspect`, keyed by file name; `images` (B, C, H, W) uint8 for the rollout."""
    gh, gw = analysis.grid_size
    max_px = ((gh - 1) ** 2 + (gw - 1) ** 2) ** 0.5 * analysis.patch_size
    if analysis.posemb_sim is not None:
        posemb = plots.plot_posemb_similarity(analysis.posemb_sim)
    else:
        none = (
            "Relative position attention: no per-patch embedding to compare."
            if analysis.relative
            else "This model has no position embedding."
        )
        posemb = plots.plot_message(none, "Position embedding similarity")
    n = min(len(images), len(analysis.rollout))
    return {
        "embedding_pca.png": plots.plot_embedding_pca(analysis.pca, analysis.pca_variance),
        "posemb_similarity.png": posemb,
        "attention_distance.png": plots.plot_attention_distance(
            analysis.distances, max_px, analysis.uniform_distance()
        ),
        "attention_rollout.png": plots.plot_attention_rollout(
            images[:n], analysis.rollout[:n], list(titles)[:n] if titles else None
        ),
    }


def write_inspection(
    out_dir: str,
    analysis: Analysis,
    pngs: dict[str, bytes],
    report: Report,
    info: dict[str, Any] | None = None,
) -> None:
    """Write the four PNGs, inspect.json (the numbers, plus `info`) and report.html into out_dir, each atomically;
    all six are made, and checked for a folder in their way, before the first is written."""
    record = dict(info or {}) | analysis.to_json() | {"files": sorted(pngs) + ["inspect.json", "report.html"]}
    files = pngs | {"inspect.json": json_bytes(record), "report.html": render_html(report).encode("utf-8")}
    for name in files:  # a folder in the way would stop the writes part-way
        refuse_folder_in_way(os.path.join(out_dir, name))
    os.makedirs(out_dir, exist_ok=True)
    for name, data in files.items():
        atomic_write_bytes(os.path.join(out_dir, name), data)


def inspection_sections(pngs: dict[str, bytes]) -> list[Section]:
    """The four figures as report sections, in the paper's order."""
    return [Section(*FIGURES[name], pngs[name]) for name in FIGURES if name in pngs]


def run_sections(
    metrics: Sequence[dict],
    summary: dict | None,
    classes: Sequence[str],
    analysis: Analysis | None = None,
    images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    num_predictions: int = 16,
) -> list[Section]:
    """Training curves, the confusion matrix and a grid of test predictions with rollout overlays."""
    out = []
    if metrics:
        fig = plots.plot_training_curves(metrics)
        out.append(
            Section(
                "Training curves",
                "Training loss and accuracy at each log step, test loss and accuracy at each evaluation, and "
                "the learning-rate schedule.",
                plots.figure_png(fig),
            )
        )
    if summary and summary.get("confusion"):
        fig = plots.plot_confusion(summary["confusion"], classes)
        out.append(
            Section(
                "Confusion matrix",
                "Test images by true class (rows) and predicted class (columns); colour: fraction of the row.",
                plots.figure_png(fig),
            )
        )
    if analysis is not None and images is not None and analysis.probs.shape[-1] > 0:
        n = min(num_predictions, len(images))
        lab = labels[:n] if labels is not None else None
        fig = plots.plot_predictions(images[:n], analysis.rollout[:n], analysis.probs[:n], classes, lab)
        out.append(
            Section(
                "Test predictions" if labels is not None else "Predictions on the given images",
                (
                    "Test images with the predicted class and its probability (red: wrong, with the true class), "
                    if labels is not None
                    else "The images given (--images) with the predicted class and its probability, "
                )
                + "and below each its attention-rollout map."
                + (
                    f" One forward of each image, without the run's {summary['tta']} TTA (which the headline "
                    "and the confusion matrix use)."
                    if summary and summary.get("tta")
                    else ""
                ),
                plots.figure_png(fig),
            )
        )
    return out


_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; background: #fff; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table.facts { border-collapse: collapse; margin: 1em 0; }
table.facts td { padding: 0.2em 1em 0.2em 0; vertical-align: top; }
table.facts td:first-child { color: #666; }
figure { margin: 0.5em 0 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; max-width: 60em; }
.note { color: #8a5a00; }
footer { color: #999; font-size: 0.8em; margin-top: 3em; }
"""

_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, broken = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (!imgs[i].complete || imgs[i].naturalWidth === 0) broken++;
  }
  document.body.setAttribute("data-img-total", String(imgs.length));
  document.body.setAttribute("data-img-broken", String(broken));
});
"""


def data_uri(png: bytes) -> str:
    """PNG bytes as a data: URI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(report.title)}</title><style>{_CSS}</style></head>",
        '<body data-img-total="" data-img-broken="">',
        f"<h1>{e(report.title)}</h1>",
    ]
    if report.facts:
        rows = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in report.facts)
        parts.append(f'<table class="facts">{rows}</table>')
    parts += [f'<p class="note">{e(n)}</p>' for n in report.notes]
    for i, s in enumerate(report.sections):
        parts.append(
            f'<section id="fig{i + 1}"><h2>{e(s.heading)}</h2><figure>'
            f'<img src="{data_uri(s.png)}" alt="{e(s.heading)}">'
            f"<figcaption>{e(s.caption)}</figcaption></figure></section>"
        )
    parts += ["<footer>Written by vitkit.</footer>", f"<script>{_SCRIPT}</script>", "</body></html>"]
    return "\n".join(parts) + "\n"


def write_report(path: str, report: Report) -> None:
    """Write the HTML report atomically (a reader never sees half a page)."""
    atomic_write_bytes(path, render_html(report).encode("utf-8"))
