"""Named recipes: each a full RunConfig, with the result it is expected to reach and how to reproduce it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from vitkit.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig


def _vit(name: str, size: str, patch: int, **kw) -> ModelConfig:
    widths = {"Ti": (192, 12, 3, 768), "S": (384, 12, 6, 1536), "B": (768, 12, 12, 3072)}
    d, depth, heads, mlp = widths[size]
    base = dict(name=name, patch_size=patch, embed_dim=d, depth=depth, num_heads=heads, mlp_dim=mlp)
    base.update(kw)
    return ModelConfig(**base)


def fashion_mnist() -> RunConfig:
    """The default of `vitkit train`: a plain ViT on Fashion-MNIST in about 12 minutes on 2 CPU cores.

    4x4 patches (49 tokens + class token), width 96, depth 4, 3 heads: the paper's architecture at the size that
    2 CPU cores train at about 1,100 images/s (compiled). Batch 64, AdamW, cosine decay, horizontal flips.
    """
    return RunConfig(
        recipe="fashion-mnist",
        model=ModelConfig(
            name="ViT-fmnist/4",
            img_size=28,
            patch_size=4,
            in_chans=1,
            num_classes=10,
            embed_dim=96,
            depth=4,
            num_heads=3,
            mlp_dim=192,
        ),
        data=DataConfig(dataset="fashion-mnist", hflip=True),
        optim=OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05, warmup_fraction=0.03, schedule="cosine"),
        train=TrainConfig(epochs=12, batch_size=64, log_every=100, compile=True),
        expected=(
            "Fashion-MNIST test top-1 90.45% in 704 s wall (638 s training, 1,128 img/s) on 2 CPU cores; "
            "90% first reached after epoch 10 (539 s of training). `make train`; bench/RESULTS.md"
        ),
    )


def fashion_mnist_fast() -> RunConfig:
    """Fashion-MNIST to 90% in under five minutes on 2 CPU cores: the paper's hybrid, a short schedule.

    The default recipe's encoder, 3 blocks deep, on the 7x7 feature map of a BiT ResNet root (7x7/2 conv,
    GroupNorm, 3x3/2 max pool; the paper's Section 3.1 with 1x1 patches) instead of 4x4 pixel patches: the same
    49 tokens, and local filters that learn faster per image seen. Six epochs, batch 128, AdamW 3e-3, cosine.
    """
    base = fashion_mnist()
    return dataclasses.replace(
        base,
        recipe="fashion-mnist-fast",
        model=dataclasses.replace(base.model, name="R+ViT-fmnist/4", patch_size=1, backbone=(), depth=3),
        optim=dataclasses.replace(base.optim, lr=3e-3),
        train=dataclasses.replace(base.train, epochs=6, batch_size=128),
        expected=(
            "Fashion-MNIST test top-1 90.35% after 6 epochs (287-337 s of training in three runs) on 2 CPU cores; "
            "90% first reached after epoch 5 (90.17%, 237-283 s of training; 249 s, 277 s since the trainer "
            "started, in the seventeenth session's). `python bench/time_to_accuracy.py --recipe "
            "fashion-mnist-fast`; bench/RESULTS.md"
        ),
    )


def fashion_mnist_bit() -> RunConfig:
    """The paper's CNN baseline in the default recipe's setting: BiT-R26x1 instead of the ViT, all else equal.

    A BiT ResNet-v2 (GroupNorm, weight standardisation, stages of 2 bottlenecks, 14M parameters) on the same
    28x28 images, flips, AdamW, cosine schedule, batch 64 and 12 epochs as `fashion-mnist`; eager, because
    torch.compile made its training step 0.78x as fast on 2 CPU cores (eager is 1.01x timm; bench/RESULTS.md).
    """
    base = fashion_mnist()
    return dataclasses.replace(
        base,
        recipe="fashion-mnist-bit",
        model=ModelConfig(
            name="BiT-R26x1", arch="bit", backbone=(2, 2, 2, 2), img_size=28, in_chans=1, num_classes=10
        ),
        train=dataclasses.replace(base.train, compile=False),
        expected=(
            "Fashion-MNIST test top-1 91.75% (top-5 99.89%) after 12 epochs, 2,878 s of training (250 img/s) on 2 "
            "CPU cores, 3,029 s wall (tests shared the cores for one epoch: ~2,720 s of training otherwise); 90% first after "
            "epoch 6 (1,518 s). Per epoch ahead of the ViT recipe (85.14% vs "
            "80.38% after epoch 1), at 2.6x its FLOPs per image. `vitkit train --recipe fashion-mnist-bit`; "
            "bench/RESULTS.md"
        ),
    )


def _attention_baseline(recipe: str, arch: str, expected: str) -> RunConfig:
    """The default recipe's setting (data, AdamW, cosine schedule, batch 64), a CNN attention baseline, 4 epochs."""
    base = fashion_mnist()
    return dataclasses.replace(
        base,
        recipe=recipe,
        model=ModelConfig(
            name=f"{arch.upper()}-ResNet-26",
            arch=arch,
            backbone=(1, 2, 4, 1),
            num_heads=8,
            img_size=28,
            in_chans=1,
            num_classes=10,
        ),
        train=dataclasses.replace(base.train, epochs=4, compile=False),
        expected=expected,
    )


