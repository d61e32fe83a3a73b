"""DINO's view augmentations on multispectral images (float reflectances, any number of bands).

The random draws are the RGB pipeline's (`torch_pipeline.sample_view_params`: crop, flip, jitter order and
factors, grayscale, blur sigma, solarize); what they do on C bands (`multispectral.OP_BANDS`), in DN units x:

  brightness b   x <- b * x                                   every band (a gain: illumination)
  contrast c     x <- c * (x - m) + m, m the band's dataset mean   every band (around the statistics of
                                                              `fastdino stats`, as DALI's colour twist contrasts
                                                              around a fixed grey 128 rather than the image mean)
  saturation s   rgb <- s * rgb + (1 - s) * grey(rgb)          B4, B3, B2 only; grey = 0.299 R + 0.587 G + 0.114 B
  hue h          rgb <- YIQ^-1 rot(2 pi h) YIQ rgb            B4, B3, B2 only (DALI color_twist's hue model)
  grayscale      rgb <- grey(rgb) in all three                B4, B3, B2 only (after the jitter)
  blur sigma     Gaussian, window 2 * ceil(3 sigma) + 1, reflect-101 borders     every band
  solarize       none: a reflectance has no maximum to invert against

No value is clamped or rounded (reflectances are not bounded to 0-255), so every colour operation is affine and
a view's whole jitter + grayscale is one affine map x <- A x + t, block-diagonal: a 3 x 3 block on the RGB bands,
a gain and offset on every other band. The reference (`apply_ms_view`) applies the operations one by one in the
drawn order (ColorJitter's random order); the DALI pipeline applies `colour_affine`, the same operations
composed in the same order, so both compute the same function of the same draws.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchvision.transforms.functional as TF

from .band_files import op_channels

GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma of (R, G, B), torchvision's rgb_to_grayscale and DALI's
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_INV = np.linalg.inv(_YIQ)
_INTERP = {"nearest": TF.InterpolationMode.NEAREST, "bilinear": TF.InterpolationMode.BILINEAR,
           "bicubic": TF.InterpolationMode.BICUBIC}


def blur_window(sigma: float) -> int:
    """DALI gaussian_blur's default window for sigma (2 * ceil(3 sigma) + 1), used by both pipelines."""
    return 2 * math.ceil(3 * sigma) + 1


def _saturation_matrix(s: float) -> np.ndarray:
    return s * np.eye(3) + (1 - s) * np.outer(np.ones(3), GREY)


def _hue_matrix(h: float) -> np.ndarray:
    a = 2 * math.pi * h  # torchvision's hue factor is in turns
    rot = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    return _YIQ_INV @ rot @ _YIQ


def colour_steps(group, p, bands, mean) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The colour operations a view applies, in order, each as (name, A [C, C], t [C]) with x <- A x + t."""
    c = len(bands)
    everything, rgb = op_channels("brightness", bands), op_channels("saturation", bands)
    mean = np.asarray(mean, dtype=np.float64)
    steps = []

    def on(channels, block=None, gain=None, offset=None):
        a, t = np.eye(c), np.zeros(c)
        if block is not None:
            a[np.ix_(channels, channels)] = block
        else:
            a[channels, channels] = gain
            t[channels] = offset[channels] if offset is not None else 0.0
        return a, t

    if p.jitter is not None:
        order, b, con, s, h = p.jitter
        for fn in order:  # ColorJitter's random order; a strength of 0 means the adjustment is not there
            if fn == 0 and group.jitter[0] > 0:
                steps.append(("brightness", *on(everything, gain=b)))
            elif fn == 1 and group.jitter[1] > 0:
                steps.append(("contrast", *on(everything, gain=con, offset=(1 - con) * mean)))
            elif fn == 2 and group.jitter[2] > 0 and rgb:
                steps.append(("saturation", *on(rgb, block=_saturation_matrix(s))))
            elif fn == 3 and group.jitter[3] > 0 and rgb:
                steps.append(("hue", *on(rgb, block=_hue_matrix(h))))
    if p.grayscale and rgb:
        steps.append(("grayscale", *on(rgb, block=_saturation_matrix(0.0))))
    return steps


def colour_affine(group, p, bands, mean) -> tuple[np.ndarray, np.ndarray]:
    """(A, t): the view's colour operations composed, x <- A x + t (identity when there are none)."""
    a, t = np.eye(len(bands)), np.zeros(len(bands))
    for _, a_i, t_i in colour_steps(group, p, bands, mean):
        a, t = a_i @ a, a_i @ t + t_i
    return a, t


