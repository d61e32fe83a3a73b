"""`fastdino viz attention|curves`: DINO's attention maps and the training curves as PNG files.

attention: the last block's CLS-to-patch attention of the teacher, one panel per head (plus their mean),
           each overlaid on the image, in one PNG grid whose size follows from the panel size.
curves:    RUN/metrics.jsonl -> the total loss and its logged terms (DINO, KoLeo, iBOT: fastdino.loss_terms),
           with the online k-NN accuracy when the run logged it; learning rate (and weight decay), teacher momentum
           and teacher temperature against the iteration.
           `plot_curves(run_dir, out_png)` is what the trainer calls.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from fastdino.loss_terms import TERM_LABELS, TOTAL, TOTAL_LABEL, term_label

PANEL_GAP = 4  # px between grid panels
LABEL_HEIGHT = 14  # px of caption strip above each panel
CURVES = (  # (metrics.jsonl key, panel title, log scale)
    (TOTAL, TOTAL_LABEL, False),
    ("lr", "learning rate", True),
    ("momentum", "teacher momentum", False),
    ("teacher_temp", "teacher temperature", False),
)
# the loss terms beside the total (blue) and the k-NN accuracy (green), in the order of fastdino.loss_terms
TERM_COLOURS = ("tab:orange", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", metavar="WHAT", required=True)
    att = sub.add_parser("attention", help="last-block CLS attention per head, overlaid on an image")
    att.add_argument("--checkpoint", required=True, type=Path,
                     help="a fastdino checkpoint (RUN/checkpoints/last.pt), a DINO / DINO-MC one, or a state dict")
    att.add_argument("--image", required=True, type=Path,
                     help="the image to look at (multispectral checkpoints: a multi-band TIFF or .npy, drawn as an "
                     "RGB composite of B4, B3, B2)")
    att.add_argument("--output", type=Path, help="PNG (default: RUN/plots/attention_<image stem>.png)")
    att.add_argument("--image-size", type=int, help="backbone input size (default: the config's global crop)")
    att.add_argument("--panel-size", type=int, default=192, help="side of each panel in the grid, in px")
    cur = sub.add_parser("curves", help="training curves of a run folder (metrics.jsonl) as one PNG")
    cur.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run folder holding metrics.jsonl")
    cur.add_argument("--output", type=Path, help="PNG (default: RUN_DIR/plots/curves.png)")


def run(args: argparse.Namespace) -> int:
    try:
        if args.what == "attention":
            out = attention_figure(args.checkpoint, args.image, args.output, args.image_size, args.panel_size)
        else:
            out = plot_curves(args.run_dir, args.output or args.run_dir / "plots" / "curves.png")
    except (FileNotFoundError, ValueError) as e:
        print(f"fastdino viz {args.what}: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


# --- attention -------------------------------------------------------------------------------------------
def attention_figure(
    checkpoint: Path, image: Path, output: Path | None = None, image_size: int | None = None, panel_size: int = 192
) -> Path:
    """Load the teacher, compute its last-block CLS attention on `image` and save the grid PNG."""
    from fastdino.eval.teacher import load_teacher

    if not Path(checkpoint).exists():  # checked before the image, so each error names its own option
        raise FileNotFoundError(f"--checkpoint {checkpoint} does not exist (expected RUN/checkpoints/last.pt)")
    if not Path(image).is_file():
        raise FileNotFoundError(f"--image {image} does not exist")
    backbone, config = load_teacher(checkpoint)
    grid = attention_picture(backbone.eval(), config, image, image_size, panel_size)
    if output is None:
        ckpt = Path(checkpoint)
        run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        output = run_dir / "plots" / f"attention_{Path(image).stem}.png"
    return _save(grid, output)


def attention_picture(backbone: torch.nn.Module, config: dict, image: Path, image_size: int | None = None,
                      panel_size: int = 192) -> Image.Image:
    """The attention grid of `backbone` (a ViT, in the mode the caller chose) on `image`, prepared as `fastdino eval`
    prepares images for a backbone trained with `config` (a resolved config dict). The trainer calls it on the
    teacher every epoch for TensorBoard, on the teacher's device."""
    from fastdino.dataloading.multispectral import prepared_root
    from fastdino.eval.features import EvalTransform, load_image

    if not hasattr(backbone, "last_cls_attention"):
        raise ValueError(f"arch {config.get('model', {}).get('arch')!r} has no attention maps: only ViT backbones do")
    transform = EvalTransform.from_config(config, image_size, prepared_root(image))
    if hasattr(transform, "load"):  # multispectral: the model sees every band; the picture is B4, B3, B2
        from fastdino.dataloading.multispectral import rgb_composite

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
    from matplotlib import colormaps

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


