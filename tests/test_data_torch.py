"""The torchvision reference pipeline: parameter distributions, batch structure, sharding, bad input, DINO-TP."""

import dataclasses

import numpy as np
import pytest
import torch
from _data_helpers import (
    eurosat_root,
    image_folder,
    square_symmetries,
    truncate,
    value_bounds,
    which_symmetry,
    write_image,
)
from fastdino.dataloading import AugmentationSpec, ViewGroup, build_pipeline, build_source
from fastdino.dataloading.torch_pipeline import RankSampler, apply_view, sample_view_params
from PIL import Image

TINY = AugmentationSpec.preset("tiny")


def _draws(group, n=4000, width=64, height=64, seed=0):
    rng = np.random.default_rng(seed)
    return [sample_view_params(group, width, height, rng) for _ in range(n)]


@pytest.mark.parametrize("group", [TINY.global_views[0], TINY.local_views[0]], ids=["global", "local"])
def test_crop_area_fraction_stays_in_the_scale_range(group):
    fractions = np.array([p.crop[2] * p.crop[3] / (64 * 48) for p in _draws(group, width=64, height=48)])
    lo, hi = group.scale
    # Sides are rounded to whole pixels: allow that much, no more.
    assert fractions.min() >= lo * 0.85 and fractions.max() <= min(1.0, hi * 1.1)
    if hi <= 0.5:  # small crops always fit, so no rejection skews the draw: uniform in area
        assert abs(np.median(fractions) - (lo + hi) / 2) < 0.05 * (hi - lo)
    for p in _draws(group, n=200, width=64, height=48):
        top, left, h, w = p.crop
        assert 0 <= top and top + h <= 48 and 0 <= left and left + w <= 64


def test_flip_jitter_grayscale_blur_solarize_rates():
    n = 4000
    tol = 4 * np.sqrt(0.25 / n)  # four standard deviations of a rate estimate
    g1, g2 = AugmentationSpec.preset("dino-mc").global_views
    for group in (g1, g2):
        draws = _draws(group, n)
        assert abs(np.mean([p.flip for p in draws]) - 0.5) < tol
        assert abs(np.mean([p.jitter is not None for p in draws]) - 0.8) < tol
        assert abs(np.mean([p.grayscale for p in draws]) - 0.2) < tol
        assert abs(np.mean([p.blur_sigma is not None for p in draws]) - group.blur_p) < tol
        assert abs(np.mean([p.solarize for p in draws]) - group.solarize_p) < tol
    sigmas = [p.blur_sigma for p in _draws(g1, 1000)]
    assert 0.1 <= min(sigmas) and max(sigmas) <= 2.0
    factors = np.array([p.jitter[1:] for p in _draws(g1, 1000) if p.jitter is not None])
    assert (factors[:, 0] >= 0.6).all() and (factors[:, 0] <= 1.4).all() and (np.abs(factors[:, 3]) <= 0.1).all()


def test_apply_view_flips_and_grays_as_drawn():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    group = ViewGroup(16, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    base = sample_view_params(group, 16, 16, np.random.default_rng(0))
    plain = dataclasses.replace(base, flip=False, jitter=None, grayscale=False, blur_sigma=None, solarize=False)
    x = apply_view(img, group, plain, (0, 0, 0), (1, 1, 1))
    assert torch.allclose(x, torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255)
    assert torch.equal(apply_view(img, group, dataclasses.replace(plain, flip=True), (0,) * 3, (1,) * 3), x.flip(-1))
    gray = apply_view(img, group, dataclasses.replace(plain, grayscale=True), (0,) * 3, (1,) * 3)
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_square_symmetries_are_drawn_only_where_asked_and_uniformly():
    """flip, vflip and transpose at p 0.5: each of the 8 symmetries of the square with probability 1/8, applied as
    drawn; a group without them draws exactly what it drew before they existed (same generator stream)."""
    group = ViewGroup(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), interpolation="nearest", jitter_p=0.0,
                      grayscale_p=0.0, vflip_p=0.5, transpose_p=0.5)
    draws = _draws(group, n=4000, width=16, height=16)
    index = np.array([4 * p.flip + 2 * p.vflip + p.transpose for p in draws])
    counts = np.bincount(index, minlength=8) / len(index)
    assert np.abs(counts - 1 / 8).max() < 4 * np.sqrt((1 / 8) * (7 / 8) / len(index))
    plain = dataclasses.replace(group, vflip_p=0.0, transpose_p=0.0)
    assert all(not p.vflip and not p.transpose for p in _draws(plain, n=200, width=16, height=16))
    rng_off, rng_on = np.random.default_rng(3), np.random.default_rng(3)
    off, on = sample_view_params(plain, 16, 16, rng_off), sample_view_params(group, 16, 16, rng_on)
    # the new draws come after DINO's: switching them on changes no crop, flip or colour draw of the view ...
    assert dataclasses.replace(on, vflip=False, transpose=False) == off
    # ... and switched off they take no random numbers (had they been drawn anyway, both generators would agree)
    assert rng_off.random() != rng_on.random()
    arr = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    image = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    for p in draws[:64]:
        x = apply_view(Image.fromarray(arr), group, p, (0, 0, 0), (1, 1, 1))
        assert torch.equal(x, square_symmetries(image)[4 * p.flip + 2 * p.vflip + p.transpose])
        assert which_symmetry(x, image) == 4 * p.flip + 2 * p.vflip + p.transpose


