"""`fastdino finetune classify|multilabel|change` end to end on generated data in the datasets' layouts (a random
ViT-Tiny/8 checkpoint, 32 px, a few steps), resume, the backbone sources and the errors a user meets first."""

import json

import pytest
import torch
from _eval_fixtures import make_checkpoint, make_image_folder, one_thread  # noqa: F401 (autouse)
from _finetune_fixtures import bigearthnet_patches, make_bigearthnet, make_oscd, write_band, write_lists

from fastdino.cli import main
from fastdino.finetune import change, classify, common, multilabel
from fastdino.finetune.backbones import load_backbone

SMALL = ["--img-size", "32", "--batch-size", "4", "--num-workers", "0", "--log-every", "1"]


@pytest.fixture
def checkpoint(tmp_path):
    return make_checkpoint(tmp_path / "run", img_size=32)


def teacher_backbone_state(checkpoint) -> dict:
    teacher = torch.load(checkpoint, weights_only=True)["teacher"]
    return {k[len("backbone."):]: v for k, v in teacher.items() if k.startswith("backbone.")}


def image_lists(root):
    make_image_folder(root, n_classes=3, per_class=6, size=32)
    return write_lists(root, {f"class{c}/img{i}.png": "train" if i < 3 else "val" if i < 5 else "test"
                              for c in range(3) for i in range(6)})


def classify_args(root, lists, checkpoint, out, *extra):
    return ["finetune", "classify", "--checkpoint", str(checkpoint), "--data", str(root),
            "--train-list", str(lists["train"]), "--val-list", str(lists["val"]), "--test-list", str(lists["test"]),
            "--output", str(out), *SMALL, *extra]


def test_presets_are_dino_mc_defaults():
    # main_eurosat.py L101-107, L261-266; main_bigearthnet.py L124-132, L283-288, L87; main_oscd.py L100-103, L117-119
    assert classify.PRESET == {"epochs": 100, "batch_size": 32, "base_lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9,
                               "img_size": 224, "drop_path": 0.0, "seed": 0}
    assert {k: multilabel.PRESET[k] for k in ("epochs", "batch_size", "base_lr", "weight_decay", "img_size", "seed",
                                              "normalize")} == {"epochs": 100, "batch_size": 32, "base_lr": 1e-5,
                                                                "weight_decay": 0.0, "img_size": 224, "seed": 42,
                                                                "normalize": "none"}
    assert {k: change.PRESET[k] for k in ("epochs", "batch_size", "base_lr", "weight_decay", "img_size",
                                          "train_backbone")} == {"epochs": 50, "batch_size": 32, "base_lr": 3e-3,
                                                                 "weight_decay": 1e-4, "img_size": 96,
                                                                 "train_backbone": False}


def test_classify_end_to_end(tmp_path, checkpoint, capsys):
    lists = image_lists(tmp_path / "data")
    out = tmp_path / "ft"
    assert main(classify_args(tmp_path / "data", lists, checkpoint, out, "--epochs", "2", "--lr", "0.5")) == 0
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.startswith("model"))
    assert header.split()[-2:] == ["top-1", "top-5"]  # `fastdino eval`'s table
    assert "classify 2 ep" in printed and "eta" in printed
    result = json.loads((out / "metrics.json").read_text())
    matrix = torch.tensor(result["confusion_matrix"])
    assert result["n_test"] == 3 == matrix.sum()
    assert result["top1"] == pytest.approx(100 * matrix.trace().item() / 3)
    assert [r["epoch"] for r in result["history"]] == [1, 2] and "val_top1" in result["history"][-1]
    assert (out / "confusion_matrix.png").stat().st_size > 0 and (out / "config.json").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert saved["epoch"] == 2 and saved["classes"] == ["class0", "class1", "class2"]
    # Every backbone parameter was fine-tuned, not only the head.
    key = "blocks.0.attn.qkv.weight"
    assert not torch.equal(saved["model"][f"backbone.timm_model.{key}"], teacher_backbone_state(checkpoint)[
        f"timm_model.{key}"])


