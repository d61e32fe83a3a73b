"""The DINO / DINO-MC / DINO-TP training loop.

Student and teacher are twins, `nn.ModuleDict(backbone=..., head=...)` with the same keys; the teacher is
frozen and follows the student by EMA (parameters only, as DINO; a BatchNorm teacher runs in train mode).
One step: the teacher sees the global views, the student sees every view in one packed pass, the DINO loss
(with its centre) compares them, then backward, clipping, AdamW (or DINO's SGD), EMA. Schedules are arrays
indexed by the global iteration (teacher temperature by epoch).

`build_training(config, ..., reference=False)` builds the models, loss, optimiser and the step function;
`reference=True` swaps in the readable originals (per-size student loop, reference loss, per-tensor EMA) but
runs the same step body, so tests and benchmarks compare the two from the same initial state.
`train(config, run_dir, ...)` is the loop around it: data, logging, checkpoints, resume.
"""

from __future__ import annotations

import json
import os
import resource
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

import fastdino
from fastdino import checkpoint as ckpt_io
from fastdino.config import Config, ConfigError, backbone_kwargs, config_diff, head_kwargs, save_config, scaled_lr
from fastdino.device import select_device
from fastdino.distributed import (
    SINGLE_PROCESS,
    DistInfo,
    all_reduce_mean,
    cleanup,
    elastic_store_warning,
    init_distributed,
    per_rank_batch,
)
from fastdino.loss_terms import term_label
from fastdino.monitor.tensorboard import TensorBoardLog, picture_file, require_tensorboard
from fastdino.multi_tensor import group_by_device_and_dtype, scale_each_
from fastdino.preemption import RunControl, StopSignals, resume_command
from fastdino.schedules import cosine_schedule, schedule_warnings, teacher_temp_schedule


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops and the last good checkpoint stays as it is."""


# ----------------------------------------------------------------------------------------------------------
# Building blocks


def resolve_device(config: Config, dist_info: DistInfo = SINGLE_PROCESS) -> torch.device:
    """run.device as a torch.device (fastdino.device.select_device, as `fastdino finetune --device`)."""
    return select_device(config.run.device, local_rank=dist_info.local_rank, option="run.device")


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), as oneDNN, which runs CPU autocast's matmuls,
    reports it. Elsewhere bf16 is emulated: 3.5-12x slower than fp32 on an AVX2-only EPYC (bench/RESULTS.md).
    FASTDINO_CPU_BF16=0 / 1 overrides the detection (the test suite sets 0: the same numbers on every CPU)."""
    forced = os.environ.get("FASTDINO_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def choose_precision(precision: str, device: torch.device, native_bf16: bool | None = None) -> tuple[str, str]:
    """(precision, why) for run.precision. "auto": bf16 on CUDA; on a CPU bf16 only where it is native, where the
    tiny preset's step ran 1.68x fp32's speed and its EuroSAT val k-NN stayed within the seed noise
    (docs/training.md, "Precision"); fp32 elsewhere, where bf16 is emulated and slower."""
    if precision != "auto":
        return precision, "run.precision"
    if device.type == "cuda":
        return "bf16", "auto: bf16 on CUDA"
    if native_cpu_bf16() if native_bf16 is None else native_bf16:
        return "bf16", "auto: this CPU computes bf16 natively (AVX512-BF16 / AMX)"
    return "fp32", "auto: this CPU has no native bf16 (it would be emulated, several times slower than fp32)"


def resolve_precision(config: Config, device: torch.device) -> str:
    return choose_precision(config.run.precision, device)[0]


def configure_cpu_threads(config: Config, device: torch.device, dist_info: DistInfo = SINGLE_PROCESS) -> None:
    """On CPU, ranks on one machine share its cores. The pipeline's threads are not subtracted: they mostly wait
    on a full prefetch queue (data wait ~1% for the tiny preset), and on an otherwise idle 2-core machine torch on
    2 threads + 1 DALI thread trained 1.65x faster than torch on 1 (45 vs 27 img/s, EuroSAT, ViT-Tiny/16).
    On a machine busy with other work, oversubscribed OpenMP threads spin-wait on each other: lower
    torch's share with OMP_NUM_THREADS or torch.set_num_threads there."""
    if device.type == "cpu":
        budget = max(1, (os.cpu_count() or 1) // dist_info.world_size)
        torch.set_num_threads(min(torch.get_num_threads(), budget))


def resolve_num_threads(num_threads: int | str, device: torch.device, dist_info: DistInfo = SINGLE_PROCESS) -> int:
    """data.num_threads: a number is used as given. "auto": on CPU 2, the former fixed default (torch computes on
    every core there and the pipeline threads mostly wait, see configure_cpu_threads); on CUDA, where the pipeline
    must feed a GPU, this rank's share of the machine's cores less one for the training process, at most 10 (DINO's
    DataLoader workers per GPU: main_dino.py, --num_workers default 10)."""
    if num_threads != "auto":
        return int(num_threads)
    if device.type != "cuda":
        return 2
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 0)) or min(dist_info.world_size, torch.cuda.device_count())
    return max(1, min(10, cores // max(1, local_ranks) - 1))


_AMP_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def build_twins(config: Config, device: torch.device) -> tuple[nn.ModuleDict, nn.ModuleDict]:
    """Student and teacher with identical weights; the teacher takes no gradients.

    DINO never calls teacher.eval() (main_dino.py L189-211): a BatchNorm teacher normalises with the batch
    statistics of its own global views (and updates its own running statistics), so the teacher of a model with
    BatchNorm stays in train mode. Other teachers (ViT, Swin-T) are put in eval mode: DINO's ViT teacher has no
    stochastic layer (built without drop-path, L166), so both modes compute the same, and eval mode switches off
    the drop-path modules that fastdino's teacher shares with the student's architecture."""
    from fastdino.models import DINOHead, MaskToken, create_backbone, has_batchnorms

    def make():
        backbone = create_backbone(**backbone_kwargs(config.model))
        twin = dict(backbone=backbone, head=DINOHead(backbone.embed_dim, **head_kwargs(config.model)))
        if config.loss.ibot_weight:  # iBOT's mask token; the teacher's copy is never used (it sees whole views)
            twin["mask_token"] = MaskToken(backbone.embed_dim)
        return nn.ModuleDict(twin)

    student, teacher = make().to(device), make().to(device)
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    teacher.train(has_batchnorms(teacher))
    return student, teacher


def param_groups(model: nn.Module) -> list[dict]:
    """DINO's groups: weight decay on weight matrices only, none on biases and norm parameters (1-D)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "weight_decay": 0.0, "apply_wd": False}]


def build_schedules(config: Config, iters_per_epoch: int) -> dict[str, np.ndarray]:
    """Per-iteration lr (warm-up, batch-scaled), weight decay and teacher momentum; per-epoch teacher temp."""
    e, o, lo = config.run.epochs, config.optim, config.loss
    return dict(
        lr=cosine_schedule(scaled_lr(config), o.min_lr, e, iters_per_epoch, warmup_epochs=o.warmup_epochs),
        wd=cosine_schedule(o.weight_decay, o.weight_decay_end, e, iters_per_epoch),
        momentum=cosine_schedule(lo.momentum_teacher, 1.0, e, iters_per_epoch),
        teacher_temp=teacher_temp_schedule(lo.warmup_teacher_temp, lo.teacher_temp, lo.warmup_teacher_temp_epochs, e),
    )


def clip_gradients(params: list[nn.Parameter], clip: float, mode: str) -> None:
    """per_param (DINO): scale each tensor whose gradient norm exceeds `clip`; global_norm: torch's clip.
    Computed with foreach ops and no `if norm > clip` on the host, so there is no device sync here."""
    grads = [p.grad for p in params if p.grad is not None]
    if clip <= 0 or not grads:
        return
    if mode == "global_norm":
        torch.nn.utils.clip_grad_norm_(grads, clip, foreach=True)
        return
    for group in group_by_device_and_dtype(grads):  # fastdino: on CUDA one multi-tensor multiply (scale_each_)
        norms = torch.stack(torch._foreach_norm(group))
        scale_each_(group, (clip / (norms + 1e-6)).clamp_(max=1.0))


@dataclass
class Training:
    """Everything one step touches. `step(views, lr, wd, momentum, epoch) -> loss`: the weighted total (a detached
    device tensor); the step also records its unweighted terms by name in `loss_terms`, for the log."""

    student: nn.ModuleDict
    teacher: nn.ModuleDict
    dino_loss: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    step: Callable[..., torch.Tensor]
    precision: str
    ibot_loss: nn.Module | None = None  # loss.ibot_weight > 0: iBOT's patch loss (its centre is checkpointed)
    # term name (fastdino.loss_terms) -> its unweighted value at each step (detached) since the log last read them;
    # recorded when the total has several terms (a lone DINO loss is the total), emptied by the log
    loss_terms: dict[str, list[torch.Tensor]] = field(default_factory=dict)


def weighted_sum(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """sum of weights[name] x term, in the terms' order; a weight of 1 multiplies nothing (the same number, one
    device op less)."""
    total = None
    for name, term in terms.items():
        weighted = term if weights[name] == 1 else weights[name] * term
        total = weighted if total is None else total + weighted
    return total


def build_training(config: Config, device: torch.device, *, n_global: int, n_views: int, reference: bool = False,
                   dist_info: DistInfo = SINGLE_PROCESS) -> Training:
    """Models, loss, EMA, optimiser, scaler and the step function. reference=True: per-size student loop,
    DINOLoss(backend="reference"), per-tensor EMA loop (the original DINO code paths)."""
    from fastdino.kernels import DINOLoss, FlatEMA, IBOTPatchLoss, koleo_per_view, teacher_at_masks
    from fastdino.kernels.reference import reference_ema_update
    from fastdino.models import (
        MultiCropOutput,
        MultiCropWrapper,
        convert_sync_batchnorm,
        has_batchnorms,
        reference_forward_views,
        sample_patch_masks,
    )
    from fastdino.models.reference import reference_forward_masked_views

    precision = resolve_precision(config, device)
    student, teacher = build_twins(config, device)
    if dist_info.enabled and has_batchnorms(student):
        # DINO (main_dino.py L196-198): BatchNorm statistics over all ranks, student and teacher. Before FlatEMA,
        # DDP and the optimiser; the conversion keeps every Parameter and buffer object.
        student, teacher = convert_sync_batchnorm(student), convert_sync_batchnorm(teacher)
    lc = config.loss
    if lc.koleo_weight and per_rank_batch(config.run.batch_size, dist_info.world_size) < 2:
        raise ConfigError(f"loss.koleo_weight={lc.koleo_weight:g} needs at least 2 images per rank (each image's "
                          f"nearest neighbour is searched within its rank's batch); run.batch_size="
                          f"{config.run.batch_size} over {dist_info.world_size} rank(s): raise it or set "
                          "loss.koleo_weight=0")
    dino_loss = DINOLoss(config.model.out_dim, n_views, lc.warmup_teacher_temp, lc.teacher_temp,
                         lc.warmup_teacher_temp_epochs, config.run.epochs, lc.student_temp, lc.center_momentum,
                         n_global=n_global, backend="reference" if reference else lc.backend,
                         centering=lc.centering, inplace=True).to(device)  # nothing reads the logits after the loss
    ibot_loss = IBOTPatchLoss(config.model.out_dim, lc.student_temp, lc.center_momentum, lc.centering).to(device) \
        if lc.ibot_weight else None
    ibot_temps = teacher_temp_schedule(lc.warmup_teacher_temp, lc.ibot_teacher_temp, lc.warmup_teacher_temp_epochs,
                                       config.run.epochs)
    if reference:
        def student_forward(views, masks=None, patch_views=0):  # MultiCropWrapper's outputs, the original way
            if patch_views:  # iBOT: one view at a time, the head on the masked patches
                features, patches = reference_forward_masked_views(student["backbone"], views, masks,
                                                                   student["mask_token"].weight[0], patch_views)
                patch_logits = student["head"](patches[torch.cat(masks[:patch_views])])
                return MultiCropOutput(student["head"](features), features, patch_logits)
            features = reference_forward_views(student["backbone"], views)
            return MultiCropOutput(student["head"](features), features)

        def teacher_forward(views, patch_views=0, patch_select=None):
            if patch_views:  # the head at every patch, then the rows and means iBOT's loss reads (as iBOT does)
                features, patches = reference_forward_masked_views(teacher["backbone"], views, [], None, patch_views)
                return MultiCropOutput(teacher["head"](features), features,
                                       *teacher_at_masks(teacher["head"](patches), patch_select))
            features = reference_forward_views(teacher["backbone"], views)
            return MultiCropOutput(teacher["head"](features), features)

        def ema_update(m):
            reference_ema_update(student, teacher, m, buffers=lc.ema_buffers)
    else:
        # FlatEMA re-homes the parameters into flat buffers: build it before the optimiser and DDP see them.
        ema = FlatEMA(student, teacher, buffers=lc.ema_buffers)
        ema_update = ema.update
        student_forward = MultiCropWrapper(student["backbone"], student["head"], student["mask_token"]
                                           if "mask_token" in student else None)
        teacher_forward = MultiCropWrapper(teacher["backbone"], teacher["head"])
        if dist_info.enabled:
            student_forward = nn.parallel.DistributedDataParallel(
                student_forward, device_ids=[device.index] if device.type == "cuda" else None)
        if config.run.compile:
            student_forward, teacher_forward = torch.compile(student_forward), torch.compile(teacher_forward)

    # fastdino: torch's fused AdamW (one multi-tensor kernel on CUDA, one vectorised loop on CPU: ViT-Tiny + head,
    # 2 cores, torch 2.14: 6-14 ms vs 26-63 ms for the per-tensor default). The reference keeps DINO's default.
    if config.optim.name == "sgd":  # DINO's --optimizer sgd (main_dino.py L229); lr and wd come from the schedules
        # torch's default (foreach) SGD on both paths: the fused one fails (torch 2.14) once a parameter gets its
        # first gradient after the others, as the last layer does after its frozen epoch
        optimizer = torch.optim.SGD(param_groups(student), lr=0, momentum=0.9)
    else:
        optimizer = torch.optim.AdamW(param_groups(student), fused=not reference)
    if not reference:
        ema.check_optimizer(optimizer)  # the optimiser must hold the re-homed parameters
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    params = [p for p in student.parameters() if p.requires_grad]
    last_layer = [p for n, p in student.named_parameters() if n.startswith("head.last_layer")]
    o = config.optim

    patch_size = getattr(student["backbone"], "patch_size", None)  # iBOT's masks are per patch (ViTs only)
    weights = dict(dino=1.0, koleo=lc.koleo_weight, ibot=lc.ibot_weight)  # each term's weight in the total
    loss_terms: dict[str, list[torch.Tensor]] = {}

    def forward_loss(views: list[torch.Tensor], epoch: int) -> torch.Tensor:
        """DINO's loss (+ KoLeo, + iBOT's patch loss when their weights are set) of one batch of views: the
        weighted total; the unweighted terms go to `loss_terms` by name."""
        if ibot_loss is None:
            with torch.no_grad():
                teacher_out = teacher_forward(views[:n_global])
            student_out = student_forward(views)
        else:
            # iBOT: the teacher sees the global views whole, the student with masked patches (CLS loss included)
            n_patches = (views[0].shape[-2] // patch_size) * (views[0].shape[-1] // patch_size)
            masks = [sample_patch_masks(len(v), n_patches, mask_prob=lc.ibot_mask_prob,
                                        ratio=tuple(lc.ibot_mask_ratio), device=v.device) for v in views[:n_global]]
            with torch.no_grad():
                teacher_out = teacher_forward(views[:n_global], patch_views=n_global, patch_select=torch.cat(masks))
            student_out = student_forward(views, masks=masks, patch_views=n_global)
        terms = dict(dino=dino_loss(student_out.logits, teacher_out.logits, epoch))
        if lc.koleo_weight:
            n_global_rows = sum(len(v) for v in views[:n_global])
            terms["koleo"] = koleo_per_view(student_out.features[:n_global_rows], n_global)
        if ibot_loss is not None:
            terms["ibot"] = ibot_loss(student_out.patch_logits, teacher_out.patch_logits, torch.cat(masks),
                                      float(ibot_temps[epoch]), teacher_out.patch_logit_means)
        if len(terms) > 1:  # a lone DINO loss is the total, logged as "loss" already
            for name, term in terms.items():
                loss_terms.setdefault(name, []).append(term.detach())
        return weighted_sum(terms, weights)

    def step(views: list[torch.Tensor], lr: float, wd: float, momentum: float, epoch: int) -> torch.Tensor:
        for group in optimizer.param_groups:
            group["lr"] = lr
            if group["apply_wd"]:
                group["weight_decay"] = wd
        with torch.autocast(device.type, dtype=_AMP_DTYPE[precision], enabled=precision != "fp32"):
            loss = forward_loss(views, epoch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients (a no-op unless fp16)
        clip_gradients(params, o.clip_grad, o.clip_mode)
        if epoch < o.freeze_last_layer:  # DINO: the last layer is not updated at first (stabilises training)
            for p in last_layer:
                p.grad = None
        scaler.step(optimizer)  # fp16 only: a host-device sync (the scaler reads whether any gradient was inf)
        scaler.update()
        ema_update(momentum)
        return loss.detach()

    return Training(student, teacher, dino_loss, optimizer, scaler, step, precision, ibot_loss=ibot_loss,
                    loss_terms=loss_terms)


def build_loader(config: Config, device: torch.device, dist_info: DistInfo = SINGLE_PROCESS, *,
                 backend: str | None = None):
    """(pipeline, augmentation spec, image count) for this rank's share of the global batch."""
    from fastdino.dataloading import AugmentationSpec, build_pipeline, build_source

    d = config.data
    if d.path is None:
        raise ValueError("data.path is not set: pass --data PATH (an image folder, a SeCo root, or the root of "
                         "--data-list), or run `fastdino train` without --data for the generated demo dataset")
    source = build_source(d.path, list_file=d.list_file, layout=d.layout, subset=d.subset, seed=config.run.seed,
                          acquisitions="all" if d.temporal else d.acquisitions, temporal=d.temporal)
    spec = AugmentationSpec.from_dict(config.augment)
    if spec.bands:  # multispectral: the band order of multi-band files (fastdino/bands/resolve.py)
        from fastdino.bands.resolve import attach_file_bands

        attach_file_bands(source, config)
    n_images = source.num_locations if d.temporal else len(source)
    loader = build_pipeline(source, spec, batch_size=per_rank_batch(config.run.batch_size, dist_info.world_size),
                            device=device, backend=backend or d.backend,
                            num_threads=resolve_num_threads(d.num_threads, device, dist_info),
                            seed=config.run.seed, rank=dist_info.rank, world_size=dist_info.world_size,
                            temporal=d.temporal, strict=d.strict, feed_workers=d.feed_workers)
    loader.source = source  # the images themselves: the TensorBoard attention picture shows the first one
    return loader, spec, n_images


