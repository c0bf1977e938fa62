"""The fused bias-GELU kernels (models/fused_mlp.py) compiled for an H100/H200 (sm_90) on a machine without a GPU,
and their machine code counted: about how many instructions an element each variant issues (issue 6: are the GELU
passes bound by arithmetic or by memory?). The count is static: the kernel's instructions over the elements a thread
holds of one tile; the backward's loop over its row group is not unrolled, so its body, one tile, is what repeats
(its prologue and final column sum, run once a program, are counted in too).

Triton's own ptxas and nvdisasm (shipped in its NVIDIA backend) compile and disassemble; no driver is needed. The
ViT-B/16 step's shapes: bf16 tensors, the default tile (32 x 128, 4 warps: 32 elements a thread), 512 rows a
backward program. Usage: python bench/kernel_sass.py
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from vitkit.models import fused_mlp
from vitkit.models.fused_mlp_kernels import backward_kernel, forward_kernel

POINTERS = {"fwd": ("h_ptr", "b_ptr", "y_ptr"), "bwd": ("g_ptr", "h_ptr", "b_ptr", "dh_ptr", "part_ptr")}


def compile_sass(which: str, poly: bool, tanh: bool = False) -> list[str]:
    """The opcodes of one kernel's SASS for sm_90 (pointers and sizes declared 16-divisible, as at the step)."""
    sig = {p: "*fp32" if p == "part_ptr" else "*bf16" for p in POINTERS[which]} | {"M": "i32", "N": "i32"}
    consts = {"BM": fused_mlp.BLOCK_M, "BN": fused_mlp.BLOCK_N, "TANH": tanh, "POLY": poly}
    if which == "bwd":
        consts = {"ROWS": fused_mlp.BLOCK_M * fused_mlp.MAX_TILES_PER_GROUP} | consts
    sig |= dict.fromkeys(consts, "constexpr")
    attrs = {(i,): [["tt.divisibility", 16]] for i in range(len(POINTERS[which]) + 2)}
    fn = forward_kernel if which == "fwd" else backward_kernel
    k = triton.compile(
        ASTSource(fn, sig, consts, attrs),
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": fused_mlp.NUM_WARPS},
    )
    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        sass = subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True, check=True).stdout
    lines = [line for line in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4}\*/", line)]
    return [re.sub(r"^\s*/\*[0-9a-f]+\*/\s*(@!?U?P\w+\s+)?", "", line).split()[0] for line in lines]


def main() -> None:
    per_thread = fused_mlp.BLOCK_M * fused_mlp.BLOCK_N // (32 * fused_mlp.NUM_WARPS)
    print(f"sm_90, bf16, tile {fused_mlp.BLOCK_M}x{fused_mlp.BLOCK_N}, {fused_mlp.NUM_WARPS} warps")
    print(f"{'kernel':28} {'SASS':>6} {'an element':>10} {'MUFU':>5} {'loads':>6}")
    for which in ("fwd", "bwd"):
        for name, poly, tanh in (
            ("CDF polynomial", True, False),
            ("libdevice erf", False, False),
            ("tanh", True, True),
        ):
            ops = compile_sass(which, poly, tanh)
            loads = sum(o.startswith("LDG") for o in ops)
            print(
                f"{which + ', ' + name:28} {len(ops):>6} {len(ops) / per_thread:>10.1f} "
                f"{sum(o.startswith('MUFU') for o in ops):>5} {loads:>6}"
            )


if __name__ == "__main__":
    main()
