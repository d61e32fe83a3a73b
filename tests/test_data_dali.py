"""The DALI pipeline (CPU operators here; the same graph runs with GPU operators on CUDA)."""

import dataclasses

import numpy as np
import pytest
import torch
from _data_helpers import (
    eurosat_root,
    image_folder,
    seco_tree,
    truncate,
    value_bounds,
    which_symmetry,
)
from fastdino.dataloading import AugmentationSpec, build_pipeline, build_source, dali_available
from fastdino.dataloading.dali_feed import looks_complete

pytestmark = pytest.mark.skipif(not dali_available(),
                                reason="nvidia-dali is not installed (pip install 'fastdino[dali]')")
TINY = AugmentationSpec.preset("tiny")


def _dali(src, spec=TINY, **kw):
    kw.setdefault("batch_size", 4)
    return build_pipeline(src, spec, device="cpu", backend="dali-cpu", num_threads=2, **kw)


def test_batches_have_the_spec_views_in_order_and_epochs_differ(tmp_path):
    image_folder(tmp_path, n_per_class=6, size=(40, 30))
    pipe = _dali(build_source(tmp_path), batch_size=5)
    assert pipe.backend == "dali-cpu" and len(pipe) == 2
    lo, hi = value_bounds(TINY)
    epochs = []
    for epoch in range(2):
        pipe.set_epoch(epoch)
        batches = list(pipe)
        assert len(batches) == 2
        for views in batches:
            assert [tuple(v.shape) for v in views] == [(5, 3, s, s) for s in TINY.view_sizes]
            for v in views:
                assert v.dtype == torch.float32 and v.device.type == "cpu"
                assert (v >= lo).all() and (v <= hi).all() and v.std() > 0.1
        epochs.append(batches[0][0])
    assert not torch.equal(epochs[0], epochs[1])
    assert pipe.num_skipped == 0
    next(iter(pipe))  # an epoch left early must not leak its queued batches into the next one
    assert len(list(pipe)) == 2


def test_grayscale_and_flip_rates():
    """Measured on the output: a grayscale view has equal channels; a flip mirrors a left-right ramp."""
    import tempfile
    from pathlib import Path

    from PIL import Image

    ramp = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (32, 1, 3))
    ramp[..., 0] //= 2  # a coloured ramp, so that only grayscale makes the channels equal
    group = dataclasses.replace(TINY.local_views[0], size=16, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_p=0.0,
                                blur_p=0.0, solarize_p=0.0, grayscale_p=0.2)
    spec = AugmentationSpec([dataclasses.replace(group, count=8)], mean=(0, 0, 0), std=(1, 1, 1))
    with tempfile.TemporaryDirectory() as d:
        for i in range(32):
            Image.fromarray(ramp).save(Path(d) / f"{i}.png")
        views = torch.cat([torch.cat(b) for b in _dali(build_source(d), spec, batch_size=32)])
    n = views.shape[0]  # 256 views
    tol = 4 * np.sqrt(0.25 / n)
    gray = (views[:, 0] - views[:, 2]).abs().amax(dim=(1, 2)) < 2 / 255  # DALI rounds YIQ: channels within 1
    flipped = views[:, 1, :, 0].mean(1) > views[:, 1, :, -1].mean(1)
    assert abs(gray.float().mean() - 0.2) < tol and abs(flipped.float().mean() - 0.5) < tol


@pytest.mark.parametrize("size, backend", [(16, "dali-cpu"), (12, "dali-cpu"),
                                           pytest.param(16, "dali-gpu", marks=pytest.mark.cuda)])
def test_square_symmetries_uniform_and_exact(tmp_path, size, backend):
    """flip, vflip, transpose at p 0.5: every view is one of the 8 symmetries of the tile, pixel for pixel, each
    about 1/8 of the time (odd-shaped batches: 3 views of `size` px a sample)."""
    from PIL import Image

    arr = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    for i in range(40):
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
    group = dataclasses.replace(TINY.local_views[0], size=size, count=3, scale=(1.0, 1.0), ratio=(1.0, 1.0),
                                interpolation="nearest", jitter_p=0.0, grayscale_p=0.0, blur_p=0.0,
                                solarize_p=0.0, flip_p=0.5, vflip_p=0.5, transpose_p=0.5)
    spec = AugmentationSpec([group], mean=(0, 0, 0), std=(1, 1, 1))
    image = torch.from_numpy(arr).permute(2, 0, 1).float()
    device = "cuda" if backend == "dali-gpu" else "cpu"
    pipe = build_pipeline(build_source(tmp_path), spec, batch_size=10, device=device, backend=backend, num_threads=2)
    index = []
    for epoch in range(4):
        pipe.set_epoch(epoch)
        for views in pipe:
            index += [which_symmetry(v.cpu() * 255, image, atol=1e-3) for view in views for v in view]
    index = np.array(index)
    assert (index >= 0).all(), "a view is not a symmetry of its tile"
    counts = np.bincount(index, minlength=8) / len(index)  # 480 views
    assert np.abs(counts - 1 / 8).max() < 4 * np.sqrt((1 / 8) * (7 / 8) / len(index))


