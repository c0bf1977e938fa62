"""Peak memory of the inspection analyses (`vitkit.inspect.analyse`) on a ViT-L/16-shaped model at 384 px.

python bench/inspect_memory.py --depth 2 ; python bench/inspect_memory.py --depth 8

Each layer's attention (B, heads, N, N) is used and dropped as the model computes it, so the peak should not grow
with the depth (it grew ~90 MB per layer at batch 4 when all layers' maps were held). Prints the peak resident
memory over what the model itself took (ru_maxrss, so one depth per process).
"""

from __future__ import annotations

import argparse
import resource

import torch

from vitkit.inspect import analyse
from vitkit.models import create_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--img-size", type=int, default=384)
    a = ap.parse_args()
    model = create_model("ViT-L/16", img_size=a.img_size, depth=a.depth, num_classes=10).eval()
    x = torch.randn(a.batch_size, 3, a.img_size, a.img_size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    analyse(model, x, batch_size=a.batch_size)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"ViT-L/16 depth {a.depth} at {a.img_size} px, batch {a.batch_size}: peak {after - before:.0f} MB over the model"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
