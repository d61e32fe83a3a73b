"""fastdino.dataloading: image sources, the DINO / DINO-MC augmentation spec, DALI and torchvision pipelines."""

from .augment import AugmentationSpec, ViewGroup
from .pipeline import build_pipeline, dali_available
from .sources import Acquisition, ImageSource, SeCoLocation, SeCoSource, build_source
from .synthetic import make_synthetic_dataset

__all__ = ["AugmentationSpec", "ViewGroup", "build_source", "ImageSource", "SeCoSource", "SeCoLocation", "Acquisition",
           "build_pipeline", "dali_available", "make_synthetic_dataset"]