def test_ranks_split_the_epoch(tmp_path):
    image_folder(tmp_path, n_per_class=5, size=(16, 16))
    src = build_source(tmp_path)
    assert [len(_dali(src, rank=r, world_size=2)) for r in (0, 1)] == [1, 1]
    with pytest.raises(ValueError, match="batch_size=6 is larger"):
        _dali(src, batch_size=6, world_size=2)


def test_cheap_check_spots_truncation(tmp_path):
    image_folder(tmp_path, n_per_class=1, size=(16, 16))
    good = (tmp_path / "a" / "0.jpg").read_bytes()
    assert looks_complete(np.frombuffer(good, np.uint8))
    assert not looks_complete(np.frombuffer(good[: len(good) // 2], np.uint8))
    assert not looks_complete(np.frombuffer(b"GIF89a....", np.uint8))


@pytest.mark.parametrize("add_eoi", [False, True], ids=["truncated", "damaged-inside"])
def test_corrupt_file_is_skipped_counted_and_named(tmp_path, add_eoi):
    """Truncated: caught by the cheap check. Damaged inside (end marker intact): the decoder fails, the batch is
    re-checked with PIL, the pipeline rebuilt, and the epoch goes on."""
    image_folder(tmp_path, n_per_class=4, size=(24, 24))
    bad = truncate(tmp_path / "b" / "2.jpg", keep=0.4, add_eoi=add_eoi)
    pipe = _dali(build_source(tmp_path))
    with pytest.warns(RuntimeWarning, match=f"skipping corrupt or unreadable image '{bad}'"):
        batches = list(pipe)
    assert len(batches) == 2 and all(v.shape[0] == 4 for b in batches for v in b)
    assert pipe.num_skipped == 1
    strict = _dali(build_source(tmp_path), strict=True)
    with pytest.raises(RuntimeError, match=str(bad)):
        list(strict)


def test_auto_picks_dali_on_cpu(tmp_path):
    image_folder(tmp_path, n_per_class=2, size=(16, 16))
    assert build_pipeline(build_source(tmp_path), TINY, batch_size=2, device="cpu").backend == "dali-cpu"
    with pytest.raises(ValueError, match="backend='fast'"):
        build_pipeline(build_source(tmp_path), TINY, batch_size=2, backend="fast")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
            build_pipeline(build_source(tmp_path), TINY, batch_size=2, backend="dali-gpu")


def test_real_eurosat_images():
    root = eurosat_root()
    if root is None:
        pytest.skip("EuroSAT not found (set FASTDINO_DATA to the folder holding eurosat/)")
    src = build_source(root / "images", list_file=root / "val.txt", subset=0.005)
    spec = AugmentationSpec.preset("dino-mc")
    views = next(iter(_dali(src, spec, batch_size=9)))
    lo, hi = value_bounds(spec)
    assert [v.shape[-1] for v in views] == spec.view_sizes and all(((v >= lo) & (v <= hi)).all() for v in views)


def test_auto_falls_back_to_torch_where_dali_cannot_read_the_tree(tmp_path, caplog):
    seco_tree(tmp_path / "a", n_locations=1, n_acq=2, preview=True, bands=False)
    seco_tree(tmp_path / "b", n_locations=1, n_acq=2)
    for part in ("a", "b"):  # locations with previews only next to locations with bands only
        for loc in (tmp_path / part).iterdir():
            loc.rename(tmp_path / f"{part}{loc.name}")
    src = build_source(tmp_path, layout="seco")
    with caplog.at_level("INFO", logger="fastdino.dataloading"):
        pipe = build_pipeline(src, TINY, batch_size=2, device="cpu", num_threads=0)
    assert pipe.backend == "torch" and "others only bands" in caplog.text
    with pytest.raises(RuntimeError, match="backend='dali-cpu' could not be built"):
        build_pipeline(src, TINY, batch_size=2, device="cpu", backend="dali-cpu")
