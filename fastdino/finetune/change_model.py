"""The change-detection network of DINO-MC's `main_oscd.py`: a Siamese encoder (the pretrained backbone, shared by
both dates) whose feature maps are differenced, |f1 - f2|, at several depths, and a light U-Net-style decoder.

The authors' model (models/segmentation.py): `SegmentationEncoder(..., diff=True)` runs the backbone on each date
and keeps |f1 - f2| at the chosen layers (L100-158); `UNet(encoder, feature_channels, 1, concat_mult=1,
dropout_rate=0.3)` (get_segmentation_model, L6-20) decodes from the deepest map: per level, nearest x2 upsampling,
a 3x3 conv to the level's width, concatenation with that level's difference map (resized when its size differs),
a 3x3 conv without bias, BatchNorm, ReLU, Dropout2d(0.3); a last nearest x2 upsampling and a 1x1 conv give one
change logit per pixel (L255-315). main_oscd.py trains only the decoder: the optimiser gets every parameter but
the encoder's (L100-103).

Feature levels:
- CNNs (resnet50, wide_resnet50_2): the five maps the authors take (ResNet children 0, 4, 5, 6, 7 with 64, 256,
  512, 1024, 2048 channels, main_oscd.py L167-168) at strides 2, 4, 8, 16, 32, through timm's
  `forward_intermediates` (its first map is after conv1's BatchNorm and ReLU; the authors' is conv1's raw output).
- ViTs (fastdino's adaptation; the authors' encoder iterates a ResNet's children and does not run a ViT): all
  levels come from the patch tokens at stride p, one per block evenly spaced up to the last, log2(p) of them (4 for
  p=16, 3 for p=8) so that the decoder's x2 steps end at the input resolution; a 1x1 conv brings level i's
  difference map to width D / 2^(levels-1-i) (D/8 ... D at p=16), the shrinking widths of a CNN pyramid, which keeps
  the decoder light.
- Anything else with timm's feature_info (swin_tiny): its maps as they are; the output is resized to the input.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class SiameseEncoder(nn.Module):
    """|f(x1) - f(x2)| at each feature level, finest first, for a fastdino backbone (`.timm_model`)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        model = backbone.timm_model
        if hasattr(model, "blocks") and hasattr(model, "patch_embed") and hasattr(model, "cls_token"):
            patch = int(backbone.patch_size)
            levels = int(math.log2(patch))
            if 2**levels != patch or levels < 2:
                raise ValueError(f"change detection needs a ViT patch size that is a power of 2 (>= 4), got {patch}")
            depth = len(model.blocks)
            self.indices = sorted({max(0, round((k + 1) * depth / levels) - 1) for k in range(levels)})
            self.channels = [backbone.embed_dim] * len(self.indices)
            self.is_vit = True
        else:
            info = model.feature_info
            info = info.get_dicts() if hasattr(info, "get_dicts") else info
            self.indices = None
            self.channels = [f["num_chs"] for f in info]
            self.is_vit = False

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        kwargs = {"indices": self.indices} if self.indices is not None else {}
        return list(self.backbone.timm_model.forward_intermediates(x, intermediates_only=True, output_fmt="NCHW",
                                                                   **kwargs))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> list[torch.Tensor]:
        # Two calls, as the authors' encoder makes (one batch of both dates would mix their BatchNorm statistics
        # when a CNN encoder is trained).
        return [torch.abs(a - b) for a, b in zip(self.features(x1), self.features(x2), strict=True)]


class ChangeDecoder(nn.Module):
    """DINO-MC's UNet decoder (models/segmentation.py L255-315) over difference maps of widths `channels`."""

    def __init__(self, channels: list[int], dropout: float = 0.3):
        super().__init__()
        self.shrink = nn.ModuleList(nn.Conv2d(channels[i + 1], channels[i], 3, padding=1)
                                    for i in range(len(channels) - 1))
        self.fuse = nn.ModuleList(nn.Conv2d(2 * channels[i], channels[i], 3, padding=1, bias=False)
                                  for i in range(len(channels) - 1))
        self.norm = nn.ModuleList(nn.BatchNorm2d(channels[i]) for i in range(len(channels) - 1))
        self.dropout = nn.Dropout2d(dropout)
        self.out = nn.Conv2d(channels[0], 1, 1)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        x = features[-1]
        for i in range(len(features) - 2, -1, -1):
            x = self.shrink[i](F.interpolate(x, scale_factor=2))
            skip = features[i]
            if skip.shape[-2:] != x.shape[-2:]:
                skip = F.interpolate(skip, size=x.shape[-2:])
            x = self.dropout(F.relu(self.norm[i](self.fuse[i](torch.cat([x, skip], 1)))))
        x = F.interpolate(x, scale_factor=2) if tuple(d * 2 for d in x.shape[-2:]) == tuple(size) else \
            F.interpolate(x, size=size)
        return self.out(x)


class ChangeNet(nn.Module):
    """(date 1, date 2) [B, 3, H, W] -> change logits [B, 1, H, W]. With `freeze_encoder` (the authors' setting)
    the backbone stays in eval mode, runs without gradients and is left out of `trainable_parameters()`."""

    def __init__(self, backbone: nn.Module, *, freeze_encoder: bool = True, dropout: float = 0.3):
        super().__init__()
        self.encoder = SiameseEncoder(backbone)
        self.freeze_encoder = freeze_encoder
        levels = len(self.encoder.channels)
        if self.encoder.is_vit:
            dim = self.encoder.channels[0]
            widths = [max(dim // 2 ** (levels - 1 - i), 8) for i in range(levels)]
            self.neck = nn.ModuleList(nn.Conv2d(dim, w, 1) for w in widths)
        else:
            widths = list(self.encoder.channels)
            self.neck = nn.ModuleList(nn.Identity() for _ in widths)
        self.decoder = ChangeDecoder(widths, dropout)
        if freeze_encoder:
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            diffs = self.encoder(x1, x2)
        return self.decoder([neck(d) for neck, d in zip(self.neck, diffs, strict=True)], tuple(x1.shape[-2:]))
