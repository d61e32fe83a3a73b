"""Checkpoints of the original DINO / DINO-MC code in fastdino (fastdino.models.convert): the key layouts they are
written in, built here from a re-implementation of DINO's ViT and head (tests/_dino_reference.py) and torchvision's
ResNet, with random weights; nothing is downloaded. The converted backbone must give the original's features at every
crop size, through eval, export and train --init-from."""

from __future__ import annotations

import argparse
import json

import pytest
import timm
import torch
from _dino_reference import DDP, DinoHead, DinoVisionTransformer, MultiCropWrapper, randomize_
from _eval_fixtures import make_image_folder, one_thread  # noqa: F401 (autouse)

from fastdino.cli import main
from fastdino.eval.teacher import load_teacher
from fastdino.models.convert import CheckpointError, init_twins, load_backbone
from fastdino.models.pos_embed import PosEmbedInterpolator, interpolation_matrix

TOL = dict(rtol=1e-4, atol=1e-4)
# 224 native (14 x 14 at patch 16); 96 and 57 shrink the grid, 184 and 240 change it up and down; 100 is not a
# multiple of the patch (floored to 6 x 6 like DINO's Conv2d); 96 x 160 is not square.
SIZES = [(224, 224), (96, 96), (184, 184), (100, 100), (57, 57), (240, 240), (96, 160)]


def dino_training_checkpoint(path, teacher_vit, student_vit, head_dims=(64, 32, 16), *, bn_teacher=False, **args):
    """What main_dino.py / main_dino_mc.py save: DDP(MultiCropWrapper) student, MultiCropWrapper teacher (DDP too
    for BatchNorm networks), `args` an argparse.Namespace."""
    out_dim, hidden, bottleneck = head_dims
    in_dim = teacher_vit.norm.normalized_shape[0] if hasattr(teacher_vit, "norm") else 2048
    t_head = randomize_(DinoHead(in_dim, out_dim, hidden, bottleneck), 10)
    s_head = randomize_(DinoHead(in_dim, out_dim, hidden, bottleneck), 11)
    teacher = MultiCropWrapper(teacher_vit, t_head)
    state = {
        "student": DDP(MultiCropWrapper(student_vit, s_head)).state_dict(),
        "teacher": (DDP(teacher) if bn_teacher else teacher).state_dict(),
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_tiny", out_dim=out_dim, **args),
        "dino_loss": {"center": torch.zeros(1, out_dim)},
    }
    torch.save(state, path)
    return path, t_head, s_head


@pytest.fixture(scope="module")
def vit16(tmp_path_factory):
    """A DINO ViT-Tiny/16 teacher and student (different weights) in a DINO-MC training checkpoint."""
    teacher = randomize_(DinoVisionTransformer("vit_tiny", 16), 0).eval()
    student = randomize_(DinoVisionTransformer("vit_tiny", 16), 1).eval()
    path = tmp_path_factory.mktemp("dino") / "checkpoint.pth"
    dino_training_checkpoint(path, teacher, student, data_mode="mc", patch_size=16)
    return path, teacher, student


def test_dino_interpolation_matrix_is_dinos_interpolate_pos_encoding():
    ref = randomize_(DinoVisionTransformer("vit_tiny", 16, depth=1), 0)
    patches = ref.pos_embed[0, 1:].detach()
    interp = PosEmbedInterpolator((14, 14), n_prefix=1, mode="dino")
    for grid in [(6, 6), (11, 11), (3, 3), (15, 15), (6, 10), (14, 14)]:
        x = torch.zeros(1, 1 + grid[0] * grid[1], 192)
        want = ref.interpolate_pos_encoding(x, grid[0] * 16, grid[1] * 16).detach()
        torch.testing.assert_close(interp(ref.pos_embed.detach(), grid), want, rtol=1e-5, atol=1e-5)
    # timm's interpolation (fastdino's default) is another function at a grid that shrinks: the option matters.
    timm_way = interpolation_matrix((14, 14), (6, 6), mode="timm") @ patches
    assert (timm_way - interpolation_matrix((14, 14), (6, 6), mode="dino") @ patches).abs().max() > 0.05


def test_dino_checkpoint_gives_the_original_features_at_every_size(vit16, capsys):
    path, teacher, student = vit16
    backbone, config = load_teacher(path, echo=print)
    report = capsys.readouterr().out
    assert "DINO / DINO-MC training checkpoint, epoch 100" in report
    assert "'teacher' state dict" in report and "'backbone.' (" in report and "150 tensors -> vit_tiny/16" in report
    assert "head.* (the DINO projection head) (8 tensors)" in report and "DINO's interpolate_pos_encoding" in report
    assert config["model"]["pos_embed_interp"] == "dino" and config["augment_preset"] == "dino-mc"
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for size in SIZES:
            x = torch.randn(2, 3, *size, generator=g)
            torch.testing.assert_close(backbone(x), teacher(x), **TOL, msg=f"teacher at {size}")
        # --checkpoint-key student: the student's weights, its `module.backbone.` prefix stripped too.
        student_backbone, _ = load_teacher(path, which="student")
        x = torch.randn(2, 3, 96, 96, generator=g)
        torch.testing.assert_close(student_backbone(x), student(x), **TOL)
        # timm's interpolation gives other features off the native size: the reason DINO's is the default here.
        timm_backbone, _ = load_teacher(path, pos_embed_interp="timm")
        assert (timm_backbone(x) - teacher(x)).abs().max() > 1e-2
        x224 = torch.randn(2, 3, 224, 224, generator=g)
        torch.testing.assert_close(timm_backbone(x224), teacher(x224), **TOL)  # the native grid is not resampled


