"""The training curves of a run as one PNG: RUN/metrics.jsonl -> the total loss and its logged terms (DINO, KoLeo,
iBOT: fastdino.loss_terms), with the online k-NN accuracy when the run logged it; learning rate (and weight decay),
teacher momentum and teacher temperature against the iteration. `plot_curves(run_dir, out_png)` is what the trainer
and `fastdino viz curves` call.
"""

from __future__ import annotations

import math
from pathlib import Path

from fastdino.loss_terms import TERM_LABELS, TOTAL, TOTAL_LABEL, term_label

from .metrics import read_metrics

CURVES = (  # (metrics.jsonl key, panel title, log scale)
    (TOTAL, TOTAL_LABEL, False),
    ("lr", "learning rate", True),
    ("momentum", "teacher momentum", False),
    ("teacher_temp", "teacher temperature", False),
)
# the loss terms beside the total (blue) and the k-NN accuracy (green), in the order of fastdino.loss_terms
TERM_COLOURS = ("tab:orange", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def plot_curves(run_dir: str | Path, out_png: str | Path, *, dpi: int = 100) -> Path:
    """The total loss (+ its terms), lr (+ weight decay), teacher momentum and teacher temperature from
    RUN/metrics.jsonl -> a 1000x700 PNG."""
    import matplotlib  # heavy and only for the picture: imported when one is drawn

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
