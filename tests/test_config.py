"""Config merging (defaults -> preset -> file -> overrides), its errors, the presets, and the checkpoint files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from fastdino.dataloading import AugmentationSpec

from fastdino import checkpoint as ckpt_io
from fastdino.config import (
    PRESETS,
    ConfigError,
    config_diff,
    config_from_dict,
    list_presets,
    read_config,
    save_config,
    scaled_lr,
)
from fastdino.run_config import load_config


def test_default_is_tiny_preset():
    c = load_config()
    assert c.preset == "tiny"
    assert c.model.arch == "vit_tiny" and c.model.out_dim == 4096
    assert AugmentationSpec.from_dict(c.augment) == AugmentationSpec.preset("tiny")


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_resolves_and_roundtrips_through_yaml(name, tmp_path):
    c = load_config(name)
    save_config(c, tmp_path / "config.yaml")
    again = read_config(tmp_path / "config.yaml")
    assert again == c
    assert config_from_dict(c.to_dict()) == c


def test_dino_mc_preset_matches_the_paper():
    c = load_config("dino-mc-vits8")
    assert (c.model.arch, c.model.patch_size, c.model.out_dim, c.model.drop_path_rate) == ("vit_small", 8, 65536, 0.1)
    assert (c.optim.lr, c.optim.min_lr, c.optim.warmup_epochs, c.optim.clip_grad) == (5e-4, 1e-6, 10, 3.0)
    assert (c.optim.weight_decay, c.optim.weight_decay_end, c.optim.freeze_last_layer) == (0.04, 0.4, 1)
    assert (c.loss.teacher_temp, c.loss.student_temp, c.loss.center_momentum, c.loss.momentum_teacher) == (
        0.04, 0.1, 0.9, 0.996)
    spec = AugmentationSpec.from_dict(c.augment)
    assert spec.view_sizes == [224, 224, 184, 164, 144, 124, 104, 84]
    tp = load_config("dino-tp-vits8")
    assert tp.data.temporal and tp.data.layout == "seco" and tp.augment_preset == "dino-tp"
    assert AugmentationSpec.from_dict(tp.augment).n_global == 3  # three teacher views (DINO-MC's DINO-TP)
    assert c.data.acquisitions == "one"  # DINO-MC's MCBase: one acquisition per SeCo location
    assert AugmentationSpec.from_dict(load_config("dino-vits16").augment).view_sizes == [224] * 2 + [96] * 8



@pytest.mark.parametrize("name", ["dino-mc-vits8", "dino-mc-vits16", "dino-tp-vits8", "dino-vits16"])
def test_vit_presets_resize_the_position_embedding_as_dino_does(name):
    """DINO and DINO-MC resize the position embedding with interpolate_pos_encoding for every crop."""
    assert load_config(name).model.pos_embed_interp == "dino"


def test_tiny_presets_keep_timms_interpolation_their_numbers_were_measured_with():
    assert load_config("tiny").model.pos_embed_interp == load_config("tiny-ms").model.pos_embed_interp == "timm"


@pytest.mark.parametrize("overrides, message", [
    (["data.temporal=false"], "data.temporal=False but the augmentation cuts views from 3 date"),
    (["data.acquisitions=some"], "data.acquisitions='some': choose one of all, one"),
])
def test_dino_tp_needs_temporal_data_and_its_views(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("dino-tp-vits8", overrides=overrides)
    with pytest.raises(ConfigError, match="data.temporal=True but the augmentation cuts views from 1 date"):
        load_config("dino-mc-vits8", overrides=["data.temporal=true", "data.layout=seco"])


def test_lr_is_scaled_by_the_global_batch():
    c = load_config(overrides=["run.batch_size=512", "optim.lr=1e-3"])
    assert scaled_lr(c) == pytest.approx(2e-3)


def test_layers_apply_in_order(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text(yaml.safe_dump({"preset": "dino-mc-vits16", "run": {"epochs": 7, "batch_size": 128},
                                 "optim": {"lr": "1e-4"}, "augment": {"mean": [0.5, 0.5, 0.5]}}))
    c = load_config(config_file=f, overrides=["run.epochs=9", "seed=3", "augment.std=[0.2,0.2,0.2]"])
    assert c.preset == "dino-mc-vits16" and c.model.patch_size == 16  # the file chose the preset
    assert c.run.epochs == 9 and c.run.batch_size == 128 and c.run.seed == 3  # --set beats the file
    assert c.optim.lr == 1e-4  # YAML 1.1 reads 1e-4 as a string; floats accept it
    assert c.augment["mean"] == [0.5, 0.5, 0.5] and c.augment["std"] == [0.2, 0.2, 0.2]
    assert load_config("tiny", config_file=f).preset == "tiny"  # an explicit preset wins over the file's


def test_cli_values_are_parsed_for_the_target_type():
    c = load_config(overrides=["run.compile=true", "data.path=/x", "model.patch_size=16", "data.list_file=null",
                               "optim.clip_grad=0"])
    assert c.run.compile is True and c.data.path == "/x" and c.model.patch_size == 16
    assert c.data.list_file is None and c.optim.clip_grad == 0.0 and isinstance(c.optim.clip_grad, float)


@pytest.mark.parametrize("overrides, match", [
    (["run.epoch=3"], "unknown key 'run.epoch'.*did you mean epochs"),
    (["nonsense=1"], "unknown key"),
    (["backend=torch"], "ambiguous.*data.backend.*loss.backend"),
    (["run=3"], "is a section"),
    (["run.epochs=three"], "run.epochs must be int"),
    (["run.epochs=2.5"], "run.epochs must be int"),
    (["run.compile=maybe"], "run.compile must be bool"),
    (["run.epochs=0"], r"run.epochs=0: must be > 0"),
    (["run.batch_size=-4"], "run.batch_size=-4: must be > 0"),
    (["loss.momentum_teacher=1.5"], r"must be in \[0, 1\]"),
    (["data.subset=0"], "data.subset"),
    (["run.precision=fp8"], "choose one of auto, bf16, fp16, fp32"),
    (["data.layout=weird"], "data.layout='weird'"),
    (["model.arch=vit_huge"], "model.arch='vit_huge': choose one of"),
    (["run.device=tpu"], "run.device"),
    (["augment.foo=1"], "unknown key 'augment.foo'"),
    (["augment.mean=[1,2]"], "needs 3 values"),
    (["model.patch_size=16", "augment.local_views=[{size: 8}]"], "view size 8 px is smaller than model.patch_size=16"),
    (["model.depth=0"], "model.depth=0: must be a positive number of blocks"),
    (["model.arch=resnet50", "model.patch_size=null", "loss.ibot_weight=0", "model.depth=6"],
     "model.depth=6: sets a ViT's blocks"),
    (["model.arch=resnet50", "model.patch_size=null", "model.depth=null"], "loss.ibot_weight=1.0: iBOT masks ViT"),
    (["noequals"], "expected key=value"),
    (["preset=tiny"], "--preset"),
])
def test_bad_overrides_are_clear_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=overrides)


def test_preset_is_chosen_with_preset_not_set():
    """`preset` is refused by --set (the error says use --preset), so it is not offered as a --set key either."""
    with pytest.raises(ConfigError, match="--preset NAME") as refused:
        load_config(overrides=["preset=dino-mc-vits8"])
    assert "unknown key" not in str(refused.value)
    with pytest.raises(ConfigError, match="known keys: ") as unknown:
        load_config(overrides=["presets=1"])
    known = str(unknown.value).split("known keys: ")[1].split(", ")
    assert "preset" not in known and "epochs" in known and "did you mean" not in str(unknown.value)


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(config_file=tmp_path / "missing.yaml")
    f = tmp_path / "bad.yaml"
    f.write_text("run:\n  epochs: '3'\n")  # a quoted number in a file is a wrong type, not a guess
    with pytest.raises(ConfigError, match=r"config file .*bad.yaml: run.epochs must be int"):
        load_config(config_file=f)
    f.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key 'optim.learning_rate'"):
        load_config(config_file=f)
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(config_file=f)
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config("nope")


def test_config_diff_lists_changed_leaves():
    a = load_config().to_dict()
    b = load_config(overrides=["run.epochs=9", "optim.lr=0.1"]).to_dict()
    assert config_diff(a, b) == ["optim.lr: 0.002 -> 0.1", "run.epochs: 3 -> 9"]


def test_list_presets_one_line_each():
    names = [n for n, _ in list_presets()]
    assert names == ["dino-mc-vits8", "dino-mc-vits16", "dino-vits16", "dino-tp-vits8", "dino-mc-resnet50", "tiny",
                     "tiny-ms"]
    assert all("\n" not in d and d for _, d in list_presets())


# ---- checkpoint files -------------------------------------------------------------------------------------


def test_checkpoint_roundtrip_with_rng_and_latest(tmp_path):
    state = {"a": torch.arange(3), "rng": ckpt_io.rng_state(), "config": load_config().to_dict(), "epoch": 2}
    folder = ckpt_io.checkpoint_dir(tmp_path)
    ckpt_io.save_checkpoint(state, folder / ckpt_io.epoch_checkpoint_name(2))
    ckpt_io.save_checkpoint(state, folder / ckpt_io.epoch_checkpoint_name(10))
    assert ckpt_io.find_latest(tmp_path).name == "epoch_0010.pt"  # numeric, not lexical
    ckpt_io.save_checkpoint(state, folder / ckpt_io.LAST)
    assert ckpt_io.find_latest(tmp_path).name == "last.pt"
    loaded = ckpt_io.load_checkpoint(tmp_path)  # weights_only=True: everything is plain
    assert torch.equal(loaded["a"], state["a"]) and loaded["config"] == state["config"]
    expected = torch.rand(4)
    ckpt_io.set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(4), expected)
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert ckpt_io.find_latest(tmp_path / "nothing") is None


def test_process_killed_while_writing_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    ckpt_io.save_checkpoint({"epoch": 1, "w": torch.ones(4)}, path)
    # A child process starts the next save and dies mid-write (os._exit: no finally, no cleanup), like a kill -9.
    code = f"""
