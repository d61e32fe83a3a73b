"""The fine-tuning readers on data laid out as the releases are: band TIFFs of any planar layout, patches missing a
band file, split lists of bare file names (torchgeo's EuroSAT lists), OSCD without its city lists, and a run that
fails before training leaves no run folder behind."""

import json
import shutil

import numpy as np
import pytest
from _eval_fixtures import make_checkpoint, one_thread  # noqa: F401 (autouse)
from _finetune_fixtures import bigearthnet_patches, make_bigearthnet, make_oscd, write_band, write_planar_band
from PIL import Image

from fastdino.cli import main
from fastdino.eval.split_lists import read_image_list
from fastdino.finetune import common
from fastdino.finetune.data_bigearthnet import BigEarthNetSplit, read_rgb
from fastdino.finetune.data_classify import read_splits
from fastdino.finetune.data_oscd import RELEASE, find_layout, read_city, split_cities
from fastdino.finetune.rasters import read_band

SMALL = ["--img-size", "32", "--batch-size", "4", "--num-workers", "0", "--log-every", "1"]


@pytest.fixture
def checkpoint(tmp_path):
    return make_checkpoint(tmp_path / "run", img_size=32)


# --- one band reader ----------------------------------------------------------------------------------------
def test_band_files_tagged_planar_separate_read_like_plain_ones(tmp_path):
    values = (np.arange(20 * 30).reshape(20, 30) * 97 % 60000).astype(np.uint16)  # 16-bit range, not 8
    planar = write_planar_band(tmp_path / "planar.tif", values)
    with pytest.raises(ValueError, match="unknown raw mode"):  # what PIL makes of it
        np.asarray(Image.open(planar))
    band = read_band(planar)
    assert band.dtype == np.uint16 and np.array_equal(band, values)

    patches = bigearthnet_patches(1)
    root = make_bigearthnet(tmp_path / "ben", patches)
    patch = root / next(iter(patches))
    plain = read_rgb(patch)
    for name in ("B02", "B03", "B04"):
        path = patch / f"{patch.name}_{name}.tif"
        write_planar_band(path, read_band(path))
    assert np.array_equal(read_rgb(patch), plain)


def test_band_file_with_several_bands_or_no_tiff_is_an_error_naming_it(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "two.tif", np.zeros((2, 8, 8), np.uint16), planarconfig="separate",
                     photometric="minisblack")
    with pytest.raises(ValueError, match=r"two\.tif has shape \(8, 8, 2\); expected one band"):
        read_band(tmp_path / "two.tif")
    (tmp_path / "broken.tif").write_bytes(b"not a tiff")
    with pytest.raises(ValueError, match=r"band file .*broken\.tif does not decode"):
        read_band(tmp_path / "broken.tif")
    with pytest.raises(FileNotFoundError, match=r"band file .*nothing\.tif does not exist"):
        read_band(tmp_path / "nothing.tif")


# --- BigEarthNet: band files checked when the split is read ------------------------------------------------
def test_split_names_the_patches_missing_a_band_file_and_how_many(tmp_path):
    patches = bigearthnet_patches(5)
    names = list(patches)
    make_bigearthnet(tmp_path, patches, lists={"train": names})
    (tmp_path / names[1] / f"{names[1]}_B03.tif").unlink()
    (tmp_path / names[3] / f"{names[3]}_B02.tif").unlink()
    (tmp_path / names[3] / f"{names[3]}_B04.tif").unlink()
    with pytest.raises(FileNotFoundError) as error:
        BigEarthNetSplit.read(tmp_path, tmp_path / "train.txt")
    message = str(error.value)
    assert "2 of 5 patches" in message and "B04, B03, B02" in message
    assert f"{tmp_path / names[1]} has no {names[1]}_B03.tif" in message
    assert f"{tmp_path / names[3]} has no {names[3]}_B04.tif, {names[3]}_B02.tif" in message

    # The bands a multispectral backbone reads are checked instead of the RGB ones: B08 is there, B11 is not.
    assert len(BigEarthNetSplit.read(tmp_path, tmp_path / "train.txt", bands=("B8",)).patches) == 5
    with pytest.raises(FileNotFoundError, match=r"5 of 5 patches .* has no .*_B11\.tif"):
        BigEarthNetSplit.read(tmp_path, tmp_path / "train.txt", bands=("B8", "B11"))


