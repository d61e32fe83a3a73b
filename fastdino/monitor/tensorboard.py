"""TensorBoard event files of a run (run.tensorboard=true, or `fastdino train --tensorboard`): RUN/tensorboard/.

Every numeric field of every metrics.jsonl record becomes a scalar tagged `<record type>/<field>` (step/loss,
step/lr, knn/knn_top1, epoch/loss, summary/img_per_s, ...), at the record's `iteration` (records without one, such as
the epoch and summary records, at the last iteration seen). The teacher's last-block attention picture
(attention_maps.py) is an image per finished epoch. The `tensorboard` package is optional (`pip install
'fastdino[tensorboard]'`) and imported only when the key is on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fastdino.config import ConfigError

from .attention_maps import attention_picture

TENSORBOARD_DIR = "tensorboard"  # inside the run folder
STEP_KEY = "iteration"  # the x axis of every scalar, so not a scalar itself
FLUSH_SECS = 30  # the writer's own flush period; records are also flushed as they come (a killed run loses none)


def require_tensorboard():
    """torch's SummaryWriter class, or a ConfigError that names the key and the install command."""
    try:  # optional (the tensorboard package): imported only when a run asks for it
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # torch.utils.tensorboard imports the tensorboard package
        raise ConfigError(f"run.tensorboard=true needs the tensorboard package ({e}): pip install "
                          "'fastdino[tensorboard]', or set run.tensorboard=false") from e
    return SummaryWriter


def numeric_fields(record: dict) -> dict[str, float]:
    """The fields of a metrics record that are numbers (not bools, not None, not strings), NaN and inf included:
    a NaN loss is worth seeing."""
    return {k: float(v) for k, v in record.items()
            if k != STEP_KEY and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardLog:
    """A SummaryWriter on RUN/tensorboard/. resume_step: the global step a resumed run restarts at; events the
    interrupted run wrote at or after it are hidden by TensorBoard (purge_step), so no curve doubles back."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None):
        writer_class = require_tensorboard()
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self.writer = writer_class(str(self.log_dir), purge_step=resume_step, flush_secs=FLUSH_SECS)
        self.last_step = resume_step or 0

    def record(self, record: dict) -> None:
        """One metrics.jsonl record as scalars `<type>/<field>`."""
        step = record.get(STEP_KEY)
        if isinstance(step, int) and not isinstance(step, bool):
            self.last_step = step
        kind = record.get("type", "step")
        for key, value in numeric_fields(record).items():
            self.writer.add_scalar(f"{kind}/{key}", value, self.last_step)
        self.writer.flush()

    def image(self, tag: str, picture: Image.Image, step: int) -> None:
        self.writer.add_image(tag, np.asarray(picture.convert("RGB")), step, dataformats="HWC")
        self.writer.flush()

    def attention(self, backbone, config: dict, image: str, step: int) -> None:
        """The attention picture of `backbone` on `image` (attention_maps.attention_picture), tagged "attention"."""
        self.image("attention", attention_picture(backbone, config, image), step)

    def close(self) -> None:
        self.writer.close()


def picture_file(source) -> str | None:
    """The image the attention picture shows: the source's first image file (None for a SeCo tree of band folders,
    which the attention picture cannot draw)."""
    paths = getattr(source, "paths", None) or []  # a shard folder has no image files to show
    return next((p for p in paths[:64] if Path(p).is_file()), None)
