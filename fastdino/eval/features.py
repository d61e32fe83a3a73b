"""Teacher features for evaluation: decode, resize, normalise, run the backbone in batches, L2-normalise.

Images are evaluated at the size the backbone was trained on (the config's largest global crop, e.g.
64 px for `tiny`, 224 px for `dino-mc`), resized whole with the global crops' interpolation and
normalised with the run's mean/std: the same statistics the teacher saw during pretraining.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF
from tqdm import tqdm

from fastdino.dataloading.augment import AugmentationSpec


@dataclass(frozen=True)
class EvalTransform:
    """Whole-image resize to `size` x `size`, then normalisation: what every evaluated image goes through."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"

    @classmethod
    def from_config(cls, config: dict, size: int | None = None, data_root=None) -> EvalTransform:
        """Settings from a checkpoint's resolved config (`config["augment"]`); `size` overrides the crop size.
        data_root: the evaluated data's folder (multispectral: its prepared.json names the band order)."""
        if "augment" not in config:
            raise ValueError("the checkpoint's config has no 'augment' section: cannot tell the normalisation")
        spec = AugmentationSpec.from_dict(config["augment"])
        largest = max(spec.global_views, key=lambda g: g.size)
        if spec.bands:  # multispectral: the bands read from the files, normalised per band (eval/band_transform.py)
            from .band_transform import MultispectralEvalTransform

            return MultispectralEvalTransform.from_spec(spec, largest, size, config, data_root)
        return cls(size or largest.size, tuple(spec.mean), tuple(spec.std), largest.interpolation)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        x = TF.pil_to_tensor(image.convert("RGB"))
        if x.shape[-2:] != (self.size, self.size):
            mode = InterpolationMode(self.interpolation)
            x = TF.resize(x, [self.size, self.size], interpolation=mode, antialias=True)
        return TF.normalize(x.float() / 255.0, self.mean, self.std)


class ImageDataset(torch.utils.data.Dataset):
    """(image tensor, label) pairs; a file that does not decode is an error naming the file."""

    def __init__(self, paths: Sequence[str | Path], labels: Sequence[int] | None, transform: EvalTransform):
        self.paths = [Path(p) for p in paths]
        self.labels = list(labels) if labels is not None else [-1] * len(self.paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        load = getattr(self.transform, "load", load_image)  # multispectral transforms read the bands themselves
        return self.transform(load(self.paths[i])), self.labels[i]


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image, or raise an error that names it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"image {path} does not decode ({type(e).__name__}: {e}); remove it or fix the list") from e


@torch.no_grad()
def extract_features(
    backbone: torch.nn.Module,
    dataset: ImageDataset,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised backbone features [N, D] (float32, on the CPU) and labels [N] for every image, in order."""
    backbone = backbone.to(device).eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    features, labels = [], []
    for images, targets in tqdm(loader, desc=desc, unit="batch", leave=False):
        out = backbone(images.to(device, non_blocking=True))
        features.append(F.normalize(out.float(), dim=1).cpu())
        labels.append(targets)
    if not features:
        raise ValueError(f"no images to extract features from ({desc})")
    return torch.cat(features), torch.cat(labels)
