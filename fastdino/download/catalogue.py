"""The datasets `fastdino download` knows: each release's files, where they come from, their checksums and sizes.

Every URL and checksum below is the one published by the source named beside it. A file whose source publishes no
checksum has `known_hash=None`: it is downloaded unverified and its SHA-256 is printed and recorded beside the data.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9


@dataclass(frozen=True)
class RemoteFile:
    name: str  # file name in the download cache (<root>/downloads/<name>)
    url: str
    known_hash: str | None  # "md5:..." / "sha256:...", as pooch takes it; None: the source publishes none
    size_bytes: float  # approximate, for the size warning only


@dataclass(frozen=True)
class DatasetRelease:
    name: str  # the CLI name
    folder: str  # <root>/<folder> is what train / finetune read
    files: tuple[RemoteFile, ...]
    description: str

    @property
    def size_bytes(self) -> float:
        return sum(f.size_bytes for f in self.files)


# EuroSAT RGB: 27,000 64 px JPEGs in `2750/<Class>/<Class>_<i>.jpg` (the folder torchvision reads:
# pytorch/vision torchvision/datasets/eurosat.py L46 at commit 167bc57). URL and md5: the same file, L68 and L70.
EUROSAT = DatasetRelease(
    name="eurosat",
    folder="eurosat",
    files=(
        RemoteFile(
            "EuroSAT.zip",
            "https://huggingface.co/datasets/torchgeo/eurosat/resolve/c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip",
            "md5:c8fa014336c82ac7804f0398fcb19387",
            0.094 * GB,
        ),
    ),
    description="EuroSAT RGB: 27,000 Sentinel-2 JPEGs, 64 px, 10 classes",
)

# EuroSAT-MS: 13-band GeoTIFFs under ds/images/remote_sensing/otherDatasets/sentinel_2/tif/<Class>/ (microsoft/torchgeo
# torchgeo/datasets/eurosat.py L58-61 at commit 720cf5b); URL, "2.0 GB download" and md5: L54 and L56.
EUROSAT_MS = DatasetRelease(
    name="eurosat-ms",
    folder="eurosat-ms",
    files=(
        RemoteFile(
            "EuroSATallBands.zip",
            "https://madm.dfki.de/files/sentinel/EuroSATallBands.zip",
            "md5:5ac12b3b2557aa56e1826e981e8e200e",
            2.0 * GB,
        ),
    ),
    description="EuroSAT-MS: the same 27,000 tiles as 13-band uint16 GeoTIFFs",
)

# SeCo releases: ServiceNow/seasonal-contrast README.md L78-79 at commit 411e37e (Datasets table: link, size, md5).
SECO_100K = DatasetRelease(
    name="seco-100k",
    folder="seco-100k",
    files=(
        RemoteFile(
            "seco_100k.zip",
            "https://zenodo.org/record/4728033/files/seco_100k.zip?download=1",
            "md5:ebf2d5e03adc6e657f9a69a20ad863e0",
            7.3 * GB,
        ),
    ),
    description="SeCo-100K: ~100K locations x 5 dates, Sentinel-2 band GeoTIFFs + RGB previews (DINO-MC's data)",
)
SECO_1M = DatasetRelease(
    name="seco-1m",
    folder="seco-1m",
    files=(
        RemoteFile(
            "seco_1m.zip",
            "https://zenodo.org/record/4728033/files/seco_1m.zip?download=1",
            "md5:187963d852d4d3ce6637743ec3a4bd9e",
            36.3 * GB,
        ),
    ),
    description="SeCo-1M: ~1M locations x 5 dates, Sentinel-2 band GeoTIFFs (no previews)",
)

# BigEarthNet v1.0, Sentinel-2: URL, md5 and its folder BigEarthNet-v1.0: microsoft/torchgeo
# torchgeo/datasets/bigearthnet.py L252-257 at commit ae967c5. Split lists and flagged patches: the ones SeCo reads
# (ServiceNow/seasonal-contrast datasets/bigearthnet_dataset.py L122-130 at commit 411e37e), published without
# checksums. Size: the archive's, as bigearth.net lists it (about 66 GB).
_SECO_SPLITS = "https://storage.googleapis.com/remote_sensing_representations/bigearthnet-{}.txt"
BIGEARTHNET = DatasetRelease(
    name="bigearthnet",
    folder="BigEarthNet-v1.0",
    files=(
        RemoteFile(
            "BigEarthNet-S2-v1.0.tar.gz",
            "https://bigearth.net/downloads/BigEarthNet-S2-v1.0.tar.gz",
            "md5:5a64e9ce38deb036a435a7b59494924c",
            66 * GB,
        ),
        *(RemoteFile(f"bigearthnet-{s}.txt", _SECO_SPLITS.format(s), None, 1e6) for s in ("train", "val", "test")),
        RemoteFile(
            "patches_with_seasonal_snow.csv",
            "http://bigearth.net/static/documents/patches_with_seasonal_snow.csv",
            None,
            1e6,
        ),
        RemoteFile(
            "patches_with_cloud_and_shadow.csv",
            "http://bigearth.net/static/documents/patches_with_cloud_and_shadow.csv",
            None,
            1e6,
        ),
    ),
    description="BigEarthNet v1.0 (Sentinel-2): 590,326 120 px patches, 43 labels (19 in the new nomenclature)",
)

# OSCD: the three zips of the release, URLs from microsoft/torchgeo torchgeo/datasets/oscd.py L52-62 at commit 0171c72.
# That file gives one md5 (L64) for all three different files, so it cannot be each file's: they are unverified.
OSCD = DatasetRelease(
    name="oscd",
    folder="OSCD",
    files=(
        RemoteFile(
            "Onera Satellite Change Detection dataset - Images.zip",
            "https://partage.imt.fr/index.php/s/gKRaWgRnLMfwMGo/download",
            None,
            0.5 * GB,
        ),
        RemoteFile(
            "Onera Satellite Change Detection dataset - Train Labels.zip",
            "https://partage.mines-telecom.fr/index.php/s/2D6n03k58ygBSpu/download",
            None,
            1e6,
        ),
        RemoteFile(
            "Onera Satellite Change Detection dataset - Test Labels.zip",
            "https://partage.imt.fr/index.php/s/gpStKn4Mpgfnr63/download",
            None,
            1e6,
        ),
    ),
    description="OSCD: 24 Sentinel-2 image pairs (14 train, 10 test cities) with change masks",
)

DATASETS: dict[str, DatasetRelease] = {d.name: d for d in (EUROSAT, EUROSAT_MS, SECO_100K, SECO_1M, BIGEARTHNET, OSCD)}