# --- curves ----------------------------------------------------------------------------------------------
def read_metrics(path: Path, kind: str = "step") -> list[dict]:
    """The records of one type ("step", or "knn" from the online k-NN monitor) of a metrics.jsonl; unreadable
    lines (a run killed mid-write) are skipped with a warning."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {path.parent} a fastdino run folder?")
    records, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict) and record.get("type", "step") == kind:
            records.append(record)
    if bad:
        print(f"warning: skipped {bad} unreadable line(s) of {path}", file=sys.stderr)
    return records


def plot_curves(run_dir: str | Path, out_png: str | Path, *, dpi: int = 100) -> Path:
    """The total loss (+ its terms), lr (+ weight decay), teacher momentum and teacher temperature from
    RUN/metrics.jsonl -> a 1000x700 PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window (the trainer calls this on headless nodes)
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    if not records:
        raise ValueError(f"{run_dir / 'metrics.jsonl'} has no step records to plot")
    knn = read_metrics(run_dir / "metrics.jsonl", "knn") if records else []
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), dpi=dpi)
    for ax, (key, title, log) in zip(axes.flat, CURVES, strict=True):
        _plot_key(ax, records, key, title, log, label=TOTAL_LABEL if key == TOTAL else None)
        if key == TOTAL:
            plot_loss_terms(ax, records, with_knn=bool(knn))
            if knn:  # the online k-NN monitor's accuracy, on the loss's iteration axis
                plot_knn(ax.twinx(), knn)
        if key == "lr" and any(_number(r.get("wd")) is not None for r in records):
            _plot_key(ax.twinx(), records, "wd", "", False, color="tab:orange", label="weight decay")
            ax.set_title("learning rate (blue), weight decay (orange)")
    fig.suptitle(f"{run_dir.resolve().name}: {len(records)} logged steps")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=dpi)
    plt.close(fig)
    return out_png


def plot_loss_terms(ax, records: list[dict], with_knn: bool = False) -> None:
    """The unweighted terms the run logged beside the total (every key of fastdino.loss_terms that the records hold,
    old runs' "koleo" and "ibot" included), each in its colour with a legend; the panel's title names the colours."""
    names = [name for name in TERM_LABELS if any(_number(r.get(name)) is not None for r in records)]
    for name, colour in zip(names, TERM_COLOURS, strict=False):
        _plot_key(ax, records, name, "", False, color=colour, label=term_label(name))
    title = TOTAL_LABEL
    if names or with_knn:
        title += " (blue)" + (" and its unweighted terms" if names else "")
    ax.set_title(title + (", online k-NN top-1 % (green)" if with_knn else ""))
    if names:
        ax.legend(loc="best", fontsize="small")


def plot_knn(ax, knn: list[dict]) -> None:
    """The online k-NN top-1 curve; the initial weights' level (the record logged before step 0, eval.knn_at_start)
    as a dashed line across the plot, so what training gained is read off at a glance."""
    _plot_key(ax, knn, "knn_top1", "", False, color="tab:green", label="k-NN top-1 (%)", marker="o")
    start = next((r for r in knn if r.get("at_start") and _number(r.get("knn_top1")) is not None), None)
    if start is not None:
        level = float(start["knn_top1"])
        name = "initial weights" if start.get("init_from") else "random init"
        ax.axhline(level, color="tab:green", linestyle="--", alpha=0.6, label=f"{name}: {level:.1f}%")
        ax.legend(loc="lower right", fontsize="small")


def _plot_key(ax, records, key, title, log, color="tab:blue", label=None, marker=None):
    points = [(_x(r, i), _number(r.get(key))) for i, r in enumerate(records)]
    points = [(x, y) for x, y in points if y is not None]
    if title:
        ax.set_title(title)
    ax.set_xlabel("iteration")
    if not points:
        ax.text(0.5, 0.5, f"no '{key}' in metrics.jsonl", ha="center", va="center", transform=ax.transAxes)
        return
    xs, ys = zip(*points, strict=True)
    ax.plot(xs, ys, color=color, label=label, marker=marker or ("." if len(xs) < 20 else None))
    if log and all(y > 0 for y in ys):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)


def _x(record: dict, index: int) -> float:
    x = _number(record.get("iteration"))
    return index if x is None else x


def _number(value) -> float | None:
    # NaN losses are kept out of the plot (they would blank the axis); missing keys are tolerated.
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _save(image: Image.Image, output: Path) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    image.save(output, format="PNG")
    return output
