"""What `fastdino finetune` starts from: every checkpoint `fastdino eval` reads (fastdino's, the original DINO /
DINO-MC code's, a bare state dict, an export), multispectral backbones in all three tasks, and scoring the test
list of a finished run (the recipe chosen on val) without training it again."""

import argparse
import json

import numpy as np
import pytest
import torch
from _eval_fixtures import make_checkpoint, make_image_folder, one_thread  # noqa: F401 (autouse)
from _finetune_fixtures import (
    bigearthnet_patches,
    make_bigearthnet,
    make_ms_checkpoint,
    make_oscd,
    write_band,
    write_lists,
)
from safetensors.torch import save_file

from fastdino.cli import main
from fastdino.finetune.backbones import load_backbone
from fastdino.finetune.data_bigearthnet import BigEarthNetDataset, BigEarthNetSplit

SMALL = ["--img-size", "32", "--batch-size", "4", "--num-workers", "0", "--log-every", "1"]
MS_BANDS = ["B4", "B3", "B2", "B8"]


@pytest.fixture
def checkpoint(tmp_path):
    return make_checkpoint(tmp_path / "run", img_size=32)


def networks(checkpoint) -> tuple[dict, dict]:
    """(teacher, student) backbone weights of a fastdino checkpoint, in timm's names."""
    saved = torch.load(checkpoint, weights_only=True)
    prefix = "backbone.timm_model."
    return tuple({k[len(prefix):]: v for k, v in saved[net].items() if k.startswith(prefix)}
                 for net in ("teacher", "student"))


def same_weights(loaded, expected: dict) -> bool:
    state = loaded.backbone.timm_model.state_dict()
    return state.keys() == expected.keys() and all(torch.equal(state[k], v) for k, v in expected.items())


def test_every_checkpoint_eval_reads(tmp_path, checkpoint):
    teacher, student = networks(checkpoint)
    # The original code's training checkpoint: MultiCropWrapper teacher, DDP(MultiCropWrapper) student, args.
    dino = tmp_path / "checkpoint.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in teacher.items()},
                "student": {f"module.backbone.{k}": v for k, v in student.items()},
                "epoch": 100, "args": argparse.Namespace(arch="vit_tiny", patch_size=8)}, dino)
    bare = tmp_path / "backbone.pth"
    torch.save(teacher, bare)
    bare_st = tmp_path / "backbone.safetensors"  # no metadata JSON beside it: read as a bare state dict
    save_file({k: v.contiguous() for k, v in teacher.items()}, str(bare_st))

    loaded = load_backbone(dino)
    assert same_weights(loaded, teacher) and loaded.arch == "vit_tiny" and loaded.state == "epoch 100"
    assert loaded.conversion["source"] == "dino" and loaded.conversion["which"] == "teacher"
    assert same_weights(load_backbone(dino, which="student"), student)
    assert same_weights(load_backbone(checkpoint, which="student"), student)
    for path in (bare, bare_st):
        loaded = load_backbone(path)
        assert same_weights(loaded, teacher) and loaded.conversion["source"] == "state_dict"
        assert loaded.state == "pretrained" and loaded.bands is None
    with pytest.raises(ValueError, match="not the requested arch='vit_small'"):
        load_backbone(dino, arch="vit_small")
    with pytest.raises(ValueError, match="not the requested patch_size=16"):
        load_backbone(checkpoint, patch_size=16)


def test_classify_fine_tunes_the_student_of_a_dino_checkpoint(tmp_path, checkpoint, capsys):
    teacher, student = networks(checkpoint)
    dino = tmp_path / "checkpoint.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in teacher.items()},
                "student": {f"module.backbone.{k}": v for k, v in student.items()}, "epoch": 100}, dino)
    root = tmp_path / "data"
    make_image_folder(root, n_classes=2, per_class=4, size=32)
    lists = write_lists(root, {f"class{c}/img{i}.png": "train" if i < 2 else "test" for c in range(2)
                               for i in range(4)})
    out = tmp_path / "ft"
    args = ["finetune", "classify", "--checkpoint", str(dino), "--checkpoint-key", "student", "--data", str(root),
            "--train-list", str(lists["train"]), "--test-list", str(lists["test"]), "--epochs", "1", "--lr", "0",
            "--output", str(out), *SMALL]
    assert main(args) == 0
    assert "DINO / DINO-MC training checkpoint, the 'student' network" in capsys.readouterr().out
    result = json.loads((out / "metrics.json").read_text())
    assert result["conversion"]["which"] == "student" and result["checkpoint_epoch"] == 100
    # lr 0: the fine-tuned backbone is still the student it started from.
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[f"backbone.timm_model.{k}"], v) for k, v in student.items())


