"""The DALI graph of the multispectral views (its own module: DALI's conditionals convert the Python source of
the pipeline function with autograph). Inputs come from dali_ms.MSFeeder: the images ([H, W, C], the files' dtype)
and each view's drawn parameters; per view:

  resize of the drawn window to size x size (float32 out: a uint16 image is never rounded to 8 bits)
  -> colour: x * gain + offset per band, then the 3 x 3 block on B4, B3, B2 (fn.coord_transform) put back in place
  -> Gaussian blur where drawn (DALI's default window 2 * ceil(3 sigma) + 1)
  -> crop_mirror_normalize: flip where drawn, (x - mean) / std per band, HWC -> CHW.

A `colour_before_crop` view (DINO-TP) runs colour and blur on the whole image first; the feeder then mirrors the
crop window where the reference flips the whole image before cutting it.
"""

from __future__ import annotations

from nvidia.dali import fn, pipeline_def, types

from .multispectral import rgb_indices

_INTERP = {"nearest": types.INTERP_NN, "bilinear": types.INTERP_LINEAR, "bicubic": types.INTERP_CUBIC}


def multispectral_pipeline(spec, *, n_slots: int, source, gpu: bool, **kwargs):
    """A built-able DALI Pipeline with one output per view, fed by `source` (an MSFeeder)."""
    from .dali_ms import view_outputs
    from .dali_pipeline import view_slots

    rgb = rgb_indices(tuple(spec.bands))
    per_view = view_outputs(rgb is not None)
    views = view_slots(spec, n_slots)
    mean, std = [float(m) for m in spec.mean], [float(s) for s in spec.std]
    n_bands = len(spec.bands)

    @pipeline_def(enable_conditionals=True, exec_dynamic=True, **kwargs)
    def pipe():
        inputs = fn.external_source(source=source, num_outputs=n_slots + per_view * len(views), batch=True,
                                    batch_info=True)
        # HWC said explicitly: without a layout, gaussian_blur takes a 3-D array for a volume and blurs across bands
        images = [fn.reshape(inputs[s], layout="HWC") for s in range(n_slots)]
        images = [im.gpu() if gpu else im for im in images]
        outs = []
        for v in range(len(views)):
            group, slot = views[v]
            params = list(inputs[n_slots + per_view * v: n_slots + per_view * (v + 1)])
            if gpu:  # the per-band gain and offset meet the image in arithmetic: same device (the rest are arguments)
                params[1], params[2] = params[1].gpu(), params[2].gpu()
            outs.append(_view(images[slot], group, params, rgb, n_bands, mean, std))
        return tuple(outs)

    return pipe()


def _colour(img, gain, offset, block, block_t, rgb, n_bands):
    img = img * gain + offset  # every band; B4, B3, B2 pass unchanged here (gain 1, offset 0)
    if rgb is None:
        return img
    triple = fn.cat(*[img[:, :, c:c + 1] for c in rgb], axis=2)
    triple = fn.coord_transform(triple, M=block, T=block_t)  # the view's saturation, hue and grayscale
    where = {c: k for k, c in enumerate(rgb)}
    return fn.cat(*[triple[:, :, where[c]:where[c] + 1] if c in where else img[:, :, c:c + 1]
                    for c in range(n_bands)], axis=2)


def _blur(img, blur, sigma):
    if blur:
        img = fn.gaussian_blur(img, sigma=sigma)
    return img


def _view(image, g, params, rgb, n_bands, mean, std):
    if rgb is not None:
        roi, gain, offset, block, block_t, blur, sigma, mirror = params
    else:
        (roi, gain, offset, blur, sigma, mirror), block, block_t = params, None, None
    if g.colour_before_crop:
        image = _blur(_colour(fn.cast(image, dtype=types.FLOAT), gain, offset, block, block_t, rgb, n_bands),
                      blur, sigma)
    img = fn.resize(image, roi_start=roi[0:2], roi_end=roi[2:4], roi_relative=False, size=[g.size, g.size],
                    interp_type=_INTERP[g.interpolation], antialias=True, dtype=types.FLOAT)
    if not g.colour_before_crop:
        img = _blur(_colour(img, gain, offset, block, block_t, rgb, n_bands), blur, sigma)
    return fn.crop_mirror_normalize(img, dtype=types.FLOAT, output_layout="CHW", mean=mean, std=std, mirror=mirror)
