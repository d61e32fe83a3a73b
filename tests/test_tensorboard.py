"""TensorBoard logging (run.tensorboard, fastdino/monitor/tensorboard.py): a tiny run's event files, read back with
tensorboard's EventAccumulator, hold every numeric metrics.jsonl field at its iteration and an attention picture
per epoch; a resumed run hides what the interrupted one logged after its checkpoint; a missing package is a clear
error before any training."""

from __future__ import annotations

import io
import json
import sys

import pytest
from fastdino.dataloading import make_synthetic_dataset
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fastdino.config import ConfigError
from fastdino.monitor.tensorboard import TENSORBOARD_DIR, TensorBoardLog, numeric_fields
from fastdino.run_config import load_config
from fastdino.train import train
from tests.test_train import one_thread  # noqa: E402, F401 (an autouse fixture: one intra-op thread)


def tiny_config(tmp_path, *extra: str):
    """The tiny preset (KoLeo and iBOT terms included) on 16 px views of 8 generated images: 2 steps per epoch."""
    data = make_synthetic_dataset(tmp_path / "data", n_images=8, size=32)
    return load_config("tiny", overrides=[
        "run.device=cpu", f"data.path={data}", "model.patch_size=8", "model.img_size=16", "model.out_dim=64",
        "model.hidden_dim=32", "model.bottleneck_dim=16", "augment.global_views=[{size: 16}, {size: 16}]",
        "augment.local_views=[{size: 8, count: 2}]", "run.batch_size=4", "run.log_every=1", "data.backend=torch",
        "data.num_threads=0", *extra])


def read_events(run_dir) -> EventAccumulator:
    events = EventAccumulator(str(run_dir / TENSORBOARD_DIR), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


def scalar_points(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_run_logs_every_metrics_scalar_and_an_attention_picture_per_epoch(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(tmp_path, "run.epochs=2", "run.tensorboard=true"), run, echo=lambda m: None)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "step"]
    assert len(steps) == 4 and "koleo" in steps[0] and "ibot" in steps[0]
    events = read_events(run)
    scalars = set(events.Tags()["scalars"])
    for key in numeric_fields(steps[0]):  # every numeric field, not a chosen few
        assert f"step/{key}" in scalars, key
        points = scalar_points(events, f"step/{key}")
        assert [s for s, _ in points] == [r["iteration"] for r in steps], key
        assert [v for _, v in points] == pytest.approx([r[key] for r in steps], rel=1e-6), key  # float32 events
    assert {"epoch/loss", "summary/img_per_s", "summary/final_loss"} <= scalars
    assert [s for s, _ in scalar_points(events, "epoch/loss")] == [1, 3]  # at the epoch's last iteration
    pictures = events.Images("attention")
    assert [p.step for p in pictures] == [1, 3]  # one per finished epoch
    with Image.open(io.BytesIO(pictures[0].encoded_image_string)) as picture:
        # image + mean + 3 heads of a ViT-Tiny: 5 panels of 192 px (+ gaps and captions) in one row
        assert picture.size == (4 + 5 * (192 + 4), 4 + 192 + 14 + 4)


def test_tensorboard_is_off_by_default(tmp_path):
    assert load_config("tiny").run.tensorboard is False


def test_numeric_fields_keep_numbers_only():
    record = dict(type="step", iteration=7, loss=float("nan"), lr=1e-3, epoch=0, stopped=None, device="cpu",
                  mid_epoch=True, file="a.png")
    fields = numeric_fields(record)
    assert sorted(fields) == ["epoch", "loss", "lr"]  # iteration is the step axis; bools and strings are no scalars
    assert fields["lr"] == 1e-3 and fields["loss"] != fields["loss"]  # NaN kept: a NaN loss is worth seeing


def test_resume_hides_what_the_interrupted_run_logged_after_its_checkpoint(tmp_path):
    first = TensorBoardLog(tmp_path)
    for it in range(6):  # killed after step 5, its last checkpoint at step 3
        first.record(dict(type="step", iteration=it, loss=10.0 + it))
    first.close()
    resumed = TensorBoardLog(tmp_path, resume_step=3)
    for it in (3, 4):
        resumed.record(dict(type="step", iteration=it, loss=20.0 + it))
    resumed.record(dict(type="summary", steps=5))  # no iteration: at the last one seen
    resumed.close()
    events = read_events(tmp_path)
    assert scalar_points(events, "step/loss") == [(0, 10.0), (1, 11.0), (2, 12.0), (3, 23.0), (4, 24.0)]
    assert scalar_points(events, "summary/steps") == [(4, 5.0)]


def test_missing_tensorboard_package_is_a_clear_error_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if `tensorboard` were not installed
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"run.tensorboard=true needs the tensorboard package.*"
                                          r"pip install 'fastdino\[tensorboard\]'"):
        train(tiny_config(tmp_path, "run.epochs=1", "run.tensorboard=true"), run, echo=lambda m: None)
    assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()


def test_cli_flag_turns_it_on_and_overwrite_clears_the_old_events(tmp_path, monkeypatch, capsys):
    import fastdino.cli.train as cli_train
    from fastdino.cli import main

    monkeypatch.setattr(cli_train, "DEMO_IMAGES", 8)
    monkeypatch.setenv("FASTDINO_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    small = ["--output", str(run), "--epochs", "1", "--batch-size", "4", "--set", "model.patch_size=8",
             "model.img_size=16", "model.out_dim=64", "model.hidden_dim=32", "model.bottleneck_dim=16",
             "augment.global_views=[{size: 16}, {size: 16}]", "augment.local_views=[{size: 8, count: 2}]",
             "data.num_threads=0", "data.backend=torch", "run.log_every=1"]
    assert main(["train", "--tensorboard", *small]) == 0
    assert f"view with: tensorboard --logdir {run}" in capsys.readouterr().out
    assert len(list((run / TENSORBOARD_DIR).iterdir())) == 1
    assert main(["train", "--tensorboard", "--overwrite", *small]) == 0
    assert len(list((run / TENSORBOARD_DIR).iterdir())) == 1  # the first run's event file is gone
    assert len(read_events(run).Scalars("step/loss")) == 2


def test_a_failing_attention_picture_is_reported_once_and_the_run_goes_on(tmp_path, monkeypatch):
    import fastdino.monitor.tensorboard

    def broken(*args, **kwargs):
        raise RuntimeError("cannot draw")

    monkeypatch.setattr(fastdino.monitor.tensorboard, "attention_picture", broken)
    lines = []
    summary = train(tiny_config(tmp_path, "run.epochs=2", "run.tensorboard=true"), tmp_path / "run",
                    echo=lines.append)
    assert summary["steps"] == 4
    assert sum("attention picture of" in line and "cannot draw" in line for line in lines) == 1
    assert read_events(tmp_path / "run").Tags()["images"] == []