def test_a_finished_run_scores_its_test_list_on_resume_without_training(tmp_path, checkpoint, capsys):
    root = tmp_path / "data"
    make_image_folder(root, n_classes=2, per_class=6, size=32)
    lists = write_lists(root, {f"class{c}/img{i}.png": ("train", "train", "val", "val", "test", "test")[i]
                               for c in range(2) for i in range(6)})
    out = tmp_path / "ft"
    base = ["finetune", "classify", "--checkpoint", str(checkpoint), "--data", str(root), "--train-list",
            str(lists["train"]), "--val-list", str(lists["val"]), "--epochs", "2", "--output", str(out), *SMALL]
    assert main(base) == 0
    chosen = json.loads((out / "metrics.json").read_text())
    assert chosen["scored_split"] == "val" and chosen["top1"] == chosen["history"][-1]["val_top1"]
    weights = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]
    capsys.readouterr()
    assert main([*base, "--test-list", str(lists["test"]), "--resume"]) == 0
    assert " it " not in capsys.readouterr().out  # no training step ran
    result = json.loads((out / "metrics.json").read_text())
    assert result["scored_split"] == "test" and result["n_test"] == 4 and result["test_list"] == str(lists["test"])
    assert result["history"] == chosen["history"]  # the val scores that chose the recipe are kept
    after = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(after[k], v) for k, v in weights.items())


# --- multispectral backbones ----------------------------------------------------------------------------------
def test_bigearthnet_bands_in_file_units_on_the_10m_grid(tmp_path):
    patches = bigearthnet_patches(2)
    names = list(patches)
    make_bigearthnet(tmp_path, patches, lists={"train": names}, size=24)
    coarse = np.arange(144).reshape(12, 12) * 10  # a 20 m band: half the 10 m grid
    write_band(tmp_path / names[0] / f"{names[0]}_B05.tif", coarse)
    split = BigEarthNetSplit.read(tmp_path, tmp_path / "train.txt")
    mean, std = [100.0, 200.0, 300.0], [10.0, 20.0, 30.0]
    x, _ = BigEarthNetDataset(split, 24, mean, std, bands=["B4", "B8", "B5"])[0]
    from PIL import Image

    raw = {b: np.asarray(Image.open(tmp_path / names[0] / f"{names[0]}_{b}.tif"), dtype=np.float32)
           for b in ("B04", "B08")}
    assert x.shape == (3, 24, 24)
    torch.testing.assert_close(x[0], torch.from_numpy((raw["B04"] - 100) / 10))
    torch.testing.assert_close(x[1], torch.from_numpy((raw["B08"] - 200) / 20))
    # nearest neighbour: each 20 m pixel covers 2 x 2 pixels of the 10 m grid
    torch.testing.assert_close(x[2], torch.from_numpy((np.repeat(np.repeat(coarse, 2, 0), 2, 1) - 300) / 30.0).float())
    with pytest.raises(FileNotFoundError, match=r"no band file for \['B10'\]"):
        BigEarthNetDataset(split, 24, [0.0] * 2, [1.0] * 2, bands=["B4", "B10"])[0]


