"""A run's config: `load_config` merges the layers (fastdino.config, which is data only), spells out the augmentation
and the bands, and has every value checked before any work starts.

Each module that builds something checks the choices it takes (`validate`): fastdino.config the numbers and its
own choices, fastdino.models the arch and its options, fastdino.dataloading the data layout, backend and
augmentation, fastdino.bands.resolve the bands, fastdino.preemption the stop signals. Their errors name the key,
the value and the fix; all of them reach the caller as a ConfigError.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fastdino.bands.resolve import bands_into_config, validate_bands
from fastdino.config import Config, ConfigError, check_values, config_from_dict, merge_layers, plain
from fastdino.dataloading import AugmentationSpec
from fastdino.dataloading.config_checks import validate_augment_config, validate_data_config
from fastdino.models.factory import validate_model_config, validate_view_sizes
from fastdino.preemption import validate_stop_signals


def load_config(preset: str | None = None, config_file: str | Path | None = None,
                overrides: list[str] | dict | None = None) -> Config:
    """defaults -> preset -> config file -> overrides, in this order (fastdino.config.merge_layers); the result is
    validated.

    preset: a name from PRESETS (a config file may name one with a top-level `preset:` key; an explicit
    argument wins). overrides: `key=value` strings (`run.epochs=3`, or a leaf name that exists in one section
    only: `epochs=3`) or a nested dict. Values from the command line are parsed for the target's type.
    """
    cfg = merge_layers(preset, config_file, overrides, augment_base=_augment_base)
    if cfg["data"]["bands"] is not None:  # multispectral: the spec's bands (and in_chans) follow data.bands
        bands_into_config(cfg)
    cfg["augment"] = _complete_augment(cfg["augment"])
    config = config_from_dict(cfg)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Values that parse but cannot run; each error (a ConfigError) names the key, the value and what would work."""
    check_values(config)
    try:
        validate_model_config(config)
        validate_stop_signals(config)
        validate_data_config(config)
        validate_bands(config)
        validate_augment_config(config)
        if config.augment:  # a ViT needs a patch per view: caught here, not in the first forward
            validate_view_sizes(config.model, AugmentationSpec.from_dict(config.augment).view_sizes)
    except ConfigError:
        raise
    except ValueError as e:  # the rooms say ValueError (they know nothing of config files)
        raise ConfigError(str(e)) from None


def _augment_base(name: str) -> dict:
    try:
        spec = AugmentationSpec.preset(name)
    except (KeyError, ValueError) as e:
        raise ConfigError(f"augment_preset={name!r} is not an AugmentationSpec preset: {e}") from None
    return plain(dataclasses.asdict(spec))


def _complete_augment(augment: dict) -> dict:
    """Every AugmentationSpec field spelled out (a view group given as {size: 16} gets the defaults), so that
    config.yaml and checkpoints hold the whole spec."""
    try:
        return plain(dataclasses.asdict(AugmentationSpec.from_dict(augment)))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"augment: {e}") from None

