"""`fastdino train` and `fastdino presets` end to end (in-process, shrunk with --set / --epochs)."""

from __future__ import annotations

import json

import pytest
import torch
from fastdino.dataloading import make_synthetic_dataset

import fastdino
from fastdino import checkpoint as ckpt_io
from fastdino.cli import main

# A few 16 px globals / 8 px locals on a ViT-Tiny/8 with a small head: seconds per epoch on 2 CPU cores.
SMALL = ["--set", "model.patch_size=8", "model.img_size=16", "model.out_dim=128", "model.hidden_dim=32",
         "model.bottleneck_dim=16",
         "augment.global_views=[{size: 16}, {size: 16, blur_p: 0.1, solarize_p: 0.2}]",
         "augment.local_views=[{size: 8, count: 2, scale: [0.05, 0.32]}]",
         "data.num_threads=0", "data.backend=torch", "run.log_every=1"]


@pytest.fixture(autouse=True)
def one_thread_and_cache(tmp_path, monkeypatch):
    """Tiny ViTs on a shared 2-core machine run faster on one thread; the demo dataset goes to tmp."""
    monkeypatch.setenv("FASTDINO_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def steps(run_dir):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["type"] == "step"]


def test_default_run_uses_generated_images(tmp_path, capsys, monkeypatch):
    import fastdino.cli.train as cli_train

    monkeypatch.setattr(cli_train, "DEMO_IMAGES", 8)
    run = tmp_path / "run"
    assert main(["train", "--output", str(run), "--epochs", "1", "--batch-size", "4", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "GENERATED images" in out and "--data PATH" in out and "resolved config:" in out
    assert "img/s" in out and "eta" in out and "peak memory" in out  # progress lines and the summary
    for name in ("config.yaml", "train.log", "metrics.jsonl", "plots/curves.png", "checkpoints/last.pt",
                 "checkpoints/epoch_0001.pt", "exported/last_teacher_backbone.safetensors",
                 "exported/last_teacher_backbone.json"):
        assert (run / name).is_file(), name
    assert "exported: " in out
    records = steps(run)
    assert len(records) == 2 and all(k in records[0] for k in ("loss", "lr", "img_per_s", "data_wait", "eta_s"))
    ckpt = ckpt_io.load_checkpoint(run)
    assert ckpt["epoch"] == 1 and ckpt["config"]["preset"] == "tiny" and ckpt["config"]["data"]["path"]
    backbone, config = ckpt_io.load_teacher_backbone(run)
    assert backbone(torch.randn(1, 3, 16, 16)).shape == (1, 192) and config["model"]["arch"] == "vit_tiny"

    # a second run into the same folder is refused; --resume continues it; --overwrite starts over
    assert main(["train", "--output", str(run), "--epochs", "1", *SMALL]) == 2
    assert "is not empty! Pass --overwrite" in capsys.readouterr().err
    assert main(["train", "--output", str(run), "--resume", "--epochs", "2", "--set", "run.log_every=1"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "resumed config differs" in out and "run.epochs: 1 -> 2" in out
    assert [r["epoch"] for r in steps(run)] == [0, 0, 1, 1]
    (run / "notes.txt").write_text("mine")
    assert main(["train", "--output", str(run), "--overwrite", "--epochs", "1", "--batch-size", "4", *SMALL]) == 0
    assert len(steps(run)) == 2 and (run / "notes.txt").read_text() == "mine"  # only run files are deleted


def test_resume_without_output_continues_the_newest_run(tmp_path, capsys, monkeypatch):
    import fastdino.cli.train as cli_train

    monkeypatch.setattr(cli_train, "DEMO_IMAGES", 8)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume"]) == 2  # nothing to resume yet: one clear line
    assert "--resume without --output: no runs/tiny-* folder here" in capsys.readouterr().err
    assert main(["train", "--epochs", "1", "--batch-size", "4", *SMALL]) == 0  # runs/tiny-<timestamp>
    (run,) = (tmp_path / "runs").iterdir()
    capsys.readouterr()
    assert main(["train", "--resume", "--epochs", "2"]) == 0
    assert f"resumed from {run.resolve() / 'checkpoints'}" in capsys.readouterr().out
    assert [r["epoch"] for r in steps(run)] == [0, 0, 1, 1]
    assert len(list((tmp_path / "runs").iterdir())) == 1  # continued in place, no new folder


def test_data_on_generated_images_and_init_from(tmp_path, capsys):
    data = make_synthetic_dataset(tmp_path / "imgs", n_images=8, size=24)
    first, second = tmp_path / "first", tmp_path / "second"
    args = ["train", "--data", str(data), "--epochs", "1", "--batch-size", "4", *SMALL]
    assert main([*args, "--output", str(first)]) == 0
    out = capsys.readouterr().out
    assert "GENERATED" not in out and "data: 8 images" in out
    assert main([*args, "--output", str(second), "--init-from", str(first / "checkpoints" / "last.pt")]) == 0
    assert "initialised student and teacher weights from" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--set", "optim.learnig_rate=1"], "unknown key 'optim.learnig_rate'"),
    (["--set", "run.epochs=many"], "run.epochs must be int"),
    (["--set", "loss.center_momentum=2"], "loss.center_momentum=2.0: must be in [0, 1]"),
    (["--data", "/no/such/folder"], "data path /no/such/folder does not exist"),
    (["--data-list", "train.txt"], "--data-list needs --data"),
    (["--resume"], "no checkpoint in"),
    (["--set", "run.precision=bf16", "run.device=cuda:7"] if not torch.cuda.is_available() else
     ["--set", "run.device=cuda:999"], "cuda"),
])
def test_bad_input_is_one_clear_line_before_any_work(tmp_path, capsys, extra, message):
    run = tmp_path / "run"
    run.mkdir()
    assert main(["train", "--output", str(run), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not any(run.iterdir())  # nothing written


def test_bad_config_file(tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("run:\n  epochs: 3\n  batchsize: 8\n")
    assert main(["train", "--config", str(cfg), "--output", str(tmp_path / "run")]) == 2
    assert "unknown key 'run.batchsize' (did you mean batch_size?)" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"fastdino {fastdino.__version__}"


def test_presets_lists_one_line_each(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["dino-mc-vits8", "dino-mc-vits16", "dino-vits16", "dino-tp-vits8",
                                                  "dino-mc-resnet50", "tiny", "tiny-ms"]
    assert main(["presets", "--show", "dino-mc-vits8"]) == 0
    assert "patch_size: 8" in capsys.readouterr().out
