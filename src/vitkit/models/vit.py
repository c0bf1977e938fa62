"""The Vision Transformer of Dosovitskiy et al. (2020) and its ResNet hybrid, with timm's parameter names."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.config import ModelConfig
from vitkit.models.checkpointing import checkpointed
from vitkit.models.data_config import PretrainedCfg, data_config, set_pretrained_cfg
from vitkit.models.init import lecun_normal_, mimetic_init_
from vitkit.models.layers import (
    Block,
    Dropout,
    DropPath,
    PatchEmbed,
    PreLogits,
    block_indices,
    pooled_after_reset,
)
from vitkit.models.posemb import check_resample_mode, resample_posemb, sincos2d, sincos2d_on
from vitkit.models.registry import model_name
from vitkit.models.resnet import init_backbone_

# the 1-D relative attention's table is indexed by raster offsets, which mean other pairs on another grid
RELATIVE_FIXED = (
    "posemb='relative' (the paper's 1-D relative attention) is tied to the {grid[0]}x{grid[1]} patch grid it was "
    "built for: its offsets count tokens in raster order, which pair other patches on another grid; "
    "{size[0]}x{size[1]} px needs a model trained at that size"
)


class VisionTransformer(nn.Module):
    """ViT: patch embedding, class token, position embedding, pre-LN encoder, norm, linear head."""

    def __init__(self, cfg: ModelConfig, weights_follow: bool = False):
        super().__init__()
        self.cfg = cfg
        self._structured_init = not weights_follow  # False when loaded weights will replace the init anyway
        d = cfg.embed_dim
        self.num_classes = cfg.num_classes
        # the loaded weights' mean, std, classes, source (pretrained_cfg)
        self.preprocess: dict[str, Any] = {}
        self.num_prefix_tokens = cfg.num_prefix_tokens
        self.embed_dim = self.num_features = d
        self.patch_embed = PatchEmbed(
            cfg.img_size, cfg.patch_size, cfg.in_chans, d, cfg.backbone, dynamic=cfg.dynamic_img_size
        )
        gh, gw = cfg.grid_size
        if cfg.posemb == "relative":
            self.patch_embed.resize_hint = (
                "posemb='relative' keeps its grid: another size needs a model trained at it"
            )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.pool == "token" else None
        if cfg.posemb == "learn":  # one vector per token, class token included (as timm/official)
            self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, d))
        elif cfg.posemb == "learn2d":  # the paper's Appendix D.4: X and Y embeddings of D/2 each
            self.pos_embed_row = nn.Parameter(torch.zeros(1, gh, d // 2))
            self.pos_embed_col = nn.Parameter(torch.zeros(1, gw, d // 2))
        elif cfg.posemb == "sincos2d":
            pe = sincos2d((gh, gw), d, ref_grid=cfg.posemb_grid)[None]  # (1, Np, D)
            self.register_buffer("pos_embed", pe, persistent=False)
        self.pos_drop = Dropout(cfg.drop_rate)
        dpr = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.Sequential(
            *[
                Block(
                    d,
                    cfg.num_heads,
                    cfg.mlp_dim,
                    cfg.qkv_bias,
                    cfg.drop_rate,
                    cfg.attn_drop_rate,
                    dpr[i],
                    cfg.norm_eps,
                    cfg.mlp_act,
                    cfg.num_tokens if cfg.posemb == "relative" else 0,
                )
                for i in range(cfg.depth)
            ]
        )
        # set_grad_checkpointing(): recompute each block's activations in backward
        self.grad_checkpointing = False
        self.pooled = True  # False after reset_classifier(0, ""): the normed tokens (B, N, D) out, as timm's
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        rep = cfg.representation_size
        self.pre_logits = PreLogits(d, rep) if rep else nn.Identity()
        self.head_drop = Dropout(cfg.drop_rate if cfg.head_drop_rate is None else cfg.head_drop_rate)
        self.head = nn.Linear(rep or d, cfg.num_classes) if cfg.num_classes else nn.Identity()
        for i, m in enumerate(m for m in self.modules() if isinstance(m, (Dropout, DropPath))):
            m.rng_id = i + 1  # keyed dropout: each layer draws its own masks
        self.reset_parameters()

    # timm's descriptive attributes, read by code written for timm's VisionTransformer (MAE, DINO, its filters)
    @property
    def global_pool(self) -> str:
        """ "token", "avg", or "" after reset_classifier(0, "") (the tokens unpooled)."""
        return {"token": "token", "gap": "avg"}[self.cfg.pool] if self.pooled else ""

    @property
    def has_class_token(self) -> bool:
        return self.cls_token is not None

    @property
    def no_embed_class(self) -> bool:
        """Whether the position embedding leaves the class token out (learn2d, sincos2d: added to the patches)."""
        return self.cfg.posemb in ("learn2d", "sincos2d")

    @property
    def dynamic_img_size(self) -> bool:
        return self.cfg.dynamic_img_size

    # ------------------------------------------------------------------ init

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official code's initialisation (xavier Linear, lecun patch embedding, 0.02 posemb); `attn_init`.

        By default (`weight_init="default"`, timm's but for the position embedding) four details differ from the
        official code: xavier spans the fused qkv (the official code's q, k and v are initialised apart: std 0.036
        instead of 0.026 for ViT-B), the position embedding's normal is truncated at 2 std (std 0.018; timm's
        trunc_normal_ cuts at +-2 absolute, so its and the official code's are N(0, 0.02)),
        the pre-logits layer is xavier (official: lecun normal) and the head is xavier unless `head_init="zero"`
        (official: zero). `weight_init="official"` follows the official code in all four."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    if ".mlp." in f".{name}.":
                        nn.init.normal_(m.bias, std=1e-6)
                    else:
                        nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        if hasattr(self.patch_embed, "backbone"):
            init_backbone_(self.patch_embed.backbone)
        official = self.cfg.weight_init == "official"
        tables = [blk.attn.rel_pos for blk in self.blocks if hasattr(blk.attn, "rel_pos")]
        for p in [getattr(self, n, None) for n in ("pos_embed", "pos_embed_row", "pos_embed_col")] + tables:
            if isinstance(p, nn.Parameter):
                if official:
                    nn.init.normal_(p, std=0.02)
                else:
                    nn.init.trunc_normal_(p, std=0.02, a=-0.04, b=0.04)
        if self.cls_token is not None:
            nn.init.zeros_(self.cls_token)
        if official:
            for blk in self.blocks:  # q, k and v each xavier over (D, D), as Flax's attention kernels
                for part in blk.attn.qkv.weight.chunk(3):  # (D, D) views
                    nn.init.xavier_uniform_(part)
            if isinstance(self.pre_logits, PreLogits):
                lecun_normal_(self.pre_logits.fc.weight)  # Flax Dense's default
        if self.cfg.attn_init == "mimetic" and self._structured_init:  # SVDs: seconds for ViT-B
            for blk in self.blocks:
                mimetic_init_(blk.attn.qkv, blk.attn.proj, blk.attn.num_heads)
        if isinstance(self.head, nn.Linear) and (self.cfg.head_init == "zero" or official):
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay beyond biases and norms."""
        tables = {f"blocks.{i}.attn.rel_pos" for i, b in enumerate(self.blocks) if hasattr(b.attn, "rel_pos")}
        return {"cls_token", "pos_embed", "pos_embed_row", "pos_embed_col"} | tables

    # ------------------------------------------------------------------ timm's interface

    @property
    def head_hidden_size(self) -> int:
        """The width of what the head takes (timm's): the pre-logits' where the model has them, else num_features."""
        return self.pre_logits.fc.out_features if isinstance(self.pre_logits, PreLogits) else self.embed_dim

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """timm's data config (input size, mean/std of the loaded weights, resize, crop, classes)."""
        data = data_config(self.cfg, "patch_embed." + self.patch_embed.pixel_conv_name, self.preprocess)
        return PretrainedCfg(data, self.preprocess)

    @pretrained_cfg.setter
    def pretrained_cfg(self, value: dict[str, Any]) -> None:
        set_pretrained_cfg(self.pretrained_cfg, value)

    default_cfg = property(
        pretrained_cfg.fget, pretrained_cfg.fset, doc="timm's older name of pretrained_cfg"
    )

    def get_classifier(self) -> nn.Module:
        """The classification head (timm's name)."""
        return self.head

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups by layer, as timm's (its layer-wise decay reads them): the embeddings, each block,
        the final norm after the last block; the head (and pre-logits) at the top."""
        return {
            "stem": r"^cls_token|pos_embed|patch_embed",
            "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        }

    @torch.no_grad()
    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new zero-initialised head for `num_classes` (0: none, pooled features out) with pre-logits dropped:
        the paper's fine-tuning head (timm's method; timm's new head is random). `global_pool` ("token", "avg"),
        if given, must be the model's pooling: changing it changes the architecture (build another model);
        `reset_classifier(0, "")` gives the final-normed tokens (B, N, D) unpooled, as timm's (a mode of this
        module, not saved with its weights: a loaded copy pools)."""
        cfg = dataclasses.replace(  # checks num_classes
            self.cfg, num_classes=num_classes, representation_size=None, head_init="zero"
        )
        pool = {"token": "token", "avg": "gap", "gap": "gap"}.get(global_pool, global_pool)
        pooled = pooled_after_reset(global_pool, num_classes, self.pooled)
        if global_pool not in (None, "") and pool != self.cfg.pool:
            raise ValueError(
                f"reset_classifier(global_pool={global_pool!r}): this model pools by {self.cfg.pool!r} "
                f"({'class token' if self.cfg.pool == 'token' else 'avg'}); build a model with pool= instead"
            )
        ref = self.patch_embed.proj.weight
        self.pre_logits = nn.Identity()
        self.head = nn.Identity()
        if num_classes:
            self.head = nn.Linear(self.embed_dim, num_classes, device=ref.device, dtype=ref.dtype)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.head.train(self.training)
        self.num_classes, self.cfg = num_classes, cfg
        self.pooled = pooled
        self.preprocess.pop("classes", None)

    # ------------------------------------------------------------------ forward

    def _patch_posemb(self, grid: tuple[int, int] | None = None) -> torch.Tensor | None:
        """The position embedding added to patch tokens only, (1, Np, D), for 2D kinds, on `grid` (the model's)."""
        grid = grid or self.cfg.grid_size
        if self.cfg.posemb == "learn2d":
            row, col = self.pos_embed_row, self.pos_embed_col  # (1, g, D/2)
            if grid != self.cfg.grid_size:  # dynamic_img_size: each axis resampled linearly, as set_img_size
                row, col = (
                    F.interpolate(p.transpose(1, 2), size=n, mode="linear", align_corners=True).transpose(
                        1, 2
                    )
                    for p, n in ((row, grid[0]), (col, grid[1]))
                )
            gh, gw = grid
            row = row[:, :, None].expand(-1, gh, gw, -1)  # (1, gh, gw, D/2)
            col = col[:, None, :].expand(-1, gh, gw, -1)
            return torch.cat([col, row], dim=-1).reshape(1, gh * gw, -1)  # (1, Np, D)
        if self.cfg.posemb == "sincos2d":
            if grid != self.cfg.grid_size:  # laid out in the units of the grid it was trained on
                ref = self.cfg.posemb_grid or self.cfg.grid_size
                if torch.compiler.is_compiling():  # traced once per size: a constant of the graph
                    return sincos2d(grid, self.embed_dim, ref_grid=ref)[None].to(self.pos_embed.device)
                return sincos2d_on(tuple(grid), self.embed_dim, tuple(ref), self.pos_embed.device)
            return self.pos_embed
        return None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> tokens (B, N, D) with class token and position embedding (resampled to the
        images' grid with `dynamic_img_size`)."""
        grid = self.patch_embed.grid_of(x)
        x = self.patch_embed(x)  # (B, Np, D)
        patch_pe = self._patch_posemb(grid)
        # the sums promote as timm's: under autocast a bf16 patch embedding plus an fp32 table is an fp32 stream
        # (a class token's concatenation promotes too; without one, casting the table down kept GAP models' residual
        # stream in bf16, 3x the gradient error)
        if patch_pe is not None:  # a sincos table made for another grid is fp32: in the model's dtype
            x = x + patch_pe.to(self.patch_embed.proj.weight.dtype)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, N, D)
        if self.cfg.posemb == "learn":
            pe = self.pos_embed
            if grid != self.cfg.grid_size:  # bicubic with antialiasing, as timm's dynamic_img_size
                pe = resample_posemb(pe, grid, self.num_prefix_tokens, "bicubic", old_grid=self.cfg.grid_size)
            x = x + pe
        return self.pos_drop(x)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing (timm's name): in training with gradients, each transformer block keeps only
        its input and recomputes its activations during backward (about one more forward pass per step for the
        blocks' activation memory; the same gradients, dropout masks included); so does each unit of a hybrid's
        ResNet."""
        self.grad_checkpointing = enable
        self.patch_embed.set_grad_checkpointing(enable)

    def _block(self, block: nn.Module, x: torch.Tensor, **kw) -> torch.Tensor:
        """One encoder block, checkpointed when asked and a backward will follow."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpointed(block, x, **kw)
        return block(x, **kw)

    def forward_features(
        self,
        x: torch.Tensor,
        return_attention: bool = False,
        on_attention: Callable[[int, torch.Tensor], None] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Encoder output after the final LayerNorm, (B, N, D); with the attention maps if asked. `on_attention`
        is called with each layer's index and attention (B, heads, N, N) as it is computed, so that an analysis
        may use and drop it (all layers' at once take L x B x heads x N^2 floats)."""
        x = self.embed(x)
        if not return_attention and on_attention is None:
            for blk in self.blocks:
                x = self._block(blk, x)
            return self.norm(x)
        attns = []
        for i, blk in enumerate(self.blocks):
            x, a = blk(x, return_attn=True)  # a: (B, heads, N, N)
            if on_attention is not None:
                on_attention(i, a)
            if return_attention:
                attns.append(a)
            del a  # not held while the next block runs (on_attention's callers drop it)
        return (self.norm(x), attns) if return_attention else self.norm(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """Block outputs, as timm's method: `indices` an int n (the last n blocks) or block indices (negative
        from the end), default all; each as (B, D, gh, gw) ("NCHW") or (B, Np, D) ("NLC") patch tokens, with the
        prefix tokens (B, 1, D) beside if `return_prefix_tokens` (and the model has any), through the final
        norm if `norm`. Returns (final features (B, N, D), list), or the list alone if `intermediates_only`
        (then, or with `stop_early`, the blocks after the last one asked for are not run)."""
        take = block_indices(len(self.blocks), indices)
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r}: expected 'NCHW' or 'NLC'")
        gh, gw = self.patch_embed.grid_of(x)
        out, x = [], self.embed(x)  # (B, N, D)
        last = max(take) if (stop_early or intermediates_only) and take else len(self.blocks) - 1
        for i, blk in enumerate(self.blocks[: last + 1]):
            x = self._block(blk, x)
            if i in take:
                y = self.norm(x) if norm else x
                prefix, patches = y[:, : self.num_prefix_tokens], y[:, self.num_prefix_tokens :]  # (B, Np, D)
                if output_fmt == "NCHW":
                    patches = patches.reshape(len(y), gh, gw, -1).permute(0, 3, 1, 2).contiguous()
                out.append((patches, prefix) if return_prefix_tokens and self.num_prefix_tokens else patches)
        if intermediates_only:
            return out
        return self.norm(x), out

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        n: int | list[int] | tuple[int, ...] = 1,
        reshape: bool = False,
        return_prefix_tokens: bool = False,
        norm: bool = False,
    ) -> list:
        """timm's (and DINO's) older form: the outputs of the last `n` blocks (or those indices) as (B, Np, D),
        or (B, D, gh, gw) if `reshape`; with the prefix tokens beside each if asked."""
        fmt = "NCHW" if reshape else "NLC"
        return self.forward_intermediates(
            x, n, return_prefix_tokens, norm, output_fmt=fmt, intermediates_only=True
        )

    def prune_intermediate_layers(
        self,
        indices: int | list[int] | tuple[int, ...] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the blocks after the last of `indices` (timm's method: a feature extractor that calls
        `forward_intermediates(x, indices)` then runs no more), the final norm if `prune_norm` (the features are
        then the blocks' raw outputs) and the head if `prune_head` (the model then gives pooled features unless
        `reset_classifier(0, "")` made it give tokens; timm's
        drops its pooling too). Returns the block indices; the config follows the depth."""
        take = block_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max(take) + 1]
        c = self.cfg
        name = model_name(c.embed_dim, len(self.blocks), c.num_heads, c.mlp_dim, c.patch_size, c.backbone)
        self.cfg = dataclasses.replace(c, depth=len(self.blocks), name=name)
        # no config field says so: such a model is not saved or read as a checkpoint (norm_pruned)
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take

    @property
    def norm_pruned(self) -> bool:
        """The final norm was dropped (`prune_intermediate_layers(prune_norm=True)`): the config cannot say so."""
        return isinstance(self.norm, nn.Identity)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, D): the class token, or the mean of the patch tokens (GAP); unpooled: as it is."""
        if not self.pooled:
            return x
        if self.cfg.pool == "token":
            return x[:, 0]
        return x[:, self.num_prefix_tokens :].mean(dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, N, D) -> logits (B, classes), or the pooled representation if pre_logits (the tokens
        themselves after `reset_classifier(0, "")`)."""
        x = self.pre_logits(self.pool(x))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """Images (B, C, H, W) -> logits (B, classes); with per-layer attention if asked.

        With a class token, only its output of the last block reaches the head, so the last block computes
        the class token's query, attention and MLP only (keys and values of all tokens): the same logits as
        `forward_head(forward_features(x))` for less arithmetic.
        """
        if return_attention:
            feats, attns = self.forward_features(x, return_attention=True)
            return self.forward_head(feats), attns
        if self.cfg.pool != "token" or not self.pooled or len(self.blocks) == 0:
            return self.forward_head(self.forward_features(x))
        x = self.embed(x)
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):  # (B, N, D), then (B, 1, D) from the last
            x = self._block(blk, x, num_queries=1) if i == last else self._block(blk, x)
        return self.forward_head(self.norm(x))

    # ------------------------------------------------------------------ resolution

    @torch.no_grad()
    def set_img_size(self, img_size: int | tuple[int, int], mode: str = "bilinear") -> None:
        """Change the input resolution in place, resampling a learned position embedding in 2D (`mode`).

        A learn2d embedding's two 1-D tables are each resampled linearly (`mode`, a 2-D choice, does not apply); a
        sincos2d embedding is laid out on the grid the model was trained on (`posemb_grid`). Every check comes
        before any change: a call that fails leaves the model as it was.
        """
        check_resample_mode(mode)
        new_cfg = dataclasses.replace(self.cfg, img_size=img_size)
        old_grid, new_grid = self.cfg.grid_size, new_cfg.grid_size
        if self.cfg.posemb == "relative" and new_grid != old_grid:
            raise ValueError(RELATIVE_FIXED.format(grid=old_grid, size=new_cfg.img_size))
        trained_grid = self.cfg.posemb_grid or old_grid
        self.patch_embed.img_size = new_cfg.img_size
        self.patch_embed.grid_size = new_grid
        if self.cfg.posemb == "learn":
            pe = resample_posemb(
                self.pos_embed.data, new_grid, self.num_prefix_tokens, mode, old_grid=old_grid
            )
            self.pos_embed = nn.Parameter(pe)
        elif self.cfg.posemb == "learn2d":
            for name, size in (("pos_embed_row", new_grid[0]), ("pos_embed_col", new_grid[1])):
                p = getattr(self, name).data  # (1, g, D/2)
                p = torch.nn.functional.interpolate(
                    p.transpose(1, 2), size=size, mode="linear", align_corners=True
                ).transpose(1, 2)
                setattr(self, name, nn.Parameter(p.contiguous()))
        self.cfg = new_cfg
        if self.cfg.posemb == "sincos2d":  # each patch keeps the embedding of its place in the image
            self.set_posemb_grid(trained_grid)

    def set_posemb_grid(self, ref_grid: tuple[int, int] | None) -> None:
        """sincos2d: lay the fixed embedding out in the units of `ref_grid` (None: this model's own grid)."""
        if self.cfg.posemb != "sincos2d":
            raise ValueError(f"posemb_grid applies to posemb='sincos2d', this model has {self.cfg.posemb!r}")
        self.cfg = dataclasses.replace(self.cfg, posemb_grid=ref_grid)
        pe = sincos2d(self.cfg.grid_size, self.embed_dim, ref_grid=self.cfg.posemb_grid)[None]
        self.register_buffer("pos_embed", pe.to(self.pos_embed.device), persistent=False)
