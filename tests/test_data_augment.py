import dataclasses
import json

import pytest
from fastdino.dataloading import AugmentationSpec, ViewGroup


def test_dino_mc_preset_matches_the_paper():
    spec = AugmentationSpec.preset("dino-mc")
    assert spec.view_sizes == [224, 224, 184, 164, 144, 124, 104, 84]
    assert (spec.n_global, spec.n_local, spec.n_views, spec.global_size) == (2, 6, 8, 224)
    g1, g2 = spec.global_views
    assert (g1.blur_p, g1.solarize_p, g2.blur_p, g2.solarize_p) == (1.0, 0.0, 0.1, 0.2)
    assert g1.scale == (0.32, 1.0) and g1.interpolation == "bicubic" and g1.jitter == (0.4, 0.4, 0.2, 0.1)
    for local in spec.local_views:
        assert local.scale == (0.05, 0.32) and local.interpolation == "bilinear"
        assert local.jitter == (0.8, 0.8, 0.8, 0.2) and local.blur_p == 0.5 and local.solarize_p == 0
    assert all(g.flip_p == 0.5 and g.jitter_p == 0.8 and g.grayscale_p == 0.2 for g in spec.views())
    assert spec.mean == (0.485, 0.456, 0.406)


def test_dino_and_tiny_presets():
    dino = AugmentationSpec.preset("dino")
    assert dino.view_sizes == [224, 224] + [96] * 8 and dino.local_views[0].scale == (0.05, 0.4)  # main_dino.py L112
    tiny = AugmentationSpec.preset("tiny")
    assert tiny.view_sizes[:2] == [64, 64] and all(s % 8 == 0 for s in tiny.view_sizes)
    assert AugmentationSpec.presets() == ["dino", "dino-mc", "dino-mc-resnet50", "dino-tp", "tiny"]
    with pytest.raises(ValueError, match="unknown augmentation preset 'nope'.*dino-mc"):
        AugmentationSpec.preset("nope")


def test_round_trip_through_a_plain_dict_and_json():
    spec = AugmentationSpec.preset("dino-mc")
    d = json.loads(json.dumps(dataclasses.asdict(spec)))  # tuples become lists, as in YAML
    assert AugmentationSpec.from_dict(d) == spec
    assert AugmentationSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("change, message", [
    (dict(size=0), r"global_views\[0\]\.size=0"),
    (dict(scale=(0.5, 0.2)), r"scale=\(0.5, 0.2\)"),
    (dict(flip_p=1.5), r"flip_p=1.5.*probability"),
    (dict(interpolation="lanczos"), r"interpolation='lanczos'"),
    (dict(jitter=(0.4, 0.4, 0.2, 0.7)), "hue strength"),
])
def test_invalid_values_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        AugmentationSpec([dataclasses.replace(ViewGroup(32), **change)])


def test_unknown_keys_and_empty_globals_are_errors():
    d = AugmentationSpec.preset("tiny").to_dict()
    d["local_views"][0]["blurr_p"] = 0.3
    with pytest.raises(ValueError, match=r"local_views\[0\]: unknown key\(s\) \['blurr_p'\]"):
        AugmentationSpec.from_dict(d)
    with pytest.raises(ValueError, match="unknown key"):
        AugmentationSpec.from_dict({"global_views": [], "colour": 1})
    with pytest.raises(ValueError, match="global_views is empty"):
        AugmentationSpec([])
