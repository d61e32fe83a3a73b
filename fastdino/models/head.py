"""DINO's projection head, as in the original code (facebookresearch/dino, vision_transformer.py).

MLP (Linear-GELU, nlayers-1 times, then Linear to the bottleneck), L2 normalisation, then a weight-normalised
Linear(bottleneck, out_dim, bias=False) whose gain g starts at 1 and is frozen when norm_last_layer (each
prototype is then a unit vector, which the paper found stabilises training).

The weight norm is torch's parametrization: its two tensors are plain Parameters with stable names,
`last_layer.parametrizations.weight.original0` (g, [out_dim, 1]) and `...original1` (v, [out_dim, bottleneck]),
and unlike the older `torch.nn.utils.weight_norm` the module can be deep-copied (teacher = copy of student).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3, norm_last_layer: bool = True):
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(_init_weights)  # before last_layer, which keeps nn.Linear's default init as in DINO
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        g = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            g.fill_(1.0)
        g.requires_grad_(not norm_last_layer)
        self.norm_last_layer = norm_last_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.embed(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The L2-normalised bottleneck the last layer reads. That layer is linear, so the mean of its outputs over
        rows is its output at the mean row: iBOT's teacher uses this to skip the out_dim product at unread rows."""
        return F.normalize(self.mlp(x), dim=-1, p=2)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
