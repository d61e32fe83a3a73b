"""Backbones by name: create_backbone(arch, ...) and list_backbones()."""

from __future__ import annotations

from timm.models import is_model

from .attention import check_attn_backend
from .backbone import TimmBackbone
from .vit import PackedViT

_VITS = ("vit_tiny", "vit_small", "vit_base")
_VIT_PATCHES = (8, 16)
# arch -> (timm name, patch size of its per-size path: inputs are floored to it)
_PER_SIZE = {"resnet50": ("resnet50", 1), "wide_resnet50_2": ("wide_resnet50_2", 1),
             "swin_tiny": ("swin_tiny_patch4_window7_224", 4)}
# CNNs as DINO builds them: torchvision's `resnet50()` (main_dino.py L176-177), i.e. no stochastic depth and every
# BatchNorm weight starting at 1 (torchvision's zero_init_residual=False; timm zeroes each block's last BatchNorm
# unless zero_init_last=False). timm's ResNets have torchvision's layers, names and shapes (tests/test_cnn.py).
CNNS = ("resnet50", "wide_resnet50_2")


def list_backbones() -> list[str]:
    return [*_VITS, *_PER_SIZE]


def create_backbone(arch: str, *, patch_size: int | None = None, img_size: int = 224, depth: int | None = None,
                    drop_path_rate: float = 0.0, attn_backend: str = "auto", grad_checkpointing: bool = False,
                    pos_embed_interp: str = "timm", in_chans: int = 3):
    """A backbone with `.embed_dim`, `forward(x) -> [B, D]`, `forward_views(views) -> [sum B_v, D]` and
    `.timm_name` / `.timm_kwargs` / `.timm_model` for export. ViTs take patch_size 8 or 16 (default 16) and run
    the packed multi-crop pass; the others run one call per crop size. img_size is the ViT's native size (its
    position-embedding grid); other crop sizes are interpolated, the way timm does or (pos_embed_interp="dino") the
    way the original DINO code does (models/pos_embed.py). The CNNs (CNNS) take no drop_path_rate. in_chans: input
    channels (multispectral: one per band); timm's kwargs name it only when it is not 3. depth: a ViT's number of
    blocks (None: the arch's 12); timm's kwargs name it only when set, so exports rebuild the same model."""
    check_attn_backend(attn_backend)
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans={in_chans!r} must be a positive integer (the input's channels: bands)")
    chans = {} if in_chans == 3 else {"in_chans": in_chans}
    if depth is not None and (arch not in _VITS or type(depth) is not int or depth < 1):
        raise ValueError(f"depth={depth!r}: a positive number of blocks, for ViTs only ({arch} keeps its own)")
    if arch in _VITS:
        blocks = {} if depth is None else {"depth": depth}
        patch_size = 16 if patch_size is None else patch_size
        if patch_size not in _VIT_PATCHES:
            raise ValueError(f"patch_size for {arch} must be one of {_VIT_PATCHES}, got {patch_size}")
        # timm registers e.g. vit_small_patch8_224 but no vit_tiny_patch8_224: patch_size in kwargs covers both.
        name = f"{arch}_patch{patch_size}_224"
        timm_name = name if is_model(name) else f"{arch}_patch16_224"
        return PackedViT(timm_name, img_size=img_size, patch_size=patch_size, drop_path_rate=drop_path_rate,
                         attn_backend=attn_backend, grad_checkpointing=grad_checkpointing,
                         pos_embed_interp=pos_embed_interp, **blocks, **chans)
    if pos_embed_interp != "timm":
        raise ValueError(f"pos_embed_interp={pos_embed_interp!r} applies to ViTs only ({arch} has no absolute "
                         "position embedding); leave it 'timm'")
    if arch in _PER_SIZE:
        timm_name, native_patch = _PER_SIZE[arch]
        if patch_size not in (None, native_patch):
            raise ValueError(f"{arch} has no patch_size option (got {patch_size}); leave it unset")
        kwargs = dict(img_size=img_size, dynamic_img_size=True) if arch == "swin_tiny" else {}
        kwargs.update(chans)
        init_kwargs = {}
        if arch in CNNS:
            if drop_path_rate:
                raise ValueError(f"{arch} takes no drop_path_rate (got {drop_path_rate}): DINO trains CNNs without "
                                 "stochastic depth; pass drop_path_rate=0")
            init_kwargs = dict(zero_init_last=False)
        return TimmBackbone(timm_name, floor_to=native_patch, drop_path_rate=drop_path_rate,
                            grad_checkpointing=grad_checkpointing, init_kwargs=init_kwargs, **kwargs)
    raise ValueError(f"unknown backbone arch {arch!r}; known: {', '.join(list_backbones())}")
