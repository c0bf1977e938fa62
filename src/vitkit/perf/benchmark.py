"""Throughput of vitkit beside timm (same config, same weights, same process), timed alternately."""

from __future__ import annotations

import functools
import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.config import COMPILE_MODES, COMPILE_SCOPES, ModelConfig
from vitkit.models import build_model, executed_macs, forward_macs
from vitkit.models.layers import gelu
from vitkit.train.master import Bf16Copy

# dense bf16 tensor-core peaks (TFLOP/s) by device-name substring, for MFU; datasheet values; the first name found
# in the device's counts, so the PCIe and NVL cards (lower clocks and power) come before the SXM ones
PEAK_BF16_TFLOPS = {
    "H100 PCIe": 756.0, "H100 NVL": 835.0, "H200 NVL": 835.0, "H200": 989.0, "H100": 989.0,
    "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "4090": 165.0,
}  # fmt: skip


def timm_twin(cfg: ModelConfig) -> nn.Module:
    """timm's VisionTransformer with the same configuration (dev dependency); hybrids on timm's ResNet-v2.

    The BiT baseline: timm's ResNetV2 as its `resnetv2_<depth>x<width>_bit` (same parameter names). The ResNet
    baseline: timm's ResNet with the same stage depths (`resnet50`; its names via `to_timm_resnet_names`). timm
    has no stand-alone local self-attention or attention-augmented ResNet: asking for one is an error.
    """
    from timm.models.vision_transformer import VisionTransformer

    if cfg.arch in ("sasa", "aa"):
        raise ValueError(
            f"--compare timm: timm has no {cfg.name} (no {'SASA' if cfg.arch == 'sasa' else 'AA'} ResNet); bench it "
            f"alone, or its control ResNet-{3 * sum(cfg.backbone) + 2} against timm"
        )
    if cfg.arch == "resnet":
        from timm.models.resnet import Bottleneck, ResNet

        return ResNet(
            block=Bottleneck,
            layers=list(cfg.backbone),
            num_classes=cfg.num_classes,
            in_chans=cfg.in_chans,
            drop_rate=cfg.drop_rate,
            drop_path_rate=cfg.drop_path_rate,
        )

    if cfg.arch == "bit":
        from timm.layers import StdConv2d
        from timm.models.resnetv2 import ResNetV2

        return ResNetV2(
            layers=list(cfg.backbone),
            width_factor=cfg.width_factor,
            num_classes=cfg.num_classes,
            in_chans=cfg.in_chans,
            stem_type="fixed",
            conv_layer=functools.partial(StdConv2d, eps=1e-8),
            drop_rate=cfg.drop_rate,
            drop_path_rate=cfg.drop_path_rate,
        )
    if cfg.posemb not in ("learn",) or cfg.representation_size:
        raise ValueError("the timm comparison supports learned 1D position embeddings without pre-logits")
    gap = cfg.pool == "gap"
    extra = {}
    if cfg.backbone is not None:  # timm's hybrid: its BiT ResNet in a HybridEmbed, as vit_*_r50_s16_*
        from timm.layers import HybridEmbed, StdConv2dSame
        from timm.models.resnetv2 import ResNetV2, create_resnetv2_stem

        conv = functools.partial(StdConv2dSame, eps=1e-8)
        kw = dict(preact=False, stem_type="same", conv_layer=conv)
        if cfg.backbone:
            backbone = ResNetV2(
                layers=cfg.backbone, num_classes=0, global_pool="", in_chans=cfg.in_chans, **kw
            )
        else:
            backbone = create_resnetv2_stem(cfg.in_chans, **kw)
        extra["embed_layer"] = functools.partial(HybridEmbed, backbone=backbone)
    return VisionTransformer(
        img_size=cfg.img_size,
        dynamic_img_size=cfg.dynamic_img_size,  # the same work per forward (its position embedding resampled)
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        num_classes=cfg.num_classes,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_dim / cfg.embed_dim,
        qkv_bias=cfg.qkv_bias,
        class_token=not gap,
        global_pool="avg" if gap else "token",
        fc_norm=False if gap else None,
        norm_layer=functools.partial(nn.LayerNorm, eps=cfg.norm_eps),
        act_layer=functools.partial(gelu, cfg.mlp_act),
        drop_rate=cfg.head_drop_rate if cfg.head_drop_rate is not None else cfg.drop_rate,
        pos_drop_rate=cfg.drop_rate,
        proj_drop_rate=cfg.drop_rate,
        attn_drop_rate=cfg.attn_drop_rate,
        drop_path_rate=cfg.drop_path_rate,
        **extra,
    )


