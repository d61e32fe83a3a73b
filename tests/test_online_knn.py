"""The online k-NN monitor (fastdino.eval.online): the same features and accuracy as `fastdino eval knn`, the same
numbers from 2 gloo ranks as from one process (no rank left waiting), config errors before training, and the
records in metrics.jsonl and curves.png of a training run."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from _eval_fixtures import make_image_folder, one_thread  # noqa: F401 (autouse fixture)
from PIL import Image

from fastdino.config import ConfigError
from fastdino.distributed import DistInfo
from fastdino.eval.features import EvalTransform, ImageDataset, extract_features
from fastdino.eval.knn import knn_accuracy
from fastdino.eval.online import OnlineKNN, bank_subset, decode_images, embed
from fastdino.models import create_backbone
from fastdino.run_config import load_config

CPU = torch.device("cpu")


def _lists(tmp_path, n_classes=3, per_class=7, size=24):
    """A labelled folder and two lists over it (odd sizes: shares across ranks are uneven)."""
    root = make_image_folder(tmp_path / "data", n_classes=n_classes, per_class=per_class, size=size)
    paths = sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))
    train, val = paths[::2], paths[1::2]
    (tmp_path / "train.txt").write_text("\n".join(train) + "\n")
    (tmp_path / "val.txt").write_text("\n".join(val) + "\n")
    return root, tmp_path / "train.txt", tmp_path / "val.txt"


def _config(root, train_list, val_list, *extra):
    return load_config("tiny", overrides=[
        "run.device=cpu", f"data.path={root}", "model.patch_size=8", "model.img_size=16",
        "augment.global_views=[{size: 16, scale: [0.32, 1.0]}, {size: 16}]",
        "augment.local_views=[{size: 8, interpolation: bilinear}]",
        f"eval.knn_train={train_list}", f"eval.knn_val={val_list}", "eval.knn_k=3", *extra])


def _backbone(config):
    torch.manual_seed(0)
    return create_backbone(arch="vit_tiny", patch_size=8, img_size=config.model.img_size).eval()


def test_cached_images_give_the_features_of_fastdino_eval(tmp_path):
    root, _, _ = _lists(tmp_path, size=21)  # 21 px -> resized to 16 px, bicubic
    paths = sorted(root.rglob("*.png"))
    transform = EvalTransform(16, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    backbone = create_backbone(arch="vit_tiny", patch_size=8, img_size=16).eval()
    cached = embed(backbone, decode_images(paths, transform), transform, CPU, batch_size=5)
    offline, _ = extract_features(backbone, ImageDataset(paths, None, transform), batch_size=4)
    torch.testing.assert_close(cached, offline, rtol=1e-5, atol=1e-5)


def test_monitor_accuracy_equals_knn_on_the_same_bank(tmp_path):
    root, train_list, val_list = _lists(tmp_path)
    config = _config(root, train_list, val_list, "eval.knn_bank_size=0")
    monitor = OnlineKNN.from_config(config, CPU)
    backbone = _backbone(config)
    rec = monitor.evaluate(backbone, epoch=0, iteration=9)

    from fastdino.eval.splits import load_split

    split = load_split(root, train_list, val_list)
    transform = EvalTransform(16, tuple(config.augment["mean"]), tuple(config.augment["std"]))
    xtr, ytr = extract_features(backbone, ImageDataset(split["train_paths"], split["train_labels"], transform))
    xte, yte = extract_features(backbone, ImageDataset(split["test_paths"], split["test_labels"], transform))
    want = knn_accuracy(xtr, ytr, xte, yte, 3, k=3)
    assert rec["knn_top1"] == pytest.approx(want["top1"]) and rec["knn_top5"] == pytest.approx(want["top5"])
    assert (rec["type"], rec["epoch"], rec["iteration"], rec["knn_bank"], rec["knn_val"]) == ("knn", 0, 9, 11, 10)
    assert rec["knn_seconds"] > 0 and rec["knn_total_seconds"] >= rec["knn_seconds"]


def test_bank_subset_is_stratified_and_seeded():
    labels = [0] * 60 + [1] * 30 + [2] * 10
    keep = bank_subset(labels, 20)
    assert keep == bank_subset(labels, 20) and len(keep) == 20
    assert [sum(labels[i] == c for i in keep) for c in range(3)] == [12, 6, 2]
    assert bank_subset(labels, 0) == list(range(100)) == bank_subset(labels, 500)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, config, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        monitor = OnlineKNN.from_config(config, CPU, DistInfo(rank, 0, world))
        rec = monitor.evaluate(_backbone(config), epoch=1)
        shares = [len(monitor.bank_images), len(monitor.val_images)]
        torch.save({"rec": rec, "shares": shares}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_give_the_numbers_of_one_process(tmp_path):
    root, train_list, val_list = _lists(tmp_path)  # 11 bank, 10 val images: the ranks' bank shares differ
    config = _config(root, train_list, val_list, "eval.knn_bank_size=0")
    mp.spawn(_rank_main, args=(2, _free_port(), config, str(tmp_path / "rec")), nprocs=2, join=True)
    one = OnlineKNN.from_config(config, CPU).evaluate(_backbone(config), epoch=1)
    ranks = [torch.load(f"{tmp_path / 'rec'}.{r}", weights_only=False) for r in (0, 1)]
    assert [r["shares"] for r in ranks] == [[6, 5], [5, 5]]  # each rank decoded and embedded only its share
    for r in ranks:
        for key in ("knn_top1", "knn_top5", "knn_val", "knn_bank"):
            assert r["rec"][key] == pytest.approx(one[key]), key


def test_config_errors_name_the_key(tmp_path):
    root, train_list, val_list = _lists(tmp_path)
    assert OnlineKNN.from_config(load_config("tiny", overrides=["run.device=cpu"]), CPU) is None
    with pytest.raises(ValueError, match="eval.knn_train is set but eval.knn_val is not"):
        OnlineKNN.from_config(load_config("tiny", overrides=[f"eval.knn_train={train_list}"]), CPU)
    with pytest.raises(FileNotFoundError, match="eval.knn_val=.*nope.txt: no such file"):
        OnlineKNN.from_config(_config(root, train_list, tmp_path / "nope.txt"), CPU)
    bad = tmp_path / "bad.txt"
    bad.write_text("class0/img0.png\nclass9/missing.png\n")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        OnlineKNN.from_config(_config(root, train_list, bad), CPU)
    with pytest.raises(ConfigError, match="eval.knn_every=0"):
        load_config("tiny", overrides=["eval.knn_every=0"])
    with pytest.raises(ConfigError, match="eval.knn_bank_size=-1"):
        load_config("tiny", overrides=["eval.knn_bank_size=-1"])


def test_corrupt_image_in_a_list_stops_before_training_with_its_path(tmp_path):
    root, train_list, val_list = _lists(tmp_path)
    (root / "class1" / "img2.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="img2.png does not decode"):
        OnlineKNN.from_config(_config(root, train_list, val_list), CPU)


def test_training_run_logs_knn_every_epoch_and_plots_it(tmp_path):
    from fastdino.train import train

    root, train_list, val_list = _lists(tmp_path)
    config = _config(root, train_list, val_list, "run.epochs=2", "run.batch_size=4", "run.log_every=1",
                     "data.backend=torch", "data.num_threads=0", "model.out_dim=64", "model.hidden_dim=32",
                     "model.bottleneck_dim=16", "optim.warmup_epochs=1")
    lines = []
    train(config, tmp_path / "run", echo=lines.append)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    knn = [r for r in records if r["type"] == "knn"]
    assert [r["epoch"] for r in knn] == [0, 1]
    steps = [r for r in records if r["type"] == "step"]
    assert knn[-1]["iteration"] == steps[-1]["iteration"]  # plotted at the epoch's last step
    assert all(0 <= r["knn_top1"] <= 100 for r in knn)
    assert sum("k-NN top-1" in line for line in lines) == 2 and any("online k-NN: bank 11" in x for x in lines)
    with Image.open(tmp_path / "run" / "plots" / "curves.png") as im:
        assert im.size == (1000, 700)


def test_knn_every_steps_adds_mid_epoch_points(tmp_path):
    # a one-epoch run gets a curve: evaluations after steps 4 and 8 inside the epoch (21 images at batch 2: 10
    # steps), then at the epoch's end
    from fastdino.train import train

    root, train_list, val_list = _lists(tmp_path)
    config = _config(root, train_list, val_list, "run.epochs=1", "run.batch_size=2", "run.log_every=1",
                     "data.backend=torch", "data.num_threads=0", "model.out_dim=64", "model.hidden_dim=32",
                     "model.bottleneck_dim=16", "optim.warmup_epochs=0.5", "eval.knn_every_steps=4")
    lines = []
    train(config, tmp_path / "run", echo=lines.append)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    knn = [r for r in records if r["type"] == "knn"]
    assert [(r["iteration"], r.get("mid_epoch", False)) for r in knn] == [(3, True), (7, True), (9, False)]
    assert sum("step 4  k-NN top-1" in line or "step 8  k-NN top-1" in line for line in lines) == 2
    assert any("every 1 epoch(s) and every 4 steps" in line for line in lines)
    with pytest.raises(ConfigError, match="eval.knn_every_steps=-1"):
        load_config("tiny", overrides=["eval.knn_every_steps=-1"])