def test_resume_continues_an_interrupted_run_exactly(tmp_path, checkpoint, monkeypatch, capsys):
    lists = image_lists(tmp_path / "data")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(classify_args(tmp_path / "data", lists, checkpoint, straight, "--epochs", "2")) == 0
    original = common.save_state

    def interrupted(output, **kwargs):
        original(output, **kwargs)
        if kwargs["epoch"] == 1:
            raise KeyboardInterrupt("killed after epoch 1")

    monkeypatch.setattr(common, "save_state", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(classify_args(tmp_path / "data", lists, checkpoint, resumed, "--epochs", "2"))
    monkeypatch.setattr(common, "save_state", original)
    assert main(classify_args(tmp_path / "data", lists, checkpoint, resumed, "--epochs", "2")) == 2
    assert "is not empty: pass --resume" in capsys.readouterr().err
    assert main(classify_args(tmp_path / "data", lists, checkpoint, resumed, "--epochs", "2", "--resume")) == 0
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]


def test_resume_trains_on_the_saved_split_not_the_command_lines(tmp_path, checkpoint, capsys):
    # --resume keeps the saved recipe (train list, --train-frac, seed); the data must follow it, not only the
    # optimiser: a resumed run that forgot `--train-frac 0.1` must not silently train on the whole split.
    patches = bigearthnet_patches(12)
    names = list(patches)
    root = make_bigearthnet(tmp_path / "ben", patches, lists={"train": names[:8], "test": names[10:]})
    out = tmp_path / "ml"
    args = ["finetune", "multilabel", "--checkpoint", str(checkpoint), "--data", str(root), "--epochs", "1",
            "--output", str(out), *SMALL]
    assert main([*args, "--train-frac", "0.5"]) == 0
    assert main([*args, "--resume"]) == 0  # nothing left to train: scores the test split again
    assert "'train_frac': (0.5, 1.0)" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["n_train"] == 4

    lists = image_lists(tmp_path / "data")
    out = tmp_path / "cl"
    assert main(classify_args(tmp_path / "data", lists, checkpoint, out, "--epochs", "1")) == 0
    assert main([*classify_args(tmp_path / "data", lists, checkpoint, out, "--epochs", "1", "--resume"),
                 "--train-list", str(lists["val"])]) == 0
    assert json.loads((out / "metrics.json").read_text())["n_train"] == 9  # train.txt's 3 x 3, not val.txt's 6


def test_classify_rejects_a_test_class_missing_from_train(tmp_path, checkpoint, capsys):
    lists = image_lists(tmp_path / "data")
    (tmp_path / "data" / "class7").mkdir()
    (tmp_path / "data" / "class7" / "x.png").write_bytes((tmp_path / "data" / "class0" / "img5.png").read_bytes())
    lists["test"].write_text("class7/x.png\n")
    assert main(classify_args(tmp_path / "data", lists, checkpoint, tmp_path / "ft", "--epochs", "1")) == 2
    assert "unknown class 'class7'" in capsys.readouterr().err
    assert not (tmp_path / "ft").exists()  # refused before any work


def test_overlapping_splits_are_refused_naming_both_lists(tmp_path, checkpoint, capsys):
    lists = image_lists(tmp_path / "data")
    lists["test"].write_text(lists["test"].read_text() + "class1/img0.png\n")  # a training image
    assert main(classify_args(tmp_path / "data", lists, checkpoint, tmp_path / "ft", "--epochs", "1")) == 2
    err = capsys.readouterr().err
    assert "img0.png' is in both the train split" in err and str(lists["train"]) in err and str(lists["test"]) in err
    assert not (tmp_path / "ft").exists()

    patches = bigearthnet_patches(6)
    names = list(patches)
    root = make_bigearthnet(tmp_path / "ben", patches, lists={"train": names[:4], "test": names[3:]})
    assert main(["finetune", "multilabel", "--checkpoint", str(checkpoint), "--data", str(root), "--epochs", "1",
                 "--output", str(tmp_path / "ml"), *SMALL]) == 2
    assert f"patch '{names[3]}' is in both the train split" in capsys.readouterr().err

    root = make_oscd(tmp_path / "oscd", {"a": (40, 50), "b": (36, 30)}, train=["a"], test=["b"])
    (root / "Onera Satellite Change Detection dataset - Images" / "train.txt").write_text("a,b")
    assert main(["finetune", "change", "--checkpoint", str(checkpoint), "--data", str(root), "--epochs", "1",
                 "--output", str(tmp_path / "ch"), *SMALL]) == 2
    assert "city 'b' is in both the train split" in capsys.readouterr().err