def fashion_mnist_sasa() -> RunConfig:
    """The stand-alone self-attention baseline (Ramachandran et al. 2019) in the default recipe's setting.

    SASA-ResNet-26: a ResNet-26 whose every 3x3 conv is 8-head local self-attention over 7x7 neighbourhoods
    (8.3M parameters), conv stem; 4 epochs, eager, as `fashion-mnist-aa` and the models it is compared with
    (`python bench/attention_baselines.py`).
    """
    return _attention_baseline(
        "fashion-mnist-sasa",
        "sasa",
        "Fashion-MNIST test top-1 90.47% (top-5 99.88%) after 4 epochs (85.73, 87.31, 89.88, 90.47), ~215 s per "
        "epoch uncontended on 2 CPU cores (1,059 s of training; tests shared the cores in epoch 2). "
        "`vitkit train --recipe fashion-mnist-sasa`; `python bench/attention_baselines.py`; bench/RESULTS.md",
    )


def fashion_mnist_aa() -> RunConfig:
    """The attention-augmented convolution baseline (Bello et al. 2019) in the default recipe's setting.

    AA-ResNet-26: a ResNet-26 whose 3x3 convs in the last three stages give 10% of their channels to 8-head global
    self-attention with 2D relative logits (dk = 0.2, dv = 0.1 x channels); 4 epochs, eager.
    """
    return _attention_baseline(
        "fashion-mnist-aa",
        "aa",
        "Fashion-MNIST test top-1 91.15% (top-5 99.92%) after 4 epochs (85.78, 88.31, 90.58, 91.15), 891 s of "
        "training on 2 CPU cores (~223 s per epoch). `vitkit train --recipe fashion-mnist-aa`; "
        "`python bench/attention_baselines.py`; bench/RESULTS.md",
    )


