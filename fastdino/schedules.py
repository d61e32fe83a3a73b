"""Per-iteration schedules, precomputed as arrays indexed by the global iteration (as in DINO)."""

from __future__ import annotations

import numpy as np


def warmup_iterations(warmup_epochs: float, epochs: int, iters_per_epoch: int) -> int:
    """Iterations of the linear warm-up: a fraction of an epoch is rounded to whole iterations."""
    return round(min(warmup_epochs, epochs) * iters_per_epoch)


def cosine_schedule(base_value: float, final_value: float, epochs: int, iters_per_epoch: int,
                    warmup_epochs: float = 0, start_warmup_value: float = 0.0) -> np.ndarray:
    """Linear warm-up from `start_warmup_value` to `base_value` over `warmup_epochs` (a fraction is rounded to
    whole iterations: a one-epoch run can still warm up), then a cosine from `base_value` to `final_value`; one
    value per iteration, epochs * iters_per_epoch long."""
    if epochs <= 0 or iters_per_epoch <= 0:
        raise ValueError(f"cosine_schedule needs epochs > 0 and iters_per_epoch > 0, got {epochs}, {iters_per_epoch}")
    warmup_iters = warmup_iterations(warmup_epochs, epochs, iters_per_epoch)
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_iters > 0 else np.array([])
    iters = np.arange(epochs * iters_per_epoch - warmup_iters)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / max(len(iters), 1)))
    schedule = np.concatenate((warmup, cosine))
    assert len(schedule) == epochs * iters_per_epoch
    return schedule


def teacher_temp_schedule(warmup_teacher_temp: float, teacher_temp: float, warmup_teacher_temp_epochs: int,
                          nepochs: int) -> np.ndarray:
    """DINO's per-epoch teacher temperature: linear warm-up, then constant."""
    warmup = np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs)
    return np.concatenate((warmup, np.ones(max(nepochs - warmup_teacher_temp_epochs, 0)) * teacher_temp))


def schedule_warnings(*, epochs: int, iters_per_epoch: int, warmup_epochs: float, freeze_last_layer: int = 0,
                      warmup_teacher_temp_epochs: int = 0, max_steps: int | None = None) -> list[str]:
    """Schedules that make no sense for the run's length, one sentence each (naming the keys and a fix)."""
    out = []
    total = epochs * iters_per_epoch
    if warmup_epochs >= epochs > 0:
        out.append(f"optim.warmup_epochs={warmup_epochs:g} >= run.epochs={epochs}: the whole run is the linear lr "
                   "warm-up, which ends at the peak lr and never decays; train more epochs than the warm-up "
                   f"(DINO: 10 of 100) or lower optim.warmup_epochs")
    elif max_steps is not None and max_steps <= (warmup := warmup_iterations(warmup_epochs, epochs, iters_per_epoch)):
        out.append(f"run.max_steps={max_steps} stops inside the lr warm-up ({warmup} "
                   f"steps of the {total}-step schedule of run.epochs={epochs}): the lr only rises")
    if freeze_last_layer >= epochs > 0:
        out.append(f"optim.freeze_last_layer={freeze_last_layer} >= run.epochs={epochs}: the head's last layer "
                   "never trains; lower optim.freeze_last_layer or train longer")
    if warmup_teacher_temp_epochs > epochs:
        out.append(f"loss.warmup_teacher_temp_epochs={warmup_teacher_temp_epochs} > run.epochs={epochs}: the "
                   "teacher temperature never reaches loss.teacher_temp")
    return out
