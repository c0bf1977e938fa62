"""The preprocessing a model expects, as timm's `pretrained_cfg` (what `timm.data.resolve_model_data_config`
and timm's transforms read): input size, normalisation, resize and crop."""

from __future__ import annotations

from typing import Any

from vitkit.config import ModelConfig

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # timm's ResNet default


def default_mean_std(cfg: ModelConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Random weights: the official ViT's and BiT's pixels in [-1, 1]; timm's ImageNet statistics for the RGB
    ResNets of the attention baselines."""
    if cfg.arch in ("resnet", "sasa", "aa") and cfg.in_chans == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (0.5,) * cfg.in_chans, (0.5,) * cfg.in_chans


def data_config(
    cfg: ModelConfig, first_conv: str, preprocess: dict[str, Any] | None = None
) -> dict[str, Any]:
    """timm's `pretrained_cfg` of a model: the loaded weights' preprocessing (`preprocess`: mean, std, and from
    timm's hub configs crop_pct, interpolation, crop_mode; classes, source) or the defaults, and vitkit's own
    resize: shorter side to the input size (bilinear), centre crop."""
    pre = preprocess or {}
    mean, std = default_mean_std(cfg)
    # each on its own: one may be set without the other
    mean = tuple(pre["mean"]) if pre.get("mean") else mean
    std = tuple(pre["std"]) if pre.get("std") else std
    out: dict[str, Any] = {
        "architecture": cfg.name,
        "input_size": (cfg.in_chans, *cfg.img_size),
        "interpolation": pre.get("interpolation", "bilinear"),
        "crop_pct": pre.get("crop_pct", 1.0),
        "crop_mode": pre.get("crop_mode", "center"),
        "mean": mean,
        "std": std,
        "num_classes": cfg.num_classes,
        "first_conv": first_conv,
        "classifier": "head" if cfg.arch == "vit" else "head.fc",
    }
    if pre.get("source"):
        out["source"] = pre["source"]
    if pre.get("classes") and len(pre["classes"]) == cfg.num_classes:
        out["label_names"] = tuple(pre["classes"])
    return out


# the weights' preprocessing: what a checkpoint may state and pretrained_cfg may set; the rest follows the config
EDITABLE = ("mean", "std", "crop_pct", "interpolation", "crop_mode")


class PretrainedCfg(dict):
    """A model's `pretrained_cfg` as timm's plain dict, except that its preprocessing entries (`EDITABLE`) write
    through to the model (`model.preprocess`), and the entries its config fixes refuse a new value."""

    def __init__(self, data: dict[str, Any], preprocess: dict[str, Any]):
        super().__init__(data)
        self._preprocess = preprocess

    def _checked(self, key: str, value: Any) -> Any:
        """`value` as it would be stored at `key`, or the error naming what is wrong."""
        if key in ("mean", "std"):
            chans = self["input_size"][0]
            value = tuple(float(v) for v in value)
            if len(value) != chans or (key == "std" and min(value) <= 0):
                raise ValueError(
                    f"pretrained_cfg[{key!r}]={value}: one {'positive ' * (key == 'std')}number per channel ({chans})"
                )
        elif key not in EDITABLE and key in self and _plain(self[key]) != _plain(value):
            raise KeyError(
                f"pretrained_cfg[{key!r}] follows the model's config ({self[key]!r}); of its entries "
                f"{', '.join(EDITABLE)} can be set"
            )
        return value

    def _write(self, key: str, value: Any) -> None:
        if key in EDITABLE:
            self._preprocess[key] = list(value) if key in ("mean", "std") else value
        super().__setitem__(key, value)

    def __setitem__(self, key: str, value: Any) -> None:
        self._write(key, self._checked(key, value))

    def update(self, *args: Any, **kw: Any) -> None:  # type: ignore[override]
        """All entries checked before any is written: a refused update changes nothing."""
        checked = {key: self._checked(key, value) for key, value in dict(*args, **kw).items()}
        for key, value in checked.items():
            self._write(key, value)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (and torch.save'd) as the plain dict it shows: a dict subclass is rebuilt item by item before its
        attributes, which __setitem__ needs."""
        return dict, (dict(self),)

    def __ior__(self, other: Any) -> PretrainedCfg:  # type: ignore[override]
        self.update(other)
        return self

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def _fixed(self, *args: Any, **kw: Any) -> Any:
        raise KeyError("pretrained_cfg's entries follow the model: set one of them, none can be removed")

    __delitem__ = pop = popitem = clear = _fixed  # type: ignore[assignment]


# entries that describe where weights came from, not what the model is: another model's name for the same shape
# (timm's vit_tiny_patch16_224 for ViT-Ti/16), its hub id, its tag
DESCRIPTIVE = ("architecture", "tag", "hf_hub_id", "source", "label_names")


def _plain(value: Any) -> Any:
    """A JSON list as the tuple it stands for ([3, 224, 224] is the input size (3, 224, 224))."""
    return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def set_pretrained_cfg(cfg_now: PretrainedCfg, value: dict[str, Any]) -> None:
    """`model.pretrained_cfg = value` (timm's models take any dict): its preprocessing entries kept, entries the
    config fixes checked (lists read as tuples, as a config.json gives them), descriptive ones (`DESCRIPTIVE`)
    and others (timm's hub fields: url, license, ...) ignored."""
    if not isinstance(value, dict):
        raise TypeError(f"pretrained_cfg must be a dict, got {type(value).__name__}")
    cfg_now.update(
        {k: v for k, v in value.items() if k in EDITABLE or (k in cfg_now and k not in DESCRIPTIVE)}
    )
