"""The DALI graph of the multispectral views (its own module: DALI's conditionals convert the Python source of
the pipeline function with autograph). Inputs come from dali_ms.MSFeeder: the images ([H, W, C], the files' dtype)
and each view's drawn parameters; per view:

  resize of the drawn window to size x size (float32 out: a uint16 image is never rounded to 8 bits)
  -> Gaussian blur where drawn (DALI's default window 2 * ceil(3 sigma) + 1)
  -> the colour's 3 x 3 block on B4, B3, B2 (fn.coord_transform), put back in place
  -> the vertical flip and transpose where the group has them (with the horizontal flip then done here too)
  -> crop_mirror_normalize: flip where drawn, (x - mean') / std' per band and sample, HWC -> CHW, where the
     colour's per-band gain g and offset o are folded in: mean' = (mean - o) / g, std' = std / g.

The reference applies the colour before the blur (and, for a `colour_before_crop` view of DINO-TP, before the
crop); an affine colour map commutes with all three, so the order here gives the same views. A
`colour_before_crop` view blurs the whole image first; the feeder mirrors the crop window where the reference
flips the whole image before cutting it.
"""

from __future__ import annotations

from nvidia.dali import fn, pipeline_def, types

from .band_files import rgb_indices
from .dali_layout import has_colour, param_layout, view_slots

_INTERP = {"nearest": types.INTERP_NN, "bilinear": types.INTERP_LINEAR, "bicubic": types.INTERP_CUBIC}


def multispectral_pipeline(spec, *, n_slots: int, source, gpu: bool, **kwargs):
    """A built-able DALI Pipeline with one output per view, fed by `source` (an MSFeeder): per sample the images
    of its slots and one [views, P] array of the drawn parameters (dali_layout.param_layout)."""
    rgb = rgb_indices(tuple(spec.bands))
    rgb = sorted(rgb) if rgb is not None else None  # the order of the feeder's 3 x 3 block
    views = view_slots(spec, n_slots)
    layout = param_layout(len(spec.bands))
    mean, std = [float(m) for m in spec.mean], [float(s) for s in spec.std]
    n_bands = len(spec.bands)

    @pipeline_def(enable_conditionals=True, exec_dynamic=True, **kwargs)
    def pipe():
        inputs = fn.external_source(source=source, num_outputs=n_slots + 1, batch=True, batch_info=True)
        # HWC said explicitly: without a layout, gaussian_blur takes a 3-D array for a volume and blurs across bands
        images = [fn.reshape(inputs[s], layout="HWC") for s in range(n_slots)]
        images = [im.gpu() if gpu else im for im in images]
        params = inputs[n_slots]
        outs = []
        for v in range(len(views)):
            group, slot = views[v]
            row = params[v]
            drawn = {k: row[sl] for k, sl in layout.items()}
            outs.append(_view(images[slot], group, drawn, rgb, n_bands, mean, std))
        return tuple(outs)

    return pipe()


def _mix(img, block, block_t, rgb, n_bands):
    """The view's saturation, hue and grayscale: the 3 x 3 block on the RGB channels (`rgb`, sorted); every band's
    gain and offset are folded into crop_mirror_normalize's per-sample mean and std."""
    if rgb is None:
        return img
    lo, hi = rgb[0], rgb[-1] + 1
    if hi - lo == 3:  # B2, B3, B4 adjacent (ESA's order): one slice out, one cat back
        triple = fn.coord_transform(img[:, :, lo:hi], M=block, T=block_t)  # saturation, hue and grayscale
        pieces = ([img[:, :, :lo]] if lo > 0 else []) + [triple] + ([img[:, :, hi:]] if hi < n_bands else [])
        return fn.cat(*pieces, axis=2) if len(pieces) > 1 else triple
    triple = fn.coord_transform(fn.cat(*[img[:, :, c:c + 1] for c in rgb], axis=2), M=block, T=block_t)
    where = {c: k for k, c in enumerate(rgb)}
    return fn.cat(*[triple[:, :, where[c]:where[c] + 1] if c in where else img[:, :, c:c + 1]
                    for c in range(n_bands)], axis=2)


def _blur(img, blur, sigma):
    if blur:
        img = fn.gaussian_blur(img, sigma=sigma)
    return img


def _view(image, g, params, rgb, n_bands, mean, std):
    # The colour map is affine per pixel, so it commutes with the resize (weights summing to 1), the Gaussian blur
    # (per band, normalised, symmetric borders) and the flip: its gains and offsets go into the normalisation and
    # only the RGB block runs as an operator, where the reference applies the colour (before or after the crop).
    roi, sigma = params["roi"], params["sigma"][0]
    blur, mirror = params["blur"][0] > 0.5, fn.cast(params["mirror"][0], dtype=types.INT32)
    block = block_t = None
    if has_colour(g):
        mean, std = params["mean"], params["std"]  # per sample: (m - o) / g and s / g
        if rgb is not None:
            block, block_t = fn.reshape(params["block"], shape=[3, 3]), params["block_t"]
    if g.colour_before_crop:
        image = _blur(fn.cast(image, dtype=types.FLOAT), blur, sigma)
    img = fn.resize(image, roi_start=roi[0:2], roi_end=roi[2:4], roi_relative=False, size=[g.size, g.size],
                    interp_type=_INTERP[g.interpolation], antialias=True, dtype=types.FLOAT)
    if not g.colour_before_crop:
        img = _blur(img, blur, sigma)
    if block is not None:
        img = _mix(img, block, block_t, rgb, n_bands)
    if g.vflip_p == 0 and g.transpose_p == 0:
        return fn.crop_mirror_normalize(img, dtype=types.FLOAT, output_layout="CHW", mean=mean, std=std,
                                        mirror=mirror)
    # The symmetries of the square in the reference's order: both flips (they commute), then the transpose.
    img = fn.flip(img, horizontal=mirror, vertical=fn.cast(params["vflip"][0], dtype=types.INT32))
    if params["transpose"][0] > 0.5:
        img = fn.transpose(img, perm=[1, 0, 2], output_layout="HWC")
    return fn.crop_mirror_normalize(img, dtype=types.FLOAT, output_layout="CHW", mean=mean, std=std)
