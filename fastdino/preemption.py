"""Preemption: stop signals, step checkpoints, and the agreement between ranks on when to do either.

A cluster ends a job with a signal (SLURM: SIGTERM, or the signal asked for with `--signal=USR1@120`) and may
requeue it. While `StopSignals` is active, the configured signals (`run.stop_signals`) only set a flag; the loop
finishes the step it is in, writes `checkpoints/last.pt` at that position (mid-epoch if need be), prints why it
stopped and the command that resumes it, and `fastdino train` exits with EXIT_PREEMPTED.

`RunControl.after_step` decides at every step boundary whether to write a step checkpoint (every
`run.checkpoint_every_steps` steps, or when `run.checkpoint_every_minutes` have passed since the last one) and
whether to stop. Under torchrun every rank must take the same decision at the same step, although a signal may
reach one rank only and each rank has its own clock. The ranks exchange two integers (the highest stop signal any
rank received, and rank 0's "a timed checkpoint is due") with an all-reduce on a separate gloo group, launched
asynchronously at the end of step s and read at the end of step s + 1. So the exchange never waits on the GPU
(it is a host-side TCP message) and its latency hides behind one step; the price is that a stop or a timed
checkpoint happens one step after it was asked for. Step-count checkpoints need no exchange (every rank counts).
"""

from __future__ import annotations

import os
import shlex
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from fastdino.distributed import DistInfo

# sysexits.h EX_TEMPFAIL, "a temporary failure; the user is invited to retry": the run stopped on a signal with
# its state saved, and the same command with --resume (or --resume auto) continues it.
EXIT_PREEMPTED = 75


def signal_numbers(names: list[str]) -> list[signal.Signals]:
    """signal.Signals for names like "SIGUSR1" (or "USR1"); ValueError naming the bad one."""
    out = []
    for name in names:
        full = name.upper() if name.upper().startswith("SIG") else f"SIG{name.upper()}"
        sig = getattr(signal.Signals, full, None)
        if sig is None or sig in (signal.SIGKILL, signal.SIGSTOP):
            raise ValueError(f"run.stop_signals: {name!r} is not a signal that can be caught; use names like "
                             "SIGTERM, SIGUSR1, SIGUSR2, SIGINT")
        out.append(sig)
    return out


def validate_stop_signals(config) -> None:
    """run.stop_signals checked at config load, before any work (ValueError naming the bad one)."""
    signal_numbers(config.run.stop_signals)


class StopSignals:
    """While active (a context manager), each of the given signals records itself in `received` instead of
    ending the process; the previous handlers come back on exit. Handlers can only be installed from the main
    thread: elsewhere (a notebook's worker thread) nothing is installed and `installed` is False."""

    def __init__(self, names: list[str]):
        self.signals = signal_numbers(names)
        self.received: signal.Signals | None = None
        self.installed = False
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum)

    def __enter__(self) -> StopSignals:
        if self.signals and threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
            self.installed = True
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


@dataclass
class Decision:
    save: bool = False  # write last.pt at this position
    stop: signal.Signals | None = None  # stop after saving; the signal that asked for it


class RunControl:
    """Step checkpoints and stops, the same on every rank (see the module docstring for the exchange)."""

    def __init__(self, every_steps: int, every_minutes: float, signals: StopSignals, dist_info: DistInfo,
                 clock=time.monotonic):
        self.every_steps, self.every_s = every_steps, every_minutes * 60
        self.signals, self.dist_info, self.clock = signals, dist_info, clock
        self.last_save = clock()
        self._pending: tuple[dist.Work, torch.Tensor] | None = None
        # A gloo group of its own: CPU tensors, so the exchange never synchronises with the GPU, and it never
        # queues behind (or interleaves with) DDP's gradient all-reduces. Creating it is a collective.
        self.group = dist.new_group(backend="gloo") if dist_info.enabled else None

    def saved(self) -> None:
        """A checkpoint was written now (step or epoch): the time cadence restarts from here."""
        self.last_save = self.clock()

    def _time_due(self) -> bool:
        return self.every_s > 0 and self.clock() - self.last_save >= self.every_s

    def after_step(self, done: int) -> Decision:
        """Call on every rank after every step, `done` = steps finished in the whole run."""
        by_count = self.every_steps > 0 and done % self.every_steps == 0
        if self.group is None:  # one process: the flags are local, act on them now
            return Decision(save=by_count or self._time_due(), stop=self.signals.received)
        agreed = torch.zeros(2, dtype=torch.int64)
        if self._pending is not None:  # the exchange launched one step ago
            work, agreed = self._pending
            work.wait()
        save = by_count or bool(agreed[1])
        local = torch.tensor([int(self.signals.received or 0),
                              int(self.dist_info.is_main and not save and self._time_due())])
        self._pending = (dist.all_reduce(local, op=dist.ReduceOp.MAX, group=self.group, async_op=True), local)
        return Decision(save=save, stop=signal.Signals(int(agreed[0])) if agreed[0] else None)

    def close(self) -> None:
        """Collect the last exchange (every rank launched the same number)."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None

    def gather(self, obj) -> list | None:
        """Every rank's `obj` on rank 0 (a list by rank), None on the others; a collective on the gloo group."""
        if self.group is None:
            return [obj]
        out = [None] * self.dist_info.world_size if self.dist_info.is_main else None
        dist.gather_object(obj, out, dst=0, group=self.group)
        return out


def resume_command(run_dir: str | Path) -> str:
    """The command that continues the run in `run_dir`: its config.yaml holds everything the first command set.
    Under torchrun on one machine the launcher is spelled out; several nodes (or srun starting the ranks) repeat
    their own launch line."""
    tail = ["fastdino", "train", "--output", str(run_dir), "--resume"]
    if "TORCHELASTIC_RUN_ID" in os.environ and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        world, local = int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        if world == local:
            return shlex.join(["torchrun", "--standalone", "--nproc_per_node", str(local), "-m", *tail])
        return f"<your torchrun launch line on each node> -m {shlex.join(tail)}"
    if int(os.environ.get("SLURM_NTASKS", 1)) > 1 and "SLURM_PROCID" in os.environ:
        return f"<your srun line> {shlex.join(tail)}"
    return shlex.join(tail)
