"""Small reusable blocks of the ViT encoder: patch embedding, attention, MLP, block, drop path."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.config import backbone_stride
from vitkit.keyed_random import current as keyed_context
from vitkit.keyed_random import keyed_uniform
from vitkit.models.fused_mlp import bias_gelu, runs_on
from vitkit.models.resnet import ResNetBackbone, backbone_channels, build_backbone


class Dropout(nn.Module):
    """Element-wise dropout; inside `vitkit.keyed_random.keyed(...)` its mask is keyed by sample and layer."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p
        self.rng_id = 0  # set by the model: distinct per layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        u = keyed_uniform(tuple(x.shape), self.rng_id, x.device)
        if u is None:
            return F.dropout(x, self.p, True)
        mask = (u >= self.p).to(x.dtype)
        return x * mask / (1.0 - self.p) if self.p < 1.0 else x * mask  # p = 1: all dropped, as F.dropout

    def extra_repr(self) -> str:
        return f"p={self.p}"


def pooled_after_reset(global_pool: str | None, num_classes: int, pooled: bool) -> bool:
    """Whether a model pools after timm's `reset_classifier(num_classes, global_pool)`: "" turns pooling off (the
    features out unpooled, so no classes), a pooling's name turns it on, None keeps it unless a head comes."""
    if global_pool == "" and num_classes:
        raise ValueError(
            f"reset_classifier({num_classes}, global_pool=''): unpooled features are not logits: "
            "num_classes must be 0"
        )
    return (pooled or bool(num_classes)) if global_pool is None else global_pool != ""


