"""The built-in demo (`fastdino train` without --data): labelled generated images, and a summary that shows what the
run learned (the online k-NN of the initial weights and of the trained teacher)."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from fastdino.dataloading.synthetic import DEMO_CLASSES, DEMO_TRAIN_LIST, DEMO_VAL_LIST, make_demo_dataset
from PIL import Image

from fastdino.cli import main
from fastdino.eval.splits import load_split
from fastdino.monitor.curves import plot_knn

matplotlib.use("Agg")

# a ViT-Tiny/8 on 16 px views, one thread, the demo dataset in tmp: as tests/test_cli_train.py
from tests.test_cli_train import SMALL, one_thread_and_cache  # noqa: E402, F401 (an autouse fixture)


def records(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def test_demo_dataset_has_balanced_classes_and_disjoint_lists(tmp_path):
    root = make_demo_dataset(tmp_path / "demo", n_train=12, n_val=7, size=24, seed=3)
    train = (root / DEMO_TRAIN_LIST).read_text().split()
    val = (root / DEMO_VAL_LIST).read_text().split()
    assert len(train) == 12 and len(val) == 7 and not set(train) & set(val)
    per_class = Counter(Path(p).parent.name for p in train)
    assert set(per_class) == set(DEMO_CLASSES) and max(per_class.values()) - min(per_class.values()) <= 1
    assert {Path(p).parent.name for p in val} == set(DEMO_CLASSES)
    for entry in train + val:
        with Image.open(root / entry) as image:
            assert image.mode == "RGB" and image.size == (24, 24)
    split = load_split(root, root / DEMO_TRAIN_LIST, root / DEMO_VAL_LIST)  # what the online k-NN reads
    assert split["classes"] == sorted(DEMO_CLASSES) and len(split["test_labels"]) == 7

    before = [(root / p).stat().st_mtime_ns for p in train]
    make_demo_dataset(tmp_path / "demo", n_train=12, n_val=7, size=24, seed=3)  # the same request: kept as it is
    assert [(root / p).stat().st_mtime_ns for p in train] == before


def test_demo_classes_share_no_colour(tmp_path):
    """A class is a layout, not a colour: its images' mean colours spread as widely as all images' do."""
    root = make_demo_dataset(tmp_path / "demo", n_train=100, n_val=1, size=24)
    means = {name: [] for name in DEMO_CLASSES}
    for entry in (root / DEMO_TRAIN_LIST).read_text().split():
        means[Path(entry).parent.name].append(np.asarray(Image.open(root / entry), dtype=np.float64).mean((0, 1)))
    spread_all = np.concatenate(list(means.values())).std(0).mean()
    for name, colours in means.items():
        assert np.std(colours, axis=0).mean() > 0.6 * spread_all, name


def test_demo_dataset_rejects_empty_splits(tmp_path):
    with pytest.raises(ValueError, match="n_val >= 1.*n_val=0"):
        make_demo_dataset(tmp_path / "demo", n_train=5, n_val=0, size=24)


def resolve(argv: list[str]):
    """The config `fastdino train ARGV` would train, without training."""
    import fastdino.cli.train as cli_train

    parser = argparse.ArgumentParser()
    cli_train.add_arguments(parser)
    config, _, demo = cli_train._prepare(parser.parse_args(argv))
    return config, demo


def view_sizes(config) -> tuple[list[int], list[int]]:
    augment = config.augment
    return ([g["size"] for g in augment["global_views"] for _ in range(g["count"])],
            [g["size"] for g in augment["local_views"] for _ in range(g["count"])])


def test_no_arguments_train_the_demo_recipe(tmp_path, monkeypatch):
    """`fastdino train` alone: small views, many steps, a teacher that follows the student and colour taken out of
    the views, so the k-NN gain shows within a minute on 2 CPU cores."""
    import fastdino.cli.train as cli_train

    monkeypatch.setattr(cli_train, "DEMO_IMAGES", 10)
    monkeypatch.setattr(cli_train, "DEMO_VAL_IMAGES", 5)
    config, demo = resolve(["--output", str(tmp_path / "run")])
    assert demo and config.preset == "tiny" and config.model.img_size == 32
    assert view_sizes(config) == ([32, 32], [16, 16, 16, 16])
    assert (config.run.epochs, config.optim.lr, config.loss.momentum_teacher) == (20, 4e-3, 0.95)
    assert config.loss.ibot_weight == 0 and config.eval.knn_every == 5 and config.eval.knn_at_start
    for view in config.augment["global_views"] + config.augment["local_views"]:
        assert view["jitter"][3] == 0.5 and view["grayscale_p"] == 0.5  # any hue, half the views grey

    # the user's flags and --set win over the recipe; the rest of it stays
    config, _ = resolve(["--output", str(tmp_path / "mine"), "--epochs", "2", "--set", "loss.momentum_teacher=0.99"])
    assert (config.run.epochs, config.loss.momentum_teacher, config.model.img_size) == (2, 0.99, 32)


def test_a_named_preset_on_the_demo_images_is_that_preset(tmp_path, monkeypatch):
    import fastdino.cli.train as cli_train

    monkeypatch.setattr(cli_train, "DEMO_IMAGES", 10)
    monkeypatch.setattr(cli_train, "DEMO_VAL_IMAGES", 5)
    config, demo = resolve(["--output", str(tmp_path / "run"), "--preset", "tiny"])
    assert demo and config.model.img_size == 64 and view_sizes(config) == ([64, 64], [48, 40, 32, 24])
    assert (config.run.epochs, config.loss.momentum_teacher, config.loss.ibot_weight) == (3, 0.996, 1.0)


def test_default_run_reports_knn_before_and_after_training(tmp_path, capsys, monkeypatch):
    import fastdino.cli.train as cli_train

    monkeypatch.setattr(cli_train, "DEMO_IMAGES", 10)
    monkeypatch.setattr(cli_train, "DEMO_VAL_IMAGES", 5)
    run = tmp_path / "run"
    assert main(["train", "--output", str(run), "--epochs", "1", "--batch-size", "5", *SMALL]) == 0
    out = capsys.readouterr().out
    knn = records(run, "knn")
    assert knn[0]["at_start"] and knn[0]["iteration"] == -1 and knn[0]["init_from"] is None
    assert not knn[-1].get("at_start") and knn[-1]["iteration"] == records(run, "step")[-1]["iteration"]
    assert all(r["knn_val"] == 5 and r["knn_bank"] == 10 for r in knn)
    (summary,) = records(run, "summary")
    assert 0 <= summary["knn_start_top1"] <= 100 and 0 <= summary["knn_top1"] <= 100
    assert (summary["knn_start_top1"], summary["knn_top1"]) == (knn[0]["knn_top1"], knn[-1]["knn_top1"])
    assert "before step 0  k-NN top-1" in out
    assert cli_train.demo_knn_line(summary["knn_start_top1"], summary["knn_top1"]) in out
    assert "random init" in out and "-> trained" in out and (run / "plots" / "curves.png").is_file()
    trained_on = (run / "config.yaml").read_text()
    assert DEMO_TRAIN_LIST in trained_on and "knn_at_start: true" in trained_on

    capsys.readouterr()
    assert main(["train", "--output", str(run), "--resume", "--epochs", "2"]) == 0  # the level is kept on resume
    out = capsys.readouterr().out
    assert "before step 0" not in out  # not measured again: read back from metrics.jsonl
    summary = records(run, "summary")[-1]
    assert summary["knn_start_top1"] == knn[0]["knn_top1"] and "% before training -> " in out


def test_knn_at_start_off_by_default_and_user_lists_win(tmp_path, capsys, monkeypatch):
    """Real data: no k-NN unless asked. The demo with the user's own eval lists: theirs are used as given."""
    import fastdino.cli.train as cli_train

    monkeypatch.setattr(cli_train, "DEMO_IMAGES", 10)
    monkeypatch.setattr(cli_train, "DEMO_VAL_IMAGES", 5)
    mine = make_demo_dataset(tmp_path / "mine", n_train=5, n_val=5, size=16, seed=9)
    run = tmp_path / "run"
    assert main(["train", "--output", str(run), "--epochs", "1", "--batch-size", "5", *SMALL,
                 f"eval.knn_train={mine / DEMO_TRAIN_LIST}", f"eval.knn_val={mine / DEMO_VAL_LIST}",
                 f"eval.knn_root={mine}"]) == 0
    knn = records(run, "knn")
    assert [r.get("at_start", False) for r in knn] == [False] and knn[0]["knn_bank"] == 5
    assert records(run, "summary")[0]["knn_start_top1"] is None
    assert "random init" not in capsys.readouterr().out


def test_curves_draw_the_initial_level_as_a_line():
    import matplotlib.pyplot as plt

    knn = [dict(type="knn", iteration=-1, knn_top1=31.2, at_start=True, init_from=None),
           dict(type="knn", iteration=9, knn_top1=58.4)]
    fig, ax = plt.subplots()
    plot_knn(ax, knn)
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["k-NN top-1 (%)"].get_ydata()) == [31.2, 58.4]
    level = lines["random init: 31.2%"]
    assert list(level.get_ydata()) == [31.2, 31.2] and level.get_linestyle() == "--"
    plt.close(fig)

    fig, ax = plt.subplots()
    plot_knn(ax, [dict(knn[0], init_from="teacher.pt"), knn[1]])  # --init-from: not a random init
    assert "initial weights: 31.2%" in [line.get_label() for line in ax.get_lines()]
    plt.close(fig)