def fashion_mnist_transfer() -> RunConfig:
    """The default recipe made to be moved to a higher resolution: scale and resolution augmentation, GAP, sin-cos.

    RandomResizedCrop down to a quarter of the area shows the patch embedding zooms up to 2x, and `data.low_res`
    shows half the images at 14 px upsampled back: whole objects with the smooth 2x2-pixel patches that an image
    upsampled to 56 px gives; GAP and the fixed embedding (laid out on the trained grid when moved) do not depend
    on the token count. 48 epochs. Measured with `python bench/transfer_resolution.py RUN_DIR` (bench/RESULTS.md).
    """
    base = fashion_mnist()
    return dataclasses.replace(
        base,
        recipe="fashion-mnist-transfer",
        model=dataclasses.replace(base.model, name="ViT-fmnist-transfer/4", pool="gap", posemb="sincos2d"),
        data=dataclasses.replace(base.data, random_resized_crop=True, rrc_scale_min=0.25, low_res=0.5),
        train=dataclasses.replace(base.train, epochs=48),
        expected=(
            "Fashion-MNIST test top-1 89.51% at 28 px (3,738 s of training on 2 CPU cores); moved to 56 px "
            "without fine-tuning 86.73%; after `vitkit finetune --img-size 56` (finetune-small, 500 steps, 392 s "
            "of training) 92.24%. With the clamped RandomResizedCrop of before the sixteenth session (17.5% of "
            "this recipe's crops changed): 90.53%, 87.51%, 92.39%; without data.low_res: 91.87%, 84.86%, 92.45%. "
            "`python bench/transfer_resolution.py RUN_DIR`; bench/RESULTS.md"
        ),
    )


def fashion_mnist_best() -> RunConfig:
    """The most accurate plain ViT (the paper's patch embedding, no conv stem) we train on Fashion-MNIST.

    4x4 patches (49 tokens), width 256, depth 8, GAP head and fixed 2D sin-cos position embedding (the
    paper's Appendix D variants, as Beyer et al. 2022's plain-ViT baseline), crop/flip/erasing, label
    smoothing, stochastic depth. Sized for one GPU: `vitkit train --recipe fashion-mnist-best --device cuda`;
    on 2 CPU cores it takes about 14 minutes per epoch (run it in the background with --resume).
    """
    return RunConfig(
        recipe="fashion-mnist-best",
        model=ModelConfig(
            name="ViT-fmnist-best/4",
            img_size=28,
            patch_size=4,
            in_chans=1,
            num_classes=10,
            embed_dim=256,
            depth=8,
            num_heads=8,
            mlp_dim=512,
            pool="gap",
            posemb="sincos2d",
            drop_path_rate=0.1,
        ),
        data=DataConfig(
            dataset="fashion-mnist", crop_padding=2, hflip=True, random_erasing=0.25, label_smoothing=0.1
        ),
        optim=OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05, warmup_fraction=0.05, schedule="cosine"),
        train=TrainConfig(epochs=100, batch_size=512, precision="auto", log_every=100, compile=True),
        expected=(
            "Fashion-MNIST test top-1 93.58% (top-5 99.83%) after 100 epochs on one H200: 260 s of training at "
            "23,075 img/s (compiled), 313 s wall; seed 0. `CHECK=0 bash bench/gpu_best.sh 340`; bench/RESULTS.md. "
            "Measured before the twentieth session's random erasing as torchvision's (about 1% of the erased "
            "28x28 images now get another box), so a rerun is not bitwise that run"
        ),
    )


def fashion_mnist_gpu() -> RunConfig:
    """Fashion-MNIST to about 94% in under a minute of training on one GPU: the hybrid, CUDA graphs, data on it.

    The images upsampled to 56 px (on the device, each batch), a BiT root and two bottleneck units (a 14x14 map of
    256 channels), then the encoder (width 192, depth 6, GAP, sin-cos 2D) on its 2x2 patches: 49 tokens, as the
    same CNN on the 28 px images (its 7x7 map, 1x1 patches: this recipe until the fourteenth session, 92.98% in 40
    epochs), 1.0 point more accurate at 40 epochs for 1.1-1.3x the training time. Compiled with CUDA graphs (the
    step of a model this small is bound by kernel launches: 2.2x the eager throughput of the 4x4-patch ViT this
    recipe once was, on an H200); checkpoints every 10 epochs. Batch 512, bf16 autocast, AdamW, 48 epochs.
    Evaluations with flip TTA (the records keep the plain top-1 too).
    """
    return RunConfig(
        recipe="fashion-mnist-gpu",
        model=ModelConfig(
            name="Hybrid-fmnist-gpu/8",
            img_size=56,
            patch_size=2,
            backbone=(2,),
            in_chans=1,
            num_classes=10,
            embed_dim=192,
            depth=6,
            num_heads=6,
            mlp_dim=384,
            pool="gap",
            posemb="sincos2d",
        ),
        data=DataConfig(dataset="fashion-mnist", crop_padding=2, hflip=True, label_smoothing=0.1),
        optim=OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05, warmup_fraction=0.05, schedule="cosine"),
        train=TrainConfig(
            epochs=48,
            batch_size=512,
            precision="auto",
            log_every=100,
            eval_every=5,
            compile=True,
            compile_mode="reduce-overhead",
            checkpoint_every=1170,
            eval_tta="hflip",
        ),
        expected=(
            "Fashion-MNIST test top-1 with flip TTA 94.33% (seed 0) and 94.35% (seed 1), plain 94.19% and 94.22%, "
            "after 48 epochs on one H200: 47 and 43 s of training (60,600 and 66,700 img/s), 94% first at epoch 40 "
            "and 30; from process start 102 and 91 s with the compile caches empty, 60.5 s with them warm (seed 1). "
            "bench/RESULTS.md"
        ),
    )


def paper_pretrain() -> RunConfig:
    """The paper's pre-training recipe (Section 4.1, Table 3): Adam 0.9/0.999, wd 0.1, batch 4096, clip 1.

    ViT-B/16 on ImageNet-21k as Table 3's row (90 epochs, lr 1e-3, 10k warmup steps, linear decay, dropout 0.1)
    but for the weight decay: Section 4.1's "high weight decay of 0.1" for all models (Table 3 lists 0.03 for
    ImageNet-21k and 0.1 for JFT-300M; `--set optim.weight_decay=0.03` for the row). As the official code: the
    pre-training head is a tanh pre-logits layer of width D (Section 3.1; the ImageNet-21k checkpoints' `pre_logits`)
    then a zero-initialised linear layer, with no dropout before it.
    """
    return RunConfig(
        recipe="paper-pretrain",
        model=_vit(
            "ViT-B/16",
            "B",
            16,
            img_size=224,
            num_classes=1000,
            drop_rate=0.1,
            head_drop_rate=0.0,
            representation_size=768,
            head_init="zero",
        ),
        data=DataConfig(dataset="imagefolder", random_resized_crop=True, rrc_scale_min=0.08, hflip=True),
        optim=OptimConfig(
            name="adam",
            lr=1e-3,
            betas=(0.9, 0.999),
            weight_decay=0.1,
            grad_clip=1.0,
            warmup_steps=10_000,
            schedule="linear",
        ),
        train=TrainConfig(
            epochs=90, batch_size=4096, micro_batch_size=64, precision="bf16", log_every=50, eval_every=1
        ),
        expected=(
            "paper: ViT-B/16 pre-trained on ImageNet-21k (90 epochs) then fine-tuned reaches 84.0% ImageNet "
            "top-1 at 384 px (Table 5); needs --data-dir with ImageNet-style train/ and val/ folders"
        ),
    )


def paper_finetune() -> RunConfig:
    """The paper's fine-tuning recipe (Appendix B.1.1): SGD momentum 0.9, batch 512, no weight decay, clip 1.

    As the official code's defaults (`vit_jax/configs/common.py`): lr 0.03 (Table 4 sweeps 0.003-0.06), 500
    warmup steps, cosine decay, 384 px (`vitkit finetune` uses it unless --img-size is given); 20k steps
    for ImageNet, which `vitkit finetune` makes 10k for CIFAR-10/100 as the official presets.
    """
    return RunConfig(
        recipe="paper-finetune",
        model=_vit("ViT-B/16", "B", 16, img_size=384, num_classes=1000, head_init="zero", head_drop_rate=0.0),
        data=DataConfig(dataset="imagefolder", random_resized_crop=True, rrc_scale_min=0.08, hflip=True),
        optim=OptimConfig(
            name="sgd",
            lr=0.03,
            momentum=0.9,
            weight_decay=0.0,
            grad_clip=1.0,
            warmup_steps=500,
            schedule="cosine",
        ),
        train=TrainConfig(steps=20_000, batch_size=512, micro_batch_size=32, precision="bf16", log_every=50),
        expected=(
            "paper: fine-tuning ViT-B/16 (ImageNet-21k) at 384 px gives 84.0% on ImageNet, 98.1% CIFAR-10 "
            "(Table 5; 20k steps for ImageNet, 10k for CIFAR); not run here"
        ),
    )


