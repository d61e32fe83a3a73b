"""The original DINO ViT and head, re-written from facebookresearch/dino vision_transformer.py for the tests: same
module names (so `state_dict()` has DINO's key layout), same forward maths. Nothing here is imported by fastdino.

- PatchEmbed: Conv2d(kernel = stride = patch), flatten, transpose (L116-131).
- interpolate_pos_encoding (L174-194): native grid when the token count and the square input say so (L177);
  else bicubic F.interpolate by scale_factor ((H//p + 0.1) / n, (W//p + 0.1) / n), no antialias (L186-191).
  `prepare_tokens` names the input's dims `B, nc, w, h` (L197): its "w" is the height, so the first factor scales
  the rows, as here.
- Block: x + attn(norm1(x)), x + mlp(norm2(x)) (L107-113); attention softmax(q k^T * head_dim^-0.5) v (L80-92).
- forward: norm(x)[:, 0] (L209-214); get_intermediate_layers: norm of each of the last n blocks' tokens (L225-233).
- vit_tiny/small/base: width 192/384/768, 12 blocks, 3/6/12 heads, qkv bias, LayerNorm eps 1e-6 (L236-254).
- DINOHead: MLP (Linear, GELU, ..., Linear), L2 normalise, weight_norm(Linear(bottleneck, out_dim, bias=False)).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

WIDTHS = {"vit_tiny": (192, 3), "vit_small": (384, 6), "vit_base": (768, 12)}


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoVisionTransformer(nn.Module):
    def __init__(self, arch: str = "vit_tiny", patch_size: int = 16, img_size: int = 224, depth: int = 12):
        super().__init__()
        dim, heads = WIDTHS[arch]
        self.patch_embed = PatchEmbed(patch_size, dim)
        n = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, dim))
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def interpolate_pos_encoding(self, x, w, h):
        npatch = x.shape[1] - 1
        n = self.pos_embed.shape[1] - 1
        if npatch == n and w == h:
            return self.pos_embed
        class_pos_embed = self.pos_embed[:, 0]
        patch_pos_embed = self.pos_embed[:, 1:]
        dim = x.shape[-1]
        w0 = w // self.patch_embed.patch_size + 0.1
        h0 = h // self.patch_embed.patch_size + 0.1
        side = math.sqrt(n)
        patch_pos_embed = F.interpolate(
            patch_pos_embed.reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2),
            scale_factor=(w0 / side, h0 / side), mode="bicubic")
        assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
        return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)

    def prepare_tokens(self, x):
        b, _, w, h = x.shape
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
        return x + self.interpolate_pos_encoding(x, w, h)

    def forward(self, x):
        x = self.prepare_tokens(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]

    def get_intermediate_layers(self, x, n: int = 1):
        x = self.prepare_tokens(x)
        output = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if len(self.blocks) - i <= n:
                output.append(self.norm(x))
        return output


class DinoHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int, nlayers: int = 3):
        super().__init__()
        layers = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
        for _ in range(nlayers - 2):
            layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
        layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        # torch.nn.utils.weight_norm, as the original: state dict entries last_layer.weight_g / last_layer.weight_v
        with warnings.catch_warnings():  # deprecated in torch, but it is what the original code used
            warnings.simplefilter("ignore", FutureWarning)
            self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))

    def forward(self, x):
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


class MultiCropWrapper(nn.Module):
    """DINO's wrapper, for its `backbone.` / `head.` key prefixes."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head


class DDP(nn.Module):
    """Stands in for DistributedDataParallel in a state dict: its `module.` prefix."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module


def randomize_(model: nn.Module, seed: int, pos_std: float = 1.0) -> nn.Module:
    """Random weights everywhere (norms and biases too), a position table with real structure (std `pos_std`), and
    random BatchNorm statistics, so that a wrong mapping or interpolation cannot hide behind an init of zeros."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("pos_embed"):
                p.copy_(pos_std * torch.randn(p.shape, generator=g))
            elif name.endswith("weight_g") or (p.ndim == 1 and ("norm" in name or "bn" in name)):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(1 + 0.2 * torch.rand(b.shape, generator=g))
    return model
