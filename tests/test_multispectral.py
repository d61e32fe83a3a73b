"""Multispectral Sentinel-2 (#15): band metadata, readers, statistics, augmentations per band, both pipelines,
in_chans, RGB weights inflated to the bands, and train -> k-NN -> export -> attention picture end to end on
generated EuroSAT-MS-shaped GeoTIFFs and SeCo-shaped band trees."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

tifffile = pytest.importorskip("tifffile", reason="tifffile is a fastdino dependency: pip install tifffile")

from fastdino.dataloading import AugmentationSpec, build_pipeline, build_source, dali_available  # noqa: E402
from fastdino.dataloading.band_files import (  # noqa: E402
    ESA_ORDER,
    FILE_ORDERS,
    OP_BANDS,
    BandReader,
    band_list,
    canonical_band,
    read_tiff,
    resample_nearest,
    rgb_composite,
)
from fastdino.dataloading.ms_augment import colour_affine, colour_steps  # noqa: E402
from fastdino.dataloading.synthetic_ms import make_synthetic_ms_dataset  # noqa: E402
from fastdino.dataloading.torch_pipeline import ViewParams, sample_view_params  # noqa: E402

needs_dali = pytest.mark.skipif(not dali_available(),
                                reason="nvidia-dali is not installed (pip install 'fastdino[dali]')")
S2_12 = FILE_ORDERS["esa-12"]


def _spec(bands, mean=1000.0, std=500.0, **group):
    spec = AugmentationSpec.preset("tiny")
    if group:
        spec = dataclasses.replace(spec, global_views=[dataclasses.replace(g, **group) for g in spec.global_views],
                                   local_views=[dataclasses.replace(g, **group) for g in spec.local_views])
    return dataclasses.replace(spec, bands=tuple(bands), mean=(mean,) * len(bands), std=(std,) * len(bands))


@pytest.fixture(scope="module")
def euro(tmp_path_factory):
    return make_synthetic_ms_dataset(tmp_path_factory.mktemp("euro"), n_images=16, size=32)


@pytest.fixture(scope="module")
def seco(tmp_path_factory):
    return make_synthetic_ms_dataset(tmp_path_factory.mktemp("seco"), n_images=6, size=24, layout="seco")


def _euro_source(root):
    src = build_source(root)
    src.file_bands = FILE_ORDERS["eurosat-ms"]
    return src


# --- bands and files ------------------------------------------------------------------------------------------
def test_band_names_sets_and_the_eurosat_ms_file_order():
    assert [canonical_band(b) for b in ("B08", "b8a", "B08A", "B1", "B12")] == ["B8", "B8A", "B8A", "B1", "B12"]
    with pytest.raises(ValueError, match="unknown Sentinel-2 band 'B13'"):
        canonical_band("B13")
    assert band_list("s2") == ESA_ORDER and len(ESA_ORDER) == 13 and band_list("rgb") == ("B4", "B3", "B2")
    assert band_list("B4, B3,B2") == ("B4", "B3", "B2")
    with pytest.raises(ValueError, match="more than once"):
        band_list(["B4", "B04"])
    # EuroSAT-MS files hold B8A last (phelber/EuroSAT issue #7; torchgeo PR #2480)
    order = FILE_ORDERS["eurosat-ms"]
    assert order[-1] == "B8A" and order[8:12] == ("B9", "B10", "B11", "B12") and sorted(order) == sorted(ESA_ORDER)
    assert S2_12 == tuple(b for b in ESA_ORDER if b != "B10")  # SeCo's ALL_BANDS (seco_dataset.py L11)


@pytest.mark.parametrize("planar", ["contig", "separate"])
def test_13_band_uint16_tiff_reads_whole_where_pil_cannot(tmp_path, planar):
    from PIL import Image

    arr = np.random.default_rng(0).integers(0, 20000, (20, 24, 13)).astype(np.uint16)
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, arr if planar == "contig" else np.moveaxis(arr, -1, 0), photometric="minisblack",
                     planarconfig=planar)
    out = read_tiff(path)
    assert out.dtype == np.uint16 and np.array_equal(out, arr)
    with pytest.raises(Exception):  # noqa: B017 - PIL: "More samples per pixel than can be decoded: 13"
        with Image.open(path) as im:
            im.load()


def test_jpeg_compressed_seco_band_reads_as_pil_decodes_it(tmp_path):
    """SeCo's band files are JPEG-compressed uint8; tifffile needs imagecodecs for JPEG, so PIL reads them then."""
    from PIL import Image

    band = np.random.default_rng(1).integers(0, 255, (24, 24)).astype(np.uint8)
    path = tmp_path / "B4.tif"
    Image.fromarray(band, "L").save(path, compression="jpeg")
    with Image.open(path) as im:
        expected = np.asarray(im)
    out = read_tiff(path)
    assert out.shape == (24, 24, 1) and out.dtype == np.uint8 and np.array_equal(out[..., 0], expected)


