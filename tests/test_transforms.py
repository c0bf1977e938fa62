"""Batch transforms: keyed randomness, crops, flips, erasing, mixup; deterministic batch order."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from vitkit.config import DataConfig
from vitkit.data.loader import eval_batches, global_batch, micro_batches, rank_share, steps_per_epoch
from vitkit.data.transforms import (
    ERASE_DRAWS,
    RRC_DRAWS,
    BatchTransform,
    hash_uniform,
    hash_uniforms,
    hflip,
    low_resolution,
    mix_batch,
    randaugment,
    random_crop,
    random_erasing,
    random_resized_crop,
    rrc_boxes,
    stream_key,
)


def test_hash_uniform_is_keyed_and_uniform():
    idx = torch.arange(20000)
    u = hash_uniform(stream_key(1, 2), idx, 3)
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert torch.equal(u, hash_uniform(stream_key(1, 2), idx, 3))
    assert not torch.equal(u, hash_uniform(stream_key(1, 3), idx, 3))
    assert not torch.equal(u, hash_uniform(stream_key(1, 2), idx, 4))
    assert torch.equal(hash_uniform(7, idx[5:9], 0), hash_uniform(7, idx, 0)[5:9])


def test_hash_uniforms_equals_one_hash_per_draw():
    idx = torch.cat([torch.arange(50), torch.tensor([2**32 + 7, 2**40 + 3])])
    draws = [1, 2, 5, 11, 6]
    want = torch.stack([hash_uniform(stream_key(9, 4), idx, d) for d in draws])
    assert torch.equal(hash_uniforms(stream_key(9, 4), idx, draws), want)


@pytest.mark.parametrize(
    "cfg",
    [
        DataConfig(crop_padding=2, hflip=True, random_erasing=0.5),
        DataConfig(crop_padding=0, hflip=True, low_res=0.5),
        DataConfig(random_resized_crop=True, rrc_scale_min=0.25, hflip=True, random_erasing=0.3),
        DataConfig(randaugment_n=2, randaugment_m=9, crop_padding=1),
    ],
    ids=["crop-flip-erase", "nocrop-lowres", "rrc-flip-erase", "randaugment-crop"],
)
def test_training_transform_draws_as_one_hash_per_choice(cfg):
    """The batched draws give what each choice's own hash gives (draw numbers fixed per choice)."""
    tf = BatchTransform(cfg, (28, 28), (0.5,), (0.25,), seed=4)
    imgs = torch.randint(0, 255, (16, 1, 28, 28), dtype=torch.uint8)
    idx = torch.arange(300, 316)
    key = stream_key(4, 3)
    u = lambda d: hash_uniform(key, idx, d)  # noqa: E731
    x = imgs
    if cfg.randaugment_n:
        x = randaugment(x, key, idx, cfg.randaugment_n, cfg.randaugment_m)
    x = x.float()
    if cfg.random_resized_crop:
        x = random_resized_crop(
            x, (28, 28), [u(d) for d in RRC_DRAWS], (cfg.rrc_scale_min, cfg.rrc_scale_max)
        )
    elif cfg.crop_padding:
        x = random_crop(x, cfg.crop_padding, u(1), u(2))
    if cfg.hflip:
        x = hflip(x, u(5) < 0.5)
    if cfg.low_res:
        x = low_resolution(x, cfg.low_res_factor, u(11) < cfg.low_res)
    x = (x - 0.5 * 255) / (0.25 * 255)
    if cfg.random_erasing:
        x = random_erasing(x, cfg.random_erasing, [u(d) for d in ERASE_DRAWS])
    out = tf.train(imgs, idx, epoch=3)
    torch.testing.assert_close(out, x, rtol=0, atol=0)
    assert out.stride() == torch.empty(out.shape).stride()  # standard layout: what the compiled model expects


