"""What the CNN baselines (BiT, ResNet, SASA, AA) share: the pooled 1x1-conv head and the classifier's interface
(`forward_features` -> `forward_head`, the bottlenecks FSDP shards, the input check)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from vitkit.models.checkpointing import run_blocks
from vitkit.models.data_config import PretrainedCfg, data_config, set_pretrained_cfg
from vitkit.models.layers import Dropout, block_indices, pooled_after_reset


class ConvHead(nn.Module):
    """Global average pooling, dropout, a 1x1 conv to the classes (timm's `head.fc`): (B, C, h, w) -> (B, K)."""

    def __init__(self, channels: int, num_classes: int, drop: float):
        super().__init__()
        self.drop = Dropout(drop)
        self.fc = nn.Conv2d(channels, num_classes, 1)

    @torch.no_grad()
    def reset_parameters(self, zero: bool = False) -> None:
        """BiT's and timm's head init: weights N(0, 0.01), or zero (fine-tuning); zero bias."""
        if zero:
            nn.init.zeros_(self.fc.weight)
        else:
            nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map (B, C, h, w) -> logits (B, K), or pooled features (B, C) if pre_logits."""
        x = self.drop(x.mean((2, 3), keepdim=True))  # (B, C, 1, 1)
        return x.flatten(1) if pre_logits else self.fc(x).flatten(1)  # (B, C) or (B, K)


class CNNClassifier(nn.Module):
    """A CNN with `stem`, `stages` of `blocks`, `head` (a ConvHead or None) and `cfg`; subclasses give
    `forward_features`."""

    def __init__(self) -> None:
        super().__init__()
        self.grad_checkpointing = False  # set_grad_checkpointing()
        self.pooled = True  # False after reset_classifier(0, ""): the last feature map out, as timm's
        # the loaded weights' mean, std, classes, source (pretrained_cfg)
        self.preprocess: dict[str, Any] = {}

    @property
    def head_hidden_size(self) -> int:
        """The width of what the head takes (timm's): the pooled features'."""
        return self.num_features

    @property
    def blocks(self) -> list[nn.Module]:
        """All bottlenecks in order (the units FSDP shards)."""
        return [b for s in self.stages for b in s.blocks]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing (timm's name): in training with gradients, each bottleneck keeps only its
        input and recomputes its activations during backward (the same gradients, dropout masks and BatchNorm
        running statistics)."""
        self.grad_checkpointing = enable

    def run_stages(self, x: torch.Tensor) -> torch.Tensor:
        """The stem's output through every bottleneck, each checkpointed when asked."""
        return run_blocks(self.blocks, x, self.grad_checkpointing)

    def check_images(self, x: torch.Tensor) -> None:
        """Images must be (B, in_chans, H, W): anything else is an error saying so."""
        if x.ndim != 4 or x.shape[1] != self.cfg.in_chans:
            raise ValueError(f"expected images of shape (B, {self.cfg.in_chans}, H, W), got {tuple(x.shape)}")

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """timm's data config (input size, mean/std of the loaded weights, resize, crop, classes)."""
        # the first layer that reads pixels: the stem's conv, or SASA's attention stem
        first = "stem.conv" if isinstance(getattr(self.stem, "conv", None), nn.Conv2d) else "stem.qk"
        return PretrainedCfg(data_config(self.cfg, first, self.preprocess), self.preprocess)

    @pretrained_cfg.setter
    def pretrained_cfg(self, value: dict[str, Any]) -> None:
        set_pretrained_cfg(self.pretrained_cfg, value)

    default_cfg = property(
        pretrained_cfg.fget, pretrained_cfg.fset, doc="timm's older name of pretrained_cfg"
    )

    def get_classifier(self) -> nn.Module | None:
        """The classifier layer (timm's name; its ResNetV2's): the head's 1x1 conv, None without a head."""
        return self.head.fc if self.head is not None else None

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups by layer, as timm's ResNets: the stem, each bottleneck (each stage if `coarse`)."""
        blocks = (
            r"^stages\.(\d+)" if coarse else [(r"^stages\.(\d+)\.blocks\.(\d+)", None), (r"^norm", (99999,))]
        )
        return {"stem": r"^stem", "blocks": blocks}

    @torch.no_grad()
    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new zero-initialised head for `num_classes` (0: none, pooled features out), as BiT's fine-tuning
        (timm's method; timm's new head is random); the pooling is the average ("avg"), or none with
        `reset_classifier(0, "")`: the final feature map (B, C, h, w) out, as timm's (not saved with the weights)."""
        cfg = dataclasses.replace(self.cfg, num_classes=num_classes, head_init="zero")  # checks num_classes
        if global_pool not in (None, "avg", ""):
            raise ValueError(
                f"reset_classifier(global_pool={global_pool!r}): the CNNs pool by 'avg' (or '': none)"
            )
        pooled = pooled_after_reset(global_pool, num_classes, self.pooled)
        ref = next(self.parameters())
        rng_id = self.head.drop.rng_id if self.head is not None else 0
        self.head = None
        if num_classes:
            self.head = ConvHead(self.num_features, num_classes, cfg.drop_rate).to(ref.device, ref.dtype)
            self.head.reset_parameters(zero=True)
            self.head.drop.rng_id = rng_id
            self.head.train(self.training)
        self.num_classes, self.cfg = num_classes, cfg
        self.pooled = pooled
        self.preprocess.pop("classes", None)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """Feature maps at each level, as timm's ResNet/ResNetV2 method: level 0 the stem's before its max pool
        (stride 2), then each stage's output; `indices` an int n (the last n levels) or level indices (negative
        from the end), default all; with `norm`, a final norm (BiT's) applied to the last stage's. Returns
        (forward_features's map, list), or the list alone if `intermediates_only` (then, or with `stop_early`,
        the stages after the last one asked for are not run)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}: the CNNs give 'NCHW' maps")
        self.check_images(x)
        take = block_indices(1 + len(self.stages), indices)
        out = []
        children = list(self.stem.named_children()) if isinstance(self.stem, nn.Sequential) else []
        if (
            children and children[-1][0] == "pool"
        ):  # the stem's feature is taken before its padding and pooling
            cut = next(i for i, (name, _) in enumerate(children) if name in ("pad", "pool"))
            for i, (_, module) in enumerate(children):
                if i == cut and 0 in take:
                    out.append(x)
                x = module(x)
        else:  # SASA's attention stem pools inside: its output
            x = self.stem(x)
            if 0 in take:
                out.append(x)
        last = max(take) if (stop_early or intermediates_only) and take else len(self.stages)
        norm_layer = getattr(self, "norm", None)
        for level, stage in enumerate(self.stages[:last], start=1):
            x = run_blocks(stage.blocks, x, self.grad_checkpointing)
            if level in take:
                final = level == len(self.stages) and norm and norm_layer is not None
                out.append(norm_layer(x) if final else x)
        if intermediates_only:
            return out
        if norm_layer is not None and last == len(self.stages):  # stopped early: the last map run, unnormed
            x = norm_layer(x)
        return x, out

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map -> logits (B, classes), or the pooled features (B, C') if pre_logits or headless (the map
        itself, headless after `reset_classifier(0, "")`)."""
        if self.head is None:
            return x.mean((2, 3)) if self.pooled else x
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> logits (B, classes)."""
        return self.forward_head(self.forward_features(x))
