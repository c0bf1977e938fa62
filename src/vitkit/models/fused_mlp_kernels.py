"""Triton kernels of `fused_mlp` (imported only where Triton runs: the interpreter is chosen at import)."""

import triton
import triton.language as tl


@triton.jit
def normal_cdf_pdf(x, POLY: tl.constexpr):
    """(Phi(x), phi(x)) of fp32 `x`: the standard normal's CDF and density. POLY: Phi by Abramowitz & Stegun
    26.2.17 (|error| < 7.5e-8, fp32's rounding at 1) from phi's own exponential and a reciprocal, a fraction of
    erf's instructions; else through erf (libdevice)."""
    pdf = tl.exp(-0.5 * x * x) * 0.3989422804014327
    if POLY:
        t = 1.0 / (1.0 + 0.2316419 * tl.abs(x))
        poly = t * (
            0.319381530 + t * (-0.356563782 + t * (1.781477937 + t * (-1.821255978 + t * 1.330274429)))
        )
        tail = pdf * poly  # Phi(-|x|), without 1 - Phi's cancellation
        cdf = tl.where(x >= 0, 1.0 - tail, tail)
    else:
        cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
    return cdf, pdf


@triton.jit
def gelu_math(x, TANH: tl.constexpr, POLY: tl.constexpr):
    """GELU of fp32 `x`: x Phi(x), or the tanh approximation."""
    if TANH:  # 0.5 x (1 + tanh(u)) = x sigmoid(2u)
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        return x * tl.sigmoid(2.0 * u)
    else:
        cdf, _ = normal_cdf_pdf(x, POLY)
        return x * cdf


@triton.jit
def gelu_grad_math(x, TANH: tl.constexpr, POLY: tl.constexpr):
    """d GELU / dx at fp32 `x`: Phi(x) + x phi(x), or the tanh approximation's."""
    if TANH:
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        s = tl.sigmoid(2.0 * u)
        du = 0.7978845608028654 * (1.0 + 0.134145 * x * x)
        return s + 2.0 * x * s * (1.0 - s) * du
    else:
        cdf, pdf = normal_cdf_pdf(x, POLY)
        return cdf + x * pdf


@triton.jit
def forward_kernel(
    h_ptr, b_ptr, y_ptr, M, N, BM: tl.constexpr, BN: tl.constexpr, TANH: tl.constexpr, POLY: tl.constexpr
):
    """y = GELU(h + b) on one (BM, BN) tile of row-major (M, N) `h`."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    offs = rows[:, None].to(tl.int64) * N + cols[None, :]  # (BM, BN)
    b = tl.load(b_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    x = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32) + b[None, :]
    tl.store(y_ptr + offs, gelu_math(x, TANH, POLY).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def backward_kernel(
    g_ptr, h_ptr, b_ptr, dh_ptr, part_ptr, M, N,
    ROWS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, TANH: tl.constexpr, POLY: tl.constexpr,
):  # fmt: skip
    """dh = g * GELU'(h + b) on ROWS rows x BN columns, and their fp32 column sums into row pid0 of `part`."""
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    b = tl.load(b_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for start in range(0, ROWS, BM):
        rows = tl.program_id(0) * ROWS + start + tl.arange(0, BM)
        mask = (rows[:, None] < M) & (cols[None, :] < N)
        offs = rows[:, None].to(tl.int64) * N + cols[None, :]  # (BM, BN)
        x = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32) + b[None, :]
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        d = g * gelu_grad_math(x, TANH, POLY)
        tl.store(dh_ptr + offs, d.to(dh_ptr.dtype.element_ty), mask=mask)
        acc += d  # 0 outside the mask: g loads as 0 there
    tl.store(part_ptr + tl.program_id(0) * N + cols, tl.sum(acc, axis=0), mask=cols < N)
