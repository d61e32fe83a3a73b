from pathlib import Path

import pytest
from _data_helpers import eurosat_root, image_folder, seco_tree, write_image
from fastdino.dataloading import ImageSource, SeCoSource, build_source, make_synthetic_dataset


def test_image_folder_has_labels_and_classes(tmp_path):
    image_folder(tmp_path, n_per_class=3, classes=("forest", "river"))
    write_image(tmp_path / "river" / "deeper" / "x.png")  # any depth inside a class
    src = build_source(tmp_path)
    assert isinstance(src, ImageSource) and src.layout == "folder" and len(src) == 7
    assert src.classes == ["forest", "river"] and src.labels == [0, 0, 0, 1, 1, 1, 1]
    assert all(Path(p).is_file() for p in src.paths)


def test_directory_of_images_at_any_depth(tmp_path):
    for i, rel in enumerate(["a.jpg", "b.JPEG", "x/c.png", "x/y/d.tif", "x/y/e.tiff"]):
        write_image(tmp_path / rel, seed=i)
    (tmp_path / "notes.txt").write_text("not an image")
    src = build_source(tmp_path)
    assert src.layout == "files" and len(src) == 5 and src.labels is None


def test_list_file_relative_to_root(tmp_path):
    image_folder(tmp_path / "images", n_per_class=4)
    (tmp_path / "train.txt").write_text("a/0.jpg\nb/1.jpg\n\na/2.jpg\n")
    src = build_source(tmp_path / "images", list_file=tmp_path / "train.txt")
    assert src.layout == "list" and [Path(p).name for p in src.paths] == ["0.jpg", "1.jpg", "2.jpg"]
    assert src.classes == ["a", "b"] and src.labels == [0, 1, 0]


def test_list_file_with_a_missing_image_names_it(tmp_path):
    image_folder(tmp_path / "images", n_per_class=2)
    (tmp_path / "l.txt").write_text("a/0.jpg\na/missing.jpg\n")
    with pytest.raises(FileNotFoundError, match=r"entry 2: image '.*a/missing\.jpg' does not exist"):
        build_source(tmp_path / "images", list_file=tmp_path / "l.txt")
    (tmp_path / "u.txt").write_text("a/0.jpg\na/0.bmp\n")
    with pytest.raises(ValueError, match=r"entry 2 'a/0\.bmp': unsupported file type"):
        build_source(tmp_path / "images", list_file=tmp_path / "u.txt")


def test_missing_empty_and_unsupported_inputs_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere' does not exist"):
        build_source(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images under .*empty' \\(it is empty\\)"):
        build_source(tmp_path / "empty")
    (tmp_path / "bmp" / "c").mkdir(parents=True)
    (tmp_path / "bmp" / "c" / "x.bmp").write_bytes(b"BM")
    with pytest.raises(ValueError, match=r"found only files of type \['\.bmp'\]"):
        build_source(tmp_path / "bmp")
    with pytest.raises(ValueError, match="layout='weird'"):
        build_source(tmp_path, layout="weird")
    with pytest.raises(ValueError, match="subset=0"):
        build_source(tmp_path, subset=0)


def test_subset_is_deterministic_and_the_right_size(tmp_path):
    image_folder(tmp_path, n_per_class=25, size=(8, 8))
    full = build_source(tmp_path)
    a, b = build_source(tmp_path, subset=0.1, seed=3), build_source(tmp_path, subset=0.1, seed=3)
    c = build_source(tmp_path, subset=0.1, seed=4)
    assert len(a) == 5 and a.paths == b.paths and a.paths != c.paths
    assert set(a.paths) <= set(full.paths) and a.paths == sorted(a.paths, key=full.paths.index)
    assert a.labels == [full.labels[full.paths.index(p)] for p in a.paths]


def test_seco_bands_layout_and_subset_by_location(tmp_path):
    seco_tree(tmp_path, n_locations=10, n_acq=3)
    src = build_source(tmp_path)  # auto-detected from <location>/<product>/B4.tif
    assert isinstance(src, SeCoSource) and src.num_locations == 10 and len(src) == 30
    acq = src.locations[0].acquisitions[0]
    assert acq.preview is None and [Path(f).name for f in acq.rgb_files] == ["B4.tif", "B3.tif", "B2.tif"]
    sub = build_source(tmp_path, subset=0.5, seed=1)
    assert 1 <= sub.num_locations < 10 and len(sub) == 3 * sub.num_locations  # whole locations, never split
    assert [loc.name for loc in sub.locations] == [loc.name for loc in build_source(tmp_path, subset=0.5, seed=1)
                                                    .locations]


def test_seco_previews(tmp_path):
    seco_tree(tmp_path, n_locations=2, n_acq=2, preview=True, bands=False)
    src = build_source(tmp_path, layout="seco")  # previews alone look like an ImageFolder: say "seco"
    assert len(src) == 4 and all(a.preview.endswith(".tif") and a.rgb_files == [a.preview] for a in src.acquisitions)
    write_image(tmp_path / "other" / "x" / "y.jpg")
    with pytest.raises(ValueError, match="no SeCo locations under .*other'"):
        build_source(tmp_path / "other", layout="seco")


def test_synthetic_dataset_is_an_image_folder(tmp_path):
    root = make_synthetic_dataset(tmp_path / "syn", n_images=12, size=32, seed=0)
    src = build_source(root)
    assert len(src) == 12 and src.classes == ["class_0", "class_1", "class_2", "class_3"]
    before = [Path(p).stat().st_mtime_ns for p in src.paths]
    make_synthetic_dataset(tmp_path / "syn", n_images=12, size=32, seed=0)  # same request: nothing rewritten
    assert [Path(p).stat().st_mtime_ns for p in src.paths] == before


def test_eurosat_lists():
    root = eurosat_root()
    if root is None:
        pytest.skip("EuroSAT not found (set FASTDINO_DATA to the folder holding eurosat/)")
    src = build_source(root / "images", list_file=root / "train.txt", subset=0.1, seed=0)
    assert len(src) == 1620 and len(src.classes) == 10 and src.classes[0] == "AnnualCrop"
