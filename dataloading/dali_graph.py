"""The DALI graph of the multi-view augmentation (kept in its own file: DALI's conditionals convert the Python
source of the pipeline function with autograph, so it must live in a real module)."""

from __future__ import annotations

from nvidia.dali import fn, pipeline_def, types

from .augment import AugmentationSpec, ViewGroup
from .dali_layout import view_slots

_INTERP = {"nearest": types.INTERP_NN, "bilinear": types.INTERP_LINEAR, "bicubic": types.INTERP_CUBIC}


def multiview_pipeline(spec: AugmentationSpec, *, n_slots: int, files_per_image: int, source, gpu: bool,
                       source_pixels: int, band_luts: list[list[int]] | None = None, **kwargs):
    """A built-able DALI Pipeline with one output per view. `source(batch_info)` returns
    n_slots * files_per_image lists of encoded files; files_per_image is 1 (RGB) or 3 (SeCo B4, B3, B2).
    band_luts: one 256-entry uint8 table per band file (SeCo's stretch, bands.band_lut), or None.
    source_pixels: the pixel count of a typical decoded image, to choose where the colour matrix runs."""
    mean = [255 * m for m in spec.mean]
    std = [255 * s for s in spec.std]

    @pipeline_def(enable_conditionals=True, exec_dynamic=True, **kwargs)
    def pipe():
        encoded = fn.external_source(source=source, num_outputs=n_slots * files_per_image, batch=True,
                                     batch_info=True, dtype=types.UINT8)
        images = [_decode(encoded[s * files_per_image:(s + 1) * files_per_image], gpu, band_luts)
                  for s in range(n_slots)]
        # The colour matrix is per-pixel affine, so it commutes with resampling (up to uint8 rounding): run it
        # at the smaller of the source and the view. Upsampled tiles (EuroSAT: 64 px -> 224) gain 2x overall.
        return tuple(_view(images[slot], group, mean, std, colour_first=source_pixels < group.size ** 2)
                     for group, slot in view_slots(spec, n_slots))

    return pipe()


def _decode(files, gpu: bool, band_luts):
    device = "mixed" if gpu else "cpu"
    if len(files) == 1:
        return fn.decoders.image(files[0], device=device, output_type=types.RGB)
    bands = [fn.decoders.image(f, device=device, output_type=types.GRAY) for f in files]
    if band_luts is not None:  # SeCo's per-band stretch, the same table the torch pipeline applies
        # (indexing, not zip(strict=True): DALI's autograph replaces zip with one that has no `strict`)
        bands = [fn.lookup_table(bands[i], keys=list(range(256)), values=band_luts[i], dtype=types.UINT8)
                 for i in range(len(bands))]
    return fn.cat(*bands, axis=2)  # B4, B3, B2 -> RGB


def _coin(p: float):
    return fn.random.coin_flip(probability=p)  # int32 0/1; arithmetic with floats promotes


def _view(image, g: ViewGroup, mean, std, colour_first: bool):
    if g.colour_before_crop:  # DINO-TP: colour, blur and solarize on the whole image, then the crop
        image = _blur_solarize(_colour(image, g), g)
    elif colour_first:
        image = _colour(image, g)
    img = fn.random_resized_crop(image, size=(g.size, g.size), random_area=list(g.scale),
                                 random_aspect_ratio=list(g.ratio), interp_type=_INTERP[g.interpolation],
                                 antialias=True, num_attempts=10)
    if not g.colour_before_crop:
        if not colour_first:
            img = _colour(img, g)
        img = _blur_solarize(img, g)
    if g.vflip_p == 0 and g.transpose_p == 0:  # DINO's views: the flip inside crop_mirror_normalize
        return fn.crop_mirror_normalize(img, dtype=types.FLOAT, output_layout="CHW", mean=mean, std=std,
                                        mirror=fn.random.coin_flip(probability=g.flip_p))
    return fn.crop_mirror_normalize(_square_symmetry(img, g), dtype=types.FLOAT, output_layout="CHW", mean=mean,
                                    std=std)


def _square_symmetry(img, g: ViewGroup):
    """Horizontal and vertical flips, then the transpose (the reference's order): with all three at p 0.5, each
    of the 8 symmetries of the square."""
    img = fn.flip(img, horizontal=fn.random.coin_flip(probability=g.flip_p),
                  vertical=fn.random.coin_flip(probability=g.vflip_p))
    if g.transpose_p > 0:
        if fn.random.coin_flip(probability=g.transpose_p):
            img = fn.transpose(img, perm=[1, 0, 2], output_layout="HWC")
    return img


def _blur_solarize(img, g: ViewGroup):
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
    return img


def _colour(img, g: ViewGroup):
    """Colour jitter with probability jitter_p, then grayscale: one colour matrix; masks turn factors into 1."""
    if g.jitter_p == 0 and g.grayscale_p == 0:
        return img  # DINO-TP's plain views: no colour matrix (color_twist would still round through YIQ)
    b, c, s, h = g.jitter
    on = _coin(g.jitter_p)
    brightness = 1 + on * (fn.random.uniform(range=[max(0.0, 1 - b), 1 + b]) - 1)
    contrast = 1 + on * (fn.random.uniform(range=[max(0.0, 1 - c), 1 + c]) - 1)
    saturation = 1 + on * (fn.random.uniform(range=[max(0.0, 1 - s), 1 + s]) - 1)
    hue = on * fn.random.uniform(range=[-h * 360, h * 360 + 1e-6])  # degrees; torchvision's h is turns
    saturation = saturation * (1 - _coin(g.grayscale_p))
    return fn.color_twist(img, brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