def test_released_backbone_state_dict_at_patch_8(tmp_path):
    """DINO's released `dino_vits8_pretrain.pth` layout: a bare backbone state dict; patch 8 as DINO-MC."""
    ref = randomize_(DinoVisionTransformer("vit_tiny", 8), 2).eval()
    path = tmp_path / "dino_vittiny8_pretrain.pth"
    torch.save(ref.state_dict(), path)
    loaded = load_backbone(path)
    c = loaded.conversion
    assert (c.source, c.which, c.arch, c.patch_size, c.img_size, c.stripped) == (
        "state_dict", None, "vit_tiny", 8, 224, {})
    with torch.no_grad():
        for size in (84, 164, 224):  # DINO-MC's smallest local crop, a size floored to 160, the global crop
            x = torch.randn(1, 3, size, size)
            torch.testing.assert_close(loaded.backbone(x), ref(x), **TOL, msg=f"{size} px")


def test_architecture_is_read_from_the_shapes_and_mismatches_are_named(vit16, tmp_path):
    path, _, _ = vit16
    with pytest.raises(CheckpointError, match=r"holds a vit_tiny/16 backbone at 224 px .*not the requested "
                                              r"patch_size=8"):
        load_backbone(path, patch_size=8)
    with pytest.raises(CheckpointError, match="not the requested arch='vit_small'"):
        load_backbone(path, arch="vit_small")
    small = tmp_path / "small.pth"
    torch.save(DinoVisionTransformer("vit_small", 8, depth=12).state_dict(), small)
    c = load_backbone(small, pos_embed_interp="timm").conversion
    assert (c.arch, c.patch_size, c.pos_embed_interp) == ("vit_small", 8, "timm")

    bare = tmp_path / "bare.pth"
    torch.save({"teacher": {"pos_embed": torch.zeros(1, 5, 192)}}, bare)
    with pytest.raises(CheckpointError, match="has no 'student' entry"):
        load_backbone(bare, which="student")
    swin = tmp_path / "swin.pth"
    torch.save({"features.0.0.weight": torch.zeros(96, 3, 4, 4)}, swin)
    with pytest.raises(CheckpointError, match="torchvision Swin"):
        load_backbone(swin)
    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="cannot tell the architecture.*encoder.weight"):
        load_backbone(other)
    deep = tmp_path / "deep.pth"
    torch.save(DinoVisionTransformer("vit_tiny", 16, depth=6).state_dict(), deep)
    shallow = load_backbone(deep)  # the depth is read from the blocks.N keys (fastdino's model.depth)
    assert len(shallow.backbone.timm_model.blocks) == 6 and shallow.config["model"]["depth"] == 6


def test_resnet_checkpoint_with_ddp_teacher_matches_torchvision(tmp_path):
    """DINO trains torchvision ResNets; their teacher is DDP-wrapped (BatchNorm), so its keys read
    `module.backbone.*`. torchvision's and timm's ResNet-50 share every name: the features must be identical."""
    import torchvision

    ref = randomize_(torchvision.models.resnet50(), 3)
    ref.fc = torch.nn.Identity()  # as DINO's MultiCropWrapper does
    ref.eval()
    path, _, _ = dino_training_checkpoint(tmp_path / "rn.pth", ref, ref, (64, 32, 16), bn_teacher=True)
    loaded = load_backbone(path)
    assert loaded.conversion.arch == "resnet50" and loaded.conversion.stripped == {"module.": 326, "backbone.": 318}
    with torch.no_grad():
        for size in (64, 96):
            x = torch.randn(2, 3, size, size)
            torch.testing.assert_close(loaded.backbone(x), ref(x), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="ViTs only"):
        load_backbone(path, pos_embed_interp="dino")


