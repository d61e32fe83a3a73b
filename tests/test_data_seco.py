"""SeCo as the DINO-MC authors read it: band stretch, one acquisition per location, the location subset and
DINO-TP's views (WennyXY/DINO-MC data_process/, ServiceNow/seasonal-contrast datasets/). Trees are generated in the
release's layout (tests/_data_helpers.seco_release_tree)."""

import dataclasses

import numpy as np
import pytest
import torch
from _data_helpers import image_folder, seco_raw, seco_release_tree, temporal_sources
from fastdino.dataloading import AugmentationSpec, ViewGroup, build_pipeline, build_source, dali_available
from fastdino.dataloading.decode import load_rgb
from fastdino.dataloading.seco_stretch import band_lut, read_bands
from fastdino.dataloading.sources import location_in_subset
from fastdino.dataloading.torch_pipeline import apply_view, sample_view_params
from PIL import Image, ImageFilter

needs_dali = pytest.mark.skipif(not dali_available(), reason="nvidia-dali is not installed")
TP = AugmentationSpec.preset("dino-tp")


def seco_stretch(x, lo, hi):
    """seasonal-contrast datasets/seco_dataset.py L51-54, written out again (its quantiles are floats)."""
    return np.clip((np.asarray(x, np.uint8) - float(lo)) / (float(hi) - float(lo)) * 255.0, 0, 255).astype(np.uint8)


def plain(spec: AugmentationSpec, **change) -> AugmentationSpec:
    """The spec without any colour, blur, solarize or flip, normalised to 0-1: a view keeps its source's pixels."""
    off = dict(flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0, **change)
    return AugmentationSpec([dataclasses.replace(g, **off) for g in spec.global_views],
                            [dataclasses.replace(g, **off) for g in spec.local_views], mean=(0, 0, 0), std=(1, 1, 1))


