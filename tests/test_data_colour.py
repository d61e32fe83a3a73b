"""What docs/data.md says about colour jitter in torchvision (the reference) and DALI (color_twist)."""

import itertools

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from fastdino.dataloading import dali_available


def _image(seed=0):
    # Mid-range values and mild factors: no step clamps, so only the order can make a difference.
    return 0.4 + 0.2 * torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(seed))


OPS = {
    "brightness": lambda x: TF.adjust_brightness(x, 1.2),
    "contrast": lambda x: TF.adjust_contrast(x, 0.8),
    "saturation": lambda x: TF.adjust_saturation(x, 1.3),
    "hue": lambda x: TF.adjust_hue(x, 0.08),
}


def _apply(x, names):
    for name in names:
        x = OPS[name](x)
    return x


def test_torchvision_brightness_contrast_saturation_commute_without_clamping():
    x = _image()
    results = [_apply(x, order) for order in itertools.permutations(["brightness", "contrast", "saturation"])]
    assert all(torch.allclose(r, results[0], atol=1e-5) for r in results)


def test_torchvision_hue_commutes_with_brightness_shifts_contrast_uniformly_not_saturation():
    x = _image(1)
    assert torch.allclose(_apply(x, ["hue", "brightness"]), _apply(x, ["brightness", "hue"]), atol=1e-5)
    # contrast blends towards the mean grey, which the HSV hue shift changes: the orders differ by a constant
    shift = _apply(x, ["hue", "contrast"]) - _apply(x, ["contrast", "hue"])
    assert shift.abs().max() > 1e-5 and (shift - shift.mean()).abs().max() < 1e-5
    diff = (_apply(x, ["hue", "saturation"]) - _apply(x, ["saturation", "hue"])).abs().max()
    assert diff > 1e-3


# DALI's color_twist (NVIDIA/DALI dali/operators/image/color/color_twist.h): RGB <-> YIQ matrices, hue a rotation
# of I/Q, saturation a scaling of I/Q, then contrast around half the range and brightness, one matrix.
_RGB2YIQ = np.array([[.299, .587, .114], [.596, -.274, -.321], [.211, -.523, .311]])
_YIQ2RGB = np.array([[1, .956, .621], [1, -.272, -.647], [1, -1.107, 1.705]])


def _dali_formula(x, brightness, contrast, saturation, hue_deg):
    h = np.deg2rad(hue_deg)
    hue = np.array([[1, 0, 0], [0, np.cos(h), np.sin(h)], [0, -np.sin(h), np.cos(h)]])
    sat = np.diag([1, saturation, saturation])
    m = brightness * contrast * _YIQ2RGB @ hue @ sat @ _RGB2YIQ
    out = x.astype(np.float64) @ m.T + (128 - 128 * contrast) * brightness
    return np.clip(np.round(out), 0, 255)


@pytest.mark.skipif(not dali_available(), reason="nvidia-dali is not installed")
def test_dali_colour_twist_is_one_affine_map_with_contrast_around_128():
    from nvidia.dali import fn, pipeline_def, types

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), np.full((8, 8, 3), 50, np.uint8)]
    params = [(1.3, 0.7, 1.4, 20.0), (1.0, 0.5, 1.0, 0.0)]

    def twist(img, brightness, contrast, saturation, hue):
        @pipeline_def(batch_size=1, num_threads=1, device_id=None)
        def pipe():
            x = fn.external_source(source=lambda: [img], batch=True, dtype=types.UINT8, layout="HWC")
            return fn.color_twist(x, brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)

        p = pipe()
        p.build()
        return np.asarray(p.run()[0][0])

    out = [twist(img, *prm) for img, prm in zip(images, params, strict=True)]
    for img, got, prm in zip(images, out, params, strict=True):
        assert np.abs(got.astype(int) - _dali_formula(img, *prm)).max() <= 1  # rounding
    # a uniform grey 50 at contrast 0.5: DALI pulls it towards 128 (89); torchvision's mean-centred contrast
    # (on the PIL image, as the torch pipeline runs it) leaves a uniform image as it is
    assert abs(int(out[1][0, 0, 0]) - 89) <= 1
    from PIL import Image

    assert np.asarray(TF.adjust_contrast(Image.fromarray(images[1]), 0.5)).max() == 50
