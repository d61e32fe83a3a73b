"""DINO's attention maps as a PNG grid: the last block's CLS-to-patch attention of the teacher, one panel per head
(plus their mean), each overlaid on the image, in one grid whose size follows from the panel size (`fastdino viz
attention`; the trainer's TensorBoard picture is `attention_picture`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from fastdino.dataloading.band_files import prepared_root, rgb_composite
from fastdino.eval.features import EvalTransform, load_image
from fastdino.eval.teacher import load_teacher
from fastdino.run_folder import run_folder_of

PANEL_GAP = 4  # px between grid panels
LABEL_HEIGHT = 14  # px of caption strip above each panel


def attention_figure(
    checkpoint: Path, image: Path, output: Path | None = None, image_size: int | None = None, panel_size: int = 192
) -> Path:
    """Load the teacher, compute its last-block CLS attention on `image` and save the grid PNG."""
    if not Path(checkpoint).exists():  # checked before the image, so each error names its own option
        raise FileNotFoundError(f"--checkpoint {checkpoint} does not exist (expected RUN/checkpoints/last.pt)")
    if not Path(image).is_file():
        raise FileNotFoundError(f"--image {image} does not exist")
    backbone, config = load_teacher(checkpoint)
    grid = attention_picture(backbone.eval(), config, image, image_size, panel_size)
    if output is None:
        output = run_folder_of(checkpoint) / "plots" / f"attention_{Path(image).stem}.png"
    return _save(grid, output)


def attention_picture(backbone: torch.nn.Module, config: dict, image: Path, image_size: int | None = None,
                      panel_size: int = 192) -> Image.Image:
    """The attention grid of `backbone` (a ViT, in the mode the caller chose) on `image`, prepared as `fastdino eval`
    prepares images for a backbone trained with `config` (a resolved config dict). The trainer calls it on the
    teacher every epoch for TensorBoard, on the teacher's device."""
    if not hasattr(backbone, "last_cls_attention"):
        raise ValueError(f"arch {config.get('model', {}).get('arch')!r} has no attention maps: only ViT backbones do")
    transform = EvalTransform.from_config(config, image_size, prepared_root(image))
    if hasattr(transform, "load"):  # multispectral: the model sees every band; the picture is B4, B3, B2
        bands = transform.load(image)
        picture, model_input = Image.fromarray(rgb_composite(bands, transform.bands)), transform(bands)
    else:
        picture = load_image(image).convert("RGB")
        model_input = transform(picture)
    device = next(backbone.parameters()).device
    with torch.no_grad():
        attn = backbone.last_cls_attention(model_input[None].to(device))[0].float().cpu()  # [heads, h, w]
    shown = picture.resize((transform.size, transform.size), Image.BICUBIC)  # what the backbone saw
    return attention_grid(shown, attn, panel_size)


def attention_grid(image: Image.Image, attn: torch.Tensor, panel_size: int = 192) -> Image.Image:
    """One image: the input, the mean over heads, then each head; attention [heads, h, w] as a heat overlay."""
    from matplotlib import colormaps  # heavy and only for the picture: imported when one is drawn

    if attn.ndim != 3:
        raise ValueError(f"attention must be [heads, h, w], got {tuple(attn.shape)}")
    heads = attn.shape[0]
    maps = torch.cat([attn.mean(0, keepdim=True), attn]).float()
    # Upsample the patch grid to the panel, then stretch each map to [0, 1] so every head is readable.
    maps = F.interpolate(maps[:, None], size=(panel_size, panel_size), mode="nearest")[:, 0]
    lo, hi = maps.flatten(1).min(1).values, maps.flatten(1).max(1).values
    maps = ((maps - lo[:, None, None]) / (hi - lo).clamp_min(1e-12)[:, None, None]).numpy()
    base = np.asarray(image.convert("RGB").resize((panel_size, panel_size), Image.BICUBIC), dtype=np.float32)
    heat = colormaps["inferno"](maps)[..., :3] * 255.0
    panels = [("image", base)] + [
        (("mean" if i == 0 else f"head {i - 1}"), 0.45 * base + 0.55 * heat[i]) for i in range(heads + 1)
    ]
    cols = grid_columns(len(panels))
    width, height = grid_size(len(panels), panel_size, cols)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (caption, pixels) in enumerate(panels):
        x = PANEL_GAP + (i % cols) * (panel_size + PANEL_GAP)
        y = PANEL_GAP + (i // cols) * (panel_size + LABEL_HEIGHT + PANEL_GAP)
        draw.text((x, y), caption, fill="black")
        canvas.paste(Image.fromarray(pixels.clip(0, 255).astype(np.uint8)), (x, y + LABEL_HEIGHT))
    return canvas


def grid_columns(n_panels: int, max_cols: int = 8) -> int:
    """Columns of the panel grid: one row up to `max_cols` panels (ViT-S: image + mean + 6 heads), else rows
    of equal length (ViT-B: 2 x 7)."""
    rows = math.ceil(n_panels / max_cols)
    return math.ceil(n_panels / rows)


def grid_size(n_panels: int, panel_size: int, cols: int) -> tuple[int, int]:
    """(width, height) in px of a grid of `n_panels` captioned panels in `cols` columns."""
    rows = math.ceil(n_panels / cols)
    return (
        PANEL_GAP + cols * (panel_size + PANEL_GAP),
        PANEL_GAP + rows * (panel_size + LABEL_HEIGHT + PANEL_GAP),
    )


def _save(image: Image.Image, output: Path) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    image.save(output, format="PNG")
    return output
