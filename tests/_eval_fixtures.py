"""Hand-built run folders for the eval / export / viz tests, in the checkpoint format of docs/ARCHITECTURE.md."""

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fastdino
from fastdino.config import backbone_kwargs, head_kwargs
from fastdino.models import DINOHead, create_backbone
from fastdino.run_config import load_config


@pytest.fixture(autouse=True)
def one_thread():
    """These tests run small ViTs on tiny inputs; on a shared 2-core machine the second intra-op thread only
    adds hand-off waits (measured: the suite took 4x longer with 2 threads under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_image_folder(root: Path, *, n_classes: int = 3, per_class: int = 4, size: int = 32) -> Path:
    """ROOT/class<c>/img<i>.png: noisy images whose mean colour depends on the class."""
    rng = np.random.default_rng(0)
    for c in range(n_classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        colour = np.zeros(3)
        colour[c % 3] = 200
        for i in range(per_class):
            pixels = np.clip(colour + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"img{i}.png")
    return root


def tiny_config(img_size: int = 32) -> dict:
    """The `tiny` preset's resolved config on a ViT-Tiny/8, shrunk to `img_size` px global crops and a small head."""
    config = load_config("tiny", overrides={"model": {"patch_size": 8, "img_size": img_size, "out_dim": 64,
                                                      "hidden_dim": 32, "bottleneck_dim": 16}}).to_dict()
    for group in config["augment"]["global_views"]:
        group["size"] = img_size
    return config


@functools.cache
def _teacher_state(img_size: int) -> dict:
    """The teacher's `ModuleDict(backbone, head)` state of a random ViT-Tiny/8, built once per session
    (building ViTs dominates these tests on a busy 2-core machine)."""
    config = tiny_config(img_size)
    torch.manual_seed(0)
    backbone = create_backbone(**backbone_kwargs(config["model"]))
    head = DINOHead(backbone.embed_dim, **head_kwargs(config["model"]))
    return torch.nn.ModuleDict({"backbone": backbone, "head": head}).state_dict()


def make_checkpoint(run_dir: Path, *, img_size: int = 32, config_model: dict | None = None) -> Path:
    """RUN/checkpoints/last.pt holding a random ViT-Tiny/8 teacher and a student that differs from it.

    config_model: entries written into config["model"] over the weights' own (a mismatched checkpoint).
    """
    config = tiny_config(img_size)
    teacher = _teacher_state(img_size)
    g = torch.Generator().manual_seed(1)
    student = {k: v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
               for k, v in teacher.items()}
    config["model"].update(config_model or {})
    state = {"config": config, "student": student, "teacher": teacher, "optimizer": {}, "scaler": None,
             "dino_loss": {}, "epoch": 3, "iteration": 30, "rng": {}, "fastdino_version": fastdino.__version__}
    path = run_dir / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def write_metrics(run_dir: Path, n_steps: int = 30, *, drop: tuple[str, ...] = ()) -> Path:
    """RUN/metrics.jsonl with step records in the trainer's format (and one epoch record, one torn line)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for it in range(n_steps):
        record = {"type": "step", "iteration": it, "epoch": it // 10, "loss": 8.0 - 0.1 * it, "lr": 1e-4 * (it + 1),
                  "wd": 0.04 + 0.001 * it, "momentum": 0.996 + 0.0001 * it, "teacher_temp": 0.04, "img_per_s": 50.0}
        lines.append(json.dumps({k: v for k, v in record.items() if k not in drop}))
        if it % 10 == 9:
            lines.append(json.dumps({"type": "epoch", "epoch": it // 10, "loss": 7.0}))
    path = run_dir / "metrics.jsonl"
    path.write_text("\n".join(lines) + '\n{"type": "step", "iter')  # a run killed mid-write
    return path
