"""torchrun on CPU (gloo): DDP and FSDP equal one process; FSDP checkpoints resume on another world size;
a killed worker restarts from the last checkpoint; a hung collective times out."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import TINY_FLAGS, run_vitkit
from vitkit.train.checkpoint import list_checkpoints, load_weights

pytestmark = pytest.mark.slow

# 24 optimizer steps of a tiny ViT, global batch 32, with dropout/stochastic depth and augmentation on:
# all randomness is keyed by (seed, step, sample), so the number of processes must not matter.
# SGD+momentum: Adam turns the float noise of exactly-zero gradients (the attention key bias) into
# full-size updates whose sign depends on the reduction order, so no optimizer-agnostic 1e-5 holds there.
# fmt: off
FLAGS = [
    *TINY_FLAGS, "--steps", "24", "--checkpoint-every", "12", "--no-progress",
    "--set", "model.drop_rate=0.1", "--set", "model.drop_path_rate=0.1",
    "--set", "data.crop_padding=1", "--set", "data.hflip=true",
    "--set", "train.dist_timeout_s=60", "--set", "optim.name=sgd", "--lr", "0.05",
    "--set", "train.eval_tta=hflip",  # rank 1 has no evaluation batch: its stand-in forwards must match rank 0's
]
# fmt: on


def torchrun(*args: str, nproc: int = 2, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-port",
        str(29500 + os.getpid() % 1000),
        *extra,
        "-m",
        "vitkit",
        *args,
    ]


def torchrun_script(script, *args: str, port: int) -> list[str]:
    """Two processes of a Python script under torchrun (`port` + this pid's share: tests may run side by side)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(port + os.getpid() % 1000),
        str(script),
        *args,
    ]


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env())
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def assert_close_weights(a_path, b_path, atol=1e-5):
    a, b = load_weights(str(a_path)), load_weights(str(b_path))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "single"
    r = run_vitkit("train", *FLAGS, "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "fsdp-checkpointed"])
def test_two_processes_equal_one(single, tmp_path, strategy):
    """... and so does FSDP with activation checkpointing (each sharded block recomputed in backward)."""
    out = tmp_path / strategy
    extra = ("--set", "train.grad_checkpointing=true") if strategy.endswith("checkpointed") else ()
    strategy = strategy.split("-")[0]
    run(torchrun("train", *FLAGS, *extra, "--strategy", strategy, "--out", str(out)))
    assert_close_weights(single / "model.safetensors", out / "model.safetensors")
    one, two = (json.loads((d / "summary.json").read_text()) for d in (single, out))
    n = one["num_samples"]  # the evaluation is summed over ranks (weights equal to 1e-5: an image may flip)
    assert two["num_samples"] == n and two["tta"] == "hflip"
    for key in ("test_top1", "test_top1_no_tta"):
        assert two[key] == pytest.approx(one[key], abs=2 / n), key
    for key in ("gained", "lost"):
        assert abs(two["tta_gain"][key] - one["tta_gain"][key]) <= 2, key
    # FSDP's mid-run checkpoint (2 processes) resumes in 1 process to the same end
    if strategy == "fsdp" and not extra:
        resumed = tmp_path / "fsdp-resumed"
        shutil.copytree(out, resumed)
        for name in ("model.safetensors", "summary.json"):
            (resumed / name).unlink()
        shutil.rmtree(list_checkpoints(str(resumed / "checkpoints"))[-1])  # keep step 12 only
        r = run_vitkit("train", *FLAGS, "--resume", str(resumed))
        assert r.returncode == 0, r.stderr
        assert "resumed" in r.stderr and "step 12" in r.stderr
        assert_close_weights(single / "model.safetensors", resumed / "model.safetensors")


def test_a_restart_does_not_resume_the_run_its_first_attempt_refused(single, tmp_path):
    """Was: rank 0 refused an --out holding a run (no --resume, no --overwrite), torchrun restarted the job, and
    the restart, finding the same config, resumed that run and rewrote its summary (exit 0). torchrun's store,
    which outlives a restart, now says which runs the job started."""
    out = tmp_path / "finished"
    shutil.copytree(single, out)
    summary = (out / "summary.json").read_bytes()
    r = subprocess.run(
        torchrun("train", *FLAGS, "--out", str(out), extra=("--max-restarts", "1")),
        capture_output=True, text=True, timeout=240, env=env(),
    )  # fmt: skip
    assert r.returncode != 0, r.stderr[-3000:]
    assert "holds a run this job did not start (torchrun's store has no record" in r.stderr, r.stderr[-3000:]
    assert (out / "summary.json").read_bytes() == summary


@pytest.mark.parametrize("nproc", [2, 1])
def test_killed_worker_restarts_from_checkpoint(single, tmp_path, nproc):
    """... also a job of one process (its run is recorded in torchrun's store as a job of two's)."""
    out = tmp_path / "elastic"
    flags = [f if f != "24" else "48" for f in FLAGS]  # a longer run so the kill lands mid-run
    ref = tmp_path / "ref"
    assert run_vitkit("train", *flags, "--out", str(ref)).returncode == 0
    proc = subprocess.Popen(
        torchrun("train", *flags, "--out", str(out), nproc=nproc, extra=("--max-restarts", "1")),
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ckpts = out / "checkpoints"
    t0 = time.time()
    while not (ckpts.exists() and any(p.startswith("step-") for p in os.listdir(ckpts))):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() - t0 < 180
        time.sleep(0.05)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    workers = [int(c) for c in children]
    assert len(workers) == nproc, children
    os.kill(workers[-1], signal.SIGKILL)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    assert "restart" in err.lower()
    assert_close_weights(ref / "model.safetensors", out / "model.safetensors")


HANG = """
import sys, time, torch, torch.distributed as dist
from vitkit.train.distributed import DistInfo, init_process_group, from_env
info = from_env()
init_process_group(info, torch.device("cpu"), timeout_s=3)
if info.rank == 1:
    time.sleep(30)  # never joins the collective
    sys.exit(0)
t = time.time()
try:
    dist.all_reduce(torch.ones(1))
except Exception as e:
    print(f"FAILED after {time.time() - t:.1f}s: {type(e).__name__}", flush=True)
    sys.exit(3)
"""


def test_hung_collective_fails_within_timeout(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(HANG)
    cmd = torchrun_script(script, port=30500)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env())
    assert r.returncode != 0
    assert "FAILED after" in r.stdout, r.stdout + r.stderr[-2000:]
    # the collective itself gave up at its 3 s timeout, long before rank 1 would have come (30 s)
    waited = float(r.stdout.split("FAILED after ")[1].split("s")[0])
    assert 2.5 <= waited < 25, r.stdout


BN_STATS = """
import dataclasses, sys, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[1])
from helpers import tiny_run
from vitkit.config import ModelConfig
from vitkit.data.datasets import load_dataset
from vitkit.train import distributed as D
from vitkit.train.loop import resolve_for_data
from vitkit.train.trainer import Trainer

info = D.from_env()
D.init_process_group(info, torch.device("cpu"), 60)
resnet = ModelConfig(name="ResNet-26", arch="resnet", backbone=(1, 2, 4, 1), img_size=32, in_chans=1)
cfg = dataclasses.replace(tiny_run(steps=3, ema_decay=0.5), model=resnet)
splits = load_dataset(cfg.data, img_size=32, seed=0)
tr = Trainer(resolve_for_data(cfg, splits), None, splits, info, torch.device("cpu"))
for _ in range(3):
    tr.train_step()
name = next(n for n in tr._ema_names() if n.endswith("running_var"))
var, ema = dict(tr.model.named_buffers())[name], tr.ema[tr._ema_names().index(name)]

def everyone(t):
    out = [torch.empty_like(t) for _ in range(info.world)]
    dist.all_gather(out, t.clone())
    return out

before, ema_before = everyone(var), everyone(ema)
assert not torch.equal(*before), "each rank updates its own statistics"
tr.eval_and_log()
for now, was in ((everyone(var), before), (everyone(ema), ema_before)):
    assert torch.equal(*now), "the ranks evaluate and save the same statistics"
    torch.testing.assert_close(now[0], (was[0] + was[1]) / 2, rtol=0, atol=1e-6)
print("AVERAGED", flush=True)
D.barrier()  # both ranks done with their collectives before the group goes
D.destroy()
"""


def test_batchnorm_statistics_are_averaged_over_ranks(tmp_path):
    """Under DDP each rank updates its own BatchNorm statistics: they (and their EMA) are averaged before an
    evaluation or a checkpoint, so every rank evaluates, and the checkpoint holds, the same ones."""
    script = tmp_path / "bn.py"
    script.write_text(BN_STATS)
    cmd = torchrun_script(script, os.path.dirname(__file__), port=31500)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env())
    assert r.returncode == 0 and r.stdout.count("AVERAGED") == 2, r.stdout + r.stderr[-3000:]


GROUP = """
import sys, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[1])
from helpers import tiny_run
from vitkit.train import distributed as D
from vitkit.train.loop import train

info = D.from_env()
cfg = tiny_run(steps=2)
for _ in range(2):  # a second join in the process must not read the first group's keys in the store
    train(cfg, info=info)
    assert not dist.is_initialized(), "train() leaves the group it joined"
D.init_process_group(info, torch.device("cpu"), 60)
train(cfg, info=info)
assert dist.is_initialized(), "a group the caller made is the caller's to end"
D.barrier()
D.destroy()
print("LEFT", flush=True)
"""


def test_train_leaves_the_group_it_joined(tmp_path):
    """A group left to the interpreter's exit can abort a rank ("terminate called without an active exception")
    while gloo's threads still run: train() ends the group it started, and only that one; joining again in the
    same process (three times here) works."""
    script = tmp_path / "group.py"
    script.write_text(GROUP)
    cmd = torchrun_script(script, os.path.dirname(__file__), port=27500)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env())
    assert r.returncode == 0 and r.stdout.count("LEFT") == 2, r.stdout + r.stderr[-3000:]


def test_fsdp_with_an_ema_equals_one_process(tmp_path):
    """Was: the first evaluation under FSDP with an EMA failed ('aten.copy_.default got mixed torch.Tensor and
    DTensor'): the evaluation's forward left the root's parameters gathered, and the EMA was copied into them."""
    flags = [*FLAGS, "--set", "train.ema_decay=0.9", "--set", "train.eval_every=1"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_vitkit("train", *flags, "--out", str(one)).returncode == 0
    run(torchrun("train", *flags, "--strategy", "fsdp", "--out", str(two)))
    assert_close_weights(one / "model.safetensors", two / "model.safetensors")
