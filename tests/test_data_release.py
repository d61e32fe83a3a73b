"""Data laid out as the releases are: SeCo band trees with an incomplete product, non-finite pixels, DINO-TP on
the wrong layout, locations mixing previews and band-only products, planar TIFFs under DALI."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _data_helpers import image_folder, seco_release_tree
from fastdino.dataloading import AugmentationSpec, build_pipeline, build_source, dali_available
from fastdino.dataloading.band_files import FILE_ORDERS, source_bands

tifffile = pytest.importorskip("tifffile", reason="tifffile is a fastdino dependency: pip install tifffile")
needs_dali = pytest.mark.skipif(not dali_available(), reason="nvidia-dali is not installed")
SECO_12 = FILE_ORDERS["esa-12"]


def _ms_spec(bands, **group) -> AugmentationSpec:
    spec = AugmentationSpec.preset("tiny")
    groups = dict(jitter_p=0.0, grayscale_p=0.0, **group)
    return dataclasses.replace(spec, global_views=[dataclasses.replace(g, **groups) for g in spec.global_views],
                               local_views=[dataclasses.replace(g, **groups) for g in spec.local_views],
                               bands=tuple(bands), mean=(50.0,) * len(bands), std=(20.0,) * len(bands))


# --- (a) `data.bands: all` on a band tree with one incomplete product ----------------------------------------------
@pytest.fixture
def seco_missing_b11(tmp_path):
    root = seco_release_tree(tmp_path / "seco", n_locations=3, n_acq=2, scale=6, compression="raw")
    first = sorted((root / "000000").iterdir())[0]  # the product read first: the one that used to decide "all"
    (first / "B11.tif").unlink()
    return root, first


def test_all_bands_never_shrink_for_one_incomplete_product(seco_missing_b11):
    root, _ = seco_missing_b11
    src = build_source(root, layout="seco", acquisitions="all")
    assert source_bands(src, None) == SECO_12  # 11 bands (B11 dropped) before


@pytest.mark.parametrize("backend", ["torch", pytest.param("dali-cpu", marks=needs_dali)])
def test_an_incomplete_product_is_a_corrupt_sample_skipped_counted_named(seco_missing_b11, backend):
    root, product = seco_missing_b11
    src = build_source(root, layout="seco", acquisitions="all")
    pipe = build_pipeline(src, _ms_spec(SECO_12), batch_size=2, backend=backend,
                          num_threads=0 if backend == "torch" else 1)
    with pytest.warns(RuntimeWarning, match=f"skipping corrupt or unreadable image '{product}'"):
        batches = [views for views in pipe]
    assert len(batches) == 3 and all(v.shape[1] == 12 for v in batches[0])
    assert pipe.num_skipped == 1 and pipe.skipped_files == {str(product)}


def test_an_incomplete_product_is_fatal_under_strict_and_named(seco_missing_b11):
    root, product = seco_missing_b11
    src = build_source(root, layout="seco", acquisitions="all")
    pipe = build_pipeline(src, _ms_spec(SECO_12), batch_size=6, backend="torch", num_threads=0, strict=True)
    with pytest.raises(RuntimeError, match=rf"{product.name}.*no band file for \['B11'\]"):
        next(iter(pipe))


def test_training_resolves_all_to_12_bands_when_the_first_product_lacks_one(seco_missing_b11, tmp_path):
    from fastdino.bands.resolve import resolve_multispectral
    from fastdino.bands.stats import STATS_FILE, write_stats
    from fastdino.run_config import load_config

    root, _ = seco_missing_b11
    write_stats({"bands": {b: {"mean": 50.0, "std": 20.0} for b in SECO_12}}, root / STATS_FILE)
    config = load_config("dino-mc-vits8", None, [f"data.path={root}", "data.bands=all", "data.layout=seco"])
    resolve_multispectral(config)  # "multispectral data ...: product ... has no band file for ['B11']" before
    assert config.augment["bands"] == list(SECO_12) and config.model.in_chans == 12


# --- (c) non-finite pixels -----------------------------------------------------------------------------------------
@pytest.fixture
def npy_with_nan(tmp_path):
    root = tmp_path / "arrays"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        np.save(root / f"{i}.npy", rng.uniform(0, 1, (16, 16, 3)).astype(np.float32))
    bad = root / "3.npy"
    arr = np.load(bad)
    arr[4, 5, 1] = np.nan
    np.save(bad, arr)
    return root, bad


def test_stats_refuses_non_finite_pixels_naming_the_file(npy_with_nan, capsys):
    from fastdino.cli import main

    root, bad = npy_with_nan
    code = main(["stats", "--data", str(root), "--file-bands", "B4,B3,B2"])
    err = capsys.readouterr().err
    assert code != 0 and str(bad) in err and "NaN" in err  # exit 0 and NaN in band_stats.json before
    assert not (root / "band_stats.json").exists()


def test_readers_treat_non_finite_pixels_as_corrupt(npy_with_nan):
    root, bad = npy_with_nan
    src = build_source(root)
    src.file_bands = ("B4", "B3", "B2")
    spec = _ms_spec(("B4", "B3", "B2"))
    pipe = build_pipeline(src, spec, batch_size=2, backend="torch", num_threads=0)
    with pytest.warns(RuntimeWarning, match=f"skipping corrupt or unreadable image '{bad}'"):
        batches = [views for views in pipe]
    assert pipe.num_skipped == 1 and all(torch.isfinite(v).all() for views in batches for v in views)
    strict = build_pipeline(src, spec, batch_size=6, backend="torch", num_threads=0, strict=True)
    with pytest.raises(RuntimeError, match=r"3\.npy.*non-finite"):
        next(iter(strict))


# --- (d) DINO-TP needs a SeCo tree ---------------------------------------------------------------------------------
def test_temporal_on_an_image_folder_is_one_clear_error(tmp_path):
    image_folder(tmp_path / "f", n_per_class=2)
    with pytest.raises(ValueError, match=r"data\.temporal.*SeCo tree of locations with dated acquisitions"):
        build_source(tmp_path / "f", temporal=True)  # AttributeError in fastdino train before


def test_temporal_on_an_image_folder_of_tiffs_forced_to_seco_is_one_clear_error(tmp_path):
    for c in ("AnnualCrop", "Forest"):  # EuroSAT-MS: <class>/<class>_<n>.tif, 13 bands
        (tmp_path / c).mkdir()
        for i in range(3):
            tifffile.imwrite(tmp_path / c / f"{c}_{i}.tif", np.zeros((8, 8, 13), np.uint16), photometric="minisblack")
    # "product '?' has no band file for [...] (it has [])" in the first worker before
    with pytest.raises(ValueError, match=r"data\.temporal.*dated acquisitions.*AnnualCrop_0\.tif"):
        build_source(tmp_path, layout="seco", temporal=True)


def test_temporal_accepts_the_release_layouts(tmp_path):
    seco_release_tree(tmp_path / "bands", n_locations=2, n_acq=2, scale=6, compression="raw")
    seco_release_tree(tmp_path / "previews", n_locations=2, n_acq=2, scale=6, compression="raw", preview=True,
                      bands=False)
    for tree in ("bands", "previews"):
        assert build_source(tmp_path / tree, layout="seco", temporal=True).num_locations == 2


def test_fastdino_train_dino_tp_on_an_image_folder_stops_before_any_work(tmp_path, capsys):
    from fastdino.cli import main

    image_folder(tmp_path / "f", n_per_class=4)
    code = main(["train", "--preset", "dino-tp-vits8", "--data", str(tmp_path / "f"), "--output",
                 str(tmp_path / "run"), "--set", "data.layout=auto", "run.device=cpu"])
    err = capsys.readouterr().err
    assert code != 0 and "data.temporal" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


# --- (h) a location mixing previewed and band-only products ----------------------------------------------------------
def test_a_location_with_previews_draws_only_from_them(tmp_path):
    root = seco_release_tree(tmp_path, n_locations=2, n_acq=3, scale=6, compression="raw", preview=True)
    loc0 = root / "000000"
    band_only = sorted(p for p in loc0.iterdir() if p.is_dir())[0]
    (loc0 / f"{band_only.name}.tif").unlink()  # its preview gone: a band-only product beside previewed ones
    loc1 = root / "000001"
    for preview in loc1.glob("*.tif"):  # a location of band products only keeps them all
        preview.unlink()
    src = build_source(root, layout="seco", acquisitions="all")
    by_name = {loc.name: loc.acquisitions for loc in src.locations}
    assert len(by_name["000000"]) == 2 and all(a.preview is not None for a in by_name["000000"])  # 3 before
    assert len(by_name["000001"]) == 3 and all(a.preview is None for a in by_name["000001"])


# --- (i) planar TIFFs under DALI -----------------------------------------------------------------------------------
def _planar_tree(root: Path, n_locations=2, n_acq=2, size=20) -> Path:
    geotags = [(33550, "d", 3, (10.0, 10.0, 0.0), False), (33922, "d", 6, (0, 0, 0, 5e5, 4e6, 0), False)]
    for loc in range(n_locations):
        for acq in range(n_acq):
            path = root / f"{loc:06d}" / f"2020{acq + 1:02d}15T083701_2020{acq + 1:02d}15T084525_T35TQ{loc:03d}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            rgb = np.zeros((3, size, size), np.uint8) + np.array([30 + 40 * loc, 20 + 50 * acq, 90], np.uint8)[:, None,
                                                                                                               None]
            tifffile.imwrite(path, rgb, photometric="rgb", planarconfig="separate", extratags=geotags)
    return root


@needs_dali
def test_dali_reads_planar_tiffs_quietly_and_says_so_once(tmp_path, capfd):
    root = _planar_tree(tmp_path / "planar")
    src = build_source(root, layout="seco", acquisitions="all")
    size = 20
    from fastdino.dataloading import ViewGroup

    spec = AugmentationSpec([ViewGroup(size, 1, (1.0, 1.0), (1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)],
                            mean=(0, 0, 0), std=(1, 1, 1))
    pipe = build_pipeline(src, spec, batch_size=2, backend="dali-cpu", num_threads=1)
    colours = set()
    for epoch in range(2):
        pipe.set_epoch(epoch)
        for (view,) in pipe:
            colours |= {tuple(int(round(x)) for x in (c * 255).tolist()) for c in view.mean(dim=(2, 3))}
    sys.stderr.flush()
    err = capfd.readouterr().err
    assert "Planar TIFFs are not supported" not in err and "TIFF_Warning" not in err  # 16 + 48 lines before
    assert colours == {(30 + 40 * loc, 20 + 50 * acq, 90) for loc in range(2) for acq in range(2)}
    assert len(pipe.notes) == 1 and "planar" in pipe.notes[0] and str(root) in pipe.notes[0]


@needs_dali
def test_train_log_says_planar_tiffs_once_per_run(tmp_path):
    from fastdino.run_config import load_config, validate
    from fastdino.train import train

    root = _planar_tree(tmp_path / "planar", n_locations=4, n_acq=1, size=16)
    c = load_config("dino-mc-vits8", overrides=["run.device=cpu", f"data.path={root}", "data.layout=seco",
                                                "data.backend=dali-cpu", "data.num_threads=1", "run.epochs=2",
                                                "run.batch_size=2", "data.acquisitions=all"])
    for group in c.augment["global_views"] + c.augment["local_views"]:
        group["size"] = max(8, group["size"] // 14)
    c.model.arch, c.model.img_size = "vit_tiny", 16
    c.model.out_dim, c.model.hidden_dim, c.model.bottleneck_dim = 64, 32, 16
    validate(c)
    train(c, tmp_path / "run", echo=lambda m: None)
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("planar TIFF") == 1  # 0 before (16 stderr lines per epoch instead)
