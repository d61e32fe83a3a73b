"""Multispectral runs: from `data.bands` to a resolved config (bands, per-band mean / std, in_chans).

`data.bands` names the bands (or a set, or `all`: every band the data has). Before step 0 `resolve_multispectral`
finds the data's bands and file order, reads the per-band statistics (`fastdino stats`), and writes into the
config what the rest of fastdino reads: `augment.bands`, `augment.mean`, `augment.std` (the AugmentationSpec's,
in the files' units) and `model.in_chans = len(bands)`. config.yaml and every checkpoint then hold the whole
normalisation, so resume, eval, export and viz need neither the statistics file nor the training data.
"""

from __future__ import annotations

from pathlib import Path

from fastdino.config import ConfigError
from fastdino.dataloading import build_source
from fastdino.dataloading.band_files import (
    FILE_ORDERS,
    BandReader,
    band_list,
    band_summary,
    file_band_order,
    source_bands,
)
from fastdino.dataloading.synthetic_ms import make_synthetic_ms_dataset
from fastdino.dataloading.torch_pipeline import pipeline_items

from .stats import STATS_FILE, compute_band_stats, default_stats_path, read_band_stats, sample_items, write_stats


def bands_into_config(cfg: dict) -> None:
    """load_config's step for an explicit data.bands list: the spec's bands and in_chans follow it; a mean / std
    of another length (the preset's RGB ones) is dropped until the statistics are resolved."""
    value = cfg["data"]["bands"]
    if value == "all":
        return  # known once the data is looked at (resolve_multispectral)
    try:
        bands = list(band_list(value))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    aug = cfg["augment"]
    aug["bands"] = bands
    for key in ("mean", "std"):
        if len(aug.get(key) or ()) != len(bands):
            aug[key] = []
    cfg["model"]["in_chans"] = len(bands)


def validate_bands(config) -> None:
    """Bands, file order and in_chans that cannot run: errors name the key and the fix. Nothing to check for an RGB
    run (neither data.bands nor the augmentation's bands)."""
    d = config.data
    if d.bands is None and not config.augment.get("bands"):
        return
    try:
        if d.bands is not None and d.bands != "all":
            band_list(d.bands)
        if d.file_bands not in (None, "auto") and not (isinstance(d.file_bands, str) and d.file_bands in FILE_ORDERS):
            band_list(d.file_bands, "data.file_bands")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    bands = config.augment.get("bands") or []
    if bands and config.model.in_chans != len(bands):
        raise ConfigError(f"model.in_chans={config.model.in_chans}, but the data has {len(bands)} bands "
                          f"({', '.join(bands)}); leave model.in_chans unset (it follows data.bands)")


def resolve_multispectral(config, echo=None, source=None) -> None:
    """Fill augment.bands / mean / std and model.in_chans from the data and its statistics (in place). A config
    already resolved for the same bands (a resume) keeps its statistics."""
    d = config.data
    if d.bands is None:
        return
    if d.path is None:
        raise ValueError("data.bands is set but data.path is not: pass --data (multispectral GeoTIFFs, .npy arrays or "
                         "a SeCo / SSL4EO-S12 band tree)")
    if source is None:
        source = build_source(d.path, list_file=d.list_file, layout=d.layout, subset=d.subset, seed=config.run.seed,
                              acquisitions="all" if d.temporal else d.acquisitions, temporal=d.temporal)
    file_bands = file_band_order(d.file_bands, d.path)
    bands = source_bands(source, file_bands) if d.bands == "all" else band_list(d.bands)
    if not bands:
        raise ValueError(f"data.bands=all: no Sentinel-2 band found in {d.path}")
    image = _probe(source, BandReader(bands, file_bands), d.path)
    aug = config.augment
    if list(aug.get("bands") or []) != list(bands) or len(aug.get("mean") or []) != len(bands):
        stats = Path(d.stats) if d.stats else default_stats_path(d.path)
        mean, std = read_band_stats(stats, bands, d.path)
        aug["bands"], aug["mean"], aug["std"] = list(bands), mean, std
        if echo is not None:
            echo(f"band statistics: {stats}")
    config.model.in_chans = len(bands)
    if file_bands is not None:
        d.file_bands = list(file_bands)
    if echo is not None:
        echo(f"multispectral: {len(bands)} bands, {image.dtype} {image.shape[0]}x{image.shape[1]} px: "
             f"{band_summary(bands)}")


def _probe(source, reader: BandReader, path, tries: int = 16):
    """The first readable image of the source: a wrong file order or band count fails here, not in a worker. An
    unreadable image (an incomplete product, a corrupt file) is the pipelines' to skip, so the next ones are tried;
    only when all of the first `tries` fail is it the data's error."""
    items = pipeline_items(source, temporal=False)
    first_error = None
    for item in items[:tries]:
        try:
            return reader(item)
        except Exception as e:
            first_error = first_error or e
    raise ValueError(f"multispectral data {path}: {first_error}") from None


def attach_file_bands(source, config) -> None:
    """Tell a source the band order of its multi-band files (what the pipelines' BandReader reads by)."""
    source.file_bands = file_band_order(config.data.file_bands, config.data.path)


def demo_dataset(cache: Path, n_images: int, size: int) -> Path:
    """The generated EuroSAT-MS-shaped demo (13-band uint16 TIFFs) and its band statistics."""
    root = make_synthetic_ms_dataset(cache / f"synthetic-ms-{n_images}x{size}", n_images=n_images, size=size)
    if not (root / STATS_FILE).is_file():
        reader = BandReader(FILE_ORDERS["esa"], FILE_ORDERS["eurosat-ms"])
        items = sample_items(build_source(root), n_images, 0)
        write_stats(compute_band_stats(items, reader, data=str(root)), root / STATS_FILE)
    return root
