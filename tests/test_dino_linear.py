"""`fastdino eval linear --protocol dino` (DINO's eval_linear.py) and the fast probe's labelling."""

from __future__ import annotations

import json

import pytest
import torch
from _dino_reference import DinoVisionTransformer, randomize_
from _eval_fixtures import make_checkpoint, make_image_folder, one_thread  # noqa: F401 (autouse)

from fastdino.cli import main
from fastdino.eval.dino_linear import DinoLinearSettings, dino_linear_accuracy, intermediate_cls


@pytest.fixture(scope="module")
def dino_vit(tmp_path_factory):
    ref = randomize_(DinoVisionTransformer("vit_tiny", 16), 7).eval()
    path = tmp_path_factory.mktemp("dino") / "dino_vittiny16_pretrain.pth"
    torch.save(ref.state_dict(), path)
    return path, ref


@pytest.mark.parametrize("n, avgpool", [(4, False), (1, True)])
def test_intermediate_cls_is_dinos_get_intermediate_layers(dino_vit, n, avgpool):
    """eval_linear.py L159-163: torch.cat([x[:, 0] for x in get_intermediate_layers(inp, n)]) (+ the mean of the
    last block's patch tokens with avgpool_patchtokens)."""
    from fastdino.models.convert import load_backbone

    path, ref = dino_vit
    backbone = load_backbone(path).backbone
    with torch.no_grad():
        for size in (224, 96, 100):
            x = torch.randn(2, 3, size, size)
            layers = ref.get_intermediate_layers(x, n)
            want = [t[:, 0] for t in layers] + ([layers[-1][:, 1:].mean(dim=1)] if avgpool else [])
            got = intermediate_cls(backbone, x, n, avgpool)
            assert got.shape == (2, 192 * (n + int(avgpool)))
            torch.testing.assert_close(got, torch.cat(want, dim=-1), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="--n-last-blocks"):
        intermediate_cls(backbone, x, 13)


def test_dino_protocol_trains_sgd_on_augmented_crops_reproducibly(tmp_path):
    from fastdino.eval.splits import load_split
    from fastdino.models.convert import load_backbone

    data = make_image_folder(tmp_path / "data", per_class=5, size=32)
    split = load_split(data, None, None)
    backbone = load_backbone(make_checkpoint(tmp_path / "run", img_size=32)).backbone
    settings = DinoLinearSettings(epochs=3, batch_size=4, lr=0.5)
    kwargs = dict(size=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), settings=settings, echo=None)
    args = (backbone, split["train_paths"], split["train_labels"], split["test_paths"], split["test_labels"], 3)
    first = dino_linear_accuracy(*args, **kwargs, seed=0)
    assert first == {**dino_linear_accuracy(*args, **kwargs, seed=0), "train_seconds": first["train_seconds"],
                     "seconds_per_epoch": first["seconds_per_epoch"]}  # same seed, same crops, same numbers
    assert first["feature_dim"] == 4 * 192 and first["scaled_lr"] == 0.5 * 4 / 256
    assert first["n_last_blocks"] == 4 and first["momentum"] == 0.9 and first["weight_decay"] == 0.0
    other = dino_linear_accuracy(*args, **kwargs, seed=1)
    assert other["train_loss"] != first["train_loss"]  # the seed drives the crops, flips and order


def test_linear_protocols_are_labelled_in_help_table_and_json(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["eval", "linear", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "FAST PROBE" in help_text and "not DINO's protocol" in help_text and "--protocol" in help_text

    data = make_image_folder(tmp_path / "data", per_class=4, size=32)
    ckpt = make_checkpoint(tmp_path / "run", img_size=32)
    base = ["eval", "linear", "--checkpoint", str(ckpt), "--data", str(data), "--epochs", "2"]
    assert main([*base, "--output", str(tmp_path / "fast.json")]) == 0
    assert "linear, fast probe, 2 ep" in capsys.readouterr().out
    fast = json.loads((tmp_path / "fast.json").read_text())
    assert fast["protocol"] == "fast" and "fast probe" in fast["protocol_name"] and fast["lr"] == 1e-2

    assert main([*base, "--protocol", "dino", "--linear-batch-size", "4", "--output", str(tmp_path / "dino.json")]) == 0
    assert "linear, DINO protocol, 2 ep" in capsys.readouterr().out
    dino = json.loads((tmp_path / "dino.json").read_text())
    assert dino["protocol"] == "dino" and dino["lr"] == 0.001 and dino["batch_size"] == 4
    assert dino["feature_dim"] == 4 * 192 and 0 <= dino["top1"] <= 100 and dino["n_test"] == 3