@pytest.mark.parametrize("hw", [(64, 64), (32, 64), (64, 40)])
def test_random_resized_crop_draws_torchvisions_boxes(hw):
    """Was: a drawn box wider or taller than the image was clamped to it (about 10% of draws at scale (0.08, 1):
    another area and aspect), and the aspect was taken in fractions of each side, not in pixels."""
    from torchvision.transforms import RandomResizedCrop

    scale, ratio, n = (0.08, 1.0), (3 / 4, 4 / 3), 4000
    u = list(hash_uniforms(stream_key(7, 0), torch.arange(n), RRC_DRAWS))
    w, h, cx, cy = rrc_boxes(u, hw, scale, ratio)
    H, W = hw
    assert bool(((w <= 1) & (h <= 1) & (cx.abs() <= 1 - w + 1e-6) & (cy.abs() <= 1 - h + 1e-6)).all())
    aspect = (w * W) / (h * H)
    assert bool(((aspect >= ratio[0] - 1e-5) & (aspect <= ratio[1] + 1e-5)).all())
    drawn = scale[0] + (scale[1] - scale[0]) * u[0]  # the first try's area, kept where it fits
    first = (
        torch.sqrt(drawn * torch.exp(math.log(ratio[0]) + math.log(ratio[1] / ratio[0]) * u[1]) * H / W) <= 1
    )
    first &= (
        torch.sqrt(drawn / torch.exp(math.log(ratio[0]) + math.log(ratio[1] / ratio[0]) * u[1]) * W / H) <= 1
    )
    torch.testing.assert_close((w * h)[first], drawn[first], rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    img = torch.zeros(1, H, W)
    theirs = torch.tensor([RandomResizedCrop.get_params(img, list(scale), list(ratio))[2:] for _ in range(n)])
    their_area = (theirs[:, 0] * theirs[:, 1]).float() / (H * W)  # (h, w) in pixels
    their_aspect = (theirs[:, 1] / theirs[:, 0]).float()
    assert abs(float((w * h).mean()) - float(their_area.mean())) < 0.015
    assert abs(float(aspect.log().mean()) - float(their_aspect.log().mean())) < 0.02


def test_training_transform_makes_no_host_to_device_copies(monkeypatch):
    """After its first batch, the transform moves nothing from the host to the batch's device (on CUDA each
    such copy stalls the stream every step). Run on the meta device, with the ways of copying watched."""
    copies = []
    real_tensor, real_as_tensor, real_to = torch.tensor, torch.as_tensor, torch.Tensor.to

    def on_host(dev) -> bool:
        return dev is None or torch.device(dev).type == "cpu"

    def tensor(*args, device=None, **kw):
        if not on_host(device):
            copies.append(f"torch.tensor(..., device={device})")
        return real_tensor(*args, device=device, **kw)

    def as_tensor(*args, device=None, **kw):
        if not on_host(device):
            copies.append(f"torch.as_tensor(..., device={device})")
        return real_as_tensor(*args, device=device, **kw)

    def to(self, *args, **kw):
        out = real_to(self, *args, **kw)
        if self.device.type == "cpu" and out.device.type != "cpu":
            copies.append(f"Tensor.to({out.device})")
        return out

    for cfg in (
        DataConfig(crop_padding=2, hflip=True, random_erasing=0.25),
        DataConfig(random_resized_crop=True, hflip=True, low_res=0.5),
    ):
        tf = BatchTransform(cfg, (28, 28), (0.3,), (0.2,), seed=4)
        imgs = torch.empty((8, 1, 28, 28), dtype=torch.uint8, device="meta")
        idx = torch.arange(8, device="meta")
        tf.train(imgs, idx, epoch=0)  # the first batch may place the normalisation constants
        with monkeypatch.context() as m:
            m.setattr(torch, "tensor", tensor)
            m.setattr(torch, "as_tensor", as_tensor)
            m.setattr(torch.Tensor, "to", to)
            out = tf.train(imgs, idx, epoch=1)
            tf.eval(imgs)
        assert out.shape == (8, 1, 28, 28) and copies == [], copies


def test_random_crop_matches_manual():
    x = torch.arange(2 * 1 * 4 * 4).float().reshape(2, 1, 4, 4)
    out = random_crop(x, 1, torch.tensor([0.0, 0.99]), torch.tensor([0.5, 0.0]))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    assert torch.equal(out[0], padded[0, :, 0:4, 1:5])
    assert torch.equal(out[1], padded[1, :, 2:6, 0:4])


def test_flip_and_erasing():
    x = torch.randn(3, 2, 5, 6)
    y = hflip(x, torch.tensor([True, False, True]))
    assert torch.equal(y[0], x[0].flip(-1)) and torch.equal(y[1], x[1])
    u = [torch.tensor([0.0, 0.9, 0.0]), *[torch.full((3,), 0.5)] * 2, *[torch.zeros(3)] * 2]
    e = random_erasing(x, 0.5, u + [torch.full((3,), 0.5)] * 18)
    assert (e[0] == 0).any() and torch.equal(e[1], x[1])  # sample 1 is not erased (u0 > p)


@pytest.mark.parametrize("hw", [(16, 48), (48, 16), (8, 8)])
def test_random_erasing_draws_torchvisions_boxes(hw):
    """Was: the aspect was taken in fractions of each side (a 16x48 image's boxes 0.41 high per wide, not ~1),
    and a box too large was clamped to the image (full-height erasures) instead of drawn again."""
    from torchvision.transforms import v2

    H, W = hw
    n = 4000
    u = list(hash_uniforms(7, torch.arange(n), list(ERASE_DRAWS)))
    ours = random_erasing(torch.ones(n, 1, H, W), 1.0, u) == 0  # (n, 1, H, W) erased
    torch.manual_seed(0)
    op = v2.RandomErasing(p=1.0, value=0)
    theirs = torch.stack([op(torch.ones(1, H, W)) for _ in range(n)]) == 0

    def stats(m):
        rows, cols = m[:, 0].any(2).sum(1).double(), m[:, 0].any(1).sum(1).double()
        erased = rows > 0
        return m.double().mean(), (rows[erased] / cols[erased]).log().mean(), (rows == H).double().mean()

    (fa, ra, full_a), (fb, rb, full_b) = stats(ours), stats(theirs)
    assert abs(fa - fb) < 0.01 and abs(ra - rb) < 0.08 and full_a == full_b == 0, (fa, fb, ra, rb)


def test_sample_augmentation_is_independent_of_batching():
    cfg = DataConfig(crop_padding=2, hflip=True, random_erasing=0.5)
    tf = BatchTransform(cfg, (28, 28), (0.5,), (0.25,), seed=4)
    imgs = torch.randint(0, 255, (8, 1, 28, 28), dtype=torch.uint8)
    idx = torch.arange(100, 108)
    full = tf.train(imgs, idx, epoch=3)
    part = tf.train(imgs[[5, 2]], idx[[5, 2]], epoch=3)
    torch.testing.assert_close(part, full[[5, 2]], rtol=0, atol=0)
    assert not torch.equal(tf.train(imgs, idx, epoch=4), full)


def test_low_resolution_gives_the_patches_of_an_upsampled_image():
    """A 28-px image at half resolution holds, in each 4x4 patch, what a 2x-upsampled 14-px image's patch holds."""
    torch.manual_seed(0)
    x = torch.rand(3, 1, 28, 28) * 255
    apply = torch.tensor([True, False, True])
    y = low_resolution(x, 2, apply)
    assert torch.equal(y[1], x[1])
    small = torch.nn.functional.interpolate(x, size=(14, 14), mode="bilinear", antialias=True)
    up = torch.nn.functional.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False)
    torch.testing.assert_close(y[[0, 2]], up[[0, 2]], rtol=0, atol=0)
    assert y[0].diff(dim=-1).abs().mean() < 0.6 * x[0].diff(dim=-1).abs().mean()  # smoother: fewer pixels
    cfg = DataConfig(low_res=0.5)
    tf = BatchTransform(cfg, (28, 28), (0.5,), (0.25,), seed=1)
    imgs = torch.randint(0, 255, (64, 1, 28, 28), dtype=torch.uint8)
    out = tf.train(imgs, torch.arange(64), epoch=0)
    changed = (out != tf.eval(imgs)).flatten(1).any(1).float().mean()
    assert 0.3 < changed < 0.7  # about half the samples