def colour_blocks(group, p, bands, mean, rgb) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`colour_affine` in the block form the DALI graph applies, computed on small arrays: (gain [C], offset [C]) of
    every band and (M [3, 3], t [3]) of the `rgb` channels (in that order; their gain / offset entries are 1 / 0).
    The same operations in the same order; tests/test_multispectral.py checks it equals colour_affine."""
    c = len(bands)
    mean = np.asarray(mean, dtype=np.float64)
    gain, offset = np.ones(c), np.zeros(c)
    block, block_t = np.eye(3), np.zeros(3)

    def scale(k, shift):  # gain k and offset `shift` (per band) on every band: brightness, contrast
        nonlocal gain, offset, block, block_t
        gain, offset = k * gain, k * offset + shift
        if rgb is not None:
            block, block_t = k * block, k * block_t + (shift[rgb] if np.ndim(shift) else shift)

    def mix(m):  # a 3 x 3 map of the RGB bands: saturation, hue, grayscale
        nonlocal block, block_t
        block, block_t = m @ block, m @ block_t

    if p.jitter is not None:
        order, b, con, sat, h = p.jitter
        for fn in order:  # as colour_steps
            if fn == 0 and group.jitter[0] > 0:
                scale(b, 0.0)
            elif fn == 1 and group.jitter[1] > 0:
                scale(con, (1 - con) * mean)
            elif fn == 2 and group.jitter[2] > 0 and rgb is not None:
                mix(_saturation_matrix(sat))
            elif fn == 3 and group.jitter[3] > 0 and rgb is not None:
                mix(_hue_matrix(h))
    if p.grayscale and rgb is not None:
        mix(_saturation_matrix(0.0))
    if rgb is not None:
        gain[rgb], offset[rgb] = 1.0, 0.0
    return gain, offset, block, block_t


def _apply_affine(x: torch.Tensor, a: np.ndarray, t: np.ndarray) -> torch.Tensor:
    """x [C, H, W] <- A x + t over the channels."""
    c, h, w = x.shape
    a_t, t_t = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(t, dtype=torch.float32)
    out = a_t @ x.reshape(c, h * w) + t_t[:, None]
    return out.reshape(c, h, w)


def _photometric(x: torch.Tensor, group, p, bands, mean) -> torch.Tensor:
    for _, a, t in colour_steps(group, p, bands, mean):  # one operation at a time, in the drawn order
        x = _apply_affine(x, a, t)
    if p.blur_sigma is not None:
        k = blur_window(p.blur_sigma)
        x = TF.gaussian_blur(x, [k, k], [p.blur_sigma, p.blur_sigma])
    return x


def _crop(x: torch.Tensor, group, p) -> torch.Tensor:
    top, left, h, w = p.crop
    return TF.resized_crop(x, top, left, h, w, [group.size, group.size], _INTERP[group.interpolation],
                           antialias=True)


def apply_ms_view(arr: np.ndarray, group, p, spec) -> torch.Tensor:
    """One view of an [H, W, C] image (any dtype) as a normalised float tensor [C, size, size]: the readable
    reference. Order as the RGB reference: crop, flip, colour, blur (colour_before_crop: colour, blur, flip on the
    whole image, then the crop), then the vertical flip and the transpose where drawn."""
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float()  # uint16 -> float32 is exact
    bands, mean = spec.bands, spec.mean
    if group.colour_before_crop:
        x = _photometric(x, group, p, bands, mean)
        x = _crop(TF.hflip(x) if p.flip else x, group, p)
    else:
        x = _crop(x, group, p)
        x = _photometric(TF.hflip(x) if p.flip else x, group, p, bands, mean)
    x = TF.vflip(x) if p.vflip else x
    x = x.transpose(-1, -2) if p.transpose else x
    return TF.normalize(x, list(spec.mean), list(spec.std))
