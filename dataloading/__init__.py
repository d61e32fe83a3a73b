"""fastdino.dataloading: image sources, the DINO / DINO-MC augmentation spec, DALI and torchvision pipelines."""