def test_random_resized_crop_and_resize_shapes():
    cfg = DataConfig(random_resized_crop=True, hflip=True)
    tf = BatchTransform(cfg, (32, 32), (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    imgs = torch.randint(0, 255, (4, 3, 20, 24), dtype=torch.uint8)
    assert tf.train(imgs, torch.arange(4), 0).shape == (4, 3, 32, 32)
    assert tf.eval(imgs).shape == (4, 3, 32, 32)


def test_random_resized_crop_area_stays_in_scale_range():
    import pytest

    ramp = torch.linspace(0, 255, 64).round().to(torch.uint8).expand(16, 1, 64, 64)  # value = x position

    def widths(lo: float, hi: float) -> torch.Tensor:
        """Fraction of the image's width each crop spans, read off the ramp."""
        cfg = DataConfig(random_resized_crop=True, rrc_scale_min=lo, rrc_scale_max=hi)
        out = BatchTransform(cfg, (64, 64), (0.0,), (1.0,)).train(ramp, torch.arange(16), 0)
        return out.amax(dim=(1, 2, 3)) - out.amin(dim=(1, 2, 3))

    # area 1/4: at most sqrt(1/4 * 4/3) = 0.58 of the width (aspect ratio up to 4/3)
    assert float(widths(0.25, 0.25).max()) < 0.6
    assert float(widths(0.9, 1.0).min()) > 0.8
    with pytest.raises(ValueError, match="rrc_scale_max"):
        DataConfig(random_resized_crop=True, rrc_scale_min=0.5, rrc_scale_max=0.4)


@pytest.mark.parametrize("c", [1, 3])
def test_randaugment_is_torchvisions_per_sample_whatever_the_batch(c):
    """Each image is torchvision's v2.RandAugment under that sample's own seed (grey images through 3 equal
    channels); it changes images, draws per sample (a sample's result does not depend on the batch it is in),
    and runs the same again."""
    from torchvision.transforms import v2

    imgs = torch.randint(0, 255, (8, c, 16, 16), dtype=torch.uint8)
    idx, key = torch.arange(40, 48), stream_key(4, 3)
    out = randaugment(imgs, key, idx, 2, 9)
    assert torch.equal(out, randaugment(imgs, key, idx, 2, 9))
    assert torch.equal(out[5:], randaugment(imgs[5:], key, idx[5:], 2, 9))
    assert sum(not torch.equal(o, i) for o, i in zip(out, imgs)) >= 6  # RandAugment's identity op aside
    op = v2.RandAugment(num_ops=2, magnitude=9, num_magnitude_bins=11)  # timm's and the paper's M/10
    for i, seed in enumerate((hash_uniform(key, idx, 101) * (1 << 24)).long().tolist()):
        torch.manual_seed(seed)
        want = op(imgs[i].expand(3, -1, -1))[:1] if c == 1 else op(imgs[i])
        assert torch.equal(out[i], want), i
    tf = BatchTransform(DataConfig(randaugment_n=2, randaugment_m=9), (16, 16), (0.5,) * c, (0.2,) * c)
    assert torch.equal(tf.train(imgs, idx, 0), tf.train(imgs, idx, 0))


def test_randaugment_magnitude_is_on_the_papers_scale_and_takes_uint8_only():
    """Was: M went to torchvision's 0-30 scale (M=9 rotated by up to 9 degrees where timm's and the paper's rotate
    by 27, a third of the strength asked for); a [0, 255] float batch was read as [0, 1], silently."""
    from torchvision.transforms import v2

    space = v2.RandAugment(num_magnitude_bins=11)._AUGMENTATION_SPACE
    assert float(space["Rotate"][0](11, 16, 16)[9]) == pytest.approx(27.0)  # timm's rand-m9: 0.9 x 30 degrees
    imgs = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    idx, key = torch.arange(1), stream_key(0, 0)
    assert randaugment(imgs, key, idx, 2, 10).shape == imgs.shape  # the largest magnitude on that scale
    with pytest.raises(TypeError, match="uint8 images"):
        randaugment(imgs.float(), key, idx, 2, 9)
    with pytest.raises(
        ValueError, match=r"randaugment_m=11 must lie in \[0, 10\]: .*randaugment_bins=31 reads"
    ):
        DataConfig(randaugment_n=2, randaugment_m=11)
    assert DataConfig(randaugment_n=2, randaugment_m=27, randaugment_bins=31).randaugment_m == 27


def test_a_run_written_before_the_magnitude_scale_changed_reads_its_own(tmp_path):
    """A config.json without data.randaugment_bins was written when M went to torchvision's 0-30 scale: it is
    read so (M of 11-30 loads, a resume augments as the run did), where a new run's default is the 0-10 scale."""
    import json

    from helpers import tiny_run
    from vitkit.config import load_run_config, save_json

    cfg = tiny_run()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, randaugment_n=2, randaugment_m=9))
    save_json(cfg, str(tmp_path / "config.json"))
    assert load_run_config(str(tmp_path / "config.json")).data.randaugment_bins == 11
    data = json.loads((tmp_path / "config.json").read_text())
    del data["data"]["randaugment_bins"]
    data["data"]["randaugment_m"] = 15
    (tmp_path / "config.json").write_text(json.dumps(data))
    old = load_run_config(str(tmp_path / "config.json")).data
    assert (old.randaugment_m, old.randaugment_bins) == (15, 31)
    data["data"].update(randaugment_n=0, randaugment_m=9)  # no RandAugment: nothing to read on either scale
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert (
        load_run_config(str(tmp_path / "config.json")).data == tiny_run().data
    )  # no difference to a new run's