def test_reader_orders_bands_by_name_and_names_the_file_on_errors(euro):
    path = sorted(euro.rglob("*.tif"))[0]
    raw = tifffile.imread(path)
    reader = BandReader(("B4", "B3", "B2", "B8A"), FILE_ORDERS["eurosat-ms"])
    out = reader(str(path))
    assert out.dtype == np.uint16 and np.array_equal(out, raw[..., [3, 2, 1, 12]])
    with pytest.raises(ValueError, match="order of its bands is not known; set data.file_bands"):
        BandReader(("B4",), None)(str(path))
    with pytest.raises(ValueError, match=f"{path.name} has 13 bands, but data.file_bands names 12"):
        BandReader(("B4",), S2_12)(str(path))


def test_band_tree_resampled_to_the_finest_grid_by_pixel_repetition(seco):
    src = build_source(seco)
    assert src.layout == "seco"
    acq = src.acquisitions[0]
    out = BandReader(S2_12, None)(acq)
    assert out.shape == (24, 24, 12) and out.dtype == np.uint8
    b1 = read_tiff(acq.bands["B1"])[..., 0]  # 60 m: 4 x 4 px -> every pixel repeated 6 x 6
    assert b1.shape == (4, 4) and np.array_equal(out[..., 0], np.kron(b1, np.ones((6, 6), np.uint8)))
    b4 = read_tiff(acq.bands["B4"])[..., 0]
    assert np.array_equal(out[..., 3], b4)  # 10 m: unchanged
    assert np.array_equal(resample_nearest(np.arange(6).reshape(2, 3), (4, 6)),
                          [[0, 0, 1, 1, 2, 2]] * 2 + [[3, 3, 4, 4, 5, 5]] * 2)


# --- statistics -----------------------------------------------------------------------------------------------
def test_stats_are_the_exact_mean_std_and_percentiles_of_every_pixel(euro, tmp_path):
    from fastdino.bands.stats import read_band_stats
    from fastdino.cli import main

    out = tmp_path / "stats.json"
    assert main(["stats", "--data", str(euro), "--file-bands", "eurosat-ms", "--output", str(out)]) == 0
    stats = json.loads(out.read_text())
    pixels = np.concatenate([tifffile.imread(p).reshape(-1, 13) for p in sorted(euro.rglob("*.tif"))])
    order = FILE_ORDERS["eurosat-ms"]
    assert list(stats["bands"]) == list(ESA_ORDER) and stats["n_images"] == 16 and stats["dtype"] == "uint16"
    for c, band in enumerate(order):
        s, x = stats["bands"][band], pixels[:, c].astype(np.float64)
        assert s["mean"] == pytest.approx(x.mean(), rel=1e-12) and s["std"] == pytest.approx(x.std(), rel=1e-9)
        assert [s["p02"], s["p98"]] == list(np.percentile(x, [2, 98], method="inverted_cdf"))
        assert (s["min"], s["max"]) == (x.min(), x.max())
    mean, std = read_band_stats(out, ["B8A", "B4"])
    assert mean == [stats["bands"]["B8A"]["mean"], stats["bands"]["B4"]["mean"]] and std[0] > 0
    with pytest.raises(FileNotFoundError, match="fastdino stats --data"):
        read_band_stats(tmp_path / "none.json", ["B4"], "DATA")
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"bands": {"B4": stats["bands"]["B4"]}}))
    with pytest.raises(ValueError, match=r"no entry for \['B8'\]"):
        read_band_stats(small, ["B4", "B8"])