def train_flops_per_image(cfg: ModelConfig) -> float:
    """Training FLOPs per image per step: 3 x forward (forward + backward), 2 FLOPs per MAC."""
    return 3 * 2 * forward_macs(cfg)


def peak_tflops(device: torch.device) -> float | None:
    """Datasheet dense bf16 peak of the GPU, if known."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Images per second of repeated measurements."""

    img_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        return {"median": statistics.median(self.img_s), "min": min(self.img_s), "max": max(self.img_s)}


def compiled(
    model: nn.Module, mode: str | None = None, options: dict[str, Any] | None = None, scope: str = "model"
) -> nn.Module:
    """torch.compile'd `model`; scope "blocks": each transformer block compiled in place instead (identical
    blocks share one graph; the rest stays eager), as `train.compile_scope=blocks`."""
    if scope == "blocks":
        for block in model.blocks:
            block.compile(mode=mode, options=options)
        return model
    return torch.compile(model, mode=mode, options=options)


def infer_step(model: nn.Module, x: torch.Tensor, dtype: str) -> Callable[[], torch.Tensor]:
    """A callable running one inference batch (bf16-pure: `model` already in bf16, the input cast)."""
    ac = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")
    x = x.to(torch.bfloat16) if dtype == "bf16-pure" else x

    def run() -> torch.Tensor:
        with torch.inference_mode(), ac:
            return model(x)

    return run


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    dtype: str,
    lr: float = 1e-4,
    fused: bool = True,
    compile: bool = False,
    compile_mode: str | None = None,
    compile_options: dict[str, Any] | None = None,
    compile_scope: str = "model",
    optim: Any = None,
) -> Callable[[], torch.Tensor]:
    """A callable running one full optimizer step: forward, loss, backward, clip, the optimizer's step,
    zero_grad (AdamW unless `optim` gives another).

    bf16-pure: forward and backward on a bf16 copy, the step on the fp32 `model` (as the trainer does).
    `compile_mode`: torch.compile's mode (e.g. "reduce-overhead": CUDA graphs), or `compile_options` (Inductor
    settings, e.g. {"coordinate_descent_tuning": True}), when `compile`; `compile_scope` "blocks" compiles the
    transformer blocks alone. `optim`: an OptimConfig (a recipe's: its optimizer, decay groups and clipping)
    instead of AdamW with weight decay 0.05 and clipping at 1.
    """
    dev = x.device
    clip = 1.0 if optim is None else optim.grad_clip
    if optim is None:
        kw = {"fused": True} if fused and dev.type in ("cuda", "cpu") else {}
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05, **kw)
    else:
        from vitkit.train.optim import build_optimizer

        opt = build_optimizer(model, optim, dev, fused=fused)
    ac = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16")
    copy = Bf16Copy(model) if dtype == "bf16-pure" else None
    work = copy.work if copy else model
    work = compiled(work, compile_mode, compile_options, compile_scope) if compile else work
    x = copy.input(x) if copy else x

    def run() -> torch.Tensor:
        if compile and compile_mode == "reduce-overhead":  # a new step for CUDA graph trees
            torch.compiler.cudagraph_mark_step_begin()
        with ac:
            logits = work(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        if copy:
            copy.accumulate_grads()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if copy:
            copy.pull()
        return loss

    return run


def time_alternately(
    runs: dict[str, Callable], device: torch.device, batch: int, warmup: int, repeats: int, min_seconds: float
) -> dict[str, Timing]:
    """Warm each up, then time them in turn `repeats` times; each measurement runs >= min_seconds."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
        _sync(device)
    iters = {}
    for name, fn in runs.items():  # iterations per measurement from one timed call
        t = time.perf_counter()
        fn()
        _sync(device)
        iters[name] = max(1, math.ceil(min_seconds / max(time.perf_counter() - t, 1e-6)))
    out = {name: Timing() for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            _sync(device)
            t = time.perf_counter()
            for _ in range(iters[name]):
                fn()
            _sync(device)
            out[name].img_s.append(batch * iters[name] / (time.perf_counter() - t))
    return out


def profile_table(fn: Callable, device: torch.device, steps: int = 3, rows: int = 30) -> str:
    """torch.profiler's table of the operators and kernels of `steps` calls of `fn`, by self device time."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as prof:
        for _ in range(steps):
            fn()
        _sync(device)
    avg = prof.key_averages()
    for key in ("self_device_time_total", "self_cuda_time_total") if cuda else ("self_cpu_time_total",):
        try:
            return avg.table(sort_by=key, row_limit=rows)
        except (AttributeError, KeyError, ValueError):  # the key's name differs between torch versions
            continue
    return avg.table(row_limit=rows)


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated since the last reset, or the process's peak RSS on CPU (since it started:
    imports and every model included), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def step_peaks_mb(runs: dict[str, Callable], device: torch.device) -> dict[str, float]:
    """Each runner's peak CUDA memory over one call of its own (the peak reset before it; every model resident)."""
    peaks = {}
    for name, fn in runs.items():
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        peaks[name] = torch.cuda.max_memory_allocated(device) / 2**20
    return peaks