# ----------------------------------------------------------------------------------------------------------
# Run folder output


class RunLog:
    """Progress lines to stdout and train.log, metrics to metrics.jsonl (and to TensorBoard when `tensorboard` is
    set); silent on ranks other than 0."""

    def __init__(self, run_dir: Path, enabled: bool, echo: Callable[[str], None] = print):
        self.run_dir, self.enabled, self.echo = run_dir, enabled, echo
        self.tensorboard: TensorBoardLog | None = None
        self.picture: str | None = None  # the image of the TensorBoard attention picture

    def info(self, msg: str) -> None:
        if self.enabled:
            self.echo(msg)
            with open(self.run_dir / "train.log", "a") as f:
                f.write(msg + "\n")

    def metrics(self, record: dict) -> None:
        if self.enabled:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.tensorboard is not None:
                self.tensorboard.record(record)

    def open_tensorboard(self, resume_step: int | None, source, backbone: nn.Module) -> None:
        """RUN/tensorboard/ (rank 0); the attention picture shows the source's first image, if a ViT draws it."""
        if not self.enabled:
            return
        self.tensorboard = TensorBoardLog(self.run_dir, resume_step)
        self.picture = picture_file(source) if hasattr(backbone, "last_cls_attention") else None
        shown = f"attention picture of {self.picture} every epoch" if self.picture else "no attention picture " \
            "(only ViT backbones have attention maps, drawn from an image file)"
        self.info(f"tensorboard: {self.tensorboard.log_dir}, {shown}; view with: tensorboard --logdir {self.run_dir}")

    def attention_picture(self, backbone: nn.Module, config: Config, step: int) -> None:
        """The teacher's attention picture to TensorBoard (end of an epoch). A drawing failure is reported and ends
        the pictures, never the run."""
        if self.tensorboard is None or self.picture is None:
            return
        try:
            self.tensorboard.attention(backbone, config.to_dict(), self.picture, step)
        except Exception as e:  # noqa: BLE001 - a picture must not stop training
            self.info(f"WARNING: the attention picture of {self.picture} failed ({type(e).__name__}: {e}); "
                      "no more pictures in this run")
            self.picture = None

    def close_tensorboard(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB: process peak RSS


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _step_seed(seed: int, iteration: int, rank: int) -> int:
    """Randomness inside the step (drop-path) is a function of (seed, iteration, rank), re-seeded every step: a run
    resumed at any step, on any number of restarts, repeats it without saving any generator state."""
    return int(np.random.SeedSequence([seed, iteration, rank]).generate_state(1)[0])


# ----------------------------------------------------------------------------------------------------------
# The loop


def train(config: Config, run_dir: str | Path, *, resume: bool = False, init_from: str | Path | None = None,
          echo: Callable[[str], None] = print, reference: bool = False, max_steps: int | None = None) -> dict:
    """Train; returns the summary (img/s, peak memory, wall time, final loss, skipped images, and `stopped`: the
    name of the signal that stopped the run early, else None). The run folder must be prepared by the caller
    (fastdino.cli.train checks that it is empty unless resuming). max_steps overrides run.max_steps."""
    t_start = time.time()
    dist_info = init_distributed("cuda" if config.run.device != "cpu" and torch.cuda.is_available() else "cpu")
    try:
        # Stop signals only set a flag while training (fastdino.preemption); warning filters set inside are undone.
        with StopSignals(config.run.stop_signals) as signals, warnings.catch_warnings():
            return _train(config, Path(run_dir), dist_info, resume, init_from, echo, reference, max_steps, t_start,
                          signals)
    finally:
        cleanup()


def _train(config, run_dir, dist_info, resume, init_from, echo, reference, max_steps, t_start, signals) -> dict:
    device = resolve_device(config, dist_info)
    configure_cpu_threads(config, device, dist_info)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = RunLog(run_dir, dist_info.is_main, echo)
    if (advice := elastic_store_warning()) is not None:
        log.info(f"WARNING: {advice}")
    if config.run.tensorboard:
        require_tensorboard()  # a missing package is an error now, before the data and the models are built
    if config.data.bands is not None:  # multispectral: bands, per-band statistics, in_chans into the config
        from fastdino.bands.resolve import resolve_multispectral

        resolve_multispectral(config, echo=log.info)
    if dist_info.is_main:
        save_config(config, run_dir / "config.yaml")

    loader, spec, n_images = build_loader(config, device, dist_info, backend="torch" if reference else None)
    ipe = len(loader)
    epochs = config.run.epochs
    torch.manual_seed(config.run.seed)  # the same initial weights on every rank
    tr = build_training(config, device, n_global=spec.n_global, n_views=spec.n_views, reference=reference,
                        dist_info=dist_info)
    sched = build_schedules(config, ipe)
    max_steps = config.run.max_steps if max_steps is None else max_steps
    total = epochs * ipe if max_steps is None else min(epochs * ipe, max_steps)

    start_epoch, start_batch, data_state, resumed_losses, skipped = 0, 0, None, [], set()
    if resume:
        # On the CPU whatever the device: torch.set_rng_state takes CPU tensors only, and load_state_dict moves
        # weights and optimiser state to their parameters' device (DINO's utils.restart_from_checkpoint does
        # the same). An unreadable last.pt is an error naming the newest readable checkpoint.
        path, state = ckpt_io.load_latest(run_dir, map_location="cpu")
        for line in config_diff(state["config"], config.to_dict()):
            log.info(f"WARNING: resumed config differs from the checkpoint's: {line}")
        tr.student.load_state_dict(state["student"])
        tr.teacher.load_state_dict(state["teacher"])
        tr.optimizer.load_state_dict(state["optimizer"])
        if tr.scaler.is_enabled() and state["scaler"]:
            tr.scaler.load_state_dict(state["scaler"])
        tr.dino_loss.load_state_dict(state["dino_loss"])
        if tr.ibot_loss is not None:
            tr.ibot_loss.load_state_dict(state["ibot_loss"])
        ckpt_io.set_rng_state(state["rng"])
        start_epoch, start_batch = state["epoch"], state.get("batch", 0)  # checkpoints before 0.2: epoch ends only
        if start_epoch * ipe + start_batch >= total:
            raise ValueError(f"--resume: {path} is at step {start_epoch * ipe + start_batch}, the end of this run "
                             f"(run.epochs={epochs}, run.max_steps={max_steps}); raise --epochs or --max-steps to "
                             "train longer")
        data_state = _rank_data_state(state, dist_info, log)
        resumed_losses, skipped = state.get("epoch_losses", []), set(state.get("skipped_images", []))
        log.info(f"resumed from {path} at epoch {start_epoch}" + (f", batch {start_batch}" if start_batch else ""))
    elif init_from is not None:
        # fastdino, DINO / DINO-MC checkpoints or a bare state dict, converted to timm's layout (models/convert.py)
        from fastdino.models.convert import init_twins

        init_twins(init_from, tr.student, tr.teacher, config.model, echo=log.info, bands=config.augment.get("bands"))

    world = dist_info.world_size
    n_params = sum(p.numel() for p in tr.student.parameters())
    log.info(f"data: {n_images} images from {config.data.path}, pipeline {loader.backend}, {ipe} iterations/epoch")
    for note in getattr(loader, "notes", ()):  # what the pipeline found about the files, said once per run
        log.info(f"WARNING: {note}")
    arch = config.model.arch + (f"/{config.model.patch_size}" if config.model.patch_size else "")  # CNNs: no patch
    log.info(f"model: {arch} + head K={config.model.out_dim}, "
             f"{n_params / 1e6:.1f}M student parameters; views {spec.view_sizes}")
    log.info(f"device {device}, precision {tr.precision} ({choose_precision(config.run.precision, device)[1]}), "
             f"{world} rank(s); global batch {config.run.batch_size} "
             f"({config.run.batch_size // world} per rank), lr {scaled_lr(config):.3g} "
             f"(= {config.optim.lr:g} x {config.run.batch_size}/256)")
    o = config.optim
    for warning in schedule_warnings(epochs=epochs, iters_per_epoch=ipe, warmup_epochs=o.warmup_epochs,
                                     freeze_last_layer=o.freeze_last_layer, max_steps=max_steps,
                                     warmup_teacher_temp_epochs=config.loss.warmup_teacher_temp_epochs):
        log.info(f"WARNING: {warning}")

    from fastdino.eval.online import OnlineKNN

    knn = OnlineKNN.from_config(config, device, dist_info)  # the eval.knn_* monitor; None unless configured
    if knn is not None:
        log.info(knn.describe())
    knn_start = knn_last = None  # the records of the first and the latest evaluation, for the summary
    if knn is not None and config.eval.knn_at_start:
        knn_start = _knn_at_start(knn, tr.teacher["backbone"], log, epochs, init_from) if not resume \
            else _logged_start(run_dir)

    done = start_epoch * ipe + start_batch  # iterations finished
    if config.run.tensorboard:  # a resume hides what the interrupted run logged after its checkpoint
        log.open_tensorboard(done if resume else None, loader.source, tr.teacher["backbone"])
    start_done = done
    images_per_step = config.run.batch_size  # global
    loop_start, windows, last_loss = time.time(), [], float("nan")  # windows: (steps, seconds) per log line
    loader.skipped_files.update(skipped)  # found before a resume: logged then, not warned about again
    stop = None
    control = RunControl(config.run.checkpoint_every_steps, config.run.checkpoint_every_minutes, signals, dist_info)
    if dist_info.is_main:  # rank 0 writes skipped images to train.log and metrics.jsonl (train() restores this)
        warnings.filterwarnings("ignore", message="skipping corrupt or unreadable image", category=RuntimeWarning)
    for epoch in range(start_epoch, epochs):
        first_batch = start_batch if epoch == start_epoch else 0  # a resume inside this epoch starts later
        loader.set_epoch(epoch, first_batch, data_state if first_batch else None)
        tr.student.train()
        window, data_wait, t_window = [], 0.0, time.perf_counter()
        epoch_losses = resumed_losses if first_batch else []
        t_data = time.perf_counter()
        for i, views in enumerate(loader, start=first_batch):
            data_wait += time.perf_counter() - t_data
            it = epoch * ipe + i
            torch.manual_seed(_step_seed(config.run.seed, it, dist_info.rank))
            loss = tr.step(views, float(sched["lr"][it]), float(sched["wd"][it]), float(sched["momentum"][it]), epoch)
            window.append(loss)
            done += 1
            last_of_epoch = i == ipe - 1 or done == total
            if (i + 1) % config.run.log_every == 0 or last_of_epoch:
                # Host-device sync (once per log window): the window's losses, and below them each unweighted term
                # (the step records one per step, the same names on every rank), averaged over ranks in one
                # collective.
                names = list(tr.loss_terms)
                rows = [torch.stack(window)] + [torch.stack(tr.loss_terms[n]) for n in names]
                reduced = all_reduce_mean(torch.stack(rows).float()).cpu()
                tr.loss_terms.clear()
                losses = reduced[0]
                bad = (~torch.isfinite(losses)).nonzero()
                if len(bad):
                    first = it - len(window) + 1 + int(bad[0])
                    good = ckpt_io.find_latest(run_dir)
                    raise NonFiniteLossError(
                        f"loss is {losses[int(bad[0])].item()} at step {first} (epoch {epoch}); stopping. "
                        f"Last good checkpoint: {good or 'none yet'} (left untouched). Lower optim.lr, raise "
                        "optim.warmup_epochs or use run.precision=fp32, then --resume.")
                dt = time.perf_counter() - t_window
                windows.append((len(window), dt))
                epoch_losses += losses.tolist()
                last_loss = losses[-1].item()
                rec = dict(type="step", epoch=epoch, iteration=it, loss=losses.mean().item(), lr=float(sched["lr"][it]),
                           wd=float(sched["wd"][it]), momentum=float(sched["momentum"][it]),
                           teacher_temp=float(sched["teacher_temp"][min(epoch, len(sched["teacher_temp"]) - 1)]),
                           img_per_s=images_per_step * len(window) / dt, data_wait=data_wait / dt,
                           peak_mem_gib=peak_memory_gib(device),
                           eta_s=(time.time() - loop_start) / (done - start_done) * (total - done))
                terms = dict(zip(names, reduced[1:].mean(dim=1).tolist(), strict=True))  # weighted inside `loss`
                rec.update(terms)
                log.metrics(rec)
                shown_terms = "".join(f" ({term_label(name)} {value:.3f})" for name, value in terms.items())
                log.info(f"epoch {epoch + 1}/{epochs} it {i + 1}/{ipe}  loss {rec['loss']:.4f}{shown_terms}  "
                         f"lr {rec['lr']:.2e}  "
                         f"{rec['img_per_s']:.1f} img/s  data {100 * rec['data_wait']:.0f}%  "
                         f"mem {rec['peak_mem_gib']:.2f} GiB  eta {_hms(rec['eta_s'])}")
                window, data_wait, t_window = [], 0.0, time.perf_counter()
            _log_skipped(loader, skipped, log, epoch, it)
            if knn is not None and not last_of_epoch and knn.due_mid_epoch(done):  # a collective, like below
                log.metrics(rec := knn.evaluate(tr.teacher["backbone"], epoch=epoch, iteration=it, mid_epoch=True))
                log.info(knn.format(rec, epochs))
                knn_last = rec
                t_window += rec["knn_seconds"]  # evaluating is not training: keep it out of the window's img/s
            decision = control.after_step(done)
            stop = decision.stop
            if (decision.save or stop or done == total) and i + 1 < ipe:  # mid-epoch: last.pt at the next batch
                _save(tr, config, run_dir, dist_info, epoch, done, batch=i + 1, control=control, loader=loader,
                      epoch_losses=epoch_losses, skipped=skipped)
            if stop or done == total:
                break
            t_data = time.perf_counter()
        if i == ipe - 1:  # the epoch is finished (not cut by max_steps or a stop)
            log.metrics(dict(type="epoch", epoch=epoch, loss=float(np.mean(epoch_losses)), time=time.time() - t_start))
            _save(tr, config, run_dir, dist_info, epoch + 1, done, control=control, loader=loader, skipped=skipped)
            if knn is not None and knn.due(epoch + 1, epochs):  # a collective: every rank evaluates a share
                log.metrics(rec := knn.evaluate(tr.teacher["backbone"], epoch=epoch, iteration=done - 1))
                log.info(knn.format(rec, epochs))
                knn_last = rec
            log.attention_picture(tr.teacher["backbone"], config, done - 1)
        if stop or done == total:
            break
    control.close()
    skipped = _all_skipped(control, loader, skipped, log)

    wall = time.time() - t_start
    timed = windows[1:] or windows  # the first window holds the warm-up (allocator, compile, workers starting)
    img_per_s = images_per_step * sum(n for n, _ in timed) / max(sum(t for _, t in timed), 1e-9)
    summary = dict(type="summary", img_per_s=img_per_s,
                   peak_mem_gib=peak_memory_gib(device), wall_s=wall, steps=done, final_loss=last_loss,
                   device=str(device), world_size=world, skipped_images=len(skipped),
                   stopped=stop.name if stop else None,
                   knn_start_top1=knn_start["knn_top1"] if knn_start else None,
                   knn_top1=knn_last["knn_top1"] if knn_last else None)
    log.metrics(summary)
    log.close_tensorboard()
    skipped_note = f"; {len(skipped)} corrupt or unreadable image(s) skipped (listed in train.log)" if skipped else ""
    if stop:
        position = f"{i + 1} of {ipe} batches done" if i + 1 < ipe else "its last batch done"
        position = f"epoch {epoch + 1}/{epochs}, {position}"
        log.info(f"stopped by {stop.name} after step {done} ({position}); state saved in "
                 f"{ckpt_io.checkpoint_dir(run_dir) / ckpt_io.LAST}{skipped_note}. Resume with:\n"
                 f"  {resume_command(run_dir)}")
        return summary
    if dist_info.is_main:
        from fastdino.monitor.curves import plot_curves

        log.info(f"plots: {plot_curves(run_dir, run_dir / 'plots' / 'curves.png')}")
        log.info(_export_final(run_dir))
    log.info(f"done: {done} steps, {summary['img_per_s']:.1f} img/s (global, after the first log window), "
             f"peak memory {summary['peak_mem_gib']:.2f} GiB, wall time {_hms(wall)}; run folder {run_dir}"
             f"{skipped_note}")
    if knn_last is not None:
        log.info(_knn_progress(knn_start, knn_last))
    return summary


def _knn_at_start(knn, backbone: nn.Module, log: RunLog, epochs: int, init_from) -> dict:
    """The online k-NN of the initial teacher, before step 0 (a collective): logged with at_start=True at
    iteration -1, so the curve starts where training starts; init_from names the weights when not random."""
    record = knn.evaluate(backbone, epoch=0, iteration=-1, at_start=True, init_from=str(init_from) if init_from
                          else None)
    log.metrics(record)
    log.info(knn.format(record, epochs))
    return record


def _logged_start(run_dir: Path) -> dict | None:
    """A resumed run's before-step-0 k-NN record, from the metrics.jsonl the interrupted run wrote (None if absent)."""
    from fastdino.monitor.metrics import read_metrics

    path = run_dir / "metrics.jsonl"
    records = read_metrics(path, kind="knn") if path.is_file() else []
    return next((r for r in records if r.get("at_start")), None)


def _knn_progress(start: dict | None, last: dict) -> str:
    """The summary's k-NN line: the initial weights' top-1 (when measured) and the last one."""
    before = f"{start['knn_top1']:.1f}% before training -> " if start else ""
    return (f"online k-NN on {last['knn_val']} val images: top-1 {before}{last['knn_top1']:.1f}% after "
            f"step {last['iteration'] + 1}")


def _export_final(run_dir: Path) -> str:
    """RUN/exported/: the teacher backbone of checkpoints/last.pt as timm safetensors + metadata JSON, through
    fastdino/models/export.py (rank 0; seconds). A failure is reported, not raised: the checkpoints are intact and
    `fastdino export` can redo it."""
    from fastdino.models.export import export_teacher

    last = ckpt_io.checkpoint_dir(run_dir) / ckpt_io.LAST
    if not last.is_file():
        return "exported: nothing (no epoch finished, so no checkpoint to export)"
    try:
        weights, meta_path, meta = export_teacher(last)
    except Exception as e:  # noqa: BLE001 - any failure here must not turn a finished run into a failed one
        return f"WARNING: exporting {last} failed ({type(e).__name__}: {e}); retry with fastdino export --checkpoint"
    return f"exported: {weights} and {meta_path.name} (teacher backbone after epoch {meta['epoch']}, timm layout)"


def _rank_data_state(state: dict, dist_info: DistInfo, log: RunLog) -> dict | None:
    """This rank's pipeline state from a mid-epoch checkpoint (one entry per rank), if it fits this world."""
    per_rank = state.get("data")
    if not per_rank:
        return None
    if len(per_rank) != dist_info.world_size:
        log.info(f"WARNING: the checkpoint was written by {len(per_rank)} rank(s), this run has "
                 f"{dist_info.world_size}: the rest of epoch {state['epoch']} sees other images and views than an "
                 "uninterrupted run would (the epochs after it are unaffected)")
        return None
    return per_rank[dist_info.rank]


def _log_skipped(loader, logged: set[str], log: RunLog, epoch: int, it: int) -> None:
    """Images the pipeline skipped as corrupt since the last call: one line each in train.log and metrics.jsonl."""
    if len(loader.skipped_files) > len(logged):  # a set-size check per step: cheap
        for f in sorted(set(loader.skipped_files) - logged):
            log.info(f"WARNING: skipped corrupt or unreadable image {f} (epoch {epoch}, step {it}); "
                     "data.strict=true stops on it instead")
            log.metrics(dict(type="skipped_image", file=f, epoch=epoch, iteration=it))
            logged.add(f)


def _all_skipped(control: RunControl, loader, logged: set[str], log: RunLog) -> set[str]:
    """The union over ranks of the skipped images (rank 0 logs the ones only other ranks saw)."""
    per_rank = control.gather(sorted(set(loader.skipped_files) | logged))
    if per_rank is None:
        return logged
    union = set().union(*per_rank)
    for f in sorted(union - logged):
        log.info(f"WARNING: skipped corrupt or unreadable image {f} (on another rank)")
        log.metrics(dict(type="skipped_image", file=f))
    return union


def _save(tr: Training, config: Config, run_dir: Path, dist_info: DistInfo, epoch: int, iteration: int, *,
          batch: int = 0, control: RunControl, loader, epoch_losses: list[float] | None = None,
          skipped: set[str] = frozenset()) -> None:
    """last.pt (the one it replaces kept as previous.pt) at position (epoch, batch): after every epoch (batch 0),
    and mid-epoch for step checkpoints and stops. epoch_NNNN.pt every checkpoint_every epochs and at the end.
    Every rank calls it (the pipelines' states and skipped images are gathered to rank 0, which writes)."""
    per_rank = control.gather((loader.state_dict() if batch else None, sorted(set(loader.skipped_files) | skipped)))
    control.saved()
    if not dist_info.is_main:
        return
    state = dict(config=config.to_dict(), student=tr.student.state_dict(), teacher=tr.teacher.state_dict(),
                 optimizer=tr.optimizer.state_dict(), scaler=tr.scaler.state_dict(),
                 dino_loss=tr.dino_loss.state_dict(), epoch=epoch, batch=batch, iteration=iteration,
                 data=[d for d, _ in per_rank] if batch else None, epoch_losses=list(epoch_losses or []),
                 skipped_images=sorted(set().union(*(s for _, s in per_rank))), rng=ckpt_io.rng_state(),
                 fastdino_version=fastdino.__version__)
    if tr.ibot_loss is not None:
        state["ibot_loss"] = tr.ibot_loss.state_dict()
    folder = ckpt_io.checkpoint_dir(run_dir)
    ckpt_io.save_last(state, folder)
    if batch == 0 and (epoch % config.run.checkpoint_every == 0 or epoch == config.run.epochs):
        ckpt_io.save_checkpoint(state, folder / ckpt_io.epoch_checkpoint_name(epoch))
