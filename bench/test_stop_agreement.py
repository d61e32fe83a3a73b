"""What the ranks' agreement on stops and timed checkpoints costs per step (fastdino.preemption.RunControl).

Two gloo ranks on this machine: this process is rank 0, a spawned helper is rank 1 and runs whatever rank 0
announces before each round. Each round is 50 steps; a step is emulated by a 5 ms sleep, the host waiting on
the device as in a GPU run (on CPU the step's own compute would compete with gloo's thread for the cores).
  reference  the step alone
  async      RunControl.after_step: an all-reduce of two integers on its own gloo group, launched at the end of a
             step and read at the end of the next (what the trainer does)
  blocking   the same all-reduce, waited for at once (a naive agreement; on a GPU run the flag would also have
             to come back from the device, a host-device sync every step)
"""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.utils import record
from fastdino.distributed import DistInfo
from fastdino.preemption import RunControl, StopSignals

STEPS, STEP_S = 50, 0.005


def _steps(impl: str, control: RunControl) -> None:
    flags = torch.zeros(2, dtype=torch.int64)
    for done in range(1, STEPS + 1):
        time.sleep(STEP_S)
        if impl == "async":
            control.after_step(done)
        elif impl == "blocking":
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=control.group)
    control.close()


def _join(rank: int, port: int) -> RunControl:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    return RunControl(0, 0.0, StopSignals([]), DistInfo(rank, rank, 2))


def _helper(port: int) -> None:
    control = _join(1, port)
    while True:
        box = [None]
        dist.broadcast_object_list(box, src=0)
        if box[0] == "exit":
            break
        _steps(box[0], control)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank0():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    helper = mp.get_context("spawn").Process(target=_helper, args=(port,))
    helper.start()
    control = _join(0, port)
    yield control
    dist.broadcast_object_list(["exit"], src=0)
    dist.destroy_process_group()
    helper.join(timeout=60)


@pytest.mark.parametrize("impl", ["reference", "async", "blocking"])
def test_stop_agreement(benchmark, rank0, impl):
    record(benchmark, group="stop agreement, 2 gloo ranks, 50 steps of 5 ms", impl=impl, steps=STEPS)

    def announce():
        dist.broadcast_object_list([impl], src=0)

    benchmark.pedantic(_steps, args=(impl, rank0), setup=announce, rounds=20, warmup_rounds=2)
