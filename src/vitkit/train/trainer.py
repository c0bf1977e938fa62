"""Trainer: one run's state, its optimizer step, evaluation and checkpoints (driven by `loop.train`)."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitkit import keyed_random
from vitkit.config import RunConfig, load_run_config
from vitkit.data.datasets import ArrayDataset, Splits
from vitkit.data.loader import epoch_permutation, micro_batches, rank_share, steps_per_epoch
from vitkit.data.transforms import BatchTransform, mix_batch, stream_key
from vitkit.eval.evaluate import evaluate
from vitkit.models import build_model
from vitkit.models.fused_mlp import set_fused_bias_gelu
from vitkit.train import distributed as D
from vitkit.train import parallel as P
from vitkit.train.checkpoint import check_training_state, load_checkpoint, save_checkpoint, verify_checkpoint
from vitkit.train.compiling import block_regions, check_graphs, compile_with_trial, eager_regions
from vitkit.train.master import Bf16Copy
from vitkit.train.optim import build_optimizer
from vitkit.train.probes import fewshot_probe, fewshot_sets
from vitkit.train.runfiles import CHECKPOINTS, CONFIG, METRICS, MetricsLog
from vitkit.train.schedules import schedule_fn, warmup_steps

log = logging.getLogger(__name__)


def resolve_precision(name: str, device: torch.device) -> str:
    """ "auto" -> bf16 autocast on CUDA, fp32 on CPU (no AVX512-BF16/AMX); fp32, bf16, bf16-pure as given."""
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return name


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    if target.ndim == 2:  # soft targets (mixup/cutmix)
        return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
    return F.cross_entropy(logits, target, label_smoothing=smoothing)


class Trainer:
    """One run: state, one optimizer step, evaluation and checkpoints. `train()` drives it."""

    def __init__(
        self,
        cfg: RunConfig,
        out_dir: str | None,
        splits: Splits,
        info: D.DistInfo,
        device: torch.device,
        tensorboard: bool = False,
        init_state: dict | None = None,
    ):
        self.cfg, self.out, self.splits, self.info, self.device = cfg, out_dir, splits, info, device
        t = cfg.train
        if t.batch_size % info.world:
            raise ValueError(f"train.batch_size={t.batch_size} does not split over {info.world} processes")
        self.per_rank = t.batch_size // info.world
        self.micro = t.micro_batch_size if t.micro_batch_size and t.micro_batch_size < self.per_rank else 0
        if self.micro and self.per_rank % self.micro:
            raise ValueError(
                f"per-process batch {self.per_rank} is not a multiple of micro_batch_size {self.micro}"
            )
        self.spe = steps_per_epoch(len(splits.train), t.batch_size)
        self.total = t.steps or t.epochs * self.spe
        if t.eval_tta == "hflip" and not cfg.data.hflip and info.is_main:
            log.warning(
                "train.eval_tta=hflip without data.hflip: the model never saw mirrored images in training (the "
                "evaluations' top1_no_tta shows what the flip does)"
            )
        torch.manual_seed(t.seed)
        self.model = build_model(cfg.model, weights_follow=init_state is not None)
        if init_state is not None:  # fine-tuning: start from given weights (already adapted to cfg.model)
            self.model.load_state_dict(init_state, strict=True)
        if cfg.optim.layer_decay < 1 and cfg.model.arch != "vit":
            raise ValueError(
                f"optim.layer_decay={cfg.optim.layer_decay}: layer-wise decay follows a ViT's blocks; "
                f"{cfg.model.name} (arch {cfg.model.arch!r}) has none (leave it at 1.0)"
            )
        if t.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        if t.fused_bias_gelu:
            self._fuse_bias_gelu(cfg.model.name, device, info.is_main)
        self.model = self.model.to(device)
        self.strategy = P.resolve_strategy(t.strategy, info)
        self.precision = resolve_precision(t.precision, device)
        self.t_start = time.perf_counter()
        # bf16-pure: forward/backward on a bf16 copy, gradients summed into self.model (fp32), which is stepped
        self.bf16_copy = None
        if self.precision == "bf16-pure":
            if info.world > 1:  # DDP would reduce the copy's gradients in bf16
                raise ValueError("train.precision=bf16-pure runs in one process; under torchrun use bf16")
            self.bf16_copy = Bf16Copy(self.model)
        work = self.bf16_copy.work if self.bf16_copy else self.model
        self.fwd = P.wrap_model(work, self.strategy, device)  # FSDP shards the model in place
        self.graphs = t.compile and t.compile_mode == "reduce-overhead" and device.type == "cuda"
        if self.graphs:
            check_graphs(self.precision, bool(self.micro), info.world, t.grad_checkpointing)
        self.regions: list[torch.nn.Module] = []  # blocks compiled in place (train.compile_scope=blocks)
        if t.compile:
            if cfg.model.arch == "bit" and device.type == "cpu" and info.is_main:
                log.warning(
                    "train.compile=true with the BiT CNN on the CPU: measured 0.78-0.81x the speed of eager "
                    "(bench/RESULTS.md); --set train.compile=false trains it faster"
                )
            self.fwd = self._compiled(self.fwd)
        self.opt = build_optimizer(self.model, cfg.optim, device, fused=self.strategy != "fsdp")
        self.lr = schedule_fn(cfg.optim, self.total)
        warm = warmup_steps(cfg.optim, self.total)
        if warm >= self.total and info.is_main:
            log.warning(
                "optim.warmup_steps=%d is not shorter than the run's %d steps: the learning rate only ramps up, to "
                "%.3g at the last step (of %.3g), and never decays; shorten the warmup (optim.warmup_steps or "
                "optim.warmup_fraction) or lengthen the run",
                warm,
                self.total,
                self.lr(self.total - 1),
                cfg.optim.lr,
            )
        # the EMA averages the parameters and the floating-point buffers that checkpoints hold (BatchNorm's
        # running statistics, as timm's ModelEmaV2)
        held = self.model.state_dict().keys()
        self._ema_buffers = [n for n, b in self.model.named_buffers() if n in held and b.is_floating_point()]
        self.ema = [x.detach().clone() for x in self._ema_live()] if t.ema_decay > 0 else None
        self._norm_stats = [  # BatchNorm's running statistics, averaged over ranks under torchrun
            b
            for m in self.model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for b in m.buffers()
            if b.is_floating_point()
        ]
        self.step = 0
        # evaluations due at this step that a stop's checkpoint was written before ("eval", "fewshot"): a resumed
        # run does them first, in case the process died during them
        self.pending: tuple[str, ...] = ()
        self.elapsed = 0.0
        self.best = -1.0  # the best evaluation's top-1: on the val split when there is one, else on test
        self.best_test = -1.0  # the test top-1 of that evaluation
        self.images_seen = 0
        self._acc = self._zero_acc()
        self.metrics = MetricsLog(os.path.join(out_dir, METRICS) if out_dir and info.is_main else None)
        on_device = t.data_on_device and isinstance(splits.train, ArrayDataset)
        self.train_ds = splits.train.to(device) if on_device else splits.train
        self.test_ds = splits.test.to(device) if on_device else splits.test
        self.val_ds = None if splits.val is None else splits.val.to(device) if on_device else splits.val
        self.transform = BatchTransform(cfg.data, cfg.model.img_size, splits.mean, splits.std, t.seed)
        if t.fewshot_every and self.strategy == "fsdp":  # the representation is read past the sharded forward
            raise ValueError(
                "train.fewshot_every: not under FSDP (train.strategy=fsdp); use DDP or one process"
            )
        self.fewshot_sets = fewshot_sets(cfg, splits, self.transform.eval) if t.fewshot_every else {}
        self.tb = None  # opened by open_tensorboard, once the step to continue from is known
        self._tb_wanted = bool(tensorboard and info.is_main and out_dir)

    def fewshot(self) -> dict[str, dict[str, float]]:
        """Few-shot linear top-1 of the headline weights' representation (the EMA when on) on each few-shot
        dataset, one draw per shot count, logged as one record; {dataset: {shots: top-1}}."""
        raw = self._swap_ema() if self.ema is not None else None
        try:
            with eager_regions(self.regions):
                out = fewshot_probe(
                    self.model, self.fewshot_sets, self.cfg.train, self.device, self.precision
                )
        finally:
            if raw is not None:
                self._restore(raw)
        rec = {"step": self.step, "epoch": self.step / self.spe, "split": "fewshot", "fewshot": out}
        self.metrics.write(rec | {"time": self.elapsed, "wall": time.perf_counter() - self.t_start})
        if self.tb:
            for name, accs in out.items():
                for k, acc in accs.items():
                    self.tb.add_scalar(f"fewshot/{name}/{k}shot", acc, self.step)
        return out

    def _fuse_bias_gelu(self, name: str, device: torch.device, is_main: bool) -> None:
        """train.fused_bias_gelu: the MLPs' fused kernels on CUDA (refused where the model has no transformer
        MLP); elsewhere torch's ops, with a warning."""
        if not any(hasattr(m, "fused_bias_gelu") for m in self.model.modules()):
            raise ValueError(f"train.fused_bias_gelu=true: {name} has no transformer MLP to fuse")
        if device.type == "cuda":
            try:
                set_fused_bias_gelu(self.model)
            except RuntimeError as e:  # no Triton, or a torch without triton_op
                raise ValueError(f"train.fused_bias_gelu=true: {e}") from None
        elif is_main:
            log.warning(
                "train.fused_bias_gelu: its kernels run on CUDA; on %s the MLPs run torch's ops", device
            )

    def _compiled(self, module: torch.nn.Module) -> torch.nn.Module:
        """torch.compile'd module (or its blocks, in place), tried once on a dummy batch; eager if that fails."""
        t, c = self.cfg.train, self.cfg.model
        work = self.bf16_copy.work if self.bf16_copy else self.model
        regions = block_regions(work, c, self.strategy) if t.compile_scope == "blocks" else []
        x = torch.zeros(self.micro or self.per_rank, c.in_chans, *c.img_size, device=self.device)
        x = self.bf16_copy.input(x) if self.bf16_copy else x
        compiled, self.regions = compile_with_trial(
            module, regions, t.compile_mode, x, self.precision == "bf16", self.graphs
        )
        return compiled

    def _zero_acc(self) -> dict[str, torch.Tensor]:
        z = lambda dt: torch.zeros((), dtype=dt, device=self.device)  # noqa: E731
        return {"loss": z(torch.float64), "correct": z(torch.long), "count": z(torch.long)}

    # ------------------------------------------------------------------ state

    def open_tensorboard(self) -> None:
        """The TensorBoard writer (--tensorboard), with the events a resumed run logged after its checkpoint's
        step purged (metrics.jsonl is cut back to the same step)."""
        if not self._tb_wanted:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning(
                "--tensorboard: tensorboard is not installed (pip install tensorboard); metrics go to metrics.jsonl only"
            )
            return
        self.tb = SummaryWriter(
            os.path.join(self.out, "tensorboard"), purge_step=self.step + 1 if self.step else None
        )

    def _param_names(self) -> list[str]:
        return [n for n, _ in self.model.named_parameters()]

    def _ema_names(self) -> list[str]:
        return self._param_names() + self._ema_buffers

    def _ema_live(self) -> list[torch.Tensor]:
        """The model's tensors the EMA follows, in `_ema_names` order."""
        buffers = dict(self.model.named_buffers())
        return [p.detach() for p in self.model.parameters()] + [buffers[n] for n in self._ema_buffers]

    def state(self) -> tuple[dict[str, dict], dict[str, Any]]:
        """Full weights and training state (collective under FSDP: all ranks call it)."""
        weights = {"model": P.model_state(self.model, self.strategy)}
        if self.ema is not None:
            weights["ema"] = dict(zip(self._ema_names(), P.full_tensors(self.ema)))
        state = {
            "step": self.step,
            "optimizer": P.optimizer_state(self.model, self.opt),
            "rng": _rng_state(self.device),
            "elapsed": self.elapsed,
            "best": self.best,
            "best_test": self.best_test,
            "images_seen": self.images_seen,
            "acc": {k: D.all_reduce_sum(v).detach().cpu() for k, v in self._acc.items()},
            "world_size": self.info.world,
            "pending": list(self.pending),
            "total": self.total,  # the run's length, whose schedule the steps so far followed
            "precision": self.precision,  # as resolved ("auto": bf16 on CUDA, fp32 on the CPU)
        }
        return weights, state

    def load_state(self, path: str) -> None:
        """Restore from a checkpoint written with any world size or strategy."""
        weights, state = load_checkpoint(path, "cpu")
        check_training_state(state, os.path.join(path, "state.pt"))
        try:
            P.load_model_state(self.model, weights["model"], self.strategy)
        except RuntimeError as e:  # missing/unexpected keys, size mismatches
            detail = str(e).strip().splitlines()
            raise ValueError(
                f"{path} does not fit the model of the run's config.json ({self.cfg.model.name}; was the config "
                f"edited?): {' '.join(line.strip() for line in detail[:3])}"
            ) from None
        if self.ema is not None:
            ema = weights.get("ema")
            if ema is None:
                raise ValueError(f"{path}: the run uses EMA but the checkpoint has no ema weights")
            missing = [n for n in self._param_names() if n not in ema]
            if missing:
                raise ValueError(f"{path}: the checkpoint's ema weights lack {', '.join(missing[:3])}")
            live = self._ema_live()
            with torch.no_grad():
                for i, name in enumerate(self._ema_names()):
                    # a checkpoint from before the EMA followed buffers: start their average at the loaded values
                    self.ema[i] = P.shard_like(ema[name], self.ema[i]) if name in ema else live[i].clone()
        P.load_optimizer_state(self.model, self.opt, state["optimizer"])
        if self.bf16_copy:
            self.bf16_copy.pull(buffers=True)
        self.step, self.elapsed, self.best = int(state["step"]), float(state["elapsed"]), float(state["best"])
        self.best_test = float(state.get("best_test", self.best))  # older checkpoints: best was on test
        self.images_seen = int(state["images_seen"])
        self.pending = tuple(str(p) for p in state.get("pending", ()))
        self._recall_best()
        self._say_what_changed(state)
        # running sums since the last log line, kept on rank 0 so that their reduction is unchanged
        self._acc = {
            k: (v if self.info.is_main else torch.zeros_like(v)).to(self.device)
            for k, v in state["acc"].items()
        }
        if int(state.get("world_size", 1)) == self.info.world:
            _set_rng_state(state["rng"], self.device)

    def _say_what_changed(self, state: dict[str, Any]) -> None:
        """Warn where a resumed run continues otherwise than it began: over a new length (the learning-rate
        schedule is recomputed over it: a jump, and a warmup fraction's warmup moved), or in another precision
        (train.precision=auto on another device)."""
        if not self.info.is_main:
            return
        total = int(state.get("total", 0)) or self._recorded_total()
        if total and total != self.total and self.step:
            before = schedule_fn(self.cfg.optim, total)
            log.warning(
                "--resume: the run now lasts %d steps (it began as %d): the learning-rate schedule is recomputed "
                "over them, %.3g at step %d where the first schedule gave %.3g at step %d (warmup %d steps, was %d)",
                self.total,
                total,
                self.lr(self.step),
                self.step + 1,
                before(self.step - 1),
                self.step,
                warmup_steps(self.cfg.optim, self.total),
                warmup_steps(self.cfg.optim, total),
            )
        was = state.get("precision")
        if was and was != self.precision:
            log.warning(
                "--resume: steps 1-%d ran in %s, the rest runs in %s (train.precision=%s on %s)",
                self.step,
                was,
                self.precision,
                self.cfg.train.precision,
                self.device,
            )

    def _recorded_total(self) -> int:
        """The length in steps of the run's config.json as it stands before this resume rewrites it (checkpoints
        before the length was kept in them); 0 if unknown."""
        path = os.path.join(self.out, CONFIG) if self.out else None
        if not path or not os.path.isfile(path):
            return 0
        try:
            t = load_run_config(path).train
        except (OSError, ValueError):
            return 0
        return t.steps or t.epochs * steps_per_epoch(len(self.splits.train), t.batch_size)

    def _recall_best(self) -> None:
        """The best evaluation so far as checkpoints/best records it: a step checkpoint is written before the
        evaluation that ends a run, so one resumed to train longer would not know that evaluation."""
        path = os.path.join(self.out, CHECKPOINTS, "best") if self.out else None
        if not path or not os.path.isdir(path):
            return
        try:
            verify_checkpoint(path)
            state = torch.load(os.path.join(path, "state.pt"), map_location="cpu", weights_only=True)
        except Exception as e:  # a damaged best/ is replaced by the next better evaluation
            log.warning("%s: not read (%s); the best evaluation so far is the checkpoint's", path, e)
            return
        if float(state.get("top1", -1.0)) > self.best:
            self.best = float(state["top1"])
            self.best_test = float(state.get("test_top1", self.best))

    def _average_norm_stats(self) -> None:
        """Under torchrun, BatchNorm's running statistics (and their EMA) averaged over the ranks before they are
        evaluated or saved: DDP broadcasts rank 0's before each forward, then each rank updates its own from its
        share of the batch (timm's distribute_bn does the same)."""
        if self.info.world < 2 or not self._norm_stats:
            return
        ids = {id(b) for b in self._norm_stats}  # their averages' places in the EMA
        ema = [e for x, e in zip(self._ema_live(), self.ema) if id(x) in ids] if self.ema is not None else []
        with torch.no_grad():
            for b in self._norm_stats + ema:
                b.copy_(D.all_reduce_sum(b) / self.info.world)

    def save(self, pending: tuple[str, ...] = ()) -> None:
        """Checkpoint this step; `pending`: the evaluations due at it that run after this save."""
        self._average_norm_stats()
        self.pending = pending
        if self.out:
            weights, state = self.state()
            if self.info.is_main:
                save_checkpoint(os.path.join(self.out, CHECKPOINTS), self.step, weights, state)
        self.pending = ()
        D.barrier()

    # ------------------------------------------------------------------ steps

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        """This epoch's sample order, kept on the data's device (no host-to-device copy per step)."""
        if getattr(self, "_order_epoch", None) != epoch:
            perm = epoch_permutation(len(self.train_ds), self.cfg.train.seed, epoch)
            dev = (
                self.train_ds.images.device
                if isinstance(self.train_ds, ArrayDataset)
                else torch.device("cpu")
            )
            self._order, self._order_epoch = perm.to(dev), epoch
        return self._order

    def train_step(self) -> None:
        """One optimizer step over the global batch (micro-batches and ranks summed)."""
        t, d = self.cfg.train, self.cfg.data
        epoch, b = divmod(self.step, self.spe)
        mine = rank_share(
            self._epoch_order(epoch)[b * t.batch_size : (b + 1) * t.batch_size],
            self.info.rank,
            self.info.world,
        )
        mixing = d.mixup_alpha > 0 or d.cutmix_alpha > 0
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        chunks = micro_batches(mine, self.micro)
        for i, idx in enumerate(chunks):
            images, labels = self.train_ds.get_batch(idx)
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            x = self.transform.train(images, idx, epoch)
            x = self.bf16_copy.input(x) if self.bf16_copy else x
            target = labels
            if mixing:
                key = stream_key(t.seed, epoch, b, i, self.info.rank)
                x, target = mix_batch(
                    x,
                    labels,
                    self.cfg.model.num_classes,
                    key,
                    d.mixup_alpha,
                    d.cutmix_alpha,
                    d.label_smoothing,
                )
            if self.graphs:  # a new step for CUDA graph trees: the last step's outputs may be overwritten now
                torch.compiler.cudagraph_mark_step_begin()
            with P.gradient_sync(self.fwd, self.strategy, sync=i == len(chunks) - 1):
                # the sample indices on the model's device, as in the start-up compilation (files: on the CPU)
                key_idx = idx.to(self.device, non_blocking=True)
                with autocast, keyed_random.keyed(stream_key(t.seed, self.step, 0xD20), key_idx):
                    logits = self.fwd(x)
                loss = _loss(logits.float(), target, d.label_smoothing)
                (loss * (len(idx) / len(mine))).backward()
            if self.bf16_copy:
                self.bf16_copy.accumulate_grads()
            with torch.no_grad():
                self._acc["loss"] += loss.detach().double() * len(idx)
                self._acc["correct"] += (logits.argmax(-1) == labels).sum()
                self._acc["count"] += len(idx)
        lr = self.lr(self.step)
        for g in self.opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.bf16_copy:
            self.bf16_copy.pull()
        if self.ema is not None:
            with torch.no_grad():
                live = self._ema_live()
                n = len(live) - len(self._ema_buffers)  # parameters (DTensors under FSDP), then plain buffers
                torch._foreach_lerp_(self.ema[:n], live[:n], 1 - t.ema_decay)
                if self._ema_buffers:
                    torch._foreach_lerp_(self.ema[n:], live[n:], 1 - t.ema_decay)
        self.step += 1
        self.images_seen += t.batch_size

    def flush_train_stats(self, seconds: float, images: int) -> dict[str, float]:
        acc = {k: D.all_reduce_sum(v) for k, v in self._acc.items()}
        count = max(int(acc["count"]), 1)
        stats = {
            "step": self.step,
            "epoch": self.step / self.spe,
            "loss": float(acc["loss"]) / count,
            "train_top1": float(acc["correct"]) / count,
            "lr": self.lr(max(self.step - 1, 0)),
            "img_s": images / max(seconds, 1e-9),
            "time": self.elapsed,
            "wall": time.perf_counter() - self.t_start,
        }
        self._acc = self._zero_acc()
        self.metrics.write(stats)
        if self.tb:
            for k in ("loss", "train_top1", "lr", "img_s"):
                self.tb.add_scalar(f"train/{k}", stats[k], self.step)
        return stats

    def _ema_live_sharded(self) -> list[torch.Tensor]:
        """`_ema_live`, under FSDP as shards: a forward without a backward (an evaluation's) leaves the root's own
        parameters gathered, plain tensors beside the EMA's shards, until resharded (a training step's backward
        reshards them, so its EMA update needs no call)."""
        if self.strategy == "fsdp":
            self.model.reshard()
        return self._ema_live()

    def _swap_ema(self) -> list[torch.Tensor]:
        """Put the EMA weights (and statistics) into the model; returns the raw ones to put back."""
        live = self._ema_live_sharded()
        raw = [x.clone() for x in live]
        with torch.no_grad():
            for x, e in zip(live, self.ema):
                x.copy_(e)
        return raw

    def _restore(self, raw: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for x, r in zip(self._ema_live_sharded(), raw):
                x.copy_(r)

    def evaluate(self, use_ema: bool = False, dataset: Any = None) -> dict[str, Any]:
        """Metrics on `dataset` (default: the test split), with the EMA weights if `use_ema`."""
        raw = self._swap_ema() if use_ema else None
        with eager_regions(self.regions):
            res = evaluate(
                self.model,
                self.test_ds if dataset is None else dataset,
                self.transform.eval,
                num_classes=self.cfg.model.num_classes,
                device=self.device,
                batch_size=self.cfg.train.eval_batch_size,
                precision="bf16" if self.precision.startswith("bf16") else self.precision,
                rank=self.info.rank,
                world=self.info.world,
                reduce=D.all_reduce_sum,
                tta=self.cfg.train.eval_tta,
            )
        if raw is not None:
            self._restore(raw)
        return res

    def _log_eval(self, split: str, raw: dict[str, Any], head: dict[str, Any]) -> dict[str, Any]:
        """One metrics record (and TensorBoard scalars) of an evaluation on `split`."""
        rec = {
            "step": self.step,
            "epoch": self.step / self.spe,
            "split": split,
            "top1": raw["top1"],
            "top5": raw["top5"],
            "loss": raw["loss"],
            "time": self.elapsed,
            "wall": time.perf_counter() - self.t_start,
        }
        if "top1_no_tta" in raw:  # train.eval_tta: the first forward's alone
            rec["top1_no_tta"] = raw["top1_no_tta"]
        if self.ema is not None:
            rec.update(ema_top1=head["top1"], ema_top5=head["top5"], ema_loss=head["loss"])
            if "top1_no_tta" in head:
                rec["ema_top1_no_tta"] = head["top1_no_tta"]
        self.metrics.write(rec)
        if self.tb:
            self.tb.add_scalar(f"{split}/top1", head["top1"], self.step)
            self.tb.add_scalar(f"{split}/loss", head["loss"], self.step)
        return rec

    def eval_and_log(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any] | None]:
        """Evaluate on the test split (raw, and EMA when on) and on the val split when there is one, log a
        record per split, keep the best (chosen on val when there is one); returns (test record, test headline,
        test raw, val headline or None)."""
        self._average_norm_stats()
        raw = self.evaluate()
        head = self.evaluate(use_ema=True) if self.ema is not None else raw
        rec = self._log_eval("test", raw, head)
        val = None
        if self.val_ds is not None:
            val_raw = self.evaluate(dataset=self.val_ds)
            val = self.evaluate(use_ema=True, dataset=self.val_ds) if self.ema is not None else val_raw
            self._log_eval("val", val_raw, val)
        chosen_on = val or head
        if chosen_on["top1"] > self.best:
            self.best, self.best_test = chosen_on["top1"], head["top1"]
            weights = {"model": self.final_weights()} if self.out else None
            if weights and self.info.is_main:
                state = {"step": self.step, "top1": self.best, "test_top1": head["top1"]}
                state["split"] = "val" if val else "test"
                save_checkpoint(os.path.join(self.out, CHECKPOINTS), self.step, weights, state, name="best")
        return rec, head, raw, val

    def final_weights(self) -> dict[str, torch.Tensor]:
        """Full weights, with the EMA in place of the raw parameters when EMA is on (collective under FSDP)."""
        sd = P.model_state(self.model, self.strategy)
        if self.ema is not None:
            for name, e in zip(self._ema_names(), P.full_tensors(self.ema)):
                sd[name] = e
        return sd