def run_benchmark(
    cfg: ModelConfig,
    *,
    batch_size: int = 32,
    mode: str = "infer",
    dtype: str = "fp32",
    compile: bool = False,
    compile_mode: str = "default",
    compile_scope: str = "model",
    grad_checkpointing: bool = False,
    compare: str | None = None,
    fast: bool = False,
    device: torch.device | str = "cpu",
    warmup: int = 2,
    repeats: int = 5,
    min_seconds: float = 1.0,
    seed: int = 0,
    peer_plain: bool = False,
    fast_method: str = "auto",
    profile: str | None = None,
    optim: Any = None,
) -> dict[str, Any]:
    """Benchmark vitkit (and timm with the same weights); returns a JSON-ready dict.

    `peer_plain`: time timm as a plain loop (eager, its optimizer not fused) while vitkit uses its own training path
    (`compile`, `compile_mode` and `compile_scope` as given, fused AdamW) -- the comparison of a recipe's training
    step. `compile_scope` "blocks" compiles the transformer blocks alone (each model's, timm's too unless plain);
    `grad_checkpointing` recomputes each block's activations in backward (both models).
    `profile`: a file for torch.profiler's table of three of vitkit's steps, taken after the timing.
    `optim`: the OptimConfig of both training steps (a recipe's), else AdamW with clipping at 1.
    """
    device = torch.device(device)
    if mode not in ("infer", "train"):
        raise ValueError(f"mode={mode!r}: expected infer or train")
    if dtype not in ("fp32", "bf16", "bf16-pure"):
        raise ValueError(f"dtype={dtype!r}: expected fp32, bf16 or bf16-pure")
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode={compile_mode!r}: expected one of {', '.join(COMPILE_MODES)}")
    if compile_scope not in COMPILE_SCOPES:
        raise ValueError(f"compile_scope={compile_scope!r}: expected one of {', '.join(COMPILE_SCOPES)}")
    if compile and compile_scope == "blocks" and cfg.arch != "vit":
        raise ValueError(
            f"compile_scope='blocks': {cfg.name} (arch {cfg.arch!r}) has no transformer blocks; use 'model'"
        )
    if not (math.isfinite(min_seconds) and min_seconds > 0) or warmup < 0 or repeats < 1:
        raise ValueError(
            f"min_seconds={min_seconds}, warmup={warmup}, repeats={repeats}: expected a finite min_seconds > 0, "
            "warmup >= 0 and repeats >= 1"
        )
    if grad_checkpointing and mode != "train":
        raise ValueError("grad_checkpointing applies to a training step (--mode train)")
    if fast and mode != "infer":
        raise ValueError("--fast is an inference path; use --mode infer")
    if profile and not os.path.isdir(os.path.dirname(os.path.abspath(profile))):
        raise ValueError(f"--profile {profile}: its folder does not exist")
    if mode == "train" and cfg.num_classes < 1:
        raise ValueError(
            f"num_classes={cfg.num_classes}: a training step needs a classification head (>= 1 class)"
        )
    if fast and dtype == "bf16-pure":
        raise ValueError("--fast chooses its own precision; use --dtype fp32 or bf16 with it")
    if compile and warmup < 1:
        raise ValueError("warmup=0 with compile: the first timed call would include the compilation")
    torch.manual_seed(seed)
    ours = build_model(cfg).to(device)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch_size, cfg.in_chans, *cfg.img_size, generator=g).to(device)
    y = torch.randint(0, max(cfg.num_classes, 1), (batch_size,), generator=g).to(device)
    models: dict[str, nn.Module] = {"vitkit": ours}
    if compare == "timm":
        twin = timm_twin(cfg).to(device)
        state = ours.state_dict()
        if cfg.arch == "resnet":
            from vitkit.convert.resnet import to_timm_resnet_names

            state = to_timm_resnet_names(state)
        twin.load_state_dict(state, strict=True)
        models["timm"] = twin
    elif compare is not None:
        raise ValueError(f"--compare {compare!r}: only timm is supported")
    result: dict[str, Any] = {
        "model": cfg.name,
        "img_size": list(cfg.img_size),
        "batch_size": batch_size,
        "mode": mode,
        "dtype": dtype,
        "compile": compile,
        "compile_mode": compile_mode if compile else None,
        "compile_scope": compile_scope if compile else None,
        "grad_checkpointing": grad_checkpointing,
        "fast": fast,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "peer_plain": peer_plain,
        # timm's precision: autocast beside vitkit's bf16-pure (AMP, as its users train)
        "timm_dtype": ("bf16" if dtype == "bf16-pure" else dtype) if compare else None,
        "torch": torch.__version__,
    }
    for m in models.values():
        m.train(mode == "train")
        if grad_checkpointing:
            m.set_grad_checkpointing(True)  # timm's models have the same method
    if mode == "infer":
        with torch.inference_mode():
            ref = models["vitkit"](x).float()
            if "timm" in models:
                result["max_logit_diff_vs_timm"] = float((models["timm"](x).float() - ref).abs().max())
    runners = {}
    fast_info = None
    for name, m in models.items():
        if name == "vitkit" and fast:
            from vitkit.perf.fast import fast_inference

            fm, fast_info = fast_inference(ours, example=x, dtype=dtype, method=fast_method)
            runners[name] = infer_step(fm, x, "fp32" if fast_info.get("handles_dtype") else dtype)
            # the fast path as timed (bf16: under autocast) against the fp32 eager model
            result["max_logit_diff_fast_vs_eager"] = float((runners[name]().float() - ref).abs().max())
            continue
        plain = peer_plain and name != "vitkit"
        # the peer as its users run it: bf16 means autocast (AMP) for timm, also beside vitkit's bf16-pure
        dt = "bf16" if dtype == "bf16-pure" and name != "vitkit" else dtype
        mode_ = None if compile_mode == "default" else compile_mode
        if mode == "train":
            runners[name] = train_step(
                m,
                x,
                y,
                dt,
                fused=not plain,
                compile=compile and not plain,
                compile_mode=mode_,
                compile_scope=compile_scope,
                optim=optim,
            )
            continue
        m = m.to(torch.bfloat16) if dt == "bf16-pure" else m
        runners[name] = infer_step(
            compiled(m, mode_, scope=compile_scope) if compile and not plain else m, x, dt
        )
    if fast_info:
        result["fast_path"] = {k: v for k, v in fast_info.items() if k != "handles_dtype"}
    t0 = time.perf_counter()
    timings = time_alternately(runners, device, batch_size, warmup, repeats, min_seconds)
    result["seconds"] = time.perf_counter() - t0
    if profile:
        with open(profile, "w") as f:
            f.write(profile_table(runners["vitkit"], device) + "\n")
        result["profile"] = profile
    flops = train_flops_per_image(cfg) if mode == "train" else 2 * forward_macs(cfg)
    result["gflops_per_image"] = flops / 1e9
    # what vitkit's model(x) runs (a class-token ViT's last block for the class token only); GFLOP/s and MFU
    # count the formula's `flops`, as the timm row does
    result["vitkit_executed_gflops_per_image"] = (3 if mode == "train" else 1) * 2 * executed_macs(cfg) / 1e9
    peak = peak_tflops(device)
    result["peak_tflops"] = peak
    for name, t in timings.items():
        s = t.summary()
        result[f"{name}_img_s"] = s["median"]
        result[f"{name}_img_s_min"] = s["min"]
        result[f"{name}_img_s_max"] = s["max"]
        result[f"{name}_achieved_gflop_s"] = s["median"] * flops / 1e9
        if peak and dtype.startswith("bf16"):
            result[f"{name}_mfu"] = s["median"] * flops / 1e12 / peak
    result["achieved_gflop_s"] = result["vitkit_achieved_gflop_s"]
    if device.type == "cuda":  # each model's step on its own (both models' weights resident)
        for name, mb in step_peaks_mb(runners, device).items():
            result[f"{name}_peak_memory_mb"] = mb
        result["peak_memory_mb"] = result["vitkit_peak_memory_mb"]
        result["peak_memory"] = "CUDA max allocated over one vitkit step (every model benched resident)"
    else:
        result["peak_memory_mb"] = peak_memory_mb(device)
        result["peak_memory"] = "process peak RSS (imports and every model benched included)"
    if "timm" in timings:
        result["ratio"] = result["vitkit_img_s"] / result["timm_img_s"]
    else:
        result["timm_img_s"] = None
        result["ratio"] = None
    return result