def test_multilabel_with_a_multispectral_backbone(tmp_path, capsys):
    patches = bigearthnet_patches(8)
    names = list(patches)
    root = make_bigearthnet(tmp_path / "ben", patches, lists={"train": names[:6], "test": names[6:]})
    ckpt = make_ms_checkpoint(tmp_path / "run", MS_BANDS, [800.0] * 4, [400.0] * 4)
    out = tmp_path / "ft"
    args = ["finetune", "multilabel", "--checkpoint", str(ckpt), "--data", str(root), "--epochs", "1",
            "--output", str(out), *SMALL]
    assert main(args) == 0
    assert "multispectral input: 4 bands (B4, B3, B2, B8)" in capsys.readouterr().out
    result = json.loads((out / "metrics.json").read_text())
    assert result["bands"] == MS_BANDS and result["normalize"] == "checkpoint" and result["n_test"] == 2
    assert main([*args, "--overwrite", "--normalize", "none"]) == 2
    assert "--normalize none: the backbone is multispectral (4 bands)" in capsys.readouterr().err
    ckpt13 = make_ms_checkpoint(tmp_path / "run13", ["B4", "B3", "B2", "B10"], [800.0] * 4, [400.0] * 4)
    assert main([*args, "--overwrite", "--checkpoint", str(ckpt13)]) == 2  # refused when the split is read
    assert "No patch has B10: the backbone reads bands these patches do not hold" in capsys.readouterr().err


def test_change_with_a_multispectral_backbone(tmp_path, capsys):
    root = make_oscd(tmp_path / "oscd", {"a": (40, 40), "b": (33, 41)}, train=["a"], test=["b"],
                     bands=("B02", "B03", "B04", "B08"), png=True)
    ckpt = make_ms_checkpoint(tmp_path / "run", MS_BANDS, [1500.0] * 4, [700.0] * 4)
    out = tmp_path / "ft"
    args = ["finetune", "change", "--checkpoint", str(ckpt), "--data", str(root), "--epochs", "1",
            "--output", str(out), *SMALL]
    assert main(args) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["bands"] == MS_BANDS and result["tp"] + result["fp"] + result["fn"] + result["tn"] == 33 * 41
    assert (out / "change_masks.png").stat().st_size > 0
    assert main([*args, "--overwrite", "--source", "png"]) == 2
    assert "--source png: pair/img1.png is an RGB rendering" in capsys.readouterr().err


def test_classify_with_a_multispectral_backbone(tmp_path, capsys):
    root = tmp_path / "ms"
    rng = np.random.default_rng(0)
    split_of = {}
    for c in range(2):
        for i in range(4):
            image = rng.normal(1000 + 800 * c, 100, (32, 32, 5)).astype(np.uint16)  # B2, B3, B4, B8, B11
            (root / f"class{c}").mkdir(parents=True, exist_ok=True)
            np.save(root / f"class{c}" / f"img{i}.npy", image)
            split_of[f"class{c}/img{i}.npy"] = "train" if i < 2 else "test"
    lists = write_lists(root, split_of)
    ckpt = make_ms_checkpoint(tmp_path / "run", MS_BANDS, [1400.0] * 4, [500.0] * 4)
    out = tmp_path / "ft"
    args = ["finetune", "classify", "--checkpoint", str(ckpt), "--data", str(root), "--train-list",
            str(lists["train"]), "--test-list", str(lists["test"]), "--epochs", "1", "--output", str(out), *SMALL]
    assert main(args) == 2  # the order of the bands in the files is not known
    assert "order of its bands is not known" in capsys.readouterr().err
    assert not out.exists()  # refused before the run folder was made
    assert main([*args, "--file-bands", "B2,B3,B4,B8,B11"]) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["bands"] == MS_BANDS and result["n_test"] == 4


def test_multispectral_export_keeps_its_bands_and_statistics(tmp_path):
    from fastdino.models.export import export_teacher

    ckpt = make_ms_checkpoint(tmp_path / "run", MS_BANDS, [1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0])
    weights, _, _ = export_teacher(ckpt, tmp_path / "exp" / "ms.safetensors")
    loaded = load_backbone(weights)
    assert loaded.bands == tuple(MS_BANDS) and loaded.in_chans == 4 and loaded.state == "exported, epoch 2"
    assert loaded.mean == (1.0, 2.0, 3.0, 4.0) and loaded.std == (5.0, 6.0, 7.0, 8.0)
    teacher = load_backbone(ckpt)
    assert same_weights(loaded, teacher.backbone.timm_model.state_dict())