def test_multilabel_failing_before_training_leaves_no_run_folder(tmp_path, checkpoint, capsys):
    patches = bigearthnet_patches(8)
    names = list(patches)
    root = make_bigearthnet(tmp_path / "ben", patches, lists={"train": names[:6], "test": names[6:]})
    (root / names[4] / f"{names[4]}_B02.tif").unlink()  # not the first patch: a read of item 0 does not see it
    out = tmp_path / "runs" / "ml"
    args = ["finetune", "multilabel", "--checkpoint", str(checkpoint), "--data", str(root), "--epochs", "1",
            "--output", str(out), *SMALL]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{root / names[4]} has no {names[4]}_B02.tif" in err and "1 of 6 patches" in err
    assert not (tmp_path / "runs").exists()  # nothing was created, so a rerun needs no --overwrite

    write_band(root / names[4] / f"{names[4]}_B02.tif", np.full((24, 24), 500))
    assert main(args) == 0
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "metrics.json").is_file()


def test_a_run_failing_in_its_first_step_removes_only_what_it_created(tmp_path, checkpoint, monkeypatch, capsys):
    patches = bigearthnet_patches(8)
    names = list(patches)
    root = make_bigearthnet(tmp_path / "ben", patches, lists={"train": names[:6], "test": names[6:]})

    def diverges(*args, **kwargs):
        raise FloatingPointError("loss is nan at epoch 1 step 1: lower --lr")

    monkeypatch.setattr(common, "train_epoch", diverges)
    base = ["finetune", "multilabel", "--checkpoint", str(checkpoint), "--data", str(root), "--epochs", "1", *SMALL]
    new = tmp_path / "new" / "ml"
    assert main([*base, "--output", str(new)]) == 2
    assert "loss is nan" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()

    empty = tmp_path / "empty"  # made by the user before the run: kept, and left empty
    empty.mkdir()
    assert main([*base, "--output", str(empty)]) == 2
    assert empty.is_dir() and not any(empty.iterdir())

    old = tmp_path / "old"  # --overwrite of an old run: its folder and the user's files in it stay
    (old / "notes.txt").parent.mkdir()
    (old / "notes.txt").write_text("mine")
    assert main([*base, "--output", str(old), "--overwrite"]) == 2
    assert sorted(p.name for p in old.iterdir()) == ["notes.txt"]


# --- split lists of bare file names (torchgeo's EuroSAT lists) ---------------------------------------------
def make_eurosat(root, suffix=".jpg", classes=("AnnualCrop", "Forest", "River"), per_class=3):
    """EuroSAT's layout: <root>/<Class>/<Class>_<i>.jpg (RGB) or .tif (EuroSAT-MS), i from 1."""
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(1, per_class + 1):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{c}_{i}{suffix}")
    return root


def test_bare_file_names_are_matched_by_name_and_ms_tifs_by_stem(tmp_path):
    rgb = make_eurosat(tmp_path / "2750")
    lists = {"train": tmp_path / "eurosat-train.txt", "test": tmp_path / "eurosat-test.txt"}
    lists["train"].write_text("AnnualCrop_1.jpg\nForest_2.jpg\nRiver_3.jpg\nAnnualCrop_2.jpg\n")
    lists["test"].write_text("Forest_1.jpg\nRiver_1.jpg\n")
    splits, classes = read_splits(rgb, lists)
    assert classes == ["AnnualCrop", "Forest", "River"]
    assert splits["train"].paths[:2] == [str(rgb / "AnnualCrop" / "AnnualCrop_1.jpg"), str(rgb / "Forest" /
                                                                                          "Forest_2.jpg")]
    assert splits["train"].labels == [0, 1, 2, 0] and splits["test"].labels == [1, 2]

    # EuroSAT-MS: the same lists name .jpg files; the .tif of that name is read (torchgeo's EuroSAT does the same)
    ms = make_eurosat(tmp_path / "tif", ".tif")
    splits, _ = read_splits(ms, lists)
    assert splits["test"].paths == [str(ms / "Forest" / "Forest_1.tif"), str(ms / "River" / "River_1.tif")]


