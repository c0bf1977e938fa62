"""Batch transforms on tensors (any device), random draws keyed by (seed, epoch, sample index).

Every random choice is a pure function of (seed, epoch, sample index, draw number) through a counter-based
hash, so an image is augmented the same way whatever the batch it lands in, the number of processes, or a
resume in the middle of an epoch.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vitkit.config import DataConfig
from vitkit.keyed_random import hash_uniform, hash_uniforms, stream_key

__all__ = ["BatchTransform", "hash_uniform", "stream_key"]

# ----------------------------------------------------------------------------- single operations


def random_crop(x: torch.Tensor, pad: int, uy: torch.Tensor, ux: torch.Tensor) -> torch.Tensor:
    """Per-sample crop of the zero-padded batch back to (H, W): (B, C, H, W) -> (B, C, H, W)."""
    if pad == 0:
        return x
    B, C, H, W = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = (uy * (2 * pad + 1)).long().clamp_max(2 * pad)
    ox = (ux * (2 * pad + 1)).long().clamp_max(2 * pad)
    rows = oy[:, None] + torch.arange(H, device=x.device)  # (B, H)
    cols = ox[:, None] + torch.arange(W, device=x.device)  # (B, W)
    b = torch.arange(B, device=x.device)[:, None, None, None]
    c = torch.arange(C, device=x.device)[None, :, None, None]
    # gathered straight into (B, C, H, W) with the standard strides: a permuted (B, H, W, 1) result keeps odd
    # strides that .contiguous() leaves alone, and torch.compile recompiles the model for them
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)


def hflip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror the samples where `flip` (B,) is true."""
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


# RandomResizedCrop's draw numbers: the first (area, ratio), the box's place, then 9 more tries' (area, ratio)
RRC_DRAWS = (1, 2, 3, 4, *range(12, 30))
# random erasing: apply, (area, ratio), (top, left), then an (area, ratio) per further try (up to 10, as torchvision)
ERASE_DRAWS = (6, 7, 8, 9, 10, *range(30, 48))