# --- augmentations per band -----------------------------------------------------------------------------------
def test_op_table_and_colour_ops_touch_only_their_bands():
    assert {op for op, rule in OP_BANDS.items() if rule == "rgb"} == {"saturation", "hue", "grayscale"}
    assert OP_BANDS["solarize"] == "none" and OP_BANDS["brightness"] == OP_BANDS["blur"] == "all"
    bands = ESA_ORDER
    group = AugmentationSpec.preset("tiny").global_views[0]
    group = dataclasses.replace(group, jitter=(0.4, 0.4, 0.4, 0.1))
    mean = np.linspace(500, 3000, 13)
    rgb = [bands.index(b) for b in ("B4", "B3", "B2")]
    others = [i for i in range(13) if i not in rgb]
    p = ViewParams((0, 0, 8, 8), False, ([2, 3], 1.0, 1.0, 0.5, 0.2), True, None, True)  # saturation, hue, grey
    a, t = colour_affine(group, p, bands, mean)
    assert np.allclose(a[np.ix_(others, others)], np.eye(10)) and np.allclose(t, 0)
    assert np.allclose(a[np.ix_(others, rgb)], 0) and np.allclose(a[np.ix_(rgb, others)], 0)
    assert np.allclose(a[rgb[0]], a[rgb[1]]) and np.allclose(a[rgb[1]], a[rgb[2]])  # grayscale: R = G = B
    no_rgb = ("B8", "B11", "B12")  # nothing colour-like to change: the identity
    a, t = colour_affine(group, p, no_rgb, mean[:3])
    assert np.allclose(a, np.eye(3)) and np.allclose(t, 0)
    p = ViewParams((0, 0, 8, 8), False, ([1, 0], 1.3, 0.6, 1.0, 0.0), False, None, False)  # contrast, brightness
    a, t = colour_affine(group, p, bands, mean)
    assert np.allclose(a, np.diag([0.6 * 1.3] * 13)) and np.allclose(t, 1.3 * 0.4 * mean)  # around the band mean


def test_composed_colour_map_is_the_ops_one_by_one_in_the_drawn_order():
    rng = np.random.default_rng(3)
    bands, mean = ESA_ORDER, rng.uniform(300, 3000, 13)
    group = dataclasses.replace(AugmentationSpec.preset("dino").local_views[0], jitter_p=1.0, grayscale_p=0.5)
    x = rng.uniform(0, 6000, (13, 50))
    for _ in range(20):
        p = sample_view_params(group, 32, 32, rng)
        y = x.copy()
        for _name, a_i, t_i in colour_steps(group, p, bands, mean):
            y = a_i @ y + t_i[:, None]
        a, t = colour_affine(group, p, bands, mean)
        assert np.allclose(a @ x + t[:, None], y, rtol=1e-12, atol=1e-8)


# --- the two pipelines ----------------------------------------------------------------------------------------
def _first_batch(src, spec, backend, epoch=0, **kw):
    pipe = build_pipeline(src, spec, batch_size=4, backend=backend, num_threads=0 if backend == "torch" else 1, **kw)
    pipe.set_epoch(epoch)
    return next(iter(pipe))


def test_torch_pipeline_views_have_the_bands_and_uint16_values_survive(tmp_path):
    """A constant 3000 in every band (beyond 8 bits) comes out as (3000 - mean) / std: nothing was rounded to 8 bits."""
    (tmp_path / "c").mkdir()
    for i in range(4):
        tifffile.imwrite(tmp_path / "c" / f"{i}.tif", np.full((16, 16, 13), 3000, np.uint16), photometric="minisblack",
                         planarconfig="contig")
    src = _euro_source(tmp_path)
    spec = _spec(ESA_ORDER, mean=1000.0, std=500.0, jitter_p=0.0, grayscale_p=0.0)
    views = _first_batch(src, spec, "torch")
    assert [tuple(v.shape) for v in views] == [(4, 13, s, s) for s in spec.view_sizes]
    for v in views:
        assert torch.allclose(v, torch.full_like(v, 4.0), atol=1e-4)


