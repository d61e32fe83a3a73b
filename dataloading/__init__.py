"""fastdino.dataloading: image sources, the DINO / DINO-MC augmentation spec, DALI and torchvision pipelines."""

from .augment import AugmentationSpec, ViewGroup
from .datasets import build_source
from .pipeline import build_pipeline, dali_available
from .shard_source import ShardSource
from .sources import Acquisition, ImageSource, SeCoLocation, SeCoSource
from .synthetic import make_synthetic_dataset

__all__ = ["AugmentationSpec", "ViewGroup", "build_source", "ImageSource", "SeCoSource", "SeCoLocation", "Acquisition",
           "ShardSource", "build_pipeline", "dali_available", "make_synthetic_dataset"]