def rrc_boxes(
    u: list[torch.Tensor], hw: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """RandomResizedCrop's boxes as torchvision draws them: (w, h, cx, cy), the width and height as fractions of
    the image's and the centre in [-1, 1] coordinates, each (B,).

    An area fraction and a log-uniform aspect ratio (width / height, in pixels) are drawn until the crop fits in
    the image, up to 10 tries (`u`: (area, ratio), (x, y), then one (area, ratio) per further try, (B,) uniforms
    each); a sample none fits gets the centred whole image, its aspect clipped to the range.
    """
    H, W = hw
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    w = h = torch.ones_like(u[0])
    found = torch.zeros_like(u[0], dtype=torch.bool)
    for ua, ur in [(u[0], u[1]), *zip(u[4::2], u[5::2])]:
        area = scale[0] + (scale[1] - scale[0]) * ua
        ar = torch.exp(lo + (hi - lo) * ur)
        tw, th = torch.sqrt(area * ar * H / W), torch.sqrt(area / ar * W / H)  # (w W)(h H) = area W H
        fits = (tw <= 1) & (th <= 1) & ~found
        w, h, found = torch.where(fits, tw, w), torch.where(fits, th, h), found | fits
    w = torch.where(found, w, min(1.0, H * ratio[1] / W))  # the whole image, clipped to the aspect range
    h = torch.where(found, h, min(1.0, W / (ratio[0] * H)))
    return w, h, (2 * u[2] - 1) * (1 - w) * found, (2 * u[3] - 1) * (1 - h) * found


def random_resized_crop(
    x: torch.Tensor,
    size: tuple[int, int],
    u: list[torch.Tensor],
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Inception-style crop of random area and aspect (rrc_boxes), resized to `size` (bilinear): float (B, C, h, w)."""
    w, h, cx, cy = rrc_boxes(u, (x.shape[-2], x.shape[-1]), scale, ratio)
    zero = torch.zeros_like(w)
    theta = torch.stack([torch.stack([w, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], *size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def low_resolution(x: torch.Tensor, factor: int, apply: torch.Tensor) -> torch.Tensor:
    """Where `apply` (B,): the image downsampled `factor` x (antialiased) and upsampled back (bilinear).

    Each P x P patch then holds (P/factor)^2 pixels, smoothly interpolated: what a patch holds when a model
    trained at this resolution is run on images upsampled `factor` x (the paper's move to a higher resolution).
    """
    H, W = x.shape[-2:]
    small = F.interpolate(x, size=(max(H // factor, 1), max(W // factor, 1)), mode="bilinear", antialias=True)
    back = F.interpolate(small, size=(H, W), mode="bilinear", align_corners=False)
    return torch.where(apply[:, None, None, None], back, x)


def random_erasing(
    x: torch.Tensor,
    prob: float,
    u: list[torch.Tensor],
    area: tuple[float, float] = (0.02, 1 / 3),
    ratio: tuple[float, float] = (0.3, 3.3),
) -> torch.Tensor:
    """Erase one random rectangle per sample with probability `prob` (fills 0 = the mean after normalising), as
    torchvision's RandomErasing: an area (a fraction of the image's) and a log-uniform aspect (height / width, in
    pixels) drawn until the box fits inside the image, up to 10 tries (`u`: apply, (area, ratio), (top, left),
    then one (area, ratio) per further try, (B,) uniforms each); a sample none fits is left as it is."""
    _, _, H, W = x.shape
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    eh = ew = torch.zeros_like(u[0])
    found = torch.zeros_like(u[0], dtype=torch.bool)
    for ua, ur in [(u[1], u[2]), *zip(u[5::2], u[6::2])]:
        pixels = (area[0] + (area[1] - area[0]) * ua) * H * W
        r = torch.exp(lo + (hi - lo) * ur)
        th, tw = torch.sqrt(pixels * r).round(), torch.sqrt(pixels / r).round()
        fits = (th < H) & (tw < W) & ~found  # torchvision's test: strictly inside
        eh, ew, found = torch.where(fits, th, eh), torch.where(fits, tw, ew), found | fits
    top = ((H - eh + 1) * u[3]).floor()
    left = ((W - ew + 1) * u[4]).floor()
    r = torch.arange(H, device=x.device)[None, :]
    c = torch.arange(W, device=x.device)[None, :]
    in_r = (r >= top[:, None]) & (r < (top + eh)[:, None])  # (B, H)
    in_c = (c >= left[:, None]) & (c < (left + ew)[:, None])  # (B, W)
    mask = in_r[:, :, None] & in_c[:, None, :] & ((u[0] < prob) & found)[:, None, None]  # (B, H, W)
    return x.masked_fill(mask[:, None], 0.0)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of a float batch to `size` (no-op when equal)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


# cached per (values, device): a tensor built from Python floats every batch is a host-to-device copy, which
# synchronises a CUDA stream; never mutated, and made outside inference mode so that autograd may use it later
@functools.lru_cache(maxsize=64)
def _pixel_scale(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """(1, C, 1, 1) float32 `values` x 255 on `device`."""
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1).mul(255).to(device)


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 or [0, 255] float (B, C, H, W) -> standardised float32."""
    m, s = _pixel_scale(tuple(mean), x.device), _pixel_scale(tuple(std), x.device)
    return (x.float() - m) / s


def randaugment(
    images: torch.Tensor, key: int, idx: torch.Tensor, num_ops: int, magnitude: int, bins: int = 11
) -> torch.Tensor:
    """torchvision.transforms.v2.RandAugment per sample on uint8 (CPU), seeded by (key, sample index); `magnitude`
    on timm's and the paper's 0-10 scale with 11 `bins` (M/10 of each operation's largest), torchvision's 0-30
    with 31."""
    from torchvision.transforms import v2

    if images.dtype != torch.uint8:  # torchvision reads float images as [0, 1]
        raise TypeError(f"RandAugment takes uint8 images (0-255), not {images.dtype}")
    op = v2.RandAugment(num_ops=num_ops, magnitude=magnitude, num_magnitude_bins=bins)
    out = torch.empty_like(images)
    seeds = (hash_uniform(key, idx, 101) * (1 << 24)).long().tolist()
    with torch.random.fork_rng(devices=[]):
        for i, s in enumerate(seeds):
            torch.manual_seed(s)
            img = images[i]
            out[i] = op(img)  # a grey image as it is: torchvision's ops take one channel (Color is a no-op)
    return out


# ----------------------------------------------------------------------------- mixup / cutmix


def mix_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    key: int,
    mixup_alpha: float,
    cutmix_alpha: float,
    smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix (chosen per batch) with the reversed batch; returns images and soft targets (B, K)."""
    rng = np.random.default_rng(key)
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < 0.5)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    off = smoothing / num_classes
    target = F.one_hot(y, num_classes).float() * (1 - smoothing) + off
    if use_cutmix:
        H, W = x.shape[-2:]
        cut = math.sqrt(1 - lam)
        ch, cw = int(H * cut), int(W * cut)
        cy, cx = int(rng.integers(0, H)), int(rng.integers(0, W))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, H)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, W)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x.flip(0)[:, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)
    else:
        x = x * lam + x.flip(0) * (1 - lam)
    return x, target * lam + target.flip(0) * (1 - lam)


# ----------------------------------------------------------------------------- the pipeline


@dataclass(frozen=True)
class BatchTransform:
    """uint8 batches -> normalised float batches at the model's size; train-time augmentation."""

    cfg: DataConfig
    out_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    seed: int = 0

    def eval(self, images: torch.Tensor) -> torch.Tensor:
        """Resize and normalise (B, C, H, W) uint8 -> float32 at out_size."""
        return normalize(resize(images.float(), self.out_size), self.mean, self.std)

    def train(self, images: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        """Augment a batch; each sample's draws depend only on (seed, epoch, its dataset index)."""
        c = self.cfg
        key = stream_key(self.seed, epoch)
        idx = idx.to(images.device)
        uses = [  # (in use, its draw numbers): each draw number always means the same choice
            (c.random_resized_crop, list(RRC_DRAWS)),
            (not c.random_resized_crop and c.crop_padding > 0, [1, 2]),
            (c.hflip, [5]),
            (c.low_res > 0, [11]),
            (c.random_erasing > 0, list(ERASE_DRAWS)),
        ]
        draws = [d for used, ds in uses if used for d in ds]
        rows = dict(zip(draws, hash_uniforms(key, idx, draws))) if draws else {}
        u = rows.__getitem__  # draw number -> (B,) uniforms, all from one hash pass
        if c.randaugment_n > 0:
            images = randaugment(
                images.cpu(), key, idx.cpu(), c.randaugment_n, c.randaugment_m, c.randaugment_bins
            ).to(idx.device)
        x = images.float()  # pixel values: crops pad with black, as torchvision's RandomCrop
        if c.random_resized_crop:
            x = random_resized_crop(
                x, self.out_size, [u(d) for d in RRC_DRAWS], (c.rrc_scale_min, c.rrc_scale_max), c.rrc_ratio
            )
        else:
            if c.crop_padding:
                x = random_crop(x, c.crop_padding, u(1), u(2))
            x = resize(x, self.out_size)
        if c.hflip:
            x = hflip(x, u(5) < 0.5)
        if c.low_res > 0:
            x = low_resolution(x, c.low_res_factor, u(11) < c.low_res)
        x = normalize(x, self.mean, self.std)
        if c.random_erasing > 0:
            x = random_erasing(x, c.random_erasing, [u(d) for d in ERASE_DRAWS])
        return x