def test_batches_have_the_spec_views_in_order(tmp_path):
    image_folder(tmp_path, n_per_class=10, size=(40, 30))  # not square, not the crop size
    pipe = build_pipeline(build_source(tmp_path), TINY, batch_size=6, device="cpu", backend="torch", num_threads=0)
    assert pipe.backend == "torch" and len(pipe) == 3 and pipe.num_skipped == 0
    batches = list(pipe)
    assert len(batches) == 3
    lo, hi = value_bounds(TINY)
    for views in batches:
        assert [tuple(v.shape) for v in views] == [(6, 3, s, s) for s in TINY.view_sizes]
        for v in views:
            assert v.dtype == torch.float32 and v.device.type == "cpu"
            assert (v >= lo).all() and (v <= hi).all() and v.std() > 0.1


def test_same_seed_same_views_whatever_the_worker_count_and_epochs_differ(tmp_path):
    image_folder(tmp_path, n_per_class=4, size=(24, 24))
    src = build_source(tmp_path)
    kw = dict(batch_size=4, device="cpu", backend="torch", seed=5)
    a = next(iter(build_pipeline(src, TINY, num_threads=0, **kw)))
    b = next(iter(build_pipeline(src, TINY, num_threads=2, **kw)))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    pipe = build_pipeline(src, TINY, num_threads=0, **kw)
    pipe.set_epoch(1)
    assert not torch.equal(next(iter(pipe))[0], a[0])


def test_ranks_get_disjoint_equal_shards_reshuffled_per_epoch():
    shards = [RankSampler(103, rank=r, world_size=4, seed=1) for r in range(4)]
    idx = [s.indices() for s in shards]
    assert all(len(i) == 25 for i in idx) and len(set(sum(idx, []))) == 100
    shards[0].set_epoch(1)
    assert shards[0].indices() != idx[0]
    with pytest.raises(ValueError, match="rank=4"):
        RankSampler(10, rank=4, world_size=4)


def test_batch_larger_than_a_shard_is_an_error(tmp_path):
    image_folder(tmp_path, n_per_class=2)
    with pytest.raises(ValueError, match="batch_size=3 is larger than the 2 images each of the 2 rank"):
        build_pipeline(build_source(tmp_path), TINY, batch_size=3, backend="torch", world_size=2, rank=1)


def test_grayscale_rgba_and_palette_files_become_rgb(tmp_path):
    for i, mode in enumerate(["L", "RGBA", "P", "RGB"]):
        write_image(tmp_path / f"{i}.png", (20, 20), mode, seed=i)
    views = next(iter(build_pipeline(build_source(tmp_path), TINY, batch_size=4, backend="torch", num_threads=0)))
    assert views[0].shape == (4, 3, 64, 64)


def test_corrupt_file_is_skipped_counted_and_named(tmp_path):
    image_folder(tmp_path, n_per_class=4)
    bad = truncate(tmp_path / "a" / "1.jpg")
    src = build_source(tmp_path)
    pipe = build_pipeline(src, TINY, batch_size=4, backend="torch", num_threads=0)
    with pytest.warns(RuntimeWarning, match=f"skipping corrupt or unreadable image '{bad}'"):
        batches = list(pipe)
    assert len(batches) == 2 and all(v.shape[0] == 4 for b in batches for v in b)  # batches stay full
    assert pipe.num_skipped == 1
    strict = build_pipeline(src, TINY, batch_size=8, backend="torch", num_threads=0, strict=True)
    with pytest.raises(RuntimeError, match=f"cannot read image '{bad}'"):
        list(strict)


def test_real_eurosat_images():
    root = eurosat_root()
    if root is None:
        pytest.skip("EuroSAT not found (set FASTDINO_DATA to the folder holding eurosat/)")
    src = build_source(root / "images", list_file=root / "val.txt", subset=0.005)
    pipe = build_pipeline(src, TINY, batch_size=9, backend="torch", num_threads=0)
    views = next(iter(pipe))
    lo, hi = value_bounds(TINY)
    assert [v.shape[-1] for v in views] == TINY.view_sizes and all(((v >= lo) & (v <= hi)).all() for v in views)
