"""The augmentation spec that both pipelines (torchvision and DALI) read.

A spec is a list of global view groups and a list of local view groups. A group is `count` views of one
square size that share every random-parameter distribution; DINO's two global views differ (blur 1.0 / 0.1,
solarize 0 / 0.2), so a global spec has two groups of one view each. Views are ordered globals first, then
locals, in group order: that is the order of the tensors a pipeline yields. Every global view is a teacher view.

Order of operations per view: RandomResizedCrop, then flip, colour jitter, grayscale, blur, solarize (DINO);
then, where a group asks for them, a vertical flip and a transpose of the finished view (the symmetries of overhead
imagery: `vflip_p`, `transpose_p`; the colour operations act per pixel and the blur is isotropic, so where in the
chain a symmetry of the square is applied does not change the view's distribution).
A group with `colour_before_crop` does jitter, grayscale, blur, solarize and flip on the whole image first and
crops last (DINO-TP's MCTemporal.augment, DINO-MC data_process/dino_dataset.py L97-104, applied before
DataAugmentationTP's crop, data_process/dino_augmentation.py L77-80).

DINO-TP (pipelines with temporal=True): each sample draws `spec.n_dates` acquisitions of one location with
replacement (t0, t1, t2: dino_dataset.py L118) and a view is cut from draw `date` of its group.

Presets; every number is from the original code, file and line in docs/data.md's table and below:
  dino     DINO's DataAugmentationDINO (facebookresearch/dino main_dino.py L419-464): 2 x 224 (scale 0.4-1)
           + 8 x 96 (scale 0.05-0.4), colour jitter (0.4, 0.4, 0.2, 0.1) everywhere
  dino-mc  DINO-MC's DataAugColorMulticrop (WennyXY/DINO-MC data_process/dino_augmentation.py L7-68): 2 x 224
           (scale 0.32-1) + one each of 184, 164, 144, 124, 104, 84 (scale 0.05-0.32)
  dino-tp  DINO-MC's MCTemporal + DataAugmentationTP (dino_dataset.py L89-128, dino_augmentation.py L70-103):
           3 global 224 views of dates t1 (colour), t2 (plain), t0 (colour) + the six local sizes cut from t0
           without colour, blur or flip
  dino-mc-resnet50  dino-mc's views with the crop scales of DINO's ResNet-50 command (README.md of
           facebookresearch/dino: --global_crops_scale 0.14 1 --local_crops_scale 0.05 0.14)
  tiny     CPU-sized DINO-MC for 64 px tiles (EuroSAT): 2 x 64 + one each of 48, 40, 32, 24. The local sizes
           keep DINO-MC's ratios to the global size (0.82 ... 0.38) rounded to multiples of 8. Blur and colour
           are set for small remote-sensing tiles (see `_tiny`); fastdino's own, not from a paper.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass
class ViewGroup:
    """`count` square views of `size` px, all drawn with the same distributions."""

    size: int
    count: int = 1
    scale: tuple[float, float] = (0.32, 1.0)  # RandomResizedCrop area fraction
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect ratio
    interpolation: str = "bicubic"
    flip_p: float = 0.5  # horizontal
    # Overhead imagery has no "up": vflip_p = transpose_p = flip_p = 0.5 draws each of the 8 symmetries of the
    # square (4 rotations by 90 degrees, 4 reflections) with probability 1/8. Applied to the finished view.
    vflip_p: float = 0.0
    transpose_p: float = 0.0  # swap rows and columns (a reflection about the main diagonal)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # PIL GaussianBlur radius, uniform
    solarize_p: float = 0.0
    solarize_threshold: int = 128
    colour_before_crop: bool = False  # jitter, grayscale, blur, solarize, flip on the whole image, then crop (DINO-TP)
    date: int = 0  # temporal pipelines: cut from acquisition draw `date` of the location (t0, t1, ...)

    def validate(self, where: str) -> None:
        def fail(name, value, why):
            raise ValueError(f"AugmentationSpec {where}.{name}={value!r}: {why}")

        if not isinstance(self.size, int) or self.size < 1:
            fail("size", self.size, "must be a positive integer (pixels)")
        if not isinstance(self.count, int) or self.count < 1:
            fail("count", self.count, "must be a positive integer")
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            fail("scale", self.scale, "must be (lo, hi) with 0 < lo <= hi <= 1")
        lo, hi = self.ratio
        if not 0 < lo <= hi:
            fail("ratio", self.ratio, "must be (lo, hi) with 0 < lo <= hi")
        if self.interpolation not in INTERPOLATIONS:
            fail("interpolation", self.interpolation, f"must be one of {INTERPOLATIONS}")
        for name in ("flip_p", "vflip_p", "transpose_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            p = getattr(self, name)
            if not isinstance(p, (int, float)) or not 0 <= p <= 1:
                fail(name, p, "must be a probability in [0, 1]")
        if len(self.jitter) != 4 or any(j < 0 for j in self.jitter):
            fail("jitter", self.jitter, "must be 4 non-negative strengths (brightness, contrast, saturation, hue)")
        if self.jitter[3] > 0.5:
            fail("jitter", self.jitter, "hue strength must be <= 0.5 (a half turn of the colour wheel)")
        lo, hi = self.blur_sigma
        if not 0 < lo <= hi:
            fail("blur_sigma", self.blur_sigma, "must be (lo, hi) with 0 < lo <= hi")
        if not 0 <= self.solarize_threshold <= 256:
            fail("solarize_threshold", self.solarize_threshold, "must be in [0, 256]")
        if not isinstance(self.colour_before_crop, bool):
            fail("colour_before_crop", self.colour_before_crop, "must be true or false")
        if not isinstance(self.date, int) or isinstance(self.date, bool) or self.date < 0:
            fail("date", self.date, "must be an integer >= 0 (which acquisition draw the view is cut from)")


@dataclass
class AugmentationSpec:
    global_views: list[ViewGroup]
    local_views: list[ViewGroup] = field(default_factory=list)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    # Multispectral (docs/data.md "Multispectral"): the Sentinel-2 bands of the images, in channel order; empty for
    # 8-bit RGB. With bands, mean / std are per band in the files' units (DN), from `fastdino stats` (empty until
    # resolved), and each augmentation acts on the bands multispectral.OP_BANDS gives it (ms_augment.py).
    bands: tuple[str, ...] = ()

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if not self.global_views:
            raise ValueError("AugmentationSpec.global_views is empty: DINO needs at least one global view")
        for kind in ("global_views", "local_views"):
            for i, group in enumerate(getattr(self, kind)):
                if not isinstance(group, ViewGroup):
                    raise TypeError(f"AugmentationSpec.{kind}[{i}] is a {type(group).__name__}, expected ViewGroup")
                group.validate(f"{kind}[{i}]")
        if self.bands:
            from .band_files import band_list

            canonical = band_list(self.bands, "AugmentationSpec.bands")
            if canonical != tuple(self.bands):
                raise ValueError(f"AugmentationSpec.bands={self.bands!r}: use canonical names {canonical}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if self.bands and len(value) not in (0, len(self.bands)):
                raise ValueError(f"AugmentationSpec.{name}={value!r}: needs one value per band ({len(self.bands)}: "
                                 f"{', '.join(self.bands)}), from `fastdino stats`")
            if not self.bands and len(value) != 3:
                raise ValueError(f"AugmentationSpec.{name}={value!r}: needs 3 values (RGB)")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"AugmentationSpec.std={self.std!r}: must be positive")

    # --- the flat view list the pipelines iterate over -------------------------------------------------
    def views(self) -> list[ViewGroup]:
        """One entry per output view (groups expanded by count), globals first."""
        return [g for g in self.global_views + self.local_views for _ in range(g.count)]

    @property
    def n_global(self) -> int:
        return sum(g.count for g in self.global_views)

    @property
    def n_local(self) -> int:
        return sum(g.count for g in self.local_views)

    @property
    def n_views(self) -> int:
        """DINO's `ncrops`: global + local views."""
        return self.n_global + self.n_local

    @property
    def n_dates(self) -> int:
        """Acquisitions a temporal (DINO-TP) sample draws: one more than the largest `date` of any view."""
        return 1 + max(g.date for g in self.views())

    @property
    def view_sizes(self) -> list[int]:
        return [g.size for g in self.views()]

    @property
    def global_size(self) -> int:
        """The largest global crop: the backbone's `img_size`."""
        return max(g.size for g in self.global_views)

    # --- (de)serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AugmentationSpec:
        """Inverse of `dataclasses.asdict`; accepts lists where tuples are expected (YAML); unknown keys are errors."""
        d = dict(d)
        _check_keys(cls, d, "AugmentationSpec")
        groups = {}
        for kind in ("global_views", "local_views"):
            groups[kind] = []
            for i, g in enumerate(d.pop(kind, [])):
                if isinstance(g, ViewGroup):
                    groups[kind].append(g)
                    continue
                _check_keys(ViewGroup, g, f"AugmentationSpec.{kind}[{i}]")
                groups[kind].append(ViewGroup(**{k: tuple(v) if isinstance(v, list) else v for k, v in g.items()}))
        rest = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**groups, **rest)

    @classmethod
    def preset(cls, name: str) -> AugmentationSpec:
        if name not in _PRESETS:
            raise ValueError(f"unknown augmentation preset {name!r}; known: {', '.join(sorted(_PRESETS))}")
        return _PRESETS[name]()

    @staticmethod
    def presets() -> list[str]:
        return sorted(_PRESETS)