@pytest.mark.parametrize(("mix", "cut"), [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixup_cutmix_targets_are_the_share_of_each_image_in_the_mix(mix, cut):
    """Each image mixed with its partner in the reversed batch; its target is the smoothed labels in the
    proportion the pixels hold them: for Mixup the blend weight, for CutMix the area left after the paste
    (clipped at the border), read back from constant images."""
    x = torch.arange(1.0, 7.0)[:, None, None, None].expand(6, 1, 8, 8)  # image i is all i + 1
    y = torch.tensor([0, 1, 2, 0, 1, 1])
    smooth = torch.nn.functional.one_hot(y, 3).float() * 0.9 + 0.1 / 3
    kinds = set()
    for key in range(12):
        xm, t = mix_batch(x, y, 3, key=key, mixup_alpha=mix, cutmix_alpha=cut, smoothing=0.1)
        own, partner = x[:, 0, 0, 0], x.flip(0)[:, 0, 0, 0]  # (B,)
        pasted = xm == x.flip(0)  # CutMix: the partner's pixels
        if bool((pasted | (xm == x)).all()) and not bool(torch.equal(xm, x)):  # a paste (whole pixels)
            kinds.add("cutmix")
            box = pasted[0, 0]
            rows, cols = box.any(1).nonzero().squeeze(1), box.any(0).nonzero().squeeze(1)
            assert box.sum() == len(rows) * len(cols) and torch.equal(
                pasted[:3], pasted[:1].expand(3, -1, -1, -1)
            )
            lam = 1 - float(box.float().mean())
        else:
            kinds.add("mixup")
            lam = float((xm[0, 0, 0, 0] - partner[0]) / (own[0] - partner[0]))
            torch.testing.assert_close(xm[:, 0, 0, 0], lam * own + (1 - lam) * partner)
        torch.testing.assert_close(t, lam * smooth + (1 - lam) * smooth.flip(0))
    assert kinds == {k for k, a in (("mixup", mix), ("cutmix", cut)) if a > 0}


def test_batch_order_sharding_and_eval_cover():
    n, b = 103, 10
    assert steps_per_epoch(n, b) == 10
    g = global_batch(n, b, seed=0, epoch=1, b=3)
    parts = [rank_share(g, r, 2) for r in range(2)]
    assert torch.equal(torch.cat(parts), g)
    assert sum(len(m) for m in micro_batches(parts[0], 2)) == 5
    seen = torch.cat([i for r in range(3) for i in eval_batches(n, 8, r, 3)])
    assert sorted(seen.tolist()) == list(range(n))
    perm = torch.cat([global_batch(n, b, 0, 0, i) for i in range(10)])
    assert len(set(perm.tolist())) == 100


def test_random_resized_crop_with_a_fixed_ratio_crops_squares():
    """data.rrc_ratio=(1, 1) (BiT-HyperRule's crops): every crop spans the same share of width and height."""
    x = torch.linspace(0, 255, 64).round()
    ramps = torch.stack([x.expand(64, 64), x[:, None].expand(64, 64)]).to(torch.uint8).expand(16, 2, 64, 64)

    def spans(ratio: tuple[float, float]) -> torch.Tensor:
        cfg = DataConfig(random_resized_crop=True, rrc_scale_min=0.36, rrc_scale_max=0.36, rrc_ratio=ratio)
        out = BatchTransform(cfg, (64, 64), (0.0, 0.0), (1.0, 1.0)).train(ramps, torch.arange(16), 0)
        return out.amax(dim=(2, 3)) - out.amin(
            dim=(2, 3)
        )  # (16, 2): width and height shares (pixels in [0, 1])

    square = spans((1.0, 1.0))
    torch.testing.assert_close(square, torch.full_like(square, 0.6), atol=0.03, rtol=0)  # sqrt(0.36)
    free = spans((3 / 4, 4 / 3))
    assert float((free[:, 0] - free[:, 1]).abs().max()) > 0.05
    with pytest.raises(ValueError, match=r"data\.rrc_ratio"):
        DataConfig(rrc_ratio=(2.0, 1.0))


def test_randaugment_is_torchvisions_on_grey_images():
    """Was: a grey image went through as three equal channels, where Color and Contrast differ from torchvision's
    one-channel ops by a grey level that Solarize or Posterize can turn into ~100 (39 of 200 images differed)."""
    from torchvision.transforms import v2

    imgs = (torch.rand(200, 1, 28, 28) * 255).to(torch.uint8)
    idx = torch.arange(200)
    out = randaugment(imgs, 5, idx, 2, 9)
    op = v2.RandAugment(2, 9, num_magnitude_bins=11)
    for i, s in enumerate((hash_uniform(5, idx, 101) * (1 << 24)).long().tolist()):
        torch.manual_seed(s)
        assert torch.equal(op(imgs[i]), out[i]), i
