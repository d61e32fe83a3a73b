"""The DALI graph of the multi-view augmentation (kept in its own file: DALI's conditionals convert the Python
source of the pipeline function with autograph, so it must live in a real module)."""

from __future__ import annotations

from nvidia.dali import fn, pipeline_def, types

from .augment import AugmentationSpec, ViewGroup

_INTERP = {"nearest": types.INTERP_NN, "bilinear": types.INTERP_LINEAR, "bicubic": types.INTERP_CUBIC}


def multiview_pipeline(spec: AugmentationSpec, *, n_slots: int, files_per_image: int, source, gpu: bool,
                       source_pixels: int, **kwargs):
    """A built-able DALI Pipeline with one output per view. `source(batch_info)` returns
    n_slots * files_per_image lists of encoded files; files_per_image is 1 (RGB) or 3 (SeCo B4, B3, B2).
    source_pixels: the pixel count of a typical decoded image, to choose where the colour matrix runs."""
    from .dali_pipeline import view_slots

    mean = [255 * m for m in spec.mean]
    std = [255 * s for s in spec.std]

    @pipeline_def(enable_conditionals=True, exec_dynamic=True, **kwargs)
    def pipe():
        encoded = fn.external_source(source=source, num_outputs=n_slots * files_per_image, batch=True,
                                     batch_info=True, dtype=types.UINT8)
        images = [_decode(encoded[s * files_per_image:(s + 1) * files_per_image], gpu) for s in range(n_slots)]
        # The colour matrix is per-pixel affine, so it commutes with resampling (up to uint8 rounding): run it
        # at the smaller of the source and the view. Upsampled tiles (EuroSAT: 64 px -> 224) gain 2x overall.
        return tuple(_view(images[slot], group, mean, std, colour_first=source_pixels < group.size ** 2)
                     for group, slot in view_slots(spec, n_slots))

    return pipe()


def _decode(files, gpu: bool):
    device = "mixed" if gpu else "cpu"
    if len(files) == 1:
        return fn.decoders.image(files[0], device=device, output_type=types.RGB)
    bands = [fn.decoders.image(f, device=device, output_type=types.GRAY) for f in files]
    return fn.cat(*bands, axis=2)  # B4, B3, B2 -> RGB


def _coin(p: float):
    return fn.random.coin_flip(probability=p)  # int32 0/1; arithmetic with floats promotes


def _view(image, g: ViewGroup, mean, std, colour_first: bool):
    if colour_first:
        image = _colour(image, g)
    img = fn.random_resized_crop(image, size=(g.size, g.size), random_area=list(g.scale),
                                 random_aspect_ratio=list(g.ratio), interp_type=_INTERP[g.interpolation],
                                 antialias=True, num_attempts=10)
    if not colour_first:
        img = _colour(img, g)
    if g.blur_p >= 1:
        img = fn.gaussian_blur(img, sigma=fn.random.uniform(range=list(g.blur_sigma)))
    elif g.blur_p > 0:
        if fn.random.coin_flip(probability=g.blur_p):
            img = fn.gaussian_blur(img, sigma=fn.random.uniform(range=list(g.blur_sigma)))
    if g.solarize_p > 0:
        if fn.random.coin_flip(probability=g.solarize_p):
            # Solarize: invert pixels at or above the threshold; x ^ 255 == 255 - x for uint8.
            above = fn.cast(img >= g.solarize_threshold, dtype=types.UINT8)
            img = img ^ (above * types.Constant(255, dtype=types.UINT8))
    return fn.crop_mirror_normalize(img, dtype=types.FLOAT, output_layout="CHW", mean=mean, std=std,
                                    mirror=fn.random.coin_flip(probability=g.flip_p))


def _colour(img, g: ViewGroup):
    """Colour jitter with probability jitter_p, then grayscale: one colour matrix; masks turn factors into 1."""
    b, c, s, h = g.jitter
    on = _coin(g.jitter_p)
    brightness = 1 + on * (fn.random.uniform(range=[max(0.0, 1 - b), 1 + b]) - 1)
    contrast = 1 + on * (fn.random.uniform(range=[max(0.0, 1 - c), 1 + c]) - 1)
    saturation = 1 + on * (fn.random.uniform(range=[max(0.0, 1 - s), 1 + s]) - 1)
    hue = on * fn.random.uniform(range=[-h * 360, h * 360 + 1e-6])  # degrees; torchvision's h is turns
    saturation = saturation * (1 - _coin(g.grayscale_p))
    return fn.color_twist(img, brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
