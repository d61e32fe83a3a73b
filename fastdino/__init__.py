"""fastdino: fast DINO / DINO-MC pretraining of vision backbones on remote-sensing imagery."""

__version__ = "0.1.0"