def bit_hyperrule() -> RunConfig:
    """BiT's fine-tuning recipe, "BiT-HyperRule" (Kolesnikov et al. 2020), for the paper's BiT baselines and any
    checkpoint: SGD momentum 0.9, lr 0.003, batch 512, no weight decay or clipping, lr x 0.1 at three points of
    the run, random square crops and flips, a zero head. `vitkit finetune` sets its length, warmup, decay points,
    MixUp and crop from the training set's size and the resolution (`hyperrule`); the resolution itself is
    --img-size (BiT: 128 px for images under 96x96 pixels, else 480). The defaults here are its rule for 20k to
    500k images. BiT resizes to 160 (512) and crops 128 (480); here the images, loaded at the fine-tuning
    resolution, are cropped to the same share of their area and resampled back.
    """
    return RunConfig(
        recipe="bit-hyperrule",
        model=ModelConfig(name="BiT-R50x1", arch="bit", backbone=(3, 4, 6, 3), head_init="zero"),
        data=DataConfig(
            dataset="imagefolder",
            random_resized_crop=True,
            rrc_scale_min=(480 / 512) ** 2,
            rrc_scale_max=(480 / 512) ** 2,
            rrc_ratio=(1.0, 1.0),
            hflip=True,
            mixup_alpha=0.1,
        ),
        optim=OptimConfig(
            name="sgd",
            lr=0.003,
            momentum=0.9,
            weight_decay=0.0,
            grad_clip=0.0,
            warmup_steps=500,
            schedule="step",
            decay_at=(0.3, 0.6, 0.9),
        ),
        train=TrainConfig(steps=10_000, batch_size=512, micro_batch_size=32, precision="auto", log_every=50),
        expected=(
            "BiT paper (Kolesnikov et al. 2020, Table 1): BiT-L fine-tuned with this rule 99.37% CIFAR-10, 93.51% "
            "CIFAR-100; not run here (needs pretrained BiT weights and real transfer data)"
        ),
    )


def hyperrule(num_train: int, img_size: tuple[int, int], given: set[str] = frozenset()) -> list[str]:
    """BiT-HyperRule as overrides, for the keys not in `given` (the command's): BiT's supports (warmup end,
    three decays, end) are [100, 200, 300, 400, 500] steps under 20k training images, [500, 3k, 6k, 9k, 10k]
    under 500k, [500, 6k, 12k, 18k, 20k] beyond; MixUp 0.1 from 20k images; the crop 64% of the area at 128 px
    or less (160 -> 128), else 88% (512 -> 480). A length the command gives keeps the rule's shape: its warmup
    then becomes the same fraction of the run."""
    given = {k.strip() for k in given}
    supports = (
        (100, 200, 300, 400, 500)
        if num_train < 20_000
        else (500, 3000, 6000, 9000, 10_000)
        if num_train < 500_000
        else (500, 6000, 12_000, 18_000, 20_000)
    )
    total = supports[-1]
    at = ",".join(f"{s / total:g}" for s in supports[1:4])
    scale = (128 / 160) ** 2 if max(img_size) <= 128 else (480 / 512) ** 2
    rule = {
        "optim.decay_at": f"({at})",
        "data.mixup_alpha": "0" if num_train < 20_000 else "0.1",
        "data.rrc_scale_min": f"{scale}",
        "data.rrc_scale_max": f"{scale}",
    }
    if given & {"train.steps", "train.epochs"}:  # the command's length, the rule's warmup share
        rule |= {"optim.warmup_fraction": f"{supports[0] / total:g}", "optim.warmup_steps": "0"}
        rule |= {"train.steps": "0"} if "train.epochs" in given else {}  # epochs count when steps are 0
    else:
        rule |= {"train.steps": str(total), "optim.warmup_steps": str(supports[0])}
    if given & {"optim.warmup_steps", "optim.warmup_fraction"}:  # the command's warmup, either way given
        rule = {k: v for k, v in rule.items() if not k.startswith("optim.warmup")}
        if "optim.warmup_steps" not in given:  # a fraction counts only without warmup steps
            rule["optim.warmup_steps"] = "0"
    return [f"{k}={v}" for k, v in rule.items() if k not in given]