@needs_dali
@pytest.mark.parametrize("data, symmetries", [("euro", False), ("seco", False), ("euro", True)])
def test_dali_and_torch_cut_the_same_views_from_the_same_seed(data, symmetries, euro, seco):
    """symmetries: every view also flipped vertically and transposed with p 0.5 (the 8 symmetries of the square)."""
    src = _euro_source(euro) if data == "euro" else build_source(seco)
    bands = ESA_ORDER if data == "euro" else S2_12
    extra = dict(vflip_p=0.5, transpose_p=0.5) if symmetries else {}
    spec = _spec(bands, *((1500.0, 700.0) if data == "euro" else (40.0, 20.0)), **extra)
    for epoch in (0, 1):
        ref, fast = _first_batch(src, spec, "torch", epoch), _first_batch(src, spec, "dali-cpu", epoch)
        for r, f in zip(ref, fast, strict=True):
            assert r.shape == f.shape and f.dtype == torch.float32
            # same crops, flips, colour maps and blur: only the resampling kernels differ (torch's bicubic a=-0.75)
            assert np.corrcoef(r.flatten(), f.flatten())[0, 1] > 0.995
            assert (r - f).abs().mean() < 0.02 and abs(r.std() - f.std()) < 0.02 * r.std()


@needs_dali
@pytest.mark.cuda
def test_dali_gpu_cuts_the_views_of_the_reference(euro):
    """The same graph with GPU operators (images moved to the GPU, parameters read as CPU arguments)."""
    src = _euro_source(euro)
    spec = _spec(ESA_ORDER, 1500.0, 700.0)
    ref = _first_batch(src, spec, "torch")
    pipe = build_pipeline(src, spec, batch_size=4, device="cuda", backend="dali-gpu", num_threads=1)
    pipe.set_epoch(0)
    for r, f in zip(ref, next(iter(pipe)), strict=True):
        assert f.device.type == "cuda" and f.shape == r.shape
        assert np.corrcoef(r.flatten(), f.cpu().flatten())[0, 1] > 0.995


@needs_dali
def test_dali_multispectral_resumes_mid_epoch_exactly(euro):
    src = _euro_source(euro)
    spec = _spec(ESA_ORDER, 1500.0, 700.0)

    def pipe():
        return build_pipeline(src, spec, batch_size=4, backend="dali-cpu", num_threads=1)

    first = pipe()
    first.set_epoch(1)
    it = iter(first)
    next(it)
    state = first.state_dict()
    expected = [torch.stack([v.sum() for v in b]) for b in it]
    resumed = pipe()
    resumed.set_epoch(1, 1, state)
    got = [torch.stack([v.sum() for v in b]) for b in resumed]
    assert len(got) == len(expected) == 3 and all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


@needs_dali
def test_dino_tp_on_band_trees_in_both_pipelines(seco):
    src = build_source(seco, layout="seco")
    spec = dataclasses.replace(AugmentationSpec.preset("dino-tp"), bands=S2_12, mean=(40.0,) * 12, std=(20.0,) * 12)
    spec = dataclasses.replace(spec, global_views=[dataclasses.replace(g, size=24) for g in spec.global_views],
                               local_views=[dataclasses.replace(g, size=16) for g in spec.local_views[:2]])
    ref = _first_batch(src, spec, "torch", temporal=True)
    fast = _first_batch(src, spec, "dali-cpu", temporal=True)
    for r, f in zip(ref, fast, strict=True):
        assert r.shape[1] == 12 and np.corrcoef(r.flatten(), f.flatten())[0, 1] > 0.995


@needs_dali
def test_prepare_writes_npy_that_read_as_the_tiffs(euro, tmp_path):
    from fastdino.dataloading.band_files import file_band_order

    from fastdino.cli import main

    out = tmp_path / "npy"
    assert main(["prepare", "--data", str(euro), "--file-bands", "eurosat-ms", "--output", str(out)]) == 0
    assert json.loads((out / "prepared.json").read_text())["bands"] == list(ESA_ORDER)
    assert file_band_order("eurosat-ms", out) == ESA_ORDER  # prepared.json wins over the named order
    tif = sorted(euro.rglob("*.tif"))[5]
    npy = out / tif.relative_to(euro).with_suffix(".npy")
    assert np.array_equal(np.load(npy), BandReader(ESA_ORDER, FILE_ORDERS["eurosat-ms"])(str(tif)))
    src = build_source(out)
    src.file_bands = file_band_order(None, out)
    spec = _spec(ESA_ORDER, 1500.0, 700.0)
    for a, b in zip(_first_batch(src, spec, "dali-cpu"), _first_batch(_euro_source(euro), spec, "dali-cpu"),
                    strict=True):
        assert torch.equal(a, b)


