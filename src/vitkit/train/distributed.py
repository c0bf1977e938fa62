"""torch.distributed plumbing for torchrun: rank info, process group, reductions."""

from __future__ import annotations

import datetime
import itertools
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def from_env() -> DistInfo:
    """Rank info from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


log = logging.getLogger(__name__)

STORE_TIMEOUT_S = 30.0  # reaching torchrun's store, which the job's agent hosts
_JOINS = itertools.count()  # this process's joins: each reads and writes its own keys in torchrun's store


def init_process_group(info: DistInfo, device: torch.device, timeout_s: float = 300.0) -> bool:
    """Join the job: NCCL on CUDA, gloo on CPU; a hung collective fails after `timeout_s`; True if joined here."""
    if not info.enabled or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    kw = {"device_id": device} if device.type == "cuda" else {}
    store = job_store(timeout_s)
    if store is not None:
        # torchrun's store outlives a restart: keys of the dead attempt (peer addresses) would be read by the
        # new one, so each attempt joins under its own prefix; and each join in a process (train() twice) too: a
        # new group would read the ended one's peer addresses
        prefix = f"vitkit/attempt_{os.environ['TORCHELASTIC_RESTART_COUNT']}/join_{next(_JOINS)}"
        kw.update(store=dist.PrefixStore(prefix, store), rank=info.rank, world_size=info.world)
    dist.init_process_group(backend, timeout=timeout, **kw)
    return True


def job_store(timeout_s: float = 60.0) -> dist.Store | None:
    """torchrun's key-value store, which its agent hosts and which outlives a restart of the workers (None outside
    torchrun, or where the workers do not share the agent's store)."""
    env = os.environ
    if "TORCHELASTIC_RESTART_COUNT" not in env or "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
        return None
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":  # as torch.distributed's env:// reads it
        return None
    return dist.TCPStore(
        env["MASTER_ADDR"],
        int(env["MASTER_PORT"]),
        is_master=False,
        timeout=datetime.timedelta(seconds=timeout_s),
        wait_for_workers=False,
    )


def _started_key(out: str) -> str:
    """The key in torchrun's store that says this job started the run in `out`."""
    return f"vitkit/started/{os.path.abspath(out)}"


def record_started(out: str) -> None:
    """Record in torchrun's store (it outlives restarts) that this job started the run in `out` (its files are
    written: a restart continues it)."""
    try:
        store = job_store(STORE_TIMEOUT_S)
        if store is not None:
            store.set(_started_key(out), "1")
    except (RuntimeError, OSError) as e:  # DistNetworkError / DistStoreError: a restart will not know
        log.warning("could not record the run in torchrun's store (%s): a restart will not resume it", e)


def started_by_this_job(out: str) -> bool | None:
    """Whether an earlier attempt of this torchrun job started the run in `out`; None where no store says."""
    try:
        store = job_store(STORE_TIMEOUT_S)
        if store is None:
            log.warning(
                "the workers share no store with torchrun's agent (TORCHELASTIC_USE_AGENT_STORE): whether this "
                "job started %s is not known; the run's config alone decides",
                out,
            )
            return None
        return store.check([_started_key(out)])
    except (RuntimeError, OSError) as e:
        log.warning("could not read torchrun's store (%s): the run's config alone decides", e)
        return None


def destroy() -> None:
    """Leave the job (no-op for a single process)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (identity for one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
