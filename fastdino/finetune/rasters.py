"""Single-band rasters (Sentinel-2 band GeoTIFFs) as numpy arrays, and their stretch to 8 bits.

BigEarthNet and OSCD store each band as its own GeoTIFF (uint16 reflectance). Every band file, for an RGB or a
multispectral backbone alike, is read by the pretraining readers' TIFF reader (tifffile:
fastdino.dataloading.band_files.read_tiff), which reads either planar layout: PIL fails on a 16-bit band tagged
PlanarConfiguration=2 ("unknown raw mode for given image mode"). The geo-referencing tags are not used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fastdino.dataloading.band_files import read_tiff


def read_band(path: str | Path) -> np.ndarray:
    """A single-band raster as a 2-D array in its own dtype; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"band file {path} does not exist")
    try:
        array = read_tiff(path)
    except (ValueError, OSError, KeyError) as e:  # tifffile's TiffFileError is a ValueError
        raise ValueError(f"band file {path} does not decode ({type(e).__name__}: {e})") from e
    if array.shape[-1] != 1:
        raise ValueError(f"band file {path} has shape {array.shape}; expected one band (H, W)")
    return array[..., 0]


def stretch_to_uint8(band: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly to [0, 255], clip, truncate to uint8 (what both DINO-MC readers do)."""
    scaled = (band.astype(np.float64) - low) / (high - low)
    return (np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def resize_bands(array: np.ndarray, size: int) -> torch.Tensor:
    """[H, W, C] bands in their units -> float32 [C, size, size], resized whole, bicubic (antialiased when
    shrinking), as PIL's BICUBIC resize does for the RGB images."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)  # exact for 16 bit
    if x.shape[-2:] != (size, size):
        x = TF.resize(x, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return x
