"""The one registry of model variants: the paper's notation `ViT-B/16`, `R50+ViT-B/16`, `BiT-R50x1`, and the
attention baselines `SASA-ResNet-26`, `AA-ResNet-50` with their control `ResNet-50` -> ModelConfig."""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from typing import Any

from vitkit.config import BIT_NAME, RESNET_DEPTHS, RESNET_NAME, ModelConfig, backbone_stride, cnn_name
from vitkit.models.bit import bit_macs, bit_params
from vitkit.models.resnet import backbone_channels, backbone_macs, backbone_params
from vitkit.models.resnet_v1 import resnet_v1_macs, resnet_v1_params

# The paper's Table 1 (+ Ti from DeiT/AugReg): width, depth, heads, MLP size.
WIDTHS: dict[str, tuple[int, int, int, int]] = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
}

# Named variants and the setting each is shown at: the paper's models at 224 px, and small-image
# models for 28x28 grayscale data (Fashion-MNIST). Any `ViT-<size>/<patch>` is accepted too, and any hybrid
# `R<n>+ViT-<size>/<stride>`: the paper's Section 3.1, a BiT ResNet's feature map cut into patches so that
# each token covers stride x stride pixels (R50+ViT-B/16: 1x1 patches of the stride-16 map).
REGISTERED: dict[str, dict[str, Any]] = {
    "ViT-Ti/16": {},
    "ViT-S/16": {},
    "ViT-S/32": {},
    "ViT-B/16": {},
    "ViT-B/32": {},
    "ViT-L/16": {},
    "ViT-L/32": {},
    "ViT-H/14": {},
    "R50+ViT-B/16": {},
    "R26+ViT-S/32": {},
    "R+ViT-Ti/16": {},
    "ViT-Ti/4": dict(img_size=28, in_chans=1, num_classes=10),
    "ViT-S/4": dict(img_size=28, in_chans=1, num_classes=10),
    "BiT-R50x1": {},
    "BiT-R101x3": {},
    "BiT-R152x4": {},  # BiT-L, the paper's Table 2 baseline
    "BiT-R26x1": dict(img_size=28, in_chans=1, num_classes=10),
    "ResNet-50": {},
    "SASA-ResNet-50": {},
    "AA-ResNet-50": {},
    "ResNet-26": dict(img_size=28, in_chans=1, num_classes=10),
    "SASA-ResNet-26": dict(img_size=28, in_chans=1, num_classes=10),
    "AA-ResNet-26": dict(img_size=28, in_chans=1, num_classes=10),
}

# `create_model(name, pretrained=True)`: the paper's own weights where the Hugging Face hub has them in a
# classifier for ImageNet-1k (ImageNet-21k pre-training, then fine-tuned), else timm's (AugReg, BiT, ResNet);
# ViT-H/14 is the paper's ImageNet-21k model without a head (Google published no ImageNet-1k head for it)
DEFAULT_PRETRAINED = {
    "ViT-Ti/16": "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k",
    "ViT-S/16": "timm/vit_small_patch16_224.augreg_in21k_ft_in1k",
    "ViT-S/32": "timm/vit_small_patch32_224.augreg_in21k_ft_in1k",
    "ViT-B/16": "google/vit-base-patch16-224",
    "ViT-B/32": "timm/vit_base_patch32_224.augreg_in21k_ft_in1k",
    "ViT-L/16": "google/vit-large-patch16-224",
    "ViT-L/32": "google/vit-large-patch32-384",
    "ViT-H/14": "google/vit-huge-patch14-224-in21k",
    "R50+ViT-B/16": "timm/vit_base_r50_s16_384.orig_in21k_ft_in1k",
    "R26+ViT-S/32": "timm/vit_small_r26_s32_224.augreg_in21k_ft_in1k",
    "BiT-R50x1": "timm/resnetv2_50x1_bit.goog_in21k_ft_in1k",
    "ResNet-50": "timm/resnet50.a1_in1k",
}


# a paper size, or the <width>x<depth> that model_name gives another shape
_NAME = re.compile(r"^ViT-(Ti|S|B|L|H|\d+x\d+)/(\d+)$", re.IGNORECASE)
# the paper writes R50x1+ViT-B/16 too; R3-4-9+ names the stages themselves (model_name's)
_HYBRID = re.compile(r"^(R\d*|R\d+(?:-\d+)+)(?:x1)?\s*\+\s*(.*)$", re.IGNORECASE)

