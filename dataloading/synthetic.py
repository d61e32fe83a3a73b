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


# ----------------------------------------------------------------------------------------------------------
# The demo dataset: labelled shape classes for the default run's online k-NN

DEMO_CLASSES = ("stripes-horizontal", "stripes-vertical", "checkerboard", "dots", "rings")
DEMO_TRAIN_LIST, DEMO_VAL_LIST = "train.txt", "val.txt"
_DEMO_MARKER = "demo.json"


def make_demo_dataset(root, *, n_train: int, n_val: int, size: int, seed: int = 0) -> Path:
    """Labelled demo images, `<root>/<class>/<split>_<i>.png` for the classes of DEMO_CLASSES, and the lists
    `<root>/train.txt` (n_train images: what the demo trains on, and the k-NN memory bank) and `<root>/val.txt`
    (n_val held-out images the k-NN scores), paths relative to root; returns the root.

    A class is a layout (stripes of one orientation, a checkerboard, dots, rings); colours, period, phase,
    position and a shading gradient are drawn per image, so a class has no colour of its own: a random-init
    backbone, which mostly sees colour, sorts them little better than chance, and a backbone must learn shapes
    to tell them apart. Classes take turns, so every split is balanced. Deterministic in the arguments; a root
    already holding exactly this dataset is left as it is."""
    if n_train < 1 or n_val < 1 or size < 8:
        raise ValueError(f"make_demo_dataset: need n_train >= 1, n_val >= 1, size >= 8; "
                         f"got n_train={n_train}, n_val={n_val}, size={size}")
    root = Path(root)
    params = dict(n_train=n_train, n_val=n_val, size=size, seed=seed, classes=list(DEMO_CLASSES))
    marker = root / _DEMO_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return root
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for name in DEMO_CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    for split, count, list_name in (("train", n_train, DEMO_TRAIN_LIST), ("val", n_val, DEMO_VAL_LIST)):
        entries = []
        for i in range(count):
            name = DEMO_CLASSES[i % len(DEMO_CLASSES)]
            entry = f"{name}/{split}_{i:05d}.png"  # png: jpeg's 8x8 blocks would blur the thin stripes
            Image.fromarray(demo_image(name, xx, yy, rng)).save(root / entry)
            entries.append(entry)
        (root / list_name).write_text("\n".join(entries) + "\n")
    marker.write_text(json.dumps(params))
    return root


def demo_image(name: str, xx: np.ndarray, yy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uint8 [H, W, 3] image of demo class `name` on the unit grid (xx, yy)."""
    pattern = _DEMO_PATTERNS[name](xx, yy, rng)[..., None]  # in [0, 1]: 0 background, 1 foreground
    # Colours drift across the image, so two crops of one image share its layout but not its colours: DINO
    # cannot match its views by colour alone and has to learn the shapes.
    drift = _colour_drift(xx, yy, rng)
    (bg0, fg0), (bg1, fg1) = _contrasting_colours(rng), _contrasting_colours(rng)
    background, foreground = bg0 + drift * (bg1 - bg0), fg0 + drift * (fg1 - fg0)
    img = background + pattern * (foreground - background)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def _colour_drift(xx: np.ndarray, yy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[H, W, 1] in [0, 1]: a ramp along a random direction, from one colour pair to the other."""
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle)  # in [-0.71, 0.71]
    return np.clip(0.5 + ramp / 1.42, 0, 1)[..., None]


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random RGB colours whose brightness differs by at least 60 (of 255), so the pattern stays visible."""
    while True:
        a, b = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
        if abs(a.mean() - b.mean()) >= 60:
            return a, b


def _period(rng: np.random.Generator) -> float:
    return rng.uniform(0.1, 0.22)  # of the image side: 6-14 px at 64 px, several periods in a 0.32-area crop


def _soft(wave: np.ndarray) -> np.ndarray:
    """A wave in [-1, 1] -> a pattern in [0, 1] with sharp-ish edges (stripes, not a pure sinusoid)."""
    return 0.5 * (1 + np.tanh(2 * wave))  # = sigmoid(4 * wave), without exp's overflow far from an edge


def _stripes(angle: float):
    def draw(xx, yy, rng):
        a = angle + rng.normal(0, 0.12)
        along = xx * np.sin(a) + yy * np.cos(a)  # angle 0: the value changes down the image, stripes lie flat
        return _soft(np.sin(2 * np.pi * along / _period(rng) + rng.uniform(0, 2 * np.pi)))
    return draw


def _checkerboard(xx, yy, rng):
    period, a = _period(rng) * 1.3, rng.uniform(-0.3, 0.3)
    u, v = xx * np.cos(a) + yy * np.sin(a), -xx * np.sin(a) + yy * np.cos(a)
    phase = rng.uniform(0, 2 * np.pi, 2)
    return _soft(np.sin(2 * np.pi * u / period + phase[0]) * np.sin(2 * np.pi * v / period + phase[1]) * 2)


def _dots(xx, yy, rng):
    pattern = np.zeros_like(xx)
    radius = rng.uniform(0.04, 0.08)
    for _ in range(rng.integers(8, 16)):
        cx, cy = rng.uniform(0, 1, 2)
        pattern = np.maximum(pattern, _soft(8 * (radius - np.hypot(xx - cx, yy - cy)) / radius))
    return pattern


def _rings(xx, yy, rng):
    cx, cy = rng.uniform(0.2, 0.8, 2)
    return _soft(np.sin(2 * np.pi * np.hypot(xx - cx, yy - cy) / _period(rng) + rng.uniform(0, 2 * np.pi)))


_DEMO_PATTERNS = {"stripes-horizontal": _stripes(0.0), "stripes-vertical": _stripes(np.pi / 2),
                  "checkerboard": _checkerboard, "dots": _dots, "rings": _rings}
