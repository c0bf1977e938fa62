"""train(cfg): the training loop, with accumulation, clipping, bf16, EMA, exact resume and torchrun."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from vitkit.config import RunConfig, is_device
from vitkit.data.datasets import Splits, load_dataset
from vitkit.data.imagefolder import check_val_fraction, listing_changes, source_changes
from vitkit.data.loader import steps_per_epoch
from vitkit.train import distributed as D
from vitkit.train import parallel as P
from vitkit.train.checkpoint import (
    file_sha256,
    latest_valid,
    list_checkpoints,
    restore_set_aside,
    save_weights,
)
from vitkit.train.runfiles import (
    CHECKPOINTS,
    CONFIG,
    DATA,
    PRETRAINED,
    RAW_WEIGHTS,
    SUMMARY,
    WEIGHTS,
    clear_run,
    read_json,
    write_config,
    write_json,
)
from vitkit.train.trainer import Trainer

log = logging.getLogger(__name__)


class Progress(Protocol):
    """What the loop reports to a progress display (the CLI passes a tqdm bar)."""

    def start(self, total: int, initial: int) -> None: ...
    def update(self, step: int, stats: dict[str, float]) -> None: ...
    def close(self) -> None: ...


def resolve_device(name: str, info: D.DistInfo | None = None) -> torch.device:
    """ "auto" -> cuda when available (this rank's GPU under torchrun), else cpu."""
    if not is_device(name):
        raise ValueError(f"device {name!r} is not auto, cpu, cuda or cuda:N")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
    if name == "cuda" and info is not None and info.enabled:
        name = f"cuda:{info.local_rank}"
    return torch.device(name)


def resolve_for_data(cfg: RunConfig, splits: Splits, warn: bool = True) -> RunConfig:
    """Set the model's class count and channels from the dataset (a different setting is replaced, with a warning
    unless `warn` is off, as for fine-tuning, whose new head the loading reports; a named recipe's own value, which
    the user did not choose, is replaced with an info line)."""
    from vitkit.recipes import RECIPES

    recipe = RECIPES[cfg.recipe]().model if cfg.recipe in RECIPES else None
    for key, value in (("num_classes", splits.num_classes), ("in_chans", splits.in_chans)):
        if warn and getattr(cfg.model, key) != value:
            chosen = recipe is None or getattr(recipe, key) != getattr(cfg.model, key)
            log.log(
                logging.WARNING if chosen else logging.INFO,
                "model.%s=%s replaced by %s, the dataset %s's: the dataset sets it",
                key,
                getattr(cfg.model, key),
                value,
                cfg.data.dataset,
            )
    m = dataclasses.replace(cfg.model, num_classes=splits.num_classes, in_chans=splits.in_chans)
    return dataclasses.replace(cfg, model=m)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT or SIGTERM: after checkpointing its last step, or at once (a second one)."""

    def __init__(self, signum: int, step: int | None):
        super().__init__(f"{signal.Signals(signum).name}" + (f" at step {step}" if step is not None else ""))
        self.signum, self.step = signum, step  # step None: stopped at once, not checkpointed


class _StopRequest:
    """The signal asking training to stop, if one came (a second one stops at once)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise TrainingInterrupted(signum, None)
        self.signum = signum
        log.warning(
            "%s: stopping after this step with a checkpoint (send it again to stop at once)",
            signal.Signals(signum).name,
        )


@contextlib.contextmanager
def _stop_on_signals(enabled: bool) -> Iterator[_StopRequest]:
    """While training one process with a run folder: SIGINT (Ctrl-C) and SIGTERM (schedulers) ask it to stop at
    the end of the step, checkpointed. Several processes keep the default: they could stop at different steps."""
    request = _StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return
    old = {s: signal.signal(s, request.handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _refuse_resume_over_weights(out_dir: str, fine_tuning: bool) -> None:
    """A run without a valid checkpoint restarts from scratch, unless that would lose checkpoints (damaged) or
    weights it holds."""
    held = [name for name in (PRETRAINED, WEIGHTS) if os.path.exists(os.path.join(out_dir, name))]
    damaged = list_checkpoints(os.path.join(out_dir, CHECKPOINTS))
    if damaged:  # starting afresh would replace them (the cleanup keeps the newest): they may be mended
        raise ValueError(
            f"--resume {out_dir}: none of its checkpoints verifies ({', '.join(map(os.path.basename, damaged))}; "
            "the reasons are logged above); starting from scratch would delete them: mend or remove them, or "
            "rerun the run's command with --overwrite"
        )
    if held and not fine_tuning:
        raise ValueError(
            f"--resume {out_dir}: no valid checkpoint, and starting from scratch would lose what {', '.join(held)} "
            "stands for (a fine-tuning run's pretrained weights are not in the folder; model.safetensors holds "
            "final or converted weights): rerun the run's command with --overwrite instead"
        )


def _recorded_normalisation(out_dir: str, splits: Splits) -> Splits:
    """The mean/std the run was trained with (a fine-tuning run keeps its checkpoint's, not the dataset's)."""
    path = os.path.join(out_dir, DATA)
    if not os.path.exists(path):
        return splits
    data = read_json(path)
    classes = data.get("classes") if isinstance(data, dict) else None
    if isinstance(classes, list) and classes and list(splits.classes) != classes:
        raise ValueError(
            f"--resume: the data holds the classes {list(splits.classes)!r:.100}, the run was trained on "
            f"{classes!r:.100} ({path}); resume on the data it was trained on"
        )
    changed = [f"{k}/: {v}" for k, v in listing_changes(data.get("files"), splits.files).items()]
    changed += [f"its {k} split from {a}/, now {b or 'none'}" for k, (a, b) in source_changes(
        data.get("sources"), splits.sources).items()]  # fmt: skip
    sizes, now = data.get("sizes"), splits.info()["sizes"]
    if isinstance(sizes, dict):
        changed += [
            f"its {k} split of {sizes.get(k, 0)} images, now {now.get(k, 0)}"
            for k in sorted(set(sizes) | set(now))
            if sizes.get(k) != now.get(k)
        ]
    if changed:
        raise ValueError(
            f"--resume: the data is not as the run began on it ({path}): {'; '.join(dict.fromkeys(changed))}; "
            "resume on the data it was trained on"
        )
    mean, std = data.get("mean"), data.get("std")
    if mean and std and len(mean) == len(std) == len(splits.mean):
        return dataclasses.replace(splits, mean=tuple(mean), std=tuple(std))
    return splits


def _refuse_shorter(cfg: RunConfig, splits: Splits, ckpt: str | None) -> None:
    """A resumed run may be lengthened, not cut below the step its checkpoint holds."""
    name = os.path.basename(ckpt or "")
    if not name.startswith("step-"):
        return
    done = int(name[len("step-") :])
    total = cfg.train.steps or cfg.train.epochs * steps_per_epoch(len(splits.train), cfg.train.batch_size)
    if total < done:
        raise ValueError(
            f"--resume: the run's checkpoint is at step {done}, past the {total} steps asked for "
            "(train.steps / train.epochs); ask for at least as many, or start a new run"
        )


def _train_steps(
    tr: Trainer, cfg: RunConfig, device: torch.device, info: D.DistInfo, progress: Any, stop: _StopRequest
) -> None:
    """Train to the last step, logging, evaluating and checkpointing as configured; a stop request ends it after
    a checkpoint of the current step (TrainingInterrupted)."""
    t = cfg.train
    ckpt_every = t.checkpoint_every or tr.spe
    # resumed from a stop's checkpoint written before this step's evaluations, which may not have run
    if tr.pending:
        log.info("step %d: running the evaluations the stop came before (%s)", tr.step, ", ".join(tr.pending))
        if "eval" in tr.pending:
            tr.eval_and_log()
        if "fewshot" in tr.pending:
            tr.fewshot()
        tr.save()
    window_t, window_imgs = time.perf_counter(), 0
    while tr.step < tr.total:
        tr.train_step()
        window_imgs += t.batch_size
        end_of_epoch = tr.step % tr.spe == 0
        if tr.step % t.log_every == 0 or tr.step == tr.total or end_of_epoch:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            now = time.perf_counter()
            tr.elapsed += now - window_t
            stats = tr.flush_train_stats(now - window_t, window_imgs)
            window_imgs = 0
            if progress and info.is_main:
                progress.update(tr.step, stats)
            window_t = time.perf_counter()
        epoch_done = tr.step // tr.spe
        stopping = stop.signum is not None  # asked to stop: checkpoint this step
        evaluate = end_of_epoch and t.eval_every and epoch_done % t.eval_every == 0 and tr.step < tr.total
        fewshot = (
            end_of_epoch and t.fewshot_every and epoch_done % t.fewshot_every == 0 and tr.step < tr.total
        )
        save = tr.step % ckpt_every == 0 or tr.step == tr.total or stopping
        if not (evaluate or fewshot or save):
            continue
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the steps so far count as training time
        # evaluation and checkpoints are not training time: the window skips them
        paused = time.perf_counter()
        if stopping:
            tr.elapsed += paused - window_t  # the steps since the last log line, kept in the checkpoint
            if evaluate or fewshot:  # first: a kill during the (maybe long) evaluation keeps the steps
                tr.save(pending=("eval",) * bool(evaluate) + ("fewshot",) * bool(fewshot))
        if evaluate:  # its metrics and best/ as without the stop: the checkpoint below follows it
            _, head, _, val = tr.eval_and_log()
            if progress and info.is_main:
                progress.update(
                    tr.step, {"test_top1": head["top1"]} | ({"val_top1": val["top1"]} if val else {})
                )
        if fewshot:
            tr.fewshot()
        if (evaluate or fewshot) and not stopping and stop.signum is not None:  # a signal during them
            stopping = True
            tr.elapsed += paused - window_t
        if save or stopping:  # a signal during the save itself stops after the next step's checkpoint
            # the steps since the last log line count in the checkpoint (a resume times from there); an unbroken
            # run counts them at its next log line
            uncounted = 0.0 if stopping else paused - window_t
            tr.elapsed += uncounted
            tr.save()
            tr.elapsed -= uncounted
        window_t += time.perf_counter() - paused
        if stopping:
            log.warning(
                "stopped at step %d of %d, checkpointed: continue with `vitkit train --resume %s`",
                tr.step,
                tr.total,
                tr.out,
            )
            raise TrainingInterrupted(stop.signum, tr.step)


def absolute_data_dir(cfg: RunConfig) -> RunConfig:
    """The config with its data folder absolute, as a run records it: eval, fewshot or a resume from another
    folder read the same data."""
    if not cfg.data.data_dir:
        return cfg
    where = os.path.abspath(os.path.expanduser(cfg.data.data_dir))
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_dir=where))


def train(
    cfg: RunConfig,
    out_dir: str | None = None,
    *,
    resume: bool = False,
    progress: Progress | None = None,
    splits: Splits | None = None,
    info: D.DistInfo | None = None,
    tensorboard: bool = False,
    init_state: dict | None = None,
    init_from: dict | None = None,
    on_start: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate a model; with `out_dir`, write the run's files and checkpoints; returns the summary.

    `init_state`: a state_dict for `cfg.model` to start from (fine-tuning) instead of random weights;
    `init_from`: where it came from, written to the run's pretrained.json; `on_start`: called on rank 0 once a
    fresh run's files are written.
    """
    info = info or D.from_env()
    device = resolve_device(cfg.train.device, info)
    joined = D.init_process_group(info, device, cfg.train.dist_timeout_s)
    if cfg.data.dataset == "imagefolder":
        check_val_fraction(cfg.data.data_dir, cfg.data.val_fraction)
    if splits is None:
        splits = load_dataset(cfg.data, img_size=cfg.model.img_size, seed=cfg.train.seed)
    cfg = resolve_for_data(cfg, splits)
    cfg = absolute_data_dir(cfg)
    ckpt = None
    if resume and out_dir:
        if info.is_main:  # before any rank looks for the latest checkpoint
            restore_set_aside(os.path.join(out_dir, CHECKPOINTS))
        D.barrier()
        ckpt = latest_valid(os.path.join(out_dir, CHECKPOINTS), say=info.is_main)
        if ckpt is None:
            _refuse_resume_over_weights(out_dir, fine_tuning=init_state is not None)
        splits = _recorded_normalisation(out_dir, splits)
        _refuse_shorter(cfg, splits, ckpt)
    fresh = (
        bool(out_dir) and info.is_main and not resume and not os.path.exists(os.path.join(out_dir, CONFIG))
    )
    try:
        # first, so that a setting it refuses (optimizer, few-shot data, compile) leaves an --overwrite'd run whole
        tr = Trainer(cfg, out_dir, splits, info, device, tensorboard, init_state)
        # before any file is written: a checkpoint that does not fit changes nothing
        if resume and out_dir and ckpt:
            tr.load_state(ckpt)
        if out_dir and info.is_main:
            os.makedirs(out_dir, exist_ok=True)
            if not resume:  # an earlier run's checkpoints and metrics would mix with this one's
                clear_run(out_dir)
            if init_from is not None:  # before config.json: a folder with a config is a run
                write_json(os.path.join(out_dir, PRETRAINED), init_from)
            write_config(out_dir, cfg)
            write_json(os.path.join(out_dir, DATA), splits.info())
            if on_start is not None and not resume:
                on_start()
    except BaseException:  # a setting refused while setting up: leave no half-made run to block the next try
        if fresh:
            for name in (CONFIG, DATA, PRETRAINED):
                if os.path.exists(os.path.join(out_dir, name)):
                    os.unlink(os.path.join(out_dir, name))
        raise
    if resume and out_dir:
        if ckpt:
            log.info("resumed from %s (step %d of %d)", ckpt, tr.step, tr.total)
        else:
            log.info("no valid checkpoint in %s: starting from scratch", out_dir)
        # a finished run's closing evaluation, or a stop's pending ones, are done again: their records go
        tr.metrics.truncate_after(tr.step, final=tr.step >= tr.total or bool(tr.pending))
    tr.open_tensorboard()
    if progress and info.is_main:
        progress.start(tr.total, tr.step)
    with _stop_on_signals(bool(out_dir) and info.world == 1) as stop:
        _train_steps(tr, cfg, device, info, progress, stop)
    if progress and info.is_main:
        progress.close()
    final, headline, raw, val = tr.eval_and_log()
    summary = {
        "recipe": cfg.recipe,
        "model": cfg.model.name,
        "dataset": cfg.data.dataset,
        "steps": tr.step,
        "epochs": tr.step / tr.spe,
        "test_top1": headline["top1"],
        "test_top1_ci95": headline["top1_ci95"],  # where the accuracy lies given the test set's size
        "test_top5": headline["top5"],
        "test_loss": headline["loss"],
        "num_samples": headline["num_samples"],
        "weights": "ema" if tr.ema is not None else "raw",
        "raw_test_top1": raw["top1"],
        # checkpoints/best: chosen on the val split when there is one (data.holdout), else on the test split
        "best_on": "val" if val else "test",
        "best_test_top1": tr.best_test,
        "train_seconds": tr.elapsed,
        "train_img_s": tr.images_seen / max(tr.elapsed, 1e-9),
        "per_class": headline["per_class"],
        "confusion": headline["confusion"],
        "device": str(device),
        "world_size": info.world,
        "threads": torch.get_num_threads(),
        "last_eval": final,
    }
    if cfg.train.eval_tta != "none":  # the headline's metrics are the TTA's; its top-1 without, beside them
        summary.update(
            tta=cfg.train.eval_tta, test_top1_no_tta=headline["top1_no_tta"], tta_gain=headline["tta_gain"]
        )
    if val:
        summary.update(val_top1=val["top1"], val_num_samples=val["num_samples"], best_val_top1=tr.best)
    if cfg.train.fewshot_every:
        summary["fewshot"] = tr.fewshot()
    final_weights = tr.final_weights() if out_dir else None
    raw_weights = P.model_state(tr.model, tr.strategy) if out_dir and tr.ema is not None else None
    if out_dir and info.is_main:
        save_weights(
            os.path.join(out_dir, WEIGHTS), final_weights, {"format": "vitkit", "recipe": cfg.recipe}
        )
        if raw_weights is not None:
            save_weights(os.path.join(out_dir, RAW_WEIGHTS), raw_weights, {"format": "vitkit"})
        # what eval/predict check the final weights against (checkpoints carry their own manifest)
        summary["weights_sha256"] = file_sha256(os.path.join(out_dir, WEIGHTS))
        write_json(os.path.join(out_dir, SUMMARY), summary)
    if tr.tb:
        tr.tb.close()
    D.barrier()
    if joined:  # a group left to the interpreter's exit can abort a rank while gloo's threads still run
        D.destroy()
    return summary