import os, torch
from fastdino import checkpoint
def dying_save(obj, f, *a, **k):
    f.write(b"half a checkpoint"); f.flush(); os._exit(9)
torch.save = dying_save
checkpoint.save_checkpoint({{"epoch": 2, "w": torch.zeros(4)}}, {str(path)!r})
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == 9, proc.stderr.decode()
    leftovers = [p.name for p in path.parent.iterdir() if p.name != "last.pt"]
    assert leftovers and all(n.startswith(".last.pt.tmp-") for n in leftovers)  # the torn file is a temporary
    loaded = ckpt_io.load_checkpoint(path)
    assert loaded["epoch"] == 1 and torch.equal(loaded["w"], torch.ones(4))
    assert ckpt_io.find_latest(tmp_path) == path


def test_unreadable_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="bad.pt could not be read"):
        ckpt_io.load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        ckpt_io.load_checkpoint(tmp_path)


def test_fractional_warmup_is_rounded_to_whole_steps():
    # a one-epoch run (the tiny preset on a CPU budget) still warms up: 0.25 of 506 steps -> 126 rising steps
    from fastdino.schedules import cosine_schedule, schedule_warnings

    config = load_config("tiny", overrides=["optim.warmup_epochs=0.25", "run.epochs=1"])
    assert config.optim.warmup_epochs == 0.25
    lr = cosine_schedule(1.0, 0.0, epochs=1, iters_per_epoch=506, warmup_epochs=0.25)
    assert len(lr) == 506 and lr[0] == 0.0 and lr[125] == 1.0
    assert np.all(np.diff(lr[:126]) > 0) and np.all(np.diff(lr[126:]) < 0)
    assert schedule_warnings(epochs=1, iters_per_epoch=506, warmup_epochs=0.25) == []
    assert "stops inside the lr warm-up (126" in schedule_warnings(epochs=1, iters_per_epoch=506,
                                                                  warmup_epochs=0.25, max_steps=100)[0]
    with pytest.raises(ConfigError, match="optim.warmup_epochs=-0.5"):
        load_config("tiny", overrides=["optim.warmup_epochs=-0.5"])


def test_a_cnn_on_a_vit_preset_is_told_to_switch_the_interpolation():
    with pytest.raises(ConfigError, match=r"model.pos_embed_interp='dino'.*--set model.pos_embed_interp=timm"):
        load_config("dino-mc-vits8", overrides=["model.arch=resnet50", "model.patch_size=null",
                                                "model.drop_path_rate=0"])
    cfg = load_config("dino-mc-vits8", overrides=["model.arch=resnet50", "model.patch_size=null",
                                                  "model.drop_path_rate=0", "model.pos_embed_interp=timm"])
    assert cfg.model.arch == "resnet50"