# --- models -----------------------------------------------------------------------------------------------------
def test_inflated_rgb_vit_computes_the_rgb_models_features_on_b4_b3_b2():
    from fastdino.models import create_backbone
    from fastdino.models.inflate import inflate_input_weight, inflate_state

    torch.manual_seed(0)
    rgb = create_backbone("vit_tiny", patch_size=16, img_size=32).eval()
    ms = create_backbone("vit_tiny", patch_size=16, img_size=32, in_chans=13).eval()
    assert ms.timm_kwargs["in_chans"] == 13 and "in_chans" not in rgb.timm_kwargs
    state, changed = inflate_state(rgb.timm_model.state_dict(), ESA_ORDER)
    assert changed == ["patch_embed.proj.weight"]
    ms.timm_model.load_state_dict(state)
    x = torch.randn(2, 13, 32, 32)
    rgb_x = x[:, [ESA_ORDER.index(b) for b in ("B4", "B3", "B2")]]
    with torch.no_grad():
        assert torch.allclose(ms(x), rgb(rgb_x), atol=1e-5)
        assert torch.allclose(ms.forward_views([x, x[..., :16, :16]]), rgb.forward_views([rgb_x, rgb_x[..., :16, :16]]),
                              atol=1e-5)
    w = torch.randn(8, 3, 7, 7)
    out = inflate_input_weight(w, ("B8", "B2", "B4"))  # present RGB bands only, in their places
    assert torch.equal(out[:, 1], w[:, 2]) and torch.equal(out[:, 2], w[:, 0]) and not out[:, 0].any()
    with pytest.raises(ValueError, match="none of B4, B3, B2"):
        inflate_input_weight(w, ("B8", "B11"))


def test_config_bands_set_in_chans_and_bad_values_name_the_key():
    from fastdino.config import ConfigError, config_from_dict
    from fastdino.run_config import load_config, validate

    c = load_config("tiny", overrides=["data.bands=[B4,B3,B2,B08]"])
    assert c.augment["bands"] == ["B4", "B3", "B2", "B8"] and c.model.in_chans == 4 and c.augment["mean"] == []
    assert load_config("tiny-ms").data.bands == "all"
    with pytest.raises(ConfigError, match="unknown Sentinel-2 band 'B13'"):
        load_config("tiny", overrides=["data.bands=[B13]"])
    assert load_config("tiny", overrides=["data.bands=[B4,B3,B2,B8]", "model.in_chans=7"]).model.in_chans == 4
    edited = c.to_dict()  # a hand-edited config.yaml whose in_chans contradicts its bands
    edited["model"]["in_chans"] = 3
    with pytest.raises(ConfigError, match="model.in_chans=3, but the data has 4 bands"):
        validate(config_from_dict(edited))
    assert load_config("tiny").model.in_chans == 3 and load_config("tiny").augment["bands"] == []


