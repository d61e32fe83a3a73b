"""The BigEarthNet and OSCD readers on generated data in the datasets' own layouts, and the classification splits."""

import json

import numpy as np
import pytest
import torch
from _eval_fixtures import make_image_folder
from _finetune_fixtures import bigearthnet_patches, make_bigearthnet, make_oscd, write_band, write_lists

from fastdino.finetune.data_bigearthnet import (
    _GROUPED,
    BAND_STATS,
    CORINE_LABELS,
    LABELS_19,
    TO_19,
    BigEarthNetDataset,
    BigEarthNetSplit,
    multi_hot_19,
    read_rgb,
)
from fastdino.finetune.data_classify import read_splits
from fastdino.finetune.data_oscd import (
    QUANTILES,
    RELEASE,
    ChangeTiles,
    City,
    crop_padded,
    find_layout,
    read_city,
    read_city_list,
    tile_origins,
)


# --- BigEarthNet --------------------------------------------------------------------------------------------
def test_nineteen_class_nomenclature_from_the_43_corine_labels():
    assert len(CORINE_LABELS) == 43 and len(set(CORINE_LABELS)) == 43 and len(LABELS_19) == 19
    dropped = {name for name, index in TO_19.items() if index is None}
    # DINO-MC's get_multihot_new skips the names neither grouped nor in NEW_LABELS (bigearthnet_dataset.py L197-206)
    assert dropped == {"Airports", "Bare rock", "Burnt areas", "Construction sites", "Dump sites",
                       "Green urban areas", "Intertidal flats", "Mineral extraction sites", "Port areas",
                       "Road and rail networks and associated land", "Sport and leisure facilities"}
    assert {index for index in TO_19.values() if index is not None} == set(range(19))  # every class is reachable
    # docs/finetune.md: 22 names merge into 9 groups, 10 keep their name, 11 are dropped (GROUP_LABELS L87-110)
    assert (len(_GROUPED), len(set(_GROUPED.values())), len(set(LABELS_19) & set(CORINE_LABELS))) == (22, 9, 10)
    target = multi_hot_19(["Rice fields", "Salines", "Sea and ocean", "Estuaries", "Airports"], "here")
    expected = {LABELS_19.index(n) for n in ("Arable land", "Coastal wetlands", "Marine waters")}
    assert set(np.flatnonzero(target)) == expected


def test_unknown_bigearthnet_label_is_an_error_that_names_file_and_label():
    with pytest.raises(ValueError, match=r"x\.json: unknown class 'Sea and oceans'.*did you mean 'Sea and ocean'"):
        multi_hot_19(["Sea and oceans"], "x.json")


def test_rgb_is_b04_b03_b02_stretched_over_two_sigma(tmp_path):
    patch = tmp_path / "P_1"
    values = {"B04": BAND_STATS["B04"][0], "B03": sum(BAND_STATS["B03"]) * 3, "B02": 0}  # mean, far above, 0
    for band, v in values.items():
        write_band(patch / f"P_1_{band}.tif", np.full((6, 6), round(v)))
    rgb = read_rgb(patch)
    assert rgb.shape == (6, 6, 3) and rgb.dtype == np.uint8
    mean, std = BAND_STATS["B04"]
    assert rgb[0, 0, 0] == int((round(mean) - (mean - 2 * std)) / (4 * std) * 255)  # ~127: the mean is mid-range
    assert rgb[0, 0, 1] == 255  # clipped
    mean, std = BAND_STATS["B02"]
    assert rgb[0, 0, 2] == int((0 - (mean - 2 * std)) / (4 * std) * 255) == 79  # B02's mean - 2 std is negative


def test_split_reads_targets_excludes_flagged_patches_and_subsets_without_replacement(tmp_path):
    patches = bigearthnet_patches(10)
    names = list(patches)
    make_bigearthnet(tmp_path, patches, lists={"train": names})
    (tmp_path / "patches_with_cloud_and_shadow.csv").write_text(f"{names[3]}\n")
    split = BigEarthNetSplit.read(tmp_path, tmp_path / "train.txt")
    assert split.excluded == 1 and len(split.patches) == 9 and names[3] not in [p.name for p in split.patches]
    assert split.targets.shape == (9, 19)
    assert split.targets[0, LABELS_19.index("Marine waters")] == 1 and split.targets[0].sum() == 1
    sub = split.subset(0.5, seed=42)
    assert len(sub.patches) == 4 and len(set(sub.patches)) == 4
    assert sub.patches == sorted(sub.patches, key=split.patches.index)
    assert sub.patches == split.subset(0.5, seed=42).patches != split.subset(0.5, seed=1).patches
    x, y = BigEarthNetDataset(split, 16)[0]
    assert x.shape == (3, 16, 16) and 0 <= x.min() and x.max() <= 1 and torch.equal(y, torch.from_numpy(
        split.targets[0]))


def test_split_errors_name_the_missing_label_file_the_unknown_label_and_the_missing_patch(tmp_path):
    patches = bigearthnet_patches(3)
    names = list(patches)
    make_bigearthnet(tmp_path, patches, lists={"train": names})
    label_file = tmp_path / names[1] / f"{names[1]}_labels_metadata.json"
    label_file.unlink()
    with pytest.raises(FileNotFoundError, match=f"label file {label_file} does not exist"):
        BigEarthNetSplit.read(tmp_path, tmp_path / "train.txt")
    label_file.write_text(json.dumps({"labels": ["Coniferous forests"]}))
    with pytest.raises(ValueError, match="unknown class 'Coniferous forests'"):
        BigEarthNetSplit.read(tmp_path, tmp_path / "train.txt")
    (tmp_path / "train.txt").write_text("S2B_nowhere\n")
    with pytest.raises(FileNotFoundError, match="entry 1: patch folder .*S2B_nowhere does not exist"):
        BigEarthNetSplit.read(tmp_path, tmp_path / "train.txt")


