"""DINO's linear evaluation protocol (`fastdino eval linear --protocol dino`), next to fastdino's fast probe.

As facebookresearch/dino eval_linear.py (WennyXY/DINO-MC's eval_linear.py is the same protocol; its defaults differ
where noted), on fastdino's splits and at the evaluation size S (the checkpoint's global crop, or --image-size).
Line numbers: eval_linear.py at facebookresearch/dino commit 9085367, each checked against that revision's text.
- features of the frozen backbone, recomputed for every batch: for a ViT the CLS token after the final norm of each
  of the last `n_last_blocks` blocks, concatenated (L159-163; `get_intermediate_layers`, vision_transformer.py
  L225-233); n_last_blocks 4 and no average-pooled patch tokens, DINO's setting for ViT-S (L249-251). Other
  backbones: their pooled feature (L164-165). No L2 normalisation, no standardisation.
- train images: RandomResizedCrop(S) (torchvision defaults: scale (0.08, 1), ratio (3/4, 4/3), bilinear) and a
  horizontal flip (L38-43), normalised with the run's mean / std; test images: Resize(S * 256/224, bicubic) then
  CenterCrop(S) (L44-49: 256 and 224 at S = 224).
- classifier: Linear(feature_dim, classes), weight ~ N(0, 0.01), bias 0 (L236-237).
- SGD, momentum 0.9, no weight decay, lr = base lr * batch / 256 (L96-101), base lr 0.001 (L259), batch 128 (L263;
  DINO-MC's eval_linear.py: 32), 100 epochs (L258); cosine to 0 over the epochs, stepped once per epoch (L102, L120).
- reported: top-1 / top-5 on the test split after the last epoch. DINO prints the best accuracy over all epochs'
  evaluations on its val set instead (L127, L142-143); fastdino scores the test split once.
Every epoch runs the backbone over every train image (the augmentation changes the input), so this costs
`epochs` passes of feature extraction: see docs/eval.md for the measured CPU time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision import transforms as T
from tqdm import tqdm

from .features import load_image
from .knn import topk_accuracy


@dataclass(frozen=True)
class DinoLinearSettings:
    epochs: int = 100
    lr: float = 0.001  # per 256 images
    batch_size: int = 128
    n_last_blocks: int = 4
    avgpool_patchtokens: bool = False
    momentum: float = 0.9
    weight_decay: float = 0.0

    def scaled_lr(self) -> float:
        return self.lr * self.batch_size / 256.0


def train_transform(size: int, mean: Sequence[float], std: Sequence[float]):
    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])


def test_transform(size: int, mean: Sequence[float], std: Sequence[float]):
    return T.Compose([T.Resize(round(size * 256 / 224), interpolation=T.InterpolationMode.BICUBIC),
                      T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)])


class _Images(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[str | Path], labels: Sequence[int], transform):
        self.paths, self.labels, self.transform = [Path(p) for p in paths], list(labels), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(load_image(self.paths[i]).convert("RGB")), self.labels[i]


def frozen_features(backbone: torch.nn.Module, x: torch.Tensor, n_last_blocks: int, avgpool: bool) -> torch.Tensor:
    """What DINO's linear classifier reads: concatenated CLS of the last n blocks (ViT), else the pooled feature."""
    from fastdino.models import PackedViT

    if not isinstance(backbone, PackedViT):
        return backbone(x)
    return intermediate_cls(backbone, x, n_last_blocks, avgpool)


def intermediate_cls(vit, x: torch.Tensor, n: int, avgpool: bool = False) -> torch.Tensor:
    """[B, n*D (+D)]: the final norm applied to the tokens after each of the last n blocks, CLS taken and
    concatenated (+ the mean of the last block's normed patch tokens when avgpool), through the backbone's own
    packed blocks and position-embedding interpolation."""
    from fastdino.models.attention import resolve_attn_backend
    from fastdino.models.backbone import floor_to_patch
    from fastdino.models.packing import packed_layout

    m = vit.timm_model
    blocks = list(m.blocks)
    if not 1 <= n <= len(blocks):
        raise ValueError(f"--n-last-blocks must be in 1..{len(blocks)}, got {n}")
    x = floor_to_patch(x, vit.patch_size)
    layout = packed_layout((tuple(x.shape),), vit.patch_size, vit.n_prefix)
    backend = resolve_attn_backend(vit.attn_backend, x.device.type)
    tokens = vit._embed([x], layout)
    g = layout.groups[0]
    outputs = []
    for i, blk in enumerate(blocks):
        tokens = vit._block(blk, tokens, layout, backend)
        if len(blocks) - i <= n:
            outputs.append(m.norm(tokens.view(g.crops, g.seq_len, -1)[:, 0]))
    if avgpool:
        last = m.norm(tokens.view(g.crops, g.seq_len, -1)[:, vit.n_prefix:])
        outputs.append(last.mean(dim=1))
    return torch.cat(outputs, dim=-1)