def test_multilabel_end_to_end_with_train_fraction(tmp_path, checkpoint, capsys):
    patches = bigearthnet_patches(12)
    names = list(patches)
    root = make_bigearthnet(tmp_path / "ben", patches, lists={"train": names[:8], "val": names[8:10],
                                                              "test": names[10:]})
    out = tmp_path / "ft"
    args = ["finetune", "multilabel", "--checkpoint", str(checkpoint), "--data", str(root), "--train-frac", "0.5",
            "--epochs", "1", "--output", str(out), *SMALL]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "micro mAP" in printed
    result = json.loads((out / "metrics.json").read_text())
    assert result["n_train"] == 4 and result["n_test"] == 2 and result["train_frac"] == 0.5
    assert 0 <= result["micro_ap"] <= 100
    for name, ap in result["per_class_ap"].items():  # undefined exactly where the test split has no positive
        assert (ap is None) == (result["positives_per_class"][name] == 0)
    assert (out / "per_class_ap.png").stat().st_size > 0

    label_file = root / names[9] / f"{names[9]}_labels_metadata.json"
    label_file.unlink()
    assert main([*args, "--overwrite"]) == 2
    assert f"label file {label_file} does not exist" in capsys.readouterr().err


def test_change_end_to_end_with_validation_cities(tmp_path, checkpoint, capsys):
    root = make_oscd(tmp_path / "oscd", {"a": (40, 50), "b": (36, 30), "c": (33, 41)}, train=["a", "b"], test=["c"])
    (tmp_path / "val.txt").write_text("b")
    out = tmp_path / "ft"
    args = ["finetune", "change", "--checkpoint", str(checkpoint), "--data", str(root), "--val-list",
            str(tmp_path / "val.txt"), "--epochs", "1", "--output", str(out), *SMALL]
    assert main(args) == 0
    assert "F1" in capsys.readouterr().out
    result = json.loads((out / "metrics.json").read_text())
    assert result["cities"] == {"train": ["a"], "val": ["b"], "test": ["c"]}
    assert result["n_train_tiles"] == 4  # 40 x 50 in 32 px tiles: 2 x 2
    assert result["tp"] + result["fp"] + result["fn"] + result["tn"] == 33 * 41  # every real pixel, once
    assert "val_f1" in result["history"][0] and (out / "change_masks.png").stat().st_size > 0
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]
    teacher = teacher_backbone_state(checkpoint)
    assert all(torch.equal(saved[f"encoder.backbone.{k}"], v) for k, v in teacher.items())  # frozen, as DINO-MC
    # --resume reads the saved run's images (--source bands; this data set has no imgs_*_rect to read).
    assert main([*args, "--resume", "--source", "rect"]) == 0
    assert "'source_images': ('bands', 'rect')" in capsys.readouterr().err

    images = root / "Onera Satellite Change Detection dataset - Images"
    for band in ("B02", "B03", "B04"):
        write_band(next((images / "c" / "imgs_2").glob(f"*_{band}.tif")), torch.ones(33, 40).numpy())
    assert main([*args, "--overwrite"]) == 2
    assert "city 'c': mismatched image pair" in capsys.readouterr().err


def test_backbone_sources_exported_and_random_init(tmp_path, checkpoint):
    from fastdino.models.export import export_teacher

    weights, _, _ = export_teacher(checkpoint, tmp_path / "exp" / "backbone.safetensors")
    exported = load_backbone(weights)
    teacher = teacher_backbone_state(checkpoint)
    state = exported.backbone.state_dict()
    assert exported.arch == "vit_tiny" and exported.checkpoint_epoch == 3 and not exported.random_init
    assert all(torch.equal(state[k], v) for k, v in teacher.items())
    from fastdino.eval.teacher import random_init_like

    # The same untrained backbone `fastdino eval --random-init --seed S` reads against.
    random = load_backbone(checkpoint, random_init=True, seed=1)
    assert random.random_init and random.state == "random init" and random.arch == "vit_tiny"
    config = torch.load(checkpoint, weights_only=True)["config"]
    assert all(torch.equal(v, random_init_like(config, 1).state_dict()[k])
               for k, v in random.backbone.state_dict().items())
    assert not torch.equal(random.backbone.state_dict()["timm_model.pos_embed"], teacher["timm_model.pos_embed"])
    with pytest.raises(ValueError, match="--random-init without --checkpoint needs --arch"):
        load_backbone(None, random_init=True)