# --- end to end ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data", ["euro", "seco"])
def test_tiny_ms_trains_evaluates_exports_to_timm_and_draws_attention(data, euro, seco, tmp_path, capsys):
    """The issue's 'done when': train (tiny-ms), k-NN, export loaded by timm (its line says in_chans), attention."""
    import timm
    from PIL import Image

    from fastdino.cli import main

    root, n_bands = (euro, 13) if data == "euro" else (seco, 12)
    assert main(["stats", "--data", str(root), "--file-bands", "eurosat-ms"]) == 0
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny-ms", "--data", str(root), "--output", str(run), "--epochs", "1",
                 "--batch-size", "4", "--set", "data.num_threads=0", "data.backend=torch", "run.log_every=1",
                 "model.out_dim=256", "model.hidden_dim=64", "model.bottleneck_dim=32"]) == 0
    out = capsys.readouterr().out
    assert f"multispectral: {n_bands} bands" in out
    config = json.loads(json.dumps(__import__("yaml").safe_load((run / "config.yaml").read_text())))
    assert config["model"]["in_chans"] == n_bands and len(config["augment"]["mean"]) == n_bands
    ckpt = run / "checkpoints" / "last.pt"
    knn_data = root if data == "euro" else _prepared(root, tmp_path)
    assert main(["eval", "knn", "--checkpoint", str(ckpt), "--data", str(knn_data), "--k", "3"]) == 0
    assert "k-NN" in capsys.readouterr().out
    assert main(["eval", "linear", "--checkpoint", str(ckpt), "--data", str(knn_data), "--epochs", "3"]) == 0
    assert "fast probe" in capsys.readouterr().out
    weights = tmp_path / "b.safetensors"
    assert main(["export", "--checkpoint", str(ckpt), "--output", str(weights)]) == 0
    printed = capsys.readouterr().out
    assert f"in_chans={n_bands}" in printed
    meta = json.loads(weights.with_suffix(".json").read_text())
    assert meta["in_chans"] == n_bands and len(meta["bands"]) == n_bands and meta["normalisation"]["scale"] == 1
    model = timm.create_model(meta["architecture"], pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)),
                              num_classes=0, **meta["timm_kwargs"]).eval()
    assert model(torch.randn(1, n_bands, 32, 32)).shape == (1, 192)
    image = next(iter(sorted(knn_data.rglob("*.tif" if data == "euro" else "*.npy"))))
    png = tmp_path / "attention.png"
    assert main(["viz", "attention", "--checkpoint", str(ckpt), "--image", str(image), "--output", str(png)]) == 0
    assert Image.open(png).size[0] > 0


def _prepared(seco_root: Path, tmp_path: Path) -> Path:
    """A labelled folder of the band tree's products (.npy, one class per location) for k-NN."""
    from fastdino.cli import main

    out = tmp_path / "seco_npy"
    assert main(["prepare", "--data", str(seco_root), "--output", str(out)]) == 0
    return out


def test_rgb_composite_stretches_b4_b3_b2():
    arr = np.zeros((10, 10, 13), np.uint16)
    arr[..., ESA_ORDER.index("B4")] = np.arange(100).reshape(10, 10) * 30
    pic = rgb_composite(arr, ESA_ORDER)
    assert pic.dtype == np.uint8 and pic.shape == (10, 10, 3)
    assert pic[..., 0].max() == 255 and pic[..., 0].min() == 0 and not pic[..., 1:].any()


@pytest.mark.parametrize("kind", ["fastdino", "bare"])
def test_init_from_an_rgb_checkpoint_inflates_student_and_teacher(kind, tmp_path):
    """train --init-from: a fastdino RGB run or a bare RGB backbone state dict into a 13-band run."""
    from _eval_fixtures import make_checkpoint, tiny_config

    from fastdino.config import config_from_dict
    from fastdino.models.convert import init_twins, load_backbone
    from fastdino.train import build_twins

    path = make_checkpoint(tmp_path)
    rgb = load_backbone(path).backbone
    if kind == "bare":
        bare = tmp_path / "backbone.pth"
        torch.save(rgb.timm_model.state_dict(), bare)
        path = bare
    config = tiny_config()
    config["model"]["in_chans"] = 13
    config["augment"].update(bands=list(ESA_ORDER), mean=[0.0] * 13, std=[1.0] * 13)
    model = config_from_dict(config).model
    if kind == "bare":
        model.pos_embed_interp = "timm"
    student, teacher = build_twins(config_from_dict(config), torch.device("cpu"))
    lines = []
    init_twins(path, student, teacher, model, echo=lines.append, bands=ESA_ORDER)
    assert any("inflated" in line and "zeros for every other band" in line for line in lines)
    x = torch.randn(2, 13, 32, 32)
    rgb_x = x[:, [3, 2, 1]]  # B4, B3, B2 in ESA order
    with torch.no_grad():
        assert torch.allclose(teacher["backbone"].eval()(x), rgb.eval()(rgb_x), atol=1e-5)
    with pytest.raises(Exception, match="only RGB"):
        init_twins(path, student, teacher, model, echo=lines.append, bands=ESA_ORDER[:5])
