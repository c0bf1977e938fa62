"""The paper's four analyses of one model on a batch of images, gathered for plots, JSON and the report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vitkit.inspect.attention import mean_attention_distance, patch_distances, rollout_map, rollout_step
from vitkit.inspect.embeddings import embedding_pca, posemb_similarity, similarity_by_distance


@dataclass
class Analysis:
    """What `analyse` computes; tensors on the CPU."""

    pca: torch.Tensor  # (k, C, P, P)
    pca_variance: torch.Tensor  # (k,) explained variance ratio
    posemb_sim: torch.Tensor | None  # (gh, gw, gh, gw); None without a position embedding
    distances: torch.Tensor  # (L, H) mean attention distance in pixels
    rollout: torch.Tensor  # (B, gh, gw)
    probs: torch.Tensor  # (B, classes) softmax of the logits; (B, 0) for a model without a head
    grid_size: tuple[int, int]
    patch_size: int
    img_size: tuple[int, int]
    relative: bool = False  # relative position attention (posemb "relative"): no per-patch embedding

    def uniform_distance(self) -> float:
        """The mean attention distance of uniform attention: the mean distance between two patches, in pixels."""
        return float(patch_distances(self.grid_size, self.patch_size).mean())

    def to_json(self) -> dict[str, Any]:
        """The numbers, JSON-ready (the figures' data, except the image-sized arrays)."""
        d = self.distances
        gh, gw = self.grid_size
        max_px = float(((gh - 1) ** 2 + (gw - 1) ** 2) ** 0.5 * self.patch_size)
        out: dict[str, Any] = {
            "mean_attention_distance": {
                "unit": "pixels",
                "per_layer_per_head": [[round(v, 4) for v in row] for row in d.tolist()],
                "per_layer": [
                    {
                        "layer": i + 1,
                        "min": round(float(row.min()), 4),
                        "mean": round(float(row.mean()), 4),
                        "max": round(float(row.max()), 4),
                    }
                    for i, row in enumerate(d)
                ],
                "max_possible": round(max_px, 4),
                "uniform_attention": round(self.uniform_distance(), 4),
            },
            "embedding_pca": {
                "k": int(self.pca.shape[0]),
                "filter_shape": list(self.pca.shape[1:]),
                "explained_variance_ratio": [round(v, 6) for v in self.pca_variance.tolist()],
            },
            "posemb_similarity": None,
            "grid_size": list(self.grid_size),
            "patch_size": self.patch_size,
            "img_size": list(self.img_size),
        }
        if self.posemb_sim is not None:
            out["posemb_similarity"] = {
                "by_distance": [
                    {"distance_patches": round(dist, 4), "mean_cosine": round(s, 4)}
                    for dist, s in similarity_by_distance(self.posemb_sim)
                ]
            }
        return out


class _LayerStats:
    """Each layer's mean attention distance and the rollout so far, from its attention (B, H, N, N) as the model
    computes it (`forward_features(on_attention=...)`), so that no layer's attention is kept."""

    def __init__(self, cfg: Any, head_fusion: str, discard_ratio: float):
        self.cfg, self.head_fusion, self.discard_ratio = cfg, head_fusion, discard_ratio
        self.distances: list[torch.Tensor] = []  # (H,) per layer
        self.rollout: torch.Tensor | None = None  # (B, N, N) float64

    def __call__(self, layer: int, attn: torch.Tensor) -> None:
        c, a = self.cfg, attn.float()
        self.distances.append(mean_attention_distance(a, c.grid_size, c.token_stride, c.num_prefix_tokens))
        self.rollout = rollout_step(self.rollout, a, self.head_fusion, self.discard_ratio)


@torch.no_grad()
def analyse(
    model: nn.Module,
    images: torch.Tensor,
    *,
    k: int = 28,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    batch_size: int = 16,
) -> Analysis:
    """All four analyses of `model` on normalised images (B, C, H, W) at the model's size, in batches."""
    cfg = model.cfg
    pca, ratio = embedding_pca(model, k, return_variance=True)
    sim = posemb_similarity(model).cpu() if cfg.posemb not in ("none", "relative") else None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    dist_sum, maps, probs = None, [], []
    try:
        for i in range(0, len(images), batch_size):
            # each layer's attention (B, H, N, N) used as the model computes it, and dropped before the next (all
            # of them at once took ~8 GB for ViT-L/16 at 384 px, batch 16)
            x = images[i : i + batch_size].to(device)
            layers = _LayerStats(cfg, head_fusion, discard_ratio)
            logits = model.forward_head(model.forward_features(x, on_attention=layers))
            d = torch.stack(layers.distances).double().cpu() * len(x)  # (L, H), averaged over this batch
            dist_sum = d if dist_sum is None else dist_sum + d
            maps.append(rollout_map(layers.rollout.float(), cfg.num_prefix_tokens, cfg.grid_size).cpu())
            has_head = getattr(model, "num_classes", 0) > 0
            probs.append(logits.float().softmax(-1).cpu() if has_head else torch.zeros(len(x), 0))
    finally:
        model.train(was_training)
    if dist_sum is None:
        raise ValueError("analyse needs at least one image")
    return Analysis(
        pca=pca.cpu(),
        pca_variance=ratio.cpu(),
        posemb_sim=sim,
        distances=(dist_sum / len(images)).float(),
        rollout=torch.cat(maps),
        probs=torch.cat(probs).cpu(),
        grid_size=tuple(cfg.grid_size),
        patch_size=int(cfg.token_stride),  # pixels between token centres
        img_size=tuple(cfg.img_size),
        relative=cfg.posemb == "relative",
    )