def _check_keys(cls, d: dict, where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")


def _globals(size: int, scale=(0.32, 1.0)) -> list[ViewGroup]:
    # DINO main_dino.py L419-448 (DINO-MC dino_augmentation.py L10-37 is the same): flip 0.5, jitter
    # (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale 0.2 (the ViewGroup defaults); view 1 always blurs, view 2 blurs
    # with p 0.1 and solarizes with p 0.2 (PIL's threshold 128); bicubic.
    return [
        ViewGroup(size, 1, scale, interpolation="bicubic", blur_p=1.0, solarize_p=0.0),
        ViewGroup(size, 1, scale, interpolation="bicubic", blur_p=0.1, solarize_p=0.2),
    ]


def _local(size: int, count: int, scale) -> ViewGroup:
    # DINO-MC's local crops (dino_augmentation.py L42-52, L106-111): RandomResizedCrop without an interpolation
    # argument (torchvision's bilinear), flip 0.5, jitter (0.8, 0.8, 0.8, 0.2) with p 0.8, grayscale 0.2, blur 0.5.
    return ViewGroup(size, count, scale, interpolation="bilinear", jitter=(0.8, 0.8, 0.8, 0.2), blur_p=0.5)


# DINO-MC's defaults (main_dino_mc.py): global scale (0.32, 1.) L123; local sizes L132, all six used
# (local_crops_number 6, L129); local scale (min_scale_crops 0.05, max_scale_crops 0.32) L137, L139.
_MC_GLOBAL_SCALE = (0.32, 1.0)
_MC_LOCAL_SIZES = (184, 164, 144, 124, 104, 84)
_MC_LOCAL_SCALE = (0.05, 0.32)


def _dino() -> AugmentationSpec:
    # DINO's main_dino.py: global scale (0.4, 1.) L108, 8 local crops L112 of 96 px L452, scale (0.05, 0.4) L115,
    # with the globals' flip and jitter (flip_and_color_jitter, L453) and blur p 0.5 (L454).
    local = ViewGroup(96, 8, (0.05, 0.4), interpolation="bicubic", blur_p=0.5)
    return AugmentationSpec(_globals(224, (0.4, 1.0)), [local])


def _dino_mc() -> AugmentationSpec:
    return AugmentationSpec(_globals(224, _MC_GLOBAL_SCALE), [_local(s, 1, _MC_LOCAL_SCALE) for s in _MC_LOCAL_SIZES])


def _dino_tp() -> AugmentationSpec:
    """DINO-MC's temporal positives. MCTemporal (dino_dataset.py L114-128) draws t0, t1, t2 with replacement
    (L118) and hands DataAugmentationTP [t0, augment(t1), t2, augment(t0)] (L120-126), where augment is
    jitter (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, blur p 0.5, flip 0.5 on the whole image (L97-104, blur
    from utils/utils.py L40). DataAugmentationTP (dino_augmentation.py L96-103) then crops the three global
    views from images 1, 2, 3 (RandomResizedCrop 224, global scale, bicubic, L77-80) and every local view from
    image 0 (RandomResizedCrop of each size, bilinear, L86-93): nothing else is applied to them."""
    plain = dict(flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)
    augment = dict(colour_before_crop=True, flip_p=0.5, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, grayscale_p=0.2,
                   blur_p=0.5, solarize_p=0.0)
    global_views = [ViewGroup(224, 1, _MC_GLOBAL_SCALE, interpolation="bicubic", date=1, **augment),
                    ViewGroup(224, 1, _MC_GLOBAL_SCALE, interpolation="bicubic", date=2, **plain),
                    ViewGroup(224, 1, _MC_GLOBAL_SCALE, interpolation="bicubic", date=0, **augment)]
    local_views = [ViewGroup(s, 1, _MC_LOCAL_SCALE, interpolation="bilinear", date=0, **plain) for s in _MC_LOCAL_SIZES]
    return AugmentationSpec(global_views, local_views)


def _dino_mc_resnet50() -> AugmentationSpec:
    return AugmentationSpec(_globals(224, (0.14, 1.0)), [_local(s, 1, (0.05, 0.14)) for s in _MC_LOCAL_SIZES])


def _tiny() -> AugmentationSpec:
    # DINO's blur radius (0.1-2 px) is for 224 px views; on a 64 px tile it wipes out the texture, so it is
    # scaled by 64/224. Colour tells land-cover classes apart (water, forest, crops): a milder jitter, rare
    # grayscale and no solarization keep it. Measured on EuroSAT k-NN (docs/eval.md): DINO's colour and blur
    # lost accuracy after the first epoch (64.3 -> 61.6 -> 61.3), these settings kept gaining.
    tile = dict(jitter=(0.2, 0.2, 0.1, 0.02), grayscale_p=0.05, blur_sigma=(0.03, 0.6))
    global_views = [ViewGroup(64, 1, (0.32, 1.0), interpolation="bicubic", blur_p=1.0, **tile),
                    ViewGroup(64, 1, (0.32, 1.0), interpolation="bicubic", blur_p=0.1, **tile)]
    local_views = [ViewGroup(s, 1, (0.05, 0.32), interpolation="bilinear", blur_p=0.5, **tile)
                   for s in (48, 40, 32, 24)]
    return AugmentationSpec(global_views, local_views)


_PRESETS = {"dino": _dino, "dino-mc": _dino_mc, "dino-mc-resnet50": _dino_mc_resnet50, "dino-tp": _dino_tp,
            "tiny": _tiny}
