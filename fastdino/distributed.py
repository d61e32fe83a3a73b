"""torchrun / SLURM environment detection and the few collective helpers the trainer needs.

`torchrun` sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; a plain `fastdino train` (no
launcher) is a world of one and never touches torch.distributed. NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes files (config, logs, checkpoints, plots) and prints progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


SINGLE_PROCESS = DistInfo()


def env_info() -> DistInfo:
    """Rank and world size from the launcher's environment (torchrun; SLURM's srun without torchrun)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))
    if "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return DistInfo(int(os.environ["SLURM_PROCID"]), int(os.environ.get("SLURM_LOCALID", 0)),
                        int(os.environ["SLURM_NTASKS"]))
    return DistInfo()


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched with several ranks; returns DistInfo (world of one otherwise).
    On CUDA each rank uses GPU LOCAL_RANK."""
    info = env_info()
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), info.local_rank, dist.get_world_size())
    if not info.enabled:
        return info
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise RuntimeError("several ranks but MASTER_ADDR / MASTER_PORT are unset: launch with torchrun "
                           "(see docs/distributed.md), or export them in the SLURM script")
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    return info


def elastic_store_warning() -> str | None:
    """The advice for a run under torchrun's elastic restarts (--max-restarts > 0) whose agents share one TCPStore
    across rendezvous rounds (TORCHELASTIC_USE_AGENT_STORE, torchrun's default): the restarted workers can read
    the connection addresses the dead ones left in that store and fail to connect ("Gloo connectFullMesh failed
    ... Connection refused", or a hang), restart after restart (seen with torch 2.14 in tests/test_elastic.py: 4
    restarts and 55 s instead of 1 restart and 14 s). TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 gives every round a
    fresh store."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) == 0:
        return None
    return ("elastic restarts with torchrun's shared rendezvous store: a restarted group can fail to reconnect; "
            "export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 before torchrun (docs/distributed.md)")


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def per_rank_batch(global_batch: int, world_size: int) -> int:
    """run.batch_size is the GLOBAL batch; each rank takes an equal share."""
    if global_batch % world_size != 0:
        raise ValueError(f"run.batch_size={global_batch} (the global batch) is not divisible by the "
                         f"{world_size} ranks; use a multiple of {world_size}")
    return global_batch // world_size


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean over ranks (a no-op in a world of one). A collective: every rank must call it."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj):
    """rank 0's value on every rank (e.g. the run folder name chosen at start)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj
