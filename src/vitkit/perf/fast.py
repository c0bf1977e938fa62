"""The fast inference path: one call returns a callable computing the model's logits faster.

- CUDA: `torch.compile` (bf16 autocast when asked).
- CPU: the model exported to ONNX and run by ONNX Runtime, fp32 (`onnx`) or with int8 weights and dynamically
  quantised int8 activations (`onnx-int8`, the CPU default for a ViT; its matrix products are quantised, and a
  CNN's convolutions too, but `auto` keeps a CNN in fp32). Int8 changes the logits slightly: `vitkit bench`
  prints the largest difference and `bench/fast_accuracy.py` measures the top-1 cost on a trained model.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

METHODS = ("auto", "compile", "onnx", "onnx-int8")


class OrtModule(nn.Module):
    """An ONNX Runtime session as a module: (B, C, H, W) float tensor -> (B, K) float tensor (CPU)."""

    def __init__(self, path: str, threads: int):
        super().__init__()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        (out,) = self.session.run(None, {self.input: arr})
        return torch.from_numpy(out).to(x.device)


class OneImageAtATime(nn.Module):
    """A runner fed one image per call: int8's activations are quantised with each call's own range, so each
    image's logits would otherwise depend on the images batched with it (and a score on the batch size)."""

    def __init__(self, runner: nn.Module):
        super().__init__()
        self.runner = runner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.runner(x[i : i + 1]) for i in range(x.shape[0])])  # (B, K)


def _export(model: nn.Module, folder: str, img_size: tuple[int, int]) -> str:
    from vitkit.convert.export import export_onnx

    return export_onnx(model, os.path.join(folder, "model.onnx"), img_size=img_size)


class InferenceAutocast(nn.Module):
    """A compiled model called as it was compiled: in inference mode, under bf16 autocast when asked."""

    def __init__(self, module: Any, device_type: str, bf16: bool):
        super().__init__()
        self.module, self.device_type, self.bf16 = module, device_type, bf16
        self.train(False)  # as the model it runs (evaluate() puts back the mode it finds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(self.device_type, torch.bfloat16, enabled=self.bf16):
            return self.module(x)


def _quantize(src: str, folder: str, ops: tuple[str, ...] = ("MatMul", "Gemm")) -> str:
    """Dynamic int8 of `ops`: per-channel int8 weights, uint8 activations quantised per batch (reduce_range)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = os.path.join(folder, "model.int8.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer reports every tensor it leaves alone at INFO/WARNING
    try:
        quantize_dynamic(
            src,
            dst,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
            op_types_to_quantize=list(ops),
        )
    finally:
        root.setLevel(level)
    return dst


def resolve_method(model: nn.Module, device: torch.device, method: str = "auto") -> str:
    """The method "auto" stands for here: compile on CUDA; on the CPU int8 ONNX Runtime for the ViT's matrix
    products, fp32 for a CNN (bench/RESULTS.md)."""
    if method != "auto":
        return method
    cnn = getattr(getattr(model, "cfg", None), "arch", "vit") != "vit"
    return "compile" if device.type == "cuda" else "onnx" if cnn else "onnx-int8"


def fast_inference(
    model: nn.Module,
    example: torch.Tensor,
    dtype: str = "fp32",
    method: str = "auto",
    workdir: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """A callable for inference and `info` (method, settings). `example`: a batch of inputs (their size is the
    one an ONNX file is made for, a dynamic_img_size model's too). `model` is put in eval mode (the compiled path
    runs it); the callable runs in inference mode, in bf16 autocast for dtype "bf16" (method compile).

    The ONNX files of the CPU methods go to `workdir` (kept) or a temporary folder (removed once loaded).
    """
    if method not in METHODS:
        raise ValueError(f"fast inference method {method!r} is not one of {', '.join(METHODS)}")
    if dtype not in ("fp32", "bf16"):
        raise ValueError(
            f"fast inference dtype {dtype!r}: expected fp32 or bf16 (autocast, for method compile)"
        )
    model = model.eval()
    dev = example.device
    cnn = getattr(getattr(model, "cfg", None), "arch", "vit") != "vit"
    method = resolve_method(model, dev, method)
    if method == "compile":
        runner = InferenceAutocast(torch.compile(model, dynamic=False), dev.type, dtype == "bf16")
        runner(example)  # compile now, not in the first timed call
        return runner, {"method": "compile", "dtype": dtype, "handles_dtype": True}
    if dev.type != "cpu":
        raise ValueError(f"method {method!r} runs on the CPU; the example is on {dev}")
    # the session holds the model once made (on Windows a mapped external-data file may stay behind)
    with tempfile.TemporaryDirectory(prefix="vitkit-fast-", ignore_cleanup_errors=True) as tmp:
        folder = workdir or tmp
        path = _export(model, folder, tuple(example.shape[-2:]))  # export_onnx copies a model elsewhere
        if method == "onnx-int8":
            path = _quantize(path, folder, ("Conv", "MatMul", "Gemm") if cnn else ("MatMul", "Gemm"))
        runner = OrtModule(path, torch.get_num_threads())
    runner(example)  # warm the session
    info = {
        "method": method,
        "dtype": "int8" if method == "onnx-int8" else "fp32",
        "onnx": path if workdir else None,  # kept only when a workdir was given
        "threads": torch.get_num_threads(),
        "handles_dtype": True,
    }
    return runner, info
