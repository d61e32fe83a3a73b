"""The built-in default dataset: generated textured images in an ImageFolder layout.

Each class is a texture family (an oriented grating of a class-specific frequency and orientation, a class
colour, smooth blobs and noise), so a backbone has something to learn and k-NN on the labels is meaningful,
yet any one image is random. Writing 1,000 64 px images takes about a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

_MARKER = "synthetic.json"


def make_synthetic_dataset(root, *, n_images: int, size: int, seed: int = 0, n_classes: int = 4,
                           fmt: str = "jpg") -> Path:
    """Write `n_images` RGB images of `size` x `size` px as `<root>/class_<k>/<i>.<fmt>`; returns the root.

    Deterministic in (n_images, size, seed, n_classes, fmt); a root already holding exactly that dataset is
    left as it is, so calling this at every start is cheap."""
    if n_images < 1 or size < 8 or n_classes < 1:
        raise ValueError(f"make_synthetic_dataset: need n_images >= 1, size >= 8, n_classes >= 1; "
                         f"got n_images={n_images}, size={size}, n_classes={n_classes}")
    if fmt not in ("jpg", "png"):
        raise ValueError(f"make_synthetic_dataset: fmt={fmt!r}; use 'jpg' or 'png'")
    root = Path(root)
    params = dict(n_images=n_images, size=size, seed=seed, n_classes=n_classes, fmt=fmt)
    marker = root / _MARKER
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return root
    rng = np.random.default_rng(seed)
    class_rng = np.random.default_rng(seed + 1_000_003)  # class looks do not depend on n_images
    looks = [dict(freq=class_rng.uniform(2, 8), angle=class_rng.uniform(0, np.pi), colour=class_rng.uniform(40, 215, 3))
             for _ in range(n_classes)]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for k in range(n_classes):
        (root / f"class_{k}").mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        k = i % n_classes
        img = _texture(looks[k], xx, yy, rng)
        ext = "jpg" if fmt == "jpg" else "png"
        Image.fromarray(img).save(root / f"class_{k}" / f"{i:06d}.{ext}", quality=90)
    marker.write_text(json.dumps(params))
    return root


def _texture(look: dict, xx: np.ndarray, yy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    angle = look["angle"] + rng.normal(0, 0.15)
    freq = look["freq"] * rng.uniform(0.8, 1.25)
    phase = rng.uniform(0, 2 * np.pi)
    grating = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
    blobs = np.zeros_like(xx)
    for _ in range(3):  # a few smooth bright/dark patches, like fields or water
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.3)
        blobs += rng.choice([-1, 1]) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    shade = 0.35 * grating + 0.25 * blobs
    colour = look["colour"] * rng.uniform(0.85, 1.15, 3)
    img = colour[None, None, :] * (1 + shade[..., None]) + rng.normal(0, 6, xx.shape + (3,))
    return np.clip(img, 0, 255).astype(np.uint8)
