"""The online k-NN monitor: the teacher's weighted k-NN top-1 on a labelled validation list during training.

Set by the `eval` config section (`--set eval.knn_train=LIST eval.knn_val=LIST`, lists relative to
`eval.knn_root`, default `data.path`). At start every listed image is decoded and resized once, exactly as
`fastdino eval` does it (`EvalTransform`: whole-image resize to the largest global crop, bicubic), and kept as one
uint8 tensor (EuroSAT: 3 x 64 x 64 = 12 KiB an image); normalisation happens per batch. After every
`eval.knn_every` epochs (and after the last), and every `eval.knn_every_steps` steps inside an epoch, the teacher
backbone embeds the memory bank and the val images (L2-normalised CLS features) and DINO's weighted k-NN
(`fastdino.eval.knn`, k=20, T=0.07) scores val.

The memory bank is a stratified, seeded subset of `eval.knn_train` (`eval.knn_bank_size` images, 0 = all): the
backbone pass over the bank is most of the cost, and a smaller bank gives lower accuracy than `fastdino eval knn`
with the whole train list, which stays the number to report (EuroSAT val, one checkpoint: 63.37 with a 5,002-image
bank, 66.72 with all 16,200); the curve compares runs and shows the trend.

Every rank does an equal share: rank r decodes and embeds images r, r + W, r + 2W, ... of the bank and of val;
bank features are all-gathered, each rank scores its own val images, and the hit counts are summed. So no rank
waits idle while another evaluates, and every rank returns the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from fastdino.distributed import SINGLE_PROCESS, DistInfo

from .features import EvalTransform, load_image
from .knn import knn_predict


def decode_images(paths: Sequence[str | Path], transform: EvalTransform) -> torch.Tensor:
    """uint8 [N, 3, S, S]: each image decoded (an error names a file that does not decode) and resized whole
    as `transform` does it, before its normalisation."""
    out = torch.empty(len(paths), 3, transform.size, transform.size, dtype=torch.uint8)
    mode = InterpolationMode(transform.interpolation)
    for i, path in enumerate(paths):
        x = TF.pil_to_tensor(load_image(path).convert("RGB"))
        if x.shape[-2:] != (transform.size, transform.size):
            x = TF.resize(x, [transform.size, transform.size], interpolation=mode, antialias=True)
        out[i] = x
    return out


def normalise(images: torch.Tensor, transform: EvalTransform) -> torch.Tensor:
    """uint8 images -> float, normalised with the run's mean / std (what `EvalTransform` returns)."""
    mean = torch.tensor(transform.mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(transform.std, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


@torch.no_grad()
def embed(backbone: torch.nn.Module, images: torch.Tensor, transform: EvalTransform, device: torch.device,
          batch_size: int, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """L2-normalised features [N, D] (float32, on `device`) of cached uint8 images."""
    was_training = backbone.training
    backbone.eval()
    chunks = []
    for start in range(0, len(images), batch_size):
        x = normalise(images[start:start + batch_size].to(device, non_blocking=True), transform)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            chunks.append(F.normalize(backbone(x).float(), dim=1))
    backbone.train(was_training)
    if not chunks:
        return torch.empty(0, 0, device=device)
    return torch.cat(chunks)


def bank_subset(labels: Sequence[int], size: int, seed: int = 0) -> list[int]:
    """Indices of a seeded, stratified subset of about `size` images (all of them when size is 0 or too big)."""
    from .splits import stratified_split

    if size <= 0 or size >= len(labels):
        return list(range(len(labels)))
    return stratified_split(labels, size / len(labels), seed)[1]


class OnlineKNN:
    """k-NN top-1 of a backbone on a labelled val list, against a labelled memory bank, shared by all ranks.

    `OnlineKNN.from_config(config, device, dist_info)` is None unless `eval.knn_train` is set; `due(epoch)`
    says whether to evaluate after `epoch` epochs; `evaluate(backbone, ...)` is a collective (every rank calls
    it) and returns the metrics record."""

    def __init__(self, bank_paths: Sequence, bank_labels: Sequence[int], val_paths: Sequence, val_labels: Sequence[int],
                 num_classes: int, transform: EvalTransform, *, device: torch.device, every: int = 1,
                 every_steps: int = 0, k: int = 20, temperature: float = 0.07, batch_size: int = 256,
                 amp_dtype: torch.dtype | None = None, dist_info: DistInfo = SINGLE_PROCESS):
        t0 = time.perf_counter()
        self.transform, self.device, self.every, self.k, self.temperature = transform, device, every, k, temperature
        self.every_steps = every_steps
        self.batch_size, self.amp_dtype, self.num_classes = batch_size, amp_dtype, num_classes
        self.rank, self.world = dist_info.rank, dist_info.world_size
        self.n_bank, self.n_val = len(bank_paths), len(val_paths)
        if min(self.n_bank, self.n_val) < self.world:  # every rank embeds a share of both
            raise ValueError(f"online k-NN needs at least {self.world} images (one per rank) in the bank and in val, "
                             f"got {self.n_bank} and {self.n_val}")
        mine = slice(self.rank, None, self.world)  # this rank's share: images rank, rank + W, ...
        self.bank_images = decode_images(list(bank_paths)[mine], transform)
        self.val_images = decode_images(list(val_paths)[mine], transform)
        self.bank_labels = torch.as_tensor(list(bank_labels), dtype=torch.long)  # all ranks', in gather order below
        self.val_labels = torch.as_tensor(list(val_labels)[mine], dtype=torch.long)
        # all_gather needs equal sizes: every share is padded to the largest; `order` undoes the interleaving.
        self.bank_share = -(-self.n_bank // self.world)
        self.order = torch.tensor([r + self.world * i for r in range(self.world) for i in range(self.bank_share)])
        self.bank_labels = self.bank_labels[self.order[self.order < self.n_bank]]
        self.setup_seconds = time.perf_counter() - t0
        self.total_seconds = self.setup_seconds

    @classmethod
    def from_config(cls, config, device: torch.device, dist_info: DistInfo = SINGLE_PROCESS) -> OnlineKNN | None:
        """The monitor the `eval` section asks for (None when eval.knn_train is unset); errors name the key."""
        from fastdino.dataloading.augment import AugmentationSpec

        from .splits import load_split

        e = config.eval
        if e.knn_train is None and e.knn_val is None:
            return None
        if e.knn_train is None or e.knn_val is None:
            given, missing = ("eval.knn_train", "eval.knn_val") if e.knn_train else ("eval.knn_val", "eval.knn_train")
            raise ValueError(f"{given} is set but {missing} is not: the online k-NN needs both labelled lists")
        root = e.knn_root or config.data.path
        if root is None:
            raise ValueError("eval.knn_root is unset and so is data.path: say which folder the k-NN lists are "
                             "relative to (--set eval.knn_root=DIR)")
        for key, value in (("eval.knn_train", e.knn_train), ("eval.knn_val", e.knn_val)):
            if not Path(value).is_file():
                raise FileNotFoundError(f"{key}={value}: no such file (a list of labelled images, one path per "
                                        f"line relative to {root})")
        try:
            split = load_split(Path(root), Path(e.knn_train), Path(e.knn_val))
        except (FileNotFoundError, ValueError) as err:
            raise type(err)(f"online k-NN (eval.knn_train / eval.knn_val, root {root}): {err}") from err
        keep = bank_subset(split["train_labels"], e.knn_bank_size)
        spec = AugmentationSpec.from_dict(config.augment)
        largest = max(spec.global_views, key=lambda g: g.size)
        transform = EvalTransform(e.knn_image_size or largest.size, tuple(spec.mean), tuple(spec.std),
                                  largest.interpolation)
        # bf16 features on CUDA like training; fp32 on CPU (CPUs without native bf16 emulate it, several x slower).
        amp = torch.bfloat16 if device.type == "cuda" and config.run.precision in ("auto", "bf16") else None
        return cls([split["train_paths"][i] for i in keep], [split["train_labels"][i] for i in keep],
                   split["test_paths"], split["test_labels"], len(split["classes"]), transform, device=device,
                   every=e.knn_every, every_steps=e.knn_every_steps, k=e.knn_k, temperature=e.knn_temperature,
                   amp_dtype=amp, dist_info=dist_info)

    def due(self, epochs_done: int, total_epochs: int) -> bool:
        """Evaluate after every `every` epochs and after the last one."""
        return epochs_done % self.every == 0 or epochs_done == total_epochs

    def due_mid_epoch(self, steps_done: int) -> bool:
        """Evaluate after this many steps in all (`every_steps`; the end of an epoch is `due`'s call)."""
        return self.every_steps > 0 and steps_done % self.every_steps == 0

    def describe(self) -> str:
        steps = f" and every {self.every_steps} steps" if self.every_steps else ""
        return (f"online k-NN: bank {self.n_bank} images, val {self.n_val}, {self.transform.size} px, k={self.k}, "
                f"every {self.every} epoch(s){steps}; images decoded in {self.setup_seconds:.1f} s")

    def format(self, record: dict, total_epochs: int) -> str:
        """The progress line of one evaluation."""
        where = f"epoch {record['epoch'] + 1}/{total_epochs}"
        if record.get("at_start"):
            where = "before step 0"
        elif record.get("mid_epoch"):
            where += f" step {record['iteration'] + 1}"
        return (f"{where}  k-NN top-1 {record['knn_top1']:.2f}  "
                f"top-5 {record['knn_top5']:.2f}  (val {record['knn_val']}, bank {record['knn_bank']}, "
                f"{record['knn_seconds']:.1f} s; {self.total_seconds:.0f} s in all)")

    @torch.no_grad()
    def evaluate(self, backbone: torch.nn.Module, **context) -> dict:
        """A collective: every rank must call it. Returns {'type': 'knn', knn_top1, knn_top5, ..., **context}."""
        t0 = time.perf_counter()
        bank = embed(backbone, self.bank_images, self.transform, self.device, self.batch_size, self.amp_dtype)
        val = embed(backbone, self.val_images, self.transform, self.device, self.batch_size, self.amp_dtype)
        bank = self._gather_bank(bank)
        scores = knn_predict(bank.cpu(), self.bank_labels, val.cpu(), self.num_classes, k=self.k,
                             temperature=self.temperature)
        top5 = scores.topk(min(5, self.num_classes), dim=1).indices
        hits = torch.tensor([(top5[:, 0] == self.val_labels).sum().item(),
                             (top5 == self.val_labels[:, None]).any(1).sum().item(), len(self.val_labels)],
                            dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(hits)
        seconds = time.perf_counter() - t0
        self.total_seconds += seconds
        top1, top5_hits, n = hits.tolist()
        return dict(type="knn", **context, knn_top1=100.0 * top1 / n, knn_top5=100.0 * top5_hits / n,
                    knn_seconds=seconds, knn_total_seconds=self.total_seconds, knn_bank=self.n_bank, knn_val=int(n))

    def _gather_bank(self, mine: torch.Tensor) -> torch.Tensor:
        """Every rank's bank features, in list order."""
        if self.world == 1:
            return mine
        padded = torch.zeros(self.bank_share, mine.shape[1], device=mine.device, dtype=mine.dtype)
        padded[:len(mine)] = mine
        shares = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(shares, padded)
        flat = torch.cat(shares)  # rank-major: row r * share + i is image r + W * i
        return flat[(self.order < self.n_bank).nonzero().flatten().to(flat.device)]