def test_paths_and_bare_names_mix_and_an_ambiguous_or_missing_name_is_an_error(tmp_path):
    root = make_eurosat(tmp_path / "data")
    listing = tmp_path / "train.txt"
    listing.write_text("Forest/Forest_1.jpg\nRiver_2.jpg\n")
    source = read_image_list(root, listing)
    assert source.paths == [str(root / "Forest" / "Forest_1.jpg"), str(root / "River" / "River_2.jpg")]
    assert [source.classes[y] for y in source.labels] == ["Forest", "River"]

    shutil.copy(root / "River" / "River_2.jpg", root / "Forest" / "River_2.jpg")
    with pytest.raises(ValueError, match=r"train\.txt entry 2 'River_2\.jpg' matches 2 images under .*: "
                                         r"Forest/River_2\.jpg, River/River_2\.jpg"):
        read_image_list(root, listing)
    listing.write_text("Forest_1.jpg\nPasture_7.jpg\n")
    with pytest.raises(FileNotFoundError, match=r"train\.txt entry 2: no image named 'Pasture_7\.jpg'"):
        read_image_list(root, listing)
    listing.write_text("Forest/Forest_9.jpg\n")  # a path is not searched for: it must exist as written
    with pytest.raises(FileNotFoundError, match=r"entry 1: image .*Forest_9\.jpg' does not exist"):
        read_image_list(root, listing)


def test_eval_reads_bare_name_lists_too(tmp_path, capsys):
    from fastdino.eval.splits import load_split

    root = make_eurosat(tmp_path / "data")
    (tmp_path / "train.txt").write_text("AnnualCrop_1.jpg\nForest_1.jpg\nRiver_1.jpg\n")
    (tmp_path / "test.txt").write_text("River_2.jpg\n")
    split = load_split(root, tmp_path / "train.txt", tmp_path / "test.txt")
    assert split["test_paths"] == [str(root / "River" / "River_2.jpg")] and split["test_labels"] == [2]


# --- OSCD as released ---------------------------------------------------------------------------------------
def test_oscd_without_city_lists_takes_the_cities_of_the_label_folders(tmp_path):
    make_oscd(tmp_path, {"beirut": (20, 20), "aguasclaras": (20, 20), "dubai": (20, 20)},
              train=["beirut", "aguasclaras"], test=["dubai"])
    images = tmp_path / f"{RELEASE}Images"
    (images / "train.txt").unlink()
    (images / "test.txt").unlink()
    layout = find_layout(tmp_path)
    assert layout.lists == {}
    assert split_cities(layout, "train") == (["aguasclaras", "beirut"],
                                             f"{layout.labels['train']} (the cities with labels; no train.txt)")
    assert split_cities(layout, "test")[0] == ["dubai"]

    shutil.rmtree(tmp_path / f"{RELEASE}Train Labels")
    with pytest.raises(FileNotFoundError) as error:
        find_layout(tmp_path)
    message = str(error.value)
    assert "no train labels folder" in message and "train_labels/" in message and "--train-labels" in message
    assert f"train.txt in {images} or {tmp_path}" in message


def test_oscd_messages_name_each_place_once_and_suggest_the_rect_source(tmp_path):
    (tmp_path / "flat").mkdir()  # no Images folder: the root itself is searched, once
    with pytest.raises(FileNotFoundError) as error:
        find_layout(tmp_path / "flat")
    assert f"train.txt in {tmp_path / 'flat'})" in str(error.value)
    assert f"{tmp_path / 'flat'} or {tmp_path / 'flat'}" not in str(error.value)

    root = make_oscd(tmp_path / "oscd", {"a": (20, 20)}, train=["a"], test=[], rect=True)
    layout = find_layout(root)
    shutil.rmtree(layout.images / "a" / "imgs_1")
    suggestion = r"imgs_1 does not exist \(--source bands\); imgs_1_rect exists: pass --source rect"
    with pytest.raises(FileNotFoundError, match=suggestion):
        read_city(layout.images, layout.labels["train"], "a", "bands")
    assert read_city(layout.images, layout.labels["train"], "a", "rect").image1.shape == (20, 20, 3)


def test_change_trains_on_the_release_without_city_lists(tmp_path, checkpoint, capsys):
    root = make_oscd(tmp_path / "oscd", {"a": (40, 40), "b": (36, 30), "c": (33, 41)}, train=["a", "b"], test=["c"])
    for name in ("train.txt", "test.txt"):
        (root / f"{RELEASE}Images" / name).unlink()
    out = tmp_path / "ft"
    args = ["finetune", "change", "--checkpoint", str(checkpoint), "--data", str(root), "--epochs", "1",
            "--output", str(out), *SMALL]
    assert main(args) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["cities"] == {"train": ["a", "b"], "test": ["c"]}
    assert main([*args, "--resume"]) == 0  # the resumed run finds the same cities
