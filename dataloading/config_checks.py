"""A training config's data choices checked at load, before any work: what build_source and build_pipeline take,
and an augmentation that parses and agrees with the data (DINO-TP's dates).

Each check raises ValueError naming the config key, the value and what works; fastdino.run_config.load_config makes
it a ConfigError. `config` is a fastdino.config.Config (read for .data and .augment only).
"""

from __future__ import annotations

from .augment import AugmentationSpec
from .datasets import LAYOUTS
from .pipeline import BACKENDS
from .sources import ACQUISITIONS


def validate_data_config(config) -> None:
    """data.layout, data.backend, data.acquisitions and data.temporal."""
    d = config.data
    for key, value, choices in (("data.layout", d.layout, LAYOUTS), ("data.backend", d.backend, BACKENDS)):
        if value not in choices:
            raise ValueError(f"{key}={value!r}: choose one of {', '.join(choices)}")
    if d.temporal and d.layout not in ("seco", "auto"):
        raise ValueError(f"data.temporal=True needs SeCo data (data.layout=seco), got {d.layout!r}")
    if d.acquisitions not in ACQUISITIONS:
        raise ValueError(f"data.acquisitions={d.acquisitions!r}: choose one of {', '.join(ACQUISITIONS)}")


def validate_augment_config(config) -> None:
    """The augment dict is an AugmentationSpec, and its views' dates match data.temporal."""
    if not config.augment:
        return
    try:
        spec = AugmentationSpec.from_dict(config.augment)
    except (TypeError, ValueError) as e:
        raise ValueError(f"augment: {e}") from None
    if config.data.temporal != (spec.n_dates > 1):  # DINO-TP needs both: the views' dates and the SeCo sampler
        raise ValueError(f"data.temporal={config.data.temporal} but the augmentation cuts views from "
                         f"{spec.n_dates} date(s) (ViewGroup.date): DINO-TP needs data.temporal=true with "
                         f"augment_preset=dino-tp; plain DINO / DINO-MC needs data.temporal=false")
