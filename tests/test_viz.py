"""`fastdino viz`: attention grids and training curves are decodable PNGs of the expected size."""

import pytest
import torch
from _eval_fixtures import make_checkpoint, make_image_folder, one_thread, write_metrics  # noqa: F401 (autouse)
from PIL import Image

from fastdino.cli import main
from fastdino.monitor.attention_maps import attention_grid, grid_columns, grid_size
from fastdino.monitor.curves import plot_curves, plot_loss_terms


def _png_size(path):
    with Image.open(path) as im:
        im.load()  # decodes every pixel: a truncated file fails here
        assert im.format == "PNG"
        return im.size


def test_viz_curves_writes_a_png(tmp_path, capsys):
    run = tmp_path / "run"
    write_metrics(run)
    assert main(["viz", "curves", str(run)]) == 0
    assert _png_size(run / "plots" / "curves.png") == (1000, 700)
    assert "skipped 1 unreadable line" in capsys.readouterr().err


def test_plot_curves_tolerates_missing_keys(tmp_path):
    run = tmp_path / "run"
    write_metrics(run, n_steps=3, drop=("wd", "teacher_temp", "iteration"))
    out = plot_curves(run, tmp_path / "c.png")
    assert _png_size(out) == (1000, 700)


def test_curves_label_the_total_and_plot_each_logged_term():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [{"type": "step", "iteration": i, "loss": 8.0 - i, "dino": 7.0 - i, "koleo": -0.5, "ibot": 2.0}
               for i in range(3)]
    fig, ax = plt.subplots()
    try:
        plot_loss_terms(ax, records)
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["DINO", "KoLeo", "iBOT"]
        assert ax.get_title() == "total loss (blue) and its unweighted terms"
        ax.clear()
        plot_loss_terms(ax, [{"type": "step", "iteration": 0, "loss": 8.0}])  # DINO alone: the total only
        assert ax.get_legend() is None and ax.get_title() == "total loss"
    finally:
        plt.close(fig)


def test_viz_curves_errors(tmp_path, capsys):
    assert main(["viz", "curves", str(tmp_path)]) == 2
    assert "metrics.jsonl does not exist" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text('{"type": "epoch", "epoch": 0}\n')
    with pytest.raises(ValueError, match="no step records"):
        plot_curves(tmp_path, tmp_path / "c.png")


def test_attention_grid_size_and_layout():
    image = Image.new("RGB", (32, 32), "green")
    attn = torch.rand(3, 4, 4)
    grid = attention_grid(image, attn, panel_size=50)
    assert grid.size == grid_size(5, 50, 5)  # image + mean + 3 heads in one row
    assert grid.getpixel((10, 40)) == (0, 128, 0)  # the first panel is the plain image


def test_grid_columns():
    assert [grid_columns(n) for n in (1, 5, 8, 9, 14)] == [1, 5, 8, 5, 7]


def test_viz_attention_end_to_end(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", n_classes=1, per_class=1, size=48)
    ckpt = make_checkpoint(tmp_path / "run", img_size=32)
    image = data / "class0" / "img0.png"
    assert main(["viz", "attention", "--checkpoint", str(ckpt), "--image", str(image), "--panel-size", "64"]) == 0
    out = tmp_path / "run" / "plots" / "attention_img0.png"
    assert _png_size(out) == grid_size(2 + 3, 64, 5)  # ViT-Tiny has 3 heads


def test_viz_attention_errors(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "run", img_size=32)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    assert main(["viz", "attention", "--checkpoint", str(ckpt), "--image", str(bad)]) == 2
    assert "bad.jpg does not decode" in capsys.readouterr().err
    assert main(["viz", "attention", "--checkpoint", str(tmp_path / "x.pt"), "--image", str(bad)]) == 2
    assert "does not exist" in capsys.readouterr().err
