"""Backbones by name: create_backbone(arch, ...) and list_backbones(); validate_model_config and
validate_view_sizes check a training config's model choices against them before any work."""

from __future__ import annotations

from timm.models import is_model

from .attention import ATTN_BACKENDS, check_attn_backend
from .backbone import TimmBackbone
from .pos_embed import POS_EMBED_INTERPS
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


def validate_model_config(config) -> None:
    """A training config's model choices that create_backbone (or iBOT's patch masking) would refuse, checked at
    config load so that no work is wasted: ValueError naming the key, the value and what works (load_config makes
    it a ConfigError). `config`: fastdino.config.Config, read for .model and .loss.ibot_weight."""
    m = config.model

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            section, leaf = key.split(".")
            raise ValueError(f"{key}={getattr(getattr(config, section), leaf)!r}: {what}")

    need(m.pos_embed_interp in POS_EMBED_INTERPS, "model.pos_embed_interp",
         f"choose one of {', '.join(POS_EMBED_INTERPS)}")
    need(m.attn_backend in ATTN_BACKENDS, "model.attn_backend", f"choose one of {', '.join(ATTN_BACKENDS)}")
    # the arch first: the checks below tell ViTs from the others
    need(m.arch in list_backbones(), "model.arch", f"choose one of {', '.join(list_backbones())}")
    vit = m.arch in _VITS
    need(not (m.arch in CNNS and m.drop_path_rate > 0), "model.drop_path_rate",
         f"model.arch={m.arch} is a CNN, which DINO trains without drop-path; set model.drop_path_rate=0")
    need(m.pos_embed_interp == "timm" or vit, "model.pos_embed_interp",
         f"DINO's interpolation is for ViTs only (their absolute position embedding); model.arch={m.arch} has none: "
         "add --set model.pos_embed_interp=timm")
    need(m.patch_size is None or m.patch_size > 0, "model.patch_size", "must be > 0")
    depth = m.depth
    need(depth is None or (isinstance(depth, int) and not isinstance(depth, bool) and depth > 0), "model.depth",
         "must be a positive number of blocks, or null for the arch's own")
    need(depth is None or vit, "model.depth", "sets a ViT's blocks; CNNs and Swin keep their own (leave it null)")
    need(not config.loss.ibot_weight or vit, "loss.ibot_weight",
         f"iBOT masks ViT patch tokens; model.arch={m.arch} has none (set loss.ibot_weight=0)")


def validate_view_sizes(model, view_sizes) -> None:
    """A ViT needs at least one patch per view: caught at config load, not in the first forward (ValueError).
    `model`: the config's model section; view_sizes: the augmentation's (AugmentationSpec.view_sizes)."""
    patch = model.patch_size
    small = [s for s in view_sizes if model.arch in _VITS and patch and s < patch]
    if small:
        raise ValueError(f"augment: view size {small[0]} px is smaller than model.patch_size={patch}; use views of "
                         f"at least {patch} px or a smaller patch")