def small(spec: AugmentationSpec, factor: int = 4) -> AugmentationSpec:
    """The spec with every view `factor` times smaller (CPU-cheap), all else kept."""
    def shrink(groups):
        return [dataclasses.replace(g, size=max(8, g.size // factor)) for g in groups]

    return AugmentationSpec(shrink(spec.global_views), shrink(spec.local_views), spec.mean, spec.std)


# --- band files --------------------------------------------------------------------------------------------
def test_stretch_table_is_secos_formula_with_secos_quantiles():
    # QUANTILES of seco_dataset.py L14-25 (and DINO-MC dino_dataset.py L19-30): min_q B2 3, B3 2, B4 0; max_q
    # B2 88, B3 103, B4 129.
    for band, (lo, hi) in {"B2": (3.0, 88.0), "B3": (2.0, 103.0), "B4": (0.0, 129.0)}.items():
        assert np.array_equal(band_lut(band), seco_stretch(np.arange(256), lo, hi)), band
    assert band_lut("B4")[129] == 255 and band_lut("B4")[43] == 85 and band_lut("B2")[3] == 0
    with pytest.raises(ValueError, match="no stretch known for band 'B8'"):
        band_lut("B8")


def test_band_products_are_stretched_previews_read_as_they_are(tmp_path):
    seco_release_tree(tmp_path, n_locations=2, n_acq=2, preview=True, scale=6, compression="tiff_lzw")
    acq = build_source(tmp_path, layout="seco").locations[1].acquisitions[1]
    raw = seco_raw(1, 1)
    want = [seco_stretch(raw["B4"], 0, 129), seco_stretch(raw["B3"], 2, 103), seco_stretch(raw["B2"], 3, 88)]
    bands_only = dataclasses.replace(acq, preview=None)
    assert np.array_equal(np.asarray(load_rgb(bands_only))[0, 0], want)  # raw values ~2x darker before the fix
    assert np.asarray(load_rgb(acq))[0, 0].tolist() == [int(raw[b] / 0.3) for b in ("B4", "B3", "B2")]
    assert read_bands(acq.bands, ("B8", "B4"), quantiles={"B8": (0, 255), "B4": (0, 129)}).shape == (44, 44, 2)
    with pytest.raises(ValueError, match="differ in size"):
        read_bands(acq.bands, ("B4", "B5"), stretch=False)  # 10 m and 20 m bands


def test_a_band_file_that_is_not_8_bit_is_named(tmp_path):
    seco_release_tree(tmp_path, n_locations=1, n_acq=1, scale=6, compression="raw")
    acq = build_source(tmp_path, layout="seco").locations[0].acquisitions[0]
    Image.fromarray(np.zeros((44, 44), np.uint16)).save(acq.bands["B3"])
    with pytest.raises(ValueError, match=r"B3\.tif' is mode 'I;16'.*8-bit"):
        load_rgb(acq)


def _full_image_spec(size: int) -> AugmentationSpec:
    """One view = the whole image at its own size, nothing else: what the pipeline decoded, exactly."""
    return AugmentationSpec([ViewGroup(size, 1, (1.0, 1.0), (1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)],
                            mean=(0, 0, 0), std=(1, 1, 1))


@pytest.mark.parametrize("backend", ["torch", pytest.param("dali-cpu", marks=needs_dali)])
def test_both_pipelines_give_secos_stretched_pixels(tmp_path, backend):
    """Generated band files with known, varied values: the view is SeCo's stretch of them, pixel for pixel."""
    rng = np.random.default_rng(0)
    raw = {}
    for loc in range(2):
        product = tmp_path / f"{loc:06d}" / "S2_product"
        product.mkdir(parents=True)
        raw[loc] = {b: rng.integers(0, 256, (24, 24), dtype=np.uint8) for b in ("B4", "B3", "B2")}
        for b, arr in raw[loc].items():
            Image.fromarray(arr, "L").save(product / f"{b}.tif")
    src = build_source(tmp_path, layout="seco", acquisitions="all")
    views = next(iter(build_pipeline(src, _full_image_spec(24), batch_size=2, backend=backend, num_threads=1)))
    wants = [np.dstack([seco_stretch(raw[loc][b], *q) for b, q in (("B4", (0, 129)), ("B3", (2, 103)),
                                                                     ("B2", (3, 88)))]) for loc in range(2)]
    got = [torch.round(v * 255).to(torch.uint8).permute(1, 2, 0).numpy() for v in views[0]]
    matched = sorted(i for g in got for i, w in enumerate(wants) if np.array_equal(g, w))
    assert matched == [0, 1]  # each sample is exactly one location's stretched bands


# --- which images: one acquisition per location, the location subset ---------------------------------------
def test_one_acquisition_per_location_drawn_once_per_seed(tmp_path):
    seco_release_tree(tmp_path, n_locations=12, n_acq=5, scale=6, compression="raw")
    every = build_source(tmp_path, layout="seco")
    one = build_source(tmp_path, layout="seco", acquisitions="one", seed=0)
    assert len(every) == 60 and len(one) == 12 and one.num_locations == 12  # an epoch: one image per location
    assert all(len(loc.acquisitions) == 1 for loc in one.locations)
    again = build_source(tmp_path, layout="seco", acquisitions="one", seed=0)
    assert one.paths == again.paths and one.paths != build_source(tmp_path, layout="seco", acquisitions="one",
                                                                  seed=1).paths
    picked = {a.name[4:6] for loc in one.locations for a in loc.acquisitions}
    assert len(picked) > 1  # not always the same date
    pipe = build_pipeline(one, plain(small(AugmentationSpec.preset("dino-mc"))), batch_size=4, backend="torch",
                          num_threads=0)
    assert len(pipe) == 3
    with pytest.raises(ValueError, match="acquisitions='two'"):
        build_source(tmp_path, layout="seco", acquisitions="two")


def test_subset_is_by_location_seeded_and_stable_when_the_tree_grows(tmp_path):
    seco_release_tree(tmp_path, n_locations=40, n_acq=1, scale=11, compression="raw", bands=True)
    full = build_source(tmp_path, layout="seco")
    sub = build_source(tmp_path, layout="seco", subset=0.25, seed=3)
    names = [loc.name for loc in sub.locations]
    assert 3 <= len(names) <= 20 and all(len(loc.acquisitions) == 1 for loc in sub.locations)
    assert names == [loc.name for loc in full.locations if loc.name in names]  # original order
    assert names != [loc.name for loc in build_source(tmp_path, layout="seco", subset=0.25, seed=4).locations]
    # 40 more locations: every old location keeps its decision
    seco_release_tree(tmp_path / "more", n_locations=40, n_acq=1, scale=11, compression="raw")
    for loc in (tmp_path / "more").iterdir():
        loc.rename(tmp_path / f"new{loc.name}")
    grown = [loc.name for loc in build_source(tmp_path, layout="seco", subset=0.25, seed=3).locations]
    assert [n for n in grown if not n.startswith("new")] == names and len(grown) > len(names)
    smaller = [loc.name for loc in build_source(tmp_path, layout="seco", subset=0.1, seed=3).locations]
    assert set(smaller) <= set(grown)
    # the fraction: 10,000 names, 10% +- 4 standard deviations
    kept = sum(location_in_subset(f"{i:06d}", 0.1, seed=0) for i in range(10_000))
    assert abs(kept - 1000) < 4 * np.sqrt(10_000 * 0.1 * 0.9)
    seco_release_tree(tmp_path / "two", n_locations=2, n_acq=1, scale=11, compression="raw")
    with pytest.raises(ValueError, match="keeps none of the 2 SeCo locations"):
        build_source(tmp_path / "two", layout="seco", subset=1e-6)


# --- DINO-TP ------------------------------------------------------------------------------------------------
def test_dino_tp_preset_is_dino_mcs_tp():
    """DINO-MC data_process/dino_augmentation.py L70-103 with dino_dataset.py L97-126; see docs/data.md."""
    assert TP.view_sizes == [224, 224, 224, 184, 164, 144, 124, 104, 84] and TP.n_global == 3 and TP.n_dates == 3
    g1, g2, g3 = TP.global_views
    assert [g.date for g in TP.views()] == [1, 2, 0] + [0] * 6
    for g in (g1, g3):  # MCTemporal.augment, on the whole image before the crop
        assert g.colour_before_crop and (g.jitter, g.jitter_p, g.grayscale_p, g.blur_p, g.flip_p) == (
            (0.4, 0.4, 0.4, 0.1), 0.8, 0.2, 0.5, 0.5)
    for g in [g2, *TP.local_views]:  # nothing but the crop
        assert (g.jitter_p, g.grayscale_p, g.blur_p, g.flip_p, g.solarize_p) == (0, 0, 0, 0, 0)
    assert all(g.scale == (0.32, 1.0) and g.interpolation == "bicubic" for g in TP.global_views)
    assert all(g.scale == (0.05, 0.32) and g.interpolation == "bilinear" for g in TP.local_views)


def test_colour_before_crop_blurs_and_jitters_the_whole_image():
    """DINO-TP augments the 264 px image, then crops: the blur radius is in source pixels, and the colour of a
    crop is that of the jittered image (dino_dataset.py L121-123 before dino_augmentation.py L98-100)."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    group = ViewGroup(24, 1, (0.5, 0.5), colour_before_crop=True, blur_p=1.0, jitter_p=1.0, grayscale_p=0.0,
                      flip_p=1.0)
    p = sample_view_params(group, 48, 48, np.random.default_rng(1))
    out = apply_view(img, group, p, (0, 0, 0), (1, 1, 1))
    # the same steps written out: jitter (in the drawn order), blur, flip, then crop
    import torchvision.transforms.functional as TF

    order, b, c, s, h = p.jitter
    x = img
    for fn in order:
        x = [lambda y: TF.adjust_brightness(y, b), lambda y: TF.adjust_contrast(y, c),
             lambda y: TF.adjust_saturation(y, s), lambda y: TF.adjust_hue(y, h)][fn](x)
    x = TF.hflip(x.filter(ImageFilter.GaussianBlur(radius=p.blur_sigma)))
    top, left, hh, ww = p.crop
    x = TF.resized_crop(x, top, left, hh, ww, [24, 24], TF.InterpolationMode.BICUBIC, antialias=True)
    assert torch.equal(out, TF.to_tensor(x))
    crop_first = apply_view(img, dataclasses.replace(group, colour_before_crop=False), p, (0, 0, 0), (1, 1, 1))
    assert not torch.allclose(out, crop_first, atol=0.02)  # the order matters for the blur


def _tp_sources(backend, tmp_path, n_locations, n_acq, epochs, preview=False):
    seco_release_tree(tmp_path, n_locations=n_locations, n_acq=n_acq, preview=preview, bands=not preview, scale=6,
                      compression="jpeg")
    spec = plain(small(TP, 8))
    pipe = build_pipeline(build_source(tmp_path, layout="seco"), spec, batch_size=n_locations, backend=backend,
                          num_threads=1, temporal=True, seed=1)
    assert len(pipe) == 1  # one sample per location
    found = []
    for epoch in range(epochs):
        pipe.set_epoch(epoch)
        views = next(iter(pipe))
        assert [v.shape[-1] for v in views] == spec.view_sizes
        found += list(zip(*temporal_sources(views, n_locations, n_acq, preview), strict=True))
    return found


@pytest.mark.parametrize("backend, preview", [("torch", False), ("torch", True),
                                              pytest.param("dali-cpu", False, marks=needs_dali),
                                              pytest.param("dali-cpu", True, marks=needs_dali)])
def test_dino_tp_dates_drawn_with_replacement_locals_from_the_third_global(tmp_path, backend, preview):
    samples = _tp_sources(backend, tmp_path, n_locations=16, n_acq=2, epochs=3 if backend == "torch" else 2,
                          preview=preview)
    same_12, same_13 = [], []
    for views in samples:  # (location, acquisition) per view
        assert None not in views and len({loc for loc, _ in views}) == 1  # one location per sample
        acq = [a for _, a in views]
        assert len(set(acq[3:])) == 1 and acq[3] == acq[2]  # every local view: the third global view's date
        same_12.append(acq[0] == acq[1])
        same_13.append(acq[0] == acq[2])
    # with replacement among 2 dates: two draws agree half the time (0 for distinct dates)
    tol = 4 * np.sqrt(0.25 / len(samples))
    assert abs(np.mean(same_12) - 0.5) < tol and abs(np.mean(same_13) - 0.5) < tol


@pytest.mark.parametrize("backend", ["torch", pytest.param("dali-cpu", marks=needs_dali)])
def test_dino_tp_colour_only_on_the_first_and_third_global_view(tmp_path, backend):
    seco_release_tree(tmp_path, n_locations=24, n_acq=3, scale=6, compression="raw")
    spec = small(TP, 8)
    spec = AugmentationSpec(spec.global_views, spec.local_views, mean=(0, 0, 0), std=(1, 1, 1))
    pipe = build_pipeline(build_source(tmp_path, layout="seco"), spec, batch_size=24, backend=backend, num_threads=1,
                          temporal=True)
    views = next(iter(pipe))
    sources = temporal_sources(views, 24, 3)
    assert all(s is not None for v in (1, *range(3, 9)) for s in sources[v])  # untouched colours
    changed = [np.mean([s is None for s in sources[v]]) for v in (0, 2)]
    # jitter p 0.8 or grayscale p 0.2 changes a constant colour: about 84% of views
    assert all(0.5 < c for c in changed), changed
    blurred_flat = [float(v.std(dim=(2, 3)).max()) for v in views]  # constant images stay constant under blur
    assert max(blurred_flat) < 2 / 255


def test_temporal_needs_a_spec_with_dates(tmp_path):
    seco_release_tree(tmp_path, n_locations=2, n_acq=2, scale=6, compression="raw")
    src = build_source(tmp_path, layout="seco")
    with pytest.raises(ValueError, match="every view of this AugmentationSpec has date 0"):
        build_pipeline(src, AugmentationSpec.preset("dino-mc"), batch_size=2, backend="torch", temporal=True)
    image_folder(tmp_path / "f", n_per_class=2)
    with pytest.raises(ValueError, match="temporal=True .* needs a SeCo source"):
        build_pipeline(build_source(tmp_path / "f"), TP, batch_size=2, backend="torch", temporal=True)


# --- end to end ---------------------------------------------------------------------------------------------
def test_fastdino_train_dino_tp_preset_on_a_seco_release_tree(tmp_path, capsys, monkeypatch):
    """`fastdino train --preset dino-tp-vits8` on band files in SeCo's layout: 3 teacher views, 9 views, a
    sample per location. The preset's views are kept but 7x smaller (a config file), the model is a ViT-Tiny/8."""
    import json

    import yaml

    from fastdino.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("FASTDINO_CACHE", str(tmp_path / "cache"))
    data = seco_release_tree(tmp_path / "seco", n_locations=4, n_acq=5, scale=4)
    aug = small(TP, 7).to_dict()
    (tmp_path / "small.yaml").write_text(yaml.safe_dump({"augment": {k: aug[k] for k in ("global_views",
                                                                                         "local_views")}}))
    run = tmp_path / "run"
    try:
        code = main(["train", "--preset", "dino-tp-vits8", "--config", str(tmp_path / "small.yaml"), "--data",
                     str(data), "--output", str(run), "--epochs", "1", "--batch-size", "2", "--set",
                     "model.arch=vit_tiny", "model.img_size=32", "model.out_dim=128", "model.hidden_dim=32",
                     "model.bottleneck_dim=16", "data.num_threads=0", "data.backend=torch", "run.log_every=1",
                     "run.device=cpu"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    out = capsys.readouterr().out
    assert "data: 4 images" in out and "views [32, 32, 32, 26, 23, 20, 17, 14, 12]" in out
    steps = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == "step"]
    assert len(steps) == 2 and all(np.isfinite(r["loss"]) for r in steps)  # 4 locations / batch 2
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["temporal"] and [g["date"] for g in saved["augment"]["global_views"]] == [1, 2, 0]