def finetune_small() -> RunConfig:
    """The paper's fine-tuning recipe sized for a small machine (the default of `vitkit finetune`).

    SGD momentum 0.9, no weight decay, grad clip 1, warmup then cosine decay, as Appendix B.1.1, with batch 128
    and a few hundred steps. The model section only sets the fine-tuning regularisation (dropout, drop path):
    `vitkit finetune --from SOURCE` takes the architecture from the checkpoint.
    """
    return RunConfig(
        recipe="finetune-small",
        model=dataclasses.replace(fashion_mnist().model, head_init="zero"),
        data=DataConfig(dataset="fashion-mnist", crop_padding=2, hflip=True),
        optim=OptimConfig(
            name="sgd",
            lr=0.01,
            momentum=0.9,
            weight_decay=0.0,
            grad_clip=1.0,
            warmup_steps=50,
            schedule="cosine",
        ),
        train=TrainConfig(steps=500, batch_size=128, log_every=25, eval_every=0),
        expected=(
            "from a fashion-mnist-transfer run trained at 28 px (48 epochs, 89.51%), fine-tuned at 56 px for these "
            "500 steps: 92.24% (392 s of training on 2 CPU cores), above its 28-px accuracy; from the default "
            "recipe's run (not made to be moved, 90.45%) 86.65% (276 s of training), below it. `python "
            "bench/transfer_resolution.py RUN_DIR`; bench/RESULTS.md"
        ),
    )


# `vitkit finetune`'s resolution for a recipe when --img-size is not given (else the checkpoint's)
FINETUNE_IMG_SIZE = {"paper-finetune": 384}
# paper-finetune's length by dataset when neither --steps nor --epochs is given (the official presets)
PAPER_FINETUNE_STEPS = {"cifar10": 10_000, "cifar100": 10_000}


# recipes sized for one GPU, and what they cost as they are (compiled) on the 2-core CPU they were not made for:
# 74 and 110 img/s over 24 steps (bench/RESULTS.md, seventeenth session); `vitkit train` warns
GPU_RECIPES: dict[str, str] = {
    "fashion-mnist-best": "one epoch takes about 14 minutes on 2 cores (100 epochs: about 23 hours)",
    "fashion-mnist-gpu": "one epoch takes about 9 minutes on 2 cores (48 epochs: about 7 hours)",
}

RECIPES: dict[str, Callable[[], RunConfig]] = {
    "fashion-mnist": fashion_mnist,
    "fashion-mnist-fast": fashion_mnist_fast,
    "fashion-mnist-bit": fashion_mnist_bit,
    "fashion-mnist-sasa": fashion_mnist_sasa,
    "fashion-mnist-aa": fashion_mnist_aa,
    "fashion-mnist-transfer": fashion_mnist_transfer,
    "fashion-mnist-best": fashion_mnist_best,
    "fashion-mnist-gpu": fashion_mnist_gpu,
    "paper-pretrain": paper_pretrain,
    "paper-finetune": paper_finetune,
    "bit-hyperrule": bit_hyperrule,
    "finetune-small": finetune_small,
}


def get_recipe(name: str) -> RunConfig:
    """The RunConfig of a named recipe."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: expected one of {', '.join(RECIPES)}")
    return RECIPES[name]()
