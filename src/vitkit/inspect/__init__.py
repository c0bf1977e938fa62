"""Inspecting ViT (the paper's Section 4.5): embedding PCA, position-embedding similarity, attention distance,
attention rollout. Pure tensor functions here; figures in `vitkit.inspect.plots` (matplotlib), the HTML report in
`vitkit.inspect.report`.
"""

from __future__ import annotations

from vitkit.inspect.analysis import Analysis, analyse
from vitkit.inspect.attention import (
    attention_maps,
    attention_rollout,
    mean_attention_distance,
    patch_distances,
    rollout_matrix,
)
from vitkit.inspect.embeddings import (
    embedding_pca,
    filter_pca,
    patch_posemb,
    posemb_similarity,
    similarity_by_distance,
)

__all__ = [
    "Analysis",
    "analyse",
    "attention_maps",
    "attention_rollout",
    "embedding_pca",
    "filter_pca",
    "mean_attention_distance",
    "patch_distances",
    "patch_posemb",
    "posemb_similarity",
    "rollout_matrix",
    "similarity_by_distance",
]
