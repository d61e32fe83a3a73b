"""`fastdino export`: the teacher backbone as timm safetensors that timm itself loads, offline and strictly."""

import json

import pytest
import timm
import torch
from _eval_fixtures import make_checkpoint, one_thread  # noqa: F401 (autouse)
from safetensors.torch import load_file

from fastdino.cli import main
from fastdino.eval.teacher import load_teacher
from fastdino.models.export import export_teacher


def test_export_then_timm_load_gives_identical_features(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "run", img_size=32)
    out = tmp_path / "exported" / "vit_tiny.safetensors"
    assert main(["export", "--checkpoint", str(ckpt), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pretrained_cfg_overlay=dict(file=" in printed

    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["in_chans"] == 3 and meta["input_size"] == 32 and meta["method"] == "dino-mc"
    assert meta["normalisation"]["mean"] == [0.485, 0.456, 0.406] and meta["epoch"] == 3

    # The exact line a user runs (the README's), with nothing but the metadata JSON to go on.
    model = timm.create_model(meta["architecture"], pretrained=True, pretrained_cfg_overlay=dict(file=str(out)),
                              num_classes=0, **meta["timm_kwargs"]).eval()
    teacher, _ = load_teacher(ckpt)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), teacher(x), rtol=1e-5, atol=1e-5)

    # Exactly the teacher's backbone weights (not the student's, not the head), under timm's own names.
    saved = torch.load(ckpt, weights_only=True)
    exported = load_file(out)
    expected = {k.removeprefix("backbone.timm_model."): v for k, v in saved["teacher"].items()
                if k.startswith("backbone.")}
    assert exported.keys() == expected.keys()
    for k, v in exported.items():
        assert torch.equal(v, expected[k]), k
    assert not torch.equal(saved["student"]["backbone.timm_model.cls_token"], exported["cls_token"])


def test_export_default_output_is_the_run_folders_exported(tmp_path):
    ckpt = make_checkpoint(tmp_path / "run", img_size=32)
    weights, meta_path, _ = export_teacher(ckpt)
    assert weights == tmp_path / "run" / "exported" / "last_teacher_backbone.safetensors"
    assert weights.is_file() and meta_path.is_file()


def test_export_errors(tmp_path, capsys):
    missing = tmp_path / "missing.pt"
    assert main(["export", "--checkpoint", str(missing), "--output", str(tmp_path / "a.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
    ckpt = make_checkpoint(tmp_path / "run", img_size=32)
    assert main(["export", "--checkpoint", str(ckpt), "--output", str(tmp_path / "a.pt")]) == 2
    assert ".safetensors" in capsys.readouterr().err
    # ViT-Tiny/8 weights under a config that says patch 16: the patch embedding and position table do not fit.
    bad = make_checkpoint(tmp_path / "other", img_size=32, config_model={"patch_size": 16})
    with pytest.raises(ValueError, match="'vit_tiny' \\(patch_size=16"):
        export_teacher(bad, tmp_path / "b.safetensors")