def test_eval_and_export_read_a_dino_checkpoint(vit16, tmp_path, capsys):
    path, teacher, student = vit16
    data = make_image_folder(tmp_path / "data", per_class=3, size=32)
    base = ["eval", "knn", "--checkpoint", str(path), "--data", str(data), "--k", "3", "--image-size", "48",
            "--cache-dir", str(tmp_path / "cache")]
    assert main([*base, "--output", str(tmp_path / "t.json")]) == 0
    out = capsys.readouterr().out
    assert "DINO / DINO-MC training checkpoint" in out and "prefixes stripped" in out
    result = json.loads((tmp_path / "t.json").read_text())
    assert (result["checkpoint_source"], result["checkpoint_key"], result["pos_embed_interp"]) == (
        "dino", "teacher", "dino")
    assert result["arch"] == "vit_tiny" and result["checkpoint_epoch"] == 100 and result["image_size"] == 48
    # The student is another network: its features are not the teacher's cached ones.
    assert main([*base, "--checkpoint-key", "student", "--output", str(tmp_path / "s.json")]) == 0
    assert "reusing" not in capsys.readouterr().out
    assert main([*base, "--patch-size", "8"]) == 2
    assert "not the requested patch_size=8" in capsys.readouterr().err

    out_file = tmp_path / "exported" / "dino.safetensors"
    assert main(["export", "--checkpoint", str(path), "--output", str(out_file)]) == 0
    printed = capsys.readouterr().out
    assert "DINO / DINO-MC training checkpoint" in printed and "DINO's position-embedding interpolation" in printed
    meta = json.loads(out_file.with_suffix(".json").read_text())
    assert meta["conversion"]["source"] == "dino" and meta["pos_embed_interp"] == "dino" and meta["epoch"] == 100
    model = timm.create_model(meta["architecture"], pretrained=True, pretrained_cfg_overlay=dict(file=str(out_file)),
                              num_classes=0, **meta["timm_kwargs"]).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), teacher(x), **TOL)  # plain timm at the native size: DINO's features


def test_init_from_a_dino_checkpoint_loads_both_twins_with_their_heads(tmp_path):
    from fastdino.train import build_twins

    teacher = randomize_(DinoVisionTransformer("vit_tiny", 8, img_size=16), 4).eval()
    student = randomize_(DinoVisionTransformer("vit_tiny", 8, img_size=16), 5).eval()
    path, t_head, s_head = dino_training_checkpoint(tmp_path / "checkpoint.pth", teacher, student, data_mode="mc")
    config = load_config_model(pos_embed_interp="dino")
    torch.manual_seed(0)
    twins = build_twins(config, torch.device("cpu"))
    lines = []
    init_twins(path, *twins, config.model, echo=lines.append)
    assert any(line.startswith("student: 150 backbone tensors") and "'module.'" in line for line in lines)
    assert any("weight_g/weight_v -> parametrizations" in line for line in lines)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        for twin, ref, head in ((twins[0], student, s_head), (twins[1], teacher, t_head)):
            twin.eval()
            torch.testing.assert_close(twin["backbone"](x), ref(x), **TOL)
            torch.testing.assert_close(twin["backbone"](x[..., :8, :8]), ref(x[..., :8, :8]), **TOL)
            feats = ref(x)
            torch.testing.assert_close(twin["head"](feats), head(feats), **TOL)

    wrong = load_config_model(patch_size=16)
    with pytest.raises(CheckpointError, match="holds a vit_tiny/8 at 16 px backbone.*--set model.arch=vit_tiny "
                                              "model.patch_size=8 model.img_size=16"):
        init_twins(path, *build_twins(wrong, torch.device("cpu")), wrong.model)
    other_head = load_config_model(out_dim=128)
    with pytest.raises(CheckpointError, match="head \\(out_dim=64, bottleneck_dim=16\\) does not fit"):
        init_twins(path, *build_twins(other_head, torch.device("cpu")), other_head.model)


def load_config_model(**model):
    from fastdino.run_config import load_config

    base = {"patch_size": 8, "depth": None, "img_size": 16, "out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16}
    return load_config("tiny", overrides={"model": {**base, **model}})


def test_train_init_from_a_bare_dino_backbone(tmp_path, capsys, monkeypatch):
    """`fastdino train --init-from` with a released-style backbone: both twins start from it, the heads as built."""
    from fastdino.dataloading import make_synthetic_dataset

    monkeypatch.setenv("FASTDINO_CACHE", str(tmp_path / "cache"))
    ref = randomize_(DinoVisionTransformer("vit_tiny", 8, img_size=16), 6)
    weights = tmp_path / "dino_vittiny8_pretrain.pth"
    torch.save(ref.state_dict(), weights)
    data = make_synthetic_dataset(tmp_path / "imgs", n_images=4, size=24)
    argv = ["train", "--data", str(data), "--output", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4",
            "--init-from", str(weights), "--set", "model.patch_size=8", "model.depth=null", "model.img_size=16",
            "model.out_dim=64",
            "model.hidden_dim=32", "model.bottleneck_dim=16", "model.pos_embed_interp=dino",
            "augment.global_views=[{size: 16}, {size: 16, blur_p: 0.1, solarize_p: 0.2}]",
            "augment.local_views=[{size: 8, count: 2, scale: [0.05, 0.32]}]", "data.num_threads=0",
            "data.backend=torch"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "student: 150 backbone tensors" in out and "[bare state dict]" in out and "head as built" in out
    assert "initialised student and teacher weights from" in out
    assert (tmp_path / "run" / "exported" / "last_teacher_backbone.safetensors").is_file()