@torch.no_grad()
def _features(backbone, loader, settings: DinoLinearSettings, device, desc: str):
    feats, labels = [], []
    for x, y in tqdm(loader, desc=desc, unit="batch", leave=False):
        feats.append(frozen_features(backbone, x.to(device), settings.n_last_blocks, settings.avgpool_patchtokens))
        labels.append(y)
    return torch.cat(feats).float().cpu(), torch.cat(labels)


def dino_linear_accuracy(backbone: torch.nn.Module, train_paths, train_labels, test_paths, test_labels,
                         num_classes: int, *, size: int, mean, std, settings: DinoLinearSettings = DinoLinearSettings(),
                         num_workers: int = 0, device: str | torch.device = "cpu", seed: int = 0,
                         echo=print) -> dict:
    """Train DINO's linear classifier on the frozen backbone; top-1 / top-5 (percent) on the test images."""
    if settings.epochs < 1:
        raise ValueError(f"the linear classifier needs at least one epoch, got --epochs {settings.epochs}")
    backbone = backbone.to(device).eval()
    generator = torch.Generator().manual_seed(seed)
    train_set = _Images(train_paths, train_labels, train_transform(size, mean, std))
    test_set = _Images(test_paths, test_labels, test_transform(size, mean, std))
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=settings.batch_size, shuffle=True,
                                               num_workers=num_workers, generator=generator)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=settings.batch_size, num_workers=num_workers)

    with torch.random.fork_rng():  # the crops draw from torch's global RNG: seeded here, restored after
        torch.manual_seed(seed)
        with torch.no_grad():
            probe_x, _ = next(iter(torch.utils.data.DataLoader(test_set, batch_size=1)))
            dim = frozen_features(backbone, probe_x.to(device), settings.n_last_blocks,
                                  settings.avgpool_patchtokens).shape[1]
        classifier = torch.nn.Linear(dim, num_classes).to(device)
        with torch.no_grad():
            classifier.weight.normal_(0.0, 0.01)
            classifier.bias.zero_()
        optimizer = torch.optim.SGD(classifier.parameters(), settings.scaled_lr(), momentum=settings.momentum,
                                    weight_decay=settings.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.epochs, eta_min=0)
        start, losses = time.perf_counter(), []
        for epoch in range(settings.epochs):
            classifier.train()
            total, count = 0.0, 0
            for x, y in tqdm(train_loader, desc=f"linear epoch {epoch + 1}/{settings.epochs}", unit="batch",
                             leave=False):
                with torch.no_grad():
                    feats = frozen_features(backbone, x.to(device), settings.n_last_blocks,
                                            settings.avgpool_patchtokens)
                loss = F.cross_entropy(classifier(feats), y.to(device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(y)
                count += len(y)
            scheduler.step()
            losses.append(total / count)
            if echo is not None and (epoch == 0 or (epoch + 1) % 10 == 0 or epoch + 1 == settings.epochs):
                per_epoch = (time.perf_counter() - start) / (epoch + 1)
                echo(f"linear (DINO protocol) epoch {epoch + 1}/{settings.epochs}  loss {losses[-1]:.4f}  "
                     f"{per_epoch:.1f} s/epoch")
        train_seconds = time.perf_counter() - start
        classifier.eval()
        xte, yte = _features(backbone, test_loader, settings, device, "test features")
        with torch.no_grad():
            scores = classifier(xte.to(device)).float().cpu()
    return {
        "top1": topk_accuracy(scores, yte, 1),
        "top5": topk_accuracy(scores, yte, 5),
        "train_loss": losses[-1],
        "feature_dim": dim,
        "train_seconds": round(train_seconds, 2),
        "seconds_per_epoch": round(train_seconds / settings.epochs, 2),
        "scaled_lr": settings.scaled_lr(),
        **{k: v for k, v in asdict(settings).items() if k not in ("epochs", "lr", "batch_size")},
    }