# The BiT baselines' stage depths (bottleneck blocks per stage), by ResNet depth (config.bit_depth of them).
BIT_DEPTHS: dict[int, tuple[int, ...]] = {
    26: (2, 2, 2, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}

ATTN_HEADS = 8  # both attention papers' heads per layer

# The hybrids' ResNets (stage depths). R50 as the paper's Section 4.1: at token stride 16 stage 4's blocks move
# to stage 3 (3, 4, 9); at stride 32 the standard ResNet-50's four stages (3, 4, 6, 3). R26 as AugReg's
# R26+ViT-S/32; R the root alone (stride 4).
RESNETS: dict[str, tuple[int, ...]] = {"R50": (3, 4, 9), "R26": (2, 2, 2, 2), "R": ()}
R50_STRIDE32 = (3, 4, 6, 3)


def model_name(
    width: int, depth: int, heads: int, mlp: int, patch: int, backbone: tuple[int, ...] | None = None
) -> str:
    """ "ViT-B/16" when the shape is one of the paper's, else "ViT-<width>x<depth>/<patch>"; hybrids
    "R50+ViT-B/16" with the token stride after the slash, where that name parses back to the same ResNet and patch
    (else "R3-4-9+ViT-B/32": R50's stride-16 stages under 2x2 patches, which "R50+ViT-B/32" is not)."""
    prefix = ""
    if backbone is not None:
        patch *= backbone_stride(backbone)
        names = [k for k, v in RESNETS.items() if _resnet_of(k, patch) == tuple(backbone)]
        prefix = (names[0] if names else "R" + "-".join(map(str, backbone))) + "+"
    for size, shape in WIDTHS.items():
        if shape == (width, depth, heads, mlp):
            return f"{prefix}ViT-{size}/{patch}"
    return f"{prefix}ViT-{width}x{depth}/{patch}"


def parse_name(name: str) -> tuple[str, int]:
    """Split `ViT-B/16` into ("B", 16) (`ViT-192x2/16` into ("192x2", 16)); raise ValueError naming what is
    wrong."""
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string like 'ViT-B/16', got {name!r}")
    m = _NAME.match(name.strip())
    if not m:
        raise ValueError(
            f"unknown model {name!r}: expected 'ViT-<size>/<patch>' with size one of "
            f"{', '.join(WIDTHS)} (or <width>x<depth>) and an integer patch size, e.g. 'ViT-B/16', or a hybrid "
            f"'<ResNet>+ViT-<size>/<stride>' with ResNet one of {', '.join(RESNETS)}, e.g. 'R50+ViT-B/16', "
            f"or a CNN baseline: 'BiT-R<depth>x<width>' (e.g. 'BiT-R50x1'), 'ResNet-<depth>', "
            f"'SASA-ResNet-<depth>' or 'AA-ResNet-<depth>' (depth one of {', '.join(map(str, RESNET_DEPTHS))})"
        )
    size = {k.lower(): k for k in WIDTHS}.get(m.group(1).lower(), m.group(1).lower())
    patch = int(m.group(2))
    if patch < 1:
        raise ValueError(f"model {name!r}: patch size must be >= 1")
    return size, patch


def parse_hybrid(name: str) -> tuple[str, tuple[int, ...] | None, str]:
    """Split `R50+ViT-B/16` into ("R50", (3, 4, 9), "ViT-B/16"); a plain name gives ("", None, name)."""
    m = _HYBRID.match(name.strip()) if isinstance(name, str) else None
    if not m:
        return "", None, name
    resnet = {k.lower(): k for k in RESNETS}.get(m.group(1).lower())
    if resnet is None and "-" in m.group(1):  # R3-4-9: the stages themselves
        layers = tuple(int(v) for v in m.group(1)[1:].split("-"))
        if min(layers) < 1 or len(layers) > 4:
            raise ValueError(f"hybrid {name!r}: one to four ResNet stages of at least one block each")
        parse_name(m.group(2))
        return m.group(1).upper(), layers, m.group(2)
    if resnet is None:
        raise ValueError(
            f"unknown hybrid {name!r}: the ResNet is one of {', '.join(RESNETS)} (e.g. 'R50+ViT-B/16') or its "
            "stages (R3-4-9+ViT-B/32)"
        )
    _, stride = parse_name(m.group(2))
    return resnet, _resnet_of(resnet, stride), m.group(2)


def _shape_of(size: str, name: str, overrides: dict[str, Any]) -> tuple[int, int, int, int]:
    """(width, depth, heads, MLP) a name's size stands for: the paper's table, or <width>x<depth> with that width's
    heads and MLP in the table (else width / 64 heads and 4 x width), the overrides' where they give them."""
    if size in WIDTHS:
        return WIDTHS[size]
    width, depth = (int(v) for v in size.split("x"))
    table = {w: (h, m) for w, _, h, m in WIDTHS.values()}
    heads, mlp = table.get(width, (width // 64 if width % 64 == 0 else 0, 4 * width))
    heads = overrides.get("num_heads", heads)
    if width < 1 or depth < 1:
        raise ValueError(f"model {name!r}: width {width} and depth {depth} must be positive")
    if not heads:
        raise ValueError(
            f"model {name!r}: width {width} is neither in the paper's table nor a multiple of 64: its heads are "
            "not known from the name; pass num_heads= (or pretrained weights, which give them)"
        )
    return width, depth, heads, overrides.get("mlp_dim", mlp)


def _resnet_of(resnet: str, stride: int) -> tuple[int, ...]:
    """A hybrid's ResNet stages by name and token stride: R50 is the standard ResNet-50 at stride 32 and beyond."""
    return R50_STRIDE32 if resnet == "R50" and stride % 32 == 0 else RESNETS[resnet]


def check_model_options(overrides: dict[str, Any], cnn: bool = False) -> dict[str, Any]:
    """Keyword overrides as ModelConfig fields: timm's `global_pool` ("token", "avg") read as a ViT's `pool` (a
    CNN's is "avg"); an unknown one is an error listing the valid ones."""
    if cnn and "global_pool" in overrides:
        if overrides["global_pool"] != "avg":
            raise ValueError(f"global_pool={overrides['global_pool']!r}: the CNNs pool by the mean ('avg')")
        overrides = {k: v for k, v in overrides.items() if k != "global_pool"}  # what it does
    if overrides.get("global_pool") == "":
        raise ValueError(
            "global_pool='': build the model, then model.reset_classifier(0, '') gives its tokens unpooled"
        )
    if "global_pool" in overrides:
        overrides = dict(overrides)
        given = overrides.pop("global_pool")
        pool = {"token": "token", "avg": "gap"}.get(given)
        also = "" if pool is None else f", not both that and pool={overrides.get('pool')!r}"
        if pool is None or overrides.get("pool", pool) != pool:
            raise ValueError(
                f"global_pool={given!r}: a ViT pools by its class token ('token') or the mean of its patch tokens "
                f"('avg', pool='gap'){also}"
            )
        overrides["pool"] = pool
    valid = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = set(overrides) - valid
    if unknown:
        raise ValueError(f"unknown model option(s) {sorted(unknown)}; valid: {sorted(valid)}")
    return overrides


def bit_config(name: str, **overrides: Any) -> ModelConfig:
    """`BiT-R<depth>x<width>` (e.g. BiT-R50x1, BiT-R152x4) -> its ModelConfig with arch='bit'."""
    m = BIT_NAME.match(name.strip())
    depth, width = int(m.group(1)), int(m.group(2))
    if depth not in BIT_DEPTHS or width < 1:
        raise ValueError(
            f"unknown BiT model {name!r}: depth one of {', '.join(map(str, BIT_DEPTHS))} and a width factor >= 1, "
            "e.g. 'BiT-R50x1', 'BiT-R152x4'"
        )
    for key in ("arch", "backbone", "width_factor"):
        if key in overrides:
            raise ValueError(f"model {name!r} fixes {key}; give another BiT name instead")
    overrides = check_model_options(overrides, cnn=True)
    base = dict(name=f"BiT-R{depth}x{width}", arch="bit", backbone=BIT_DEPTHS[depth], width_factor=width)
    return ModelConfig(**{**base, **overrides})


def resnet_config(name: str, **overrides: Any) -> ModelConfig:
    """`ResNet-<depth>`, `SASA-ResNet-<depth>`, `AA-ResNet-<depth>` -> its ModelConfig (8 heads for attention)."""
    m = RESNET_NAME.match(name.strip())
    depth = int(m.group(2))
    arch = (m.group(1) or "").rstrip("-").lower() or "resnet"
    if depth not in RESNET_DEPTHS:
        raise ValueError(
            f"unknown model {name!r}: the ResNet depth is one of {', '.join(map(str, RESNET_DEPTHS))}, e.g. "
            "'ResNet-50', 'SASA-ResNet-26', 'AA-ResNet-50'"
        )
    for key in ("arch", "backbone"):
        if key in overrides:
            raise ValueError(f"model {name!r} fixes {key}; give another model name instead")
    overrides = check_model_options(overrides, cnn=True)
    base: dict[str, Any] = dict(arch=arch, backbone=RESNET_DEPTHS[depth])
    base["name"] = cnn_name(arch, base["backbone"])
    if arch != "resnet":
        base["num_heads"] = ATTN_HEADS
    return ModelConfig(**{**base, **overrides})


def model_config(name: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of variant `name`, with keyword overrides (img_size, num_classes, pool, ...)."""
    if isinstance(name, str) and BIT_NAME.match(name.strip()):
        return bit_config(name, **overrides)
    if isinstance(name, str) and RESNET_NAME.match(name.strip()):
        return resnet_config(name, **overrides)
    overrides = check_model_options(overrides)
    resnet, layers, plain = parse_hybrid(name)
    size, stride = parse_name(plain)  # a hybrid's name gives the token stride, a plain one the patch size
    width, depth, heads, mlp = _shape_of(size, name, overrides)
    patch = stride
    if layers is not None:  # patches of the ResNet's feature map
        patch = stride // backbone_stride(layers)
        if patch * backbone_stride(layers) != stride:
            raise ValueError(
                f"hybrid {name!r}: the token stride {stride} must be a multiple of the ResNet's stride "
                f"{backbone_stride(layers)}"
            )
        if "backbone" in overrides:
            raise ValueError(
                f"model {name!r} names its ResNet; give a plain name such as 'ViT-B/16' with backbone="
            )
        overrides = {"backbone": layers, **overrides}
    base = dict(
        name=f"{resnet + '+' if resnet else ''}ViT-{size}/{stride}",
        patch_size=patch,
        embed_dim=width,
        depth=depth,
        num_heads=heads,
        mlp_dim=mlp,
    )
    base.update(overrides)
    shape = (base["embed_dim"], base["depth"], base["num_heads"], base["mlp_dim"])
    # the name says the shape; a hybrid's always its canonical one (R3-4-9+ViT-B/16 is R50+ViT-B/16)
    if base.get("backbone") is not None or shape != WIDTHS.get(size) or base["patch_size"] != patch:
        base["name"] = model_name(*shape, base["patch_size"], base.get("backbone"))  # the name says the shape
    return ModelConfig(**base)


def list_models(
    pattern: str | list[str] | tuple[str, ...] = "*",
    exclude_filters: str | list[str] | tuple[str, ...] = (),
    pretrained: bool = False,
) -> list[str]:
    """Names of the registered variants matching a shell-style `pattern` (or any of several: "ViT-*",
    "*ResNet*"), case insensitive, but none of `exclude_filters`; with `pretrained`, only those with default
    weights (`create_model(name, pretrained=True)`), as timm's. Any `ViT-<size>/<patch>`, `R<n>+ViT-<size>/<stride>`,
    `BiT-R<n>x<w>`, `[SASA-|AA-]ResNet-<n>` builds too."""

    def patterns(value: Any, what: str) -> list[str]:
        items = (
            [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
        )
        if items is None or not all(isinstance(v, str) for v in items):
            raise ValueError(f"list_models({what}={value!r}): shell-style patterns such as 'ViT-*'")
        return [v.lower() for v in items]

    keep, drop = patterns(pattern, "pattern"), patterns(exclude_filters, "exclude_filters")
    names = [n for n in REGISTERED if any(fnmatch.fnmatchcase(n.lower(), p) for p in keep)]
    names = [n for n in names if not any(fnmatch.fnmatchcase(n.lower(), p) for p in drop)]
    return [n for n in names if lookup(DEFAULT_PRETRAINED, n)] if pretrained else names


def lookup(table: dict[str, Any], name: Any, default: Any = None) -> Any:
    """`table[name]` with the model name matched case-insensitively (ViT-B/16, vit-b/16), else `default`."""
    if not isinstance(name, str):
        return default
    lowered = {k.lower(): v for k, v in table.items()}
    if name.strip().lower() in lowered:
        return lowered[name.strip().lower()]
    try:  # another spelling of a listed model: R50x1+ViT-B/16, ViT-B/016
        return lowered.get(model_config(name).name.lower(), default)
    except ValueError:
        return default


def registered_setting(name: str) -> dict[str, Any]:
    """The image size, channels and classes a registered variant is listed with (none for the others)."""
    return dict(lookup(REGISTERED, name, {}))


def registered_config(name: str, **overrides: Any) -> ModelConfig:
    """The config of a registered variant at the setting it is listed with."""
    return model_config(name, **{**registered_setting(name), **overrides})


def _config_of(cfg: Any, fn: str) -> ModelConfig:
    """A ModelConfig, or the config of a vitkit model."""
    if isinstance(cfg, ModelConfig):
        return cfg
    if isinstance(getattr(cfg, "cfg", None), ModelConfig):
        return cfg.cfg
    raise ValueError(f"{fn}: expected a ModelConfig or a vitkit model, got {type(cfg).__name__}")


def _block_macs(queries: int, n: int, d: int, m: int, relative: bool) -> int:
    """One encoder block's MACs for `queries` of its n tokens: keys and values of all n, each query's projection,
    attention (logits and the weighted sum; relative position logits against 2n - 1 offsets), output projection
    and MLP."""
    rel = queries * (2 * n - 1) * d if relative else 0
    return 2 * n * d * d + queries * (2 * d * d + 2 * n * d + 2 * d * m) + rel


def forward_macs(cfg: ModelConfig) -> int:
    """Analytic multiply-accumulates of one forward pass of one image (of a ModelConfig or a vitkit model)."""
    cfg = _config_of(cfg, "forward_macs")
    if cfg.arch == "bit":
        return bit_macs(cfg)
    if cfg.arch in ("resnet", "sasa", "aa"):
        return resnet_v1_macs(cfg)
    d, m, L = cfg.embed_dim, cfg.mlp_dim, cfg.depth
    chans = cfg.in_chans if cfg.backbone is None else backbone_channels(cfg.backbone)
    p2c = cfg.patch_size**2 * chans
    n_p, n = cfg.num_patches, cfg.num_tokens
    embed = n_p * p2c * d
    if cfg.backbone is not None:
        embed += backbone_macs(cfg.backbone, cfg.in_chans, cfg.img_size)
    blocks = L * _block_macs(n, n, d, m, cfg.posemb == "relative")
    rep = d * cfg.representation_size if cfg.representation_size else 0
    head_in = cfg.representation_size or d
    return embed + blocks + rep + head_in * cfg.num_classes


def executed_macs(cfg: ModelConfig) -> int:
    """The multiply-accumulates `model(x)` performs for one image: `forward_macs` but for a class-token ViT, whose
    last block computes the class token's query, attention, projection and MLP only (keys and values of all n
    tokens): about n (2d^2 + 2dm) + 2 n^2 d fewer (ViT-B/16: 7% fewer, the 4-block fashion-mnist ViT 19%)."""
    unpooled = getattr(cfg, "pooled", True) is False  # a model after reset_classifier(0, ""): all tokens out
    cfg = _config_of(cfg, "executed_macs")
    full = forward_macs(cfg)
    if cfg.arch != "vit" or cfg.pool != "token" or cfg.depth < 1 or unpooled:
        return full
    d, m, n, relative = cfg.embed_dim, cfg.mlp_dim, cfg.num_tokens, cfg.posemb == "relative"
    return full - _block_macs(n, n, d, m, relative) + _block_macs(1, n, d, m, relative)


def count_params(cfg: ModelConfig) -> int:
    """Analytic parameter count (matches `sum(p.numel())` of the built model; of a ModelConfig or a model)."""
    if getattr(cfg, "norm_pruned", False):  # a model whose final norm was pruned: its config cannot say so
        return count_params(cfg.cfg) - 2 * cfg.cfg.embed_dim
    cfg = _config_of(cfg, "count_params")
    if cfg.arch == "bit":
        return bit_params(cfg)
    if cfg.arch in ("resnet", "sasa", "aa"):
        return resnet_v1_params(cfg)
    d, m, L, c = cfg.embed_dim, cfg.mlp_dim, cfg.depth, cfg.in_chans
    qkvb = 3 * d if cfg.qkv_bias else 0
    block = 2 * 2 * d + (3 * d * d + qkvb) + (d * d + d) + (d * m + m) + (m * d + d)
    if cfg.backbone is None:
        embed = cfg.patch_size**2 * c * d + d
    else:
        embed = cfg.patch_size**2 * backbone_channels(cfg.backbone) * d + d + backbone_params(cfg.backbone, c)
    prefix = d if cfg.pool == "token" else 0
    gh, gw = cfg.grid_size
    pos = {
        "learn": cfg.num_tokens * d,
        "learn2d": (gh + gw) * (d // 2),
        "sincos2d": 0,
        "relative": L * (2 * cfg.num_tokens - 1) * d,
        "none": 0,
    }[cfg.posemb]
    rep = (d * cfg.representation_size + cfg.representation_size) if cfg.representation_size else 0
    head_in = cfg.representation_size or d
    head = head_in * cfg.num_classes + cfg.num_classes if cfg.num_classes else 0
    return embed + prefix + pos + L * block + 2 * d + rep + head
