"""The MLP's bias and GELU as one Triton kernel each way (opt-in: `train.fused_bias_gelu`).

Compiled, a ViT's step makes three passes over the MLP's hidden activations (B*N, 4D) besides the matrix products:
the GELU forward, its backward, and the bias gradient's column sum, which Inductor emits as a second kernel reading
the backward's inputs again (ViT-B/16, batch 256, H200: 241, 325 and 133 us per layer, ~14% of the step;
bench/RESULTS.md). Here fc1 runs without its bias, the forward kernel adds it before the GELU, and the backward
kernel writes the GELU's input gradient and sums it over rows as it goes (fp32 partial sums per group of rows, then
one small sum), so the third pass is gone. Megatron-LM fuses the same pair (its `bias_gelu`, tanh GELU, in
TorchScript). The erf GELU's normal CDF comes from a polynomial times the density the backward needs anyway
(`POLY_CDF`; compiled for sm_90, 43 instead of 56 instructions an element in the backward, 33 instead of 39 in the
forward): on fp32 inputs in [-12, 12] GELU within 4.1e-7 of float64 and its derivative within 2.7e-7 (through erf:
4.5e-7 and 1.4e-7; torch's own fp32 GELU 1.1e-6 and 2.6e-7; bench/fused_accuracy.py under Triton's interpreter).
The parameters are fc1's own: state dicts are unchanged. Runs on CUDA, and on the CPU under Triton's interpreter
(TRITON_INTERPRET=1, for tests); elsewhere `Mlp` keeps its plain path. First-order gradients only.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import torch

BLOCK_M, BLOCK_N = 32, 128  # rows x columns of one tile (4,096 elements: 32 per thread at 4 warps)
NUM_WARPS = 4
MAX_TILES_PER_GROUP = 16  # the backward's rows per program: up to 16 tiles, each program one partial sum row
# the erf GELU's normal CDF by a 5-term polynomial in 1 / (1 + 0.2316419 |x|) times the density the backward needs
# anyway (Abramowitz & Stegun 26.2.17, |error| < 7.5e-8) instead of libdevice's erf: fewer instructions an element,
# the same function to fp32's rounding (bench/gpu_pointwise.py times both)
POLY_CDF = True


def interpreting() -> bool:
    """Triton runs its kernels on the CPU through its interpreter (read when the kernels are first built)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available() -> bool:
    """Triton imports and this torch can put a Triton kernel in a custom op (torch.library.triton_op, 2.6+)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return hasattr(torch.library, "triton_op") and hasattr(torch.library, "wrap_triton")


_OP: Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor] | None = None  # set by load_ops
_ON_CPU = False  # the kernels were built for Triton's interpreter


def load_ops() -> bool:
    """Build the kernels and register the custom ops, once per process (outside torch.compile: Dynamo reads the
    result as a constant); False where Triton cannot run them."""
    global _OP, _ON_CPU
    if _OP is None and triton_available():
        _OP, _ON_CPU = _build_ops(), interpreting()
    return _OP is not None


def runs_on(x: torch.Tensor) -> bool:
    """Whether the fused kernels run for `x` (after `load_ops`): on CUDA, or anywhere under the interpreter."""
    return _OP is not None and (x.is_cuda or _ON_CPU)


def rows_per_group(m: int, bm: int = BLOCK_M) -> int:
    """Rows one backward program covers: a whole number of tiles, at most 16, and 64 or more groups of them where
    the rows allow (ViT-B/16 at batch 256: 50,432 rows, 99 groups of 512)."""
    tiles = -(-m // (64 * bm))  # ceil
    return bm * max(1, min(MAX_TILES_PER_GROUP, tiles))


def _build_ops() -> Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor]:
    """Build the Triton kernels and register the custom ops; the forward op, with its autograd."""
    import triton
    from torch.library import triton_op, wrap_triton

    from vitkit.models.fused_mlp_kernels import backward_kernel, forward_kernel

    # the interpreter's kernels are not JITFunctions, which wrap_triton refuses before torch ~2.12; they are not
    # traced, so they need no wrapping
    launch = (lambda kernel: kernel) if interpreting() else wrap_triton

    def on(t: torch.Tensor):
        """Launch on `t`'s GPU (Triton launches on the current device; Inductor's code sets it, eager does not)."""
        return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()

    @triton_op("vitkit::bias_gelu", mutates_args={})
    def bias_gelu_op(h: torch.Tensor, bias: torch.Tensor, approximate: str) -> torch.Tensor:
        n = h.shape[-1]
        m = h.numel() // n
        y = torch.empty_like(h)
        grid = (triton.cdiv(m, BLOCK_M), triton.cdiv(n, BLOCK_N))
        with on(h):
            launch(forward_kernel)[grid](
                h, bias, y, m, n,
                BM=BLOCK_M, BN=BLOCK_N, TANH=approximate == "tanh", POLY=POLY_CDF, num_warps=NUM_WARPS,
            )  # fmt: skip
        return y

    @triton_op("vitkit::bias_gelu_backward", mutates_args={})
    def bias_gelu_backward_op(
        grad: torch.Tensor, h: torch.Tensor, bias: torch.Tensor, approximate: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = h.shape[-1]
        m = h.numel() // n
        rows = rows_per_group(m)
        dh = torch.empty_like(h)
        part = torch.empty((triton.cdiv(m, rows), n), dtype=torch.float32, device=h.device)
        grid = (triton.cdiv(m, rows), triton.cdiv(n, BLOCK_N))
        with on(h):
            launch(backward_kernel)[grid](
                grad, h, bias, dh, part, m, n,
                ROWS=rows, BM=BLOCK_M, BN=BLOCK_N, TANH=approximate == "tanh", POLY=POLY_CDF,
                num_warps=NUM_WARPS,
            )  # fmt: skip
        return dh, part

    def setup_context(ctx, inputs, output) -> None:
        h, bias, approximate = inputs
        ctx.save_for_backward(h, bias)
        ctx.approximate = approximate

    def backward(ctx, grad: torch.Tensor):
        h, bias = ctx.saved_tensors
        dh, part = bias_gelu_backward_op(grad.contiguous(), h, bias, ctx.approximate)
        return dh, part.sum(0).to(bias.dtype), None

    bias_gelu_op.register_autograd(backward, setup_context=setup_context)
    return bias_gelu_op


def bias_gelu(h: torch.Tensor, bias: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU(h + bias) over the last dimension, (..., H) with bias (H,): the fused kernels where they run, else
    torch's ops; `approximate` "none" (erf) or "tanh", as `torch.nn.functional.gelu`."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate={approximate!r}: expected 'none' (erf) or 'tanh'")
    if bias.ndim != 1 or h.ndim < 1 or h.shape[-1] != bias.shape[0]:
        raise ValueError(f"bias {tuple(bias.shape)} must be (H,) for h {tuple(h.shape)} of last dimension H")
    if _OP is None and not torch.compiler.is_compiling():
        load_ops()
    if _OP is None or not runs_on(h) or h.numel() == 0:
        return torch.nn.functional.gelu(h + bias, approximate=approximate)
    if bias.device != h.device:
        raise ValueError(f"bias on {bias.device}, h on {h.device}: expected one device")
    return _OP(h.contiguous(), bias.contiguous(), approximate)


def set_fused_bias_gelu(model: torch.nn.Module, enable: bool = True) -> int:
    """Switch every MLP of `model` (its `fused_bias_gelu`) to the fused kernels or back; the number switched.
    Enabling builds the kernels, and fails where Triton cannot run them."""
    if enable and not load_ops():
        raise RuntimeError(
            "the fused bias-GELU kernels need Triton and torch >= 2.6 (torch.library.triton_op); "
            f"this torch is {torch.__version__}" + ("" if triton_available() else ", without Triton")
        )
    mlps = [m for m in model.modules() if hasattr(m, "fused_bias_gelu")]
    for m in mlps:
        m.fused_bias_gelu = enable
    return len(mlps)