class PatchEmbed(nn.Module):
    """Split an image into P x P patches and project each to D (a conv with kernel = stride = P).

    The paper's hybrid (`backbone` = ResNet stage depths): the patches are taken from the feature map of a BiT
    ResNet instead of the pixels (as timm's HybridEmbed: `backbone`, then `proj`).
    """

    def __init__(
        self,
        img_size: tuple[int, int],
        patch_size: int,
        in_chans: int,
        embed_dim: int,
        backbone: tuple[int, ...] | None = None,
        dynamic: bool = False,
    ):
        super().__init__()
        self.img_size = tuple(img_size)
        self.dynamic = dynamic  # any image size that is a multiple of the token stride
        # what the error for images of another size suggests (a model that cannot move says so instead)
        self.resize_hint = "another size: model.set_img_size(), or dynamic_img_size=True"
        self.patch_size = patch_size
        self.in_chans = in_chans
        stride, chans = patch_size, in_chans  # pixels per token along each axis; channels into proj
        self.pixel_conv_name = "proj"  # the first conv on pixels (its name under patch_embed)
        if backbone is not None:
            self.backbone = build_backbone(tuple(backbone), in_chans)
            stride, chans = patch_size * backbone_stride(tuple(backbone)), backbone_channels(tuple(backbone))
            self.pixel_conv_name = "backbone.stem.conv" if backbone else "backbone.conv"
        self.stride = stride
        self.grid_size = (img_size[0] // stride, img_size[1] // stride)
        self.proj = nn.Conv2d(chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    @property
    def num_patches(self) -> int:
        """Tokens of the model's grid (timm's name)."""
        return self.grid_size[0] * self.grid_size[1]

    def grid_of(self, x: torch.Tensor) -> tuple[int, int]:
        """The token grid of images `x` (B, C, H, W): the model's, or with `dynamic` the images' own."""
        if not self.dynamic:
            return self.grid_size
        return (x.shape[-2] // self.stride, x.shape[-1] // self.stride)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint a hybrid's ResNet units (a root alone or pixel patches have nothing to checkpoint)."""
        if isinstance(getattr(self, "backbone", None), ResNetBackbone):
            self.backbone.grad_checkpointing = enable

    @property
    def pixel_conv(self) -> nn.Conv2d:
        """The first convolution on pixels: `proj`, or a hybrid's ResNet root conv."""
        return self.get_submodule(self.pixel_conv_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected images of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        if self.dynamic and (x.shape[-2] % self.stride or x.shape[-1] % self.stride or min(x.shape[-2:]) < 1):
            raise ValueError(
                f"dynamic_img_size: image size {x.shape[-2]}x{x.shape[-1]} is not a positive multiple of the "
                f"token stride {self.stride}"
            )
        if not self.dynamic and tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(
                f"expected images of shape (B, {self.in_chans}, {self.img_size[0]}, {self.img_size[1]}), got "
                f"{tuple(x.shape)} ({self.resize_hint})"
            )
        if hasattr(self, "backbone"):
            x = self.backbone(x)  # (B, C', H/s, W/s)
        if use_matmul_patch_embed(x):
            return patchify_project(x, self.proj)  # (B, N, D)
        x = self.proj(x)  # (B, D, gh, gw)
        return x.flatten(2).transpose(1, 2)  # (B, N, D)


def use_matmul_patch_embed(x: torch.Tensor) -> bool:
    """Project patches by one matrix product (CUDA) rather than the strided conv (CPU): bench/RESULTS.md.

    Measured: 1.05x on an H200's ViT-B/16 training step (sixth session); on the CPU no gain in eager and 5-6.5%
    slower int8 ONNX fast path (fifth session). Forward hooks on `proj` do not fire on the matrix-product path.
    """
    return x.is_cuda


def patchify_project(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """`conv` (kernel = stride = P, no padding) as one matrix product: (B, C, H, W) -> (B, N, D), same sums."""
    P = conv.kernel_size[0]
    if (
        conv.kernel_size != (P, P)
        or conv.stride != (P, P)
        or conv.padding != (0, 0)
        or conv.dilation != (1, 1)
        or conv.groups != 1
    ):
        raise ValueError(f"patchify_project needs a conv with kernel = stride, no padding or groups: {conv}")
    B, C, H, W = x.shape
    gh, gw = H // P, W // P
    x = x[..., : gh * P, : gw * P].reshape(B, C, gh, P, gw, P)
    x = x.permute(0, 2, 4, 1, 3, 5).reshape(B, gh * gw, C * P * P)  # (B, N, C*P*P), the filter's layout
    return F.linear(x, conv.weight.reshape(conv.out_channels, -1), conv.bias)  # (B, N, D)


class Attention(nn.Module):
    """Multi-head self-attention: SDPA by default, explicit softmax when the weights are asked for."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        rel_tokens: int = 0,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = Dropout(proj_drop)
        if rel_tokens:  # the paper's 1-D relative attention (Appendix D.4): one key per offset p_q - p_k
            self.rel_pos = nn.Parameter(torch.zeros(2 * rel_tokens - 1, dim))  # offsets -(N-1) .. N-1
            pos = torch.arange(rel_tokens)
            self.register_buffer("rel_index", pos[:, None] - pos[None, :] + rel_tokens - 1, persistent=False)

    def relative_logits(self, q: torch.Tensor) -> torch.Tensor | None:
        """The relative attention's logits, scaled, as a bias (B, H, n, N) on the content logits of queries `q`
        (B, H, n, hd) (the first n tokens): q_i . r_(i - j), the tokens in their 1-D order (the class token
        first); None without relative attention."""
        if not hasattr(self, "rel_pos"):
            return None
        B, H, n, hd = q.shape
        rel = self.rel_pos.to(q.dtype).reshape(-1, H, hd).transpose(0, 1)  # (H, 2N-1, hd): the heads' keys
        logits = (q * self.scale) @ rel.transpose(-2, -1)  # (B, H, n, 2N-1): every offset
        return logits.gather(-1, self.rel_index[:n].expand(B, H, -1, -1))  # (B, H, n, N): token i, j -> i - j

    def forward(self, x: torch.Tensor, return_attn: bool = False, num_queries: int | None = None):
        """(B, N, D) -> (B, N, D); with `num_queries`, outputs for the first n tokens only: (B, n, D)."""
        B, N, C = x.shape
        if num_queries is None:
            n = N
            qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)  # (B, H, N, hd) each
        else:  # queries of the first n tokens, keys and values of all
            n = num_queries
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, :n], w[:C], None if b is None else b[:C])  # (B, n, D)
            q = q.reshape(B, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, n, hd)
            kv = F.linear(x, w[C:], None if b is None else b[C:])  # (B, N, 2D)
            k, v = kv.reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = None
        p = self.attn_drop.p if self.training else 0.0
        bias = self.relative_logits(q)  # (B, H, n, N) or None
        if return_attn or (p > 0 and keyed_context() is not None):  # explicit: weights or keyed dropout
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, n, N)
            if bias is not None:
                attn = attn + bias
            attn = attn.softmax(dim=-1)
            x = self.attn_drop(attn) @ v
        else:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        x = x.transpose(1, 2).reshape(B, n, C)  # (B, n, D)
        x = self.proj_drop(self.proj(x))
        return (x, attn) if return_attn else x


class PreLogits(nn.Module):
    """The pre-training representation layer: Linear + tanh (dropped when fine-tuning)."""

    def __init__(self, dim: int, size: int):
        super().__init__()
        self.fc = nn.Linear(dim, size)
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


def gelu(act: str = "gelu") -> nn.GELU:
    """`model.mlp_act` as a module: "gelu" (erf) or "gelu_tanh" (the tanh approximation)."""
    return nn.GELU(approximate="tanh" if act == "gelu_tanh" else "none")


class Mlp(nn.Module):
    """Linear - GELU - Linear, with dropout after each Linear; `act` "gelu" (erf, timm's and transformers') or
    "gelu_tanh" (the tanh approximation: flax's default, so the official JAX code's). With `fused_bias_gelu`
    set (`fused_mlp.set_fused_bias_gelu`), fc1's bias and the GELU run as one Triton kernel each way where it runs.
    """

    def __init__(self, dim: int, hidden: int, drop: float = 0.0, act: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = gelu(act)
        self.drop1 = Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = Dropout(drop)
        self.fused_bias_gelu = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_bias_gelu and runs_on(x):
            h = bias_gelu(F.linear(x, self.fc1.weight), self.fc1.bias, self.act.approximate)  # (B, N, H)
        else:
            h = self.act(self.fc1(x))  # (B, N, H)
        return self.drop2(self.fc2(self.drop1(h)))


def drop_path(x: torch.Tensor, p: float, training: bool, rng_id: int = 0) -> torch.Tensor:
    """Stochastic depth: zero whole samples' residual branch with probability p, rescale the rest."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    u = keyed_uniform((x.shape[0],), rng_id, x.device)
    if u is None:
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    else:
        mask = (u < keep).to(x.dtype).view((x.shape[0],) + (1,) * (x.ndim - 1))
    return x * mask / keep if keep > 0.0 else x * mask  # p = 1: every branch dropped, no 0/0


class DropPath(nn.Module):
    """Stochastic depth as a module."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p
        self.rng_id = 0  # set by the model: distinct per layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training, self.rng_id)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    """Pre-LN encoder block: z' = MSA(LN(z)) + z ; z = MLP(LN(z')) + z'."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        eps: float = 1e-6,
        act: str = "gelu",
        rel_tokens: int = 0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, rel_tokens)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_dim, drop, act)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor, return_attn: bool = False, num_queries: int | None = None):
        """(B, N, D) -> (B, N, D); with `num_queries`, only the first n tokens' outputs: (B, n, D)."""
        attn = None
        if return_attn:
            y, attn = self.attn(self.norm1(x), return_attn=True, num_queries=num_queries)
        else:
            y = self.attn(self.norm1(x), num_queries=num_queries)
        if num_queries is not None:
            x = x[:, :num_queries]
        x = x + self.drop_path1(y)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return (x, attn) if return_attn else x


def block_indices(depth: int, indices: int | list[int] | tuple[int, ...] | None) -> list[int]:
    """Block (or feature level) indices asked for, as timm's `indices`: all (None), the last n (an int), or a list (negative from the end), checked."""
    if indices is None:
        return list(range(depth))
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= depth:
            raise ValueError(f"indices={indices}: the last n blocks with 1 <= n <= {depth}")
        return list(range(depth - indices, depth))
    if not isinstance(indices, (list, tuple)) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in indices
    ):
        raise ValueError(f"indices={indices!r}: an int (the last n blocks) or a list of block indices")
    bad = [i for i in indices if not -depth <= i < depth]
    if bad:
        raise ValueError(f"indices={list(indices)}: {bad} outside the {depth} blocks")
    return sorted({i % depth for i in indices})
