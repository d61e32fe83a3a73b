"""Evaluation input for multispectral checkpoints: read the bands, resize the whole image, normalise per band.

The same as EvalTransform for RGB (features.py), on [H, W, C] arrays in the files' units: cast to float32 (exact
for 16-bit data), resized whole to `size` with the global crops' interpolation, (x - mean) / std per band with the
run's statistics (its config's augment.mean / augment.std, from `fastdino stats`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from fastdino.dataloading.band_files import BandReader, file_band_order


@dataclass(frozen=True)
class MultispectralEvalTransform:
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    bands: tuple[str, ...]
    file_bands: tuple[str, ...] | None

    @classmethod
    def from_spec(cls, spec, largest, size, config: dict, data_root=None) -> MultispectralEvalTransform:
        file_bands = file_band_order(config.get("data", {}).get("file_bands"), data_root)
        return cls(size or largest.size, tuple(spec.mean), tuple(spec.std), largest.interpolation, tuple(spec.bands),
                   file_bands)

    def load(self, path) -> np.ndarray:
        """The image's bands [H, W, C] in the run's band order; errors name the file."""
        try:
            return BandReader(self.bands, self.file_bands)(str(path))
        except FileNotFoundError:
            raise FileNotFoundError(f"image {path} does not exist") from None
        except Exception as e:
            raise ValueError(f"image {path} does not read as {len(self.bands)} bands ({type(e).__name__}: {e})") from e

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
        if x.shape[-2:] != (self.size, self.size):
            x = TF.resize(x, [self.size, self.size], interpolation=InterpolationMode(self.interpolation),
                          antialias=True)
        return TF.normalize(x, list(self.mean), list(self.std))