# --- OSCD ---------------------------------------------------------------------------------------------------
def test_oscd_release_and_seco_layouts_are_both_found(tmp_path):
    make_oscd(tmp_path / "release", {"a": (20, 30), "b": (25, 25)}, train=["a"], test=["b"])
    layout = find_layout(tmp_path / "release")
    assert layout.images.name == f"{RELEASE}Images" and layout.labels["test"].name == f"{RELEASE}Test Labels"
    assert read_city_list(layout.lists["train"]) == ["a"]
    seco = tmp_path / "seco"
    (seco / "images").mkdir(parents=True)
    for city in ("a", "b"):
        (tmp_path / "release" / f"{RELEASE}Images" / city).rename(seco / "images" / city)
    (tmp_path / "release" / f"{RELEASE}Train Labels").rename(seco / "train_labels")
    (tmp_path / "release" / f"{RELEASE}Test Labels").rename(seco / "val_labels")
    (seco / "train.txt").write_text("a\n")
    (seco / "test.txt").write_text("b")
    layout = find_layout(seco)
    assert (layout.images, layout.labels["train"], layout.labels["test"]) == (
        seco / "images", seco / "train_labels", seco / "val_labels")
    city = read_city(layout.images, layout.labels["test"], "b")
    assert city.image1.shape == (25, 25, 3) and city.mask.shape == (25, 25) and city.mask.any()


def test_oscd_reader_stretches_quantiles_and_sources_agree(tmp_path):
    make_oscd(tmp_path, {"a": (20, 30)}, train=["a"], test=[], rect=True)
    layout = find_layout(tmp_path)
    bands = read_city(layout.images, layout.labels["train"], "a", "bands")
    rect = read_city(layout.images, layout.labels["train"], "a", "rect")
    assert np.array_equal(bands.image1, rect.image1) and np.array_equal(bands.image2, rect.image2)
    product = next((layout.images / "a" / "imgs_1").glob("*_B04.tif"))
    write_band(product, np.full((20, 30), QUANTILES["B04"][1]))  # the 98% quantile -> 255
    assert (read_city(layout.images, layout.labels["train"], "a").image1[..., 0] == 255).all()
    # Changed pixels are brighter in date 2 by construction of the generator.
    assert bands.image2[bands.mask].mean() > bands.image1[bands.mask].mean() + 50


def test_oscd_errors_for_mismatched_pairs_and_missing_masks(tmp_path):
    make_oscd(tmp_path, {"a": (20, 30)}, train=["a"], test=[])
    layout = find_layout(tmp_path)
    for band in ("B02", "B03", "B04"):
        path = next((layout.images / "a" / "imgs_2").glob(f"*_{band}.tif"))
        write_band(path, np.ones((20, 28)))
    with pytest.raises(ValueError, match=r"city 'a': mismatched image pair, date 1 is 30x20 px and date 2 28x20"):
        read_city(layout.images, layout.labels["train"], "a")
    (layout.labels["train"] / "a" / "cm" / "cm.png").unlink()
    with pytest.raises(FileNotFoundError, match="change mask .*cm.png does not exist"):
        read_city(layout.images, layout.labels["train"], "a", "bands")


def test_tiles_cover_the_image_like_pil_crop_and_augment_both_dates_and_mask_alike():
    assert tile_origins(100, 200, 96) == [(0, 0), (96, 0), (0, 96), (96, 96), (0, 192), (96, 192)]
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert crop_padded(a, 2, 3, 2).tolist() == [[11, 0], [0, 0]]
    rng = np.random.default_rng(0)
    mask = rng.random((64, 64)) > 0.5  # whole tiles: no zero padding, so date 2 = 255 - date 1 everywhere
    image = np.dstack([mask * 255, rng.integers(0, 255, (64, 64)), np.zeros((64, 64))]).astype(np.uint8)
    tiles = ChangeTiles([City("c", image, 255 - image, mask)], tile=32, augment=True)
    assert len(tiles) == 4
    for i in range(len(tiles)):
        for _ in range(4):
            x1, x2, m = tiles[i]
            assert torch.equal(x1[0], m[0]) and torch.allclose(x2, 1 - x1)


def test_classification_splits_index_classes_by_train_and_reject_unknown_classes(tmp_path):
    make_image_folder(tmp_path, n_classes=3, per_class=3, size=8)
    split_of = {f"class{c}/img{i}.png": ("train", "val", "test")[i] for c in range(3) for i in range(3)}
    lists = write_lists(tmp_path, split_of)
    splits, classes = read_splits(tmp_path, lists)
    assert classes == ["class0", "class1", "class2"]
    assert splits["test"].labels == [0, 1, 2] and len(splits["val"].paths) == 3
    lists["test"].write_text("class2/img2.png\nclass9/img0.png\n")
    (tmp_path / "class9").mkdir()
    (tmp_path / "class9" / "img0.png").write_bytes((tmp_path / "class2" / "img2.png").read_bytes())
    with pytest.raises(ValueError, match=r"test.txt: unknown class 'class9'"):
        read_splits(tmp_path, lists)
