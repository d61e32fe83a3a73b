"""WebDataset tar shards: a dataset packed into a few large files, with an index for random access.

Why: a corpus of millions of small files (SeCo-1M: ~12M band files) stalls on a shared filesystem, which pays a
metadata round trip per open. A shard is a plain POSIX tar of the samples' files, the format WebDataset and DALI's
`fn.readers.webdataset` read natively, so the images keep their encoded bytes (a JPEG stays that JPEG).

A sample is one image, or one SeCo location with all its acquisitions (so DINO-MC's one-acquisition draw and
DINO-TP's date triplets still work on shards). Every file keeps its bytes, so shards are lossless and as small as
the source (SeCo's JPEG-compressed bands stay compressed); decoding and resampling happen when a sample is read,
exactly as for the file tree. Its members share the key (WebDataset groups members by the name before the first
dot of the file name):
  <key>.json          {"path" | "location", "acquisitions": [...], "label": int | null}
  <key>.<ext>         an image file (jpg, png, tif, npy)
  <key>.a<j>.<ext>    acquisition j of a SeCo location: its RGB preview
  <key>.a<j>.<B>.tif  acquisition j's band file B (B4, B8A, ...)
  <key>.cls           the class index, where the source has labels

Beside the shards: `<shard>.idx`, DALI's index (wds2idx's "v1.2" text format: per sample, `ext offset size name`
per member), written from the offsets tarfile reports, and `shards.json` (SHARD_INDEX): samples per shard, the
band files, the band statistics, a fingerprint of the source, the fastdino version, the inputs that were skipped.

Writing is resumable: each shard is written under a temporary name, read back and checked (every member's
size and SHA-1), then renamed, and only then entered in shards.json (itself replaced atomically). A killed
`prepare` restarts after its last finished shard; samples go to shards in source order, so the result is the same.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .band_files import read_array
from .decode import load_rgb
from .members import SHARD_INDEX
from .sources import ImageSource, SeCoSource

FORMAT = "fastdino-shards/1"
DEFAULT_SHARD_BYTES = 512 * 2**20  # large enough that opens are rare, small enough to spread over 8 ranks x nodes
_TAR_BLOCK = 512
# Beside each shard: one row per sample (key, name, acquisitions, label), so that a source can be built, subset and
# split into acquisitions without opening the tars.
TABLE_SUFFIX = ".samples.tsv"
TABLE_HEADER = "key\tname\tacquisitions\tlabel\n"
_EXT = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".tif": "tif", ".tiff": "tif", ".npy": "npy"}


@dataclass
class Sample:
    """One sample's members (extension after the key -> bytes), where it came from, and its row in the shard's
    table: its name (an image's relative path, a SeCo location's folder name), acquisitions and label."""

    key: str
    members: dict[str, bytes]
    origin: str
    name: str = ""
    acquisitions: int = 0
    label: int | None = None


@dataclass
class ShardWriteResult:
    index: dict
    written: int  # shards written by this call (the rest were there from an earlier, interrupted call)
    seconds: float


@dataclass
class _OpenShard:
    name: str
    first_sample: int
    tmp_path: Path
    tar: tarfile.TarFile
    idx_lines: list[str] = field(default_factory=list)
    table_rows: list[str] = field(default_factory=list)
    digests: dict[str, tuple[int, str]] = field(default_factory=dict)  # member name -> (size, sha1)

    @property
    def samples(self) -> int:
        return len(self.idx_lines)


# --- what goes into a sample ---------------------------------------------------------------------------------------
def _ext(path: str) -> str:
    ext = _EXT.get(Path(path).suffix.lower())
    if ext is None:
        raise ValueError(f"{path}: unsupported file type; supported: {', '.join(_EXT)}")
    return ext


def _check_decodes(path: str, single_band: bool = False) -> None:
    """Decode a file once, so that a corrupt one is skipped and listed instead of packed. RGB images with PIL;
    multi-band TIFFs and arrays with the multispectral reader (which also refuses NaN / inf pixels)."""
    if single_band:  # a SeCo band file
        read_array(path)
        return
    if _ext(path) in ("jpg", "png"):
        load_rgb(path)
        return
    try:
        with Image.open(path) as im:
            if im.mode in ("RGB", "RGBA", "L", "P"):
                im.load()
                return
    except OSError:
        pass  # a TIFF PIL cannot read (more than 4 bands, 16-bit planar): the multispectral reader decides
    read_array(path)


def iter_samples(source) -> Iterator[tuple[int, Sample | None, str | None, str]]:
    """(sample number, Sample or None, error or None, origin) for every sample of the source, in source order.
    Every file keeps its bytes: images, SeCo previews and single-band files, multi-band TIFFs, arrays."""
    if isinstance(source, SeCoSource):
        for i, loc in enumerate(source.locations):
            origin = str(Path(source.root) / loc.name)
            try:
                _check_name(loc.name)
                members = {}
                for j, acq in enumerate(loc.acquisitions):
                    if acq.preview is not None:
                        _check_decodes(acq.preview)
                        members[f"a{j}.{_ext(acq.preview)}"] = Path(acq.preview).read_bytes()
                    for band, path in sorted(acq.bands.items()):
                        _check_decodes(path, single_band=True)
                        members[f"a{j}.{band}.{_ext(path)}"] = Path(path).read_bytes()
                meta = {"location": loc.name, "acquisitions": [a.name for a in loc.acquisitions], "label": None}
                members["json"] = json.dumps(meta).encode()
                yield i, Sample(f"{i:09d}", members, origin, loc.name, len(loc.acquisitions)), None, origin
            except Exception as e:  # noqa: BLE001 - any unreadable input is skipped and listed, never fatal
                yield i, None, f"{type(e).__name__}: {e}", origin
        return
    if not isinstance(source, ImageSource):
        raise TypeError(f"cannot shard a {type(source).__name__}; expected an ImageSource or a SeCoSource")
    for i, path in enumerate(source.paths):
        label = source.labels[i] if source.labels is not None else None
        try:
            rel = os.path.relpath(path, source.root)
            _check_name(rel)
            _check_decodes(path)
            members = {_ext(path): Path(path).read_bytes(), "json": json.dumps({"path": rel, "label": label}).encode()}
            if label is not None:
                members["cls"] = str(label).encode()
            yield i, Sample(f"{i:09d}", members, path, rel, 0, label), None, path
        except Exception as e:  # noqa: BLE001
            yield i, None, f"{type(e).__name__}: {e}", path


def _check_name(name: str) -> None:
    if "\t" in name or "\n" in name:  # the shard's table is tab-separated, one sample a line
        raise ValueError(f"{name!r}: a tab or line break in the name")


def source_fingerprint(source) -> str:
    """SHA-256 over every input file's relative path, size and modification time: changes when the data does."""
    h = hashlib.sha256()
    root = Path(source.root)
    if isinstance(source, SeCoSource):
        files = [f for a in source.acquisitions for f in ([a.preview] if a.preview else []) + sorted(a.bands.values())]
    else:
        files = list(source.paths)
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.relpath(f, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# --- writing -----------------------------------------------------------------------------------------------------
def shard_name(number: int) -> str:
    return f"shard-{number:06d}.tar"


def _member_bytes(n: int) -> int:
    """Bytes a member of n bytes takes in a tar: a header block plus the data padded to whole blocks."""
    return _TAR_BLOCK + -(-n // _TAR_BLOCK) * _TAR_BLOCK


def _open_shard(out: Path, number: int, first_sample: int) -> _OpenShard:
    name = shard_name(number)
    tmp = out / f".{name}.tmp"
    # GNU format and fixed metadata: the same input gives the same bytes (mtime 0, no user names).
    return _OpenShard(name, first_sample, tmp, tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT))


def _add_sample(shard: _OpenShard, sample: Sample) -> None:
    fields = []
    for ext, data in sample.members.items():
        info = tarfile.TarInfo(f"{sample.key}.{ext}")
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        shard.tar.addfile(info, io.BytesIO(data))
        # tarfile sets no offset_data when writing: the data ends the member, padded to whole blocks
        data_offset = shard.tar.offset - -(-len(data) // _TAR_BLOCK) * _TAR_BLOCK
        fields.append(f"{ext} {data_offset} {len(data)} {info.name}")
        shard.digests[info.name] = (len(data), hashlib.sha1(data).hexdigest())
    shard.idx_lines.append(" ".join(fields))
    label = "" if sample.label is None else str(sample.label)
    shard.table_rows.append(f"{sample.key}\t{sample.name}\t{sample.acquisitions}\t{label}")


def _verify(path: Path, digests: dict[str, tuple[int, str]]) -> None:
    """Read a written shard back: every member present, with the size and SHA-1 it was written with."""
    seen = set()
    with tarfile.open(path) as tar:
        for info in tar:
            expected = digests.get(info.name)
            data = tar.extractfile(info).read() if info.isfile() else b""
            if expected is None or (len(data), hashlib.sha1(data).hexdigest()) != expected:
                raise OSError(f"shard {path} does not read back as written (member {info.name!r})")
            seen.add(info.name)
    if seen != set(digests):
        raise OSError(f"shard {path} lacks {len(set(digests) - seen)} of its members after writing")


def _close_shard(out: Path, shard: _OpenShard) -> dict:
    shard.tar.close()
    _verify(shard.tmp_path, shard.digests)
    (out / (shard.name[:-4] + ".idx")).write_text(f"v1.2 {shard.samples}\n" + "\n".join(shard.idx_lines) + "\n")
    (out / (shard.name[:-4] + TABLE_SUFFIX)).write_text(TABLE_HEADER + "".join(r + "\n" for r in shard.table_rows))
    final = out / shard.name
    os.replace(shard.tmp_path, final)
    return {"file": shard.name, "index": shard.name[:-4] + ".idx", "first_sample": shard.first_sample,
            "samples": shard.samples, "bytes": final.stat().st_size, "table": shard.name[:-4] + TABLE_SUFFIX}


def _write_index(out: Path, index: dict) -> None:
    tmp = out / f".{SHARD_INDEX}.tmp"
    tmp.write_text(json.dumps(index, indent=1) + "\n")
    os.replace(tmp, out / SHARD_INDEX)


def _resume_point(out: Path, index: dict) -> tuple[list[dict], int, list[dict]]:
    """(finished shards, next source sample, skipped so far) of an interrupted write with the same inputs."""
    old = read_index(out, allow_incomplete=True)
    for key in ("source", "shard_bytes"):
        if old.get(key) != index.get(key):
            raise ValueError(f"{out} holds shards of other inputs ({key} differs: {old.get(key)!r} vs "
                             f"{index.get(key)!r}); choose another --output or pass --overwrite")
    for s in old["shards"]:
        if not (out / s["file"]).is_file() or (out / s["file"]).stat().st_size != s["bytes"]:
            raise ValueError(f"{out / s['file']} is missing or has another size than {SHARD_INDEX} says; "
                             "pass --overwrite to write the shards again")
    return old["shards"], old["next_source_sample"], old["skipped"]


def write_shards(source, output, *, shard_bytes: int = DEFAULT_SHARD_BYTES, band_stats: dict | None = None,
                 extra: dict | None = None, version: str = "", progress: bool = True,
                 overwrite: bool = False) -> ShardWriteResult:
    """Pack `source` (an ImageSource or SeCoSource) into WebDataset shards of about `shard_bytes` under `output`.

    band_stats: the data's `fastdino stats` (kept in shards.json); extra: more keys for shards.json (e.g. the band
    order inside multi-band files, which the files do not say). An unreadable input is skipped and listed in
    shards.json ("skipped"); a shard never holds a broken sample.
    An interrupted call with the same inputs resumes after its last finished shard; a finished one is left as is."""
    if shard_bytes < 1 << 20:
        raise ValueError(f"shard size {shard_bytes} bytes is below 1 MiB: shards that small defeat their purpose")
    out = Path(output)
    start = time.perf_counter()
    seco = isinstance(source, SeCoSource)
    products = [a for a in source.acquisitions if a.bands] if seco else []
    band_counts = dict(sorted(Counter(b for a in products for b in a.bands).items()))
    index = {"format": FORMAT, "fastdino_version": version, "layout": "seco" if seco else "images",
             "band_files": list(band_counts), "band_counts": band_counts, "products": len(products),
             "classes": list(getattr(source, "classes", [])),
             "band_stats": band_stats, "shard_bytes": int(shard_bytes), **(extra or {}),
             "source": {"path": str(source.root), "fingerprint": source_fingerprint(source)},
             "samples": 0, "shards": [], "skipped": [], "next_source_sample": 0, "complete": False}
    shards, first, skipped = [], 0, []
    if (out / SHARD_INDEX).is_file() and not overwrite:
        old = read_index(out, allow_incomplete=True)
        if old.get("complete") and old["source"] == index["source"]:
            return ShardWriteResult(old, 0, time.perf_counter() - start)
        shards, first, skipped = _resume_point(out, index)
    elif out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"--output {out} is not empty and holds no {SHARD_INDEX}; choose an empty folder or pass "
                         "--overwrite")
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for stale in [*out.glob("shard-*.tar"), *out.glob("shard-*.idx"), *out.glob(f"shard-*{TABLE_SUFFIX}"),
                      out / SHARD_INDEX]:
            stale.unlink(missing_ok=True)
    written, current, size = 0, None, 0
    total = len(source.locations) if isinstance(source, SeCoSource) else len(source.paths)
    bar = _progress(total, first, progress)
    for i, sample, error, origin in iter_samples(source):
        if i < first:
            continue
        bar.update(1)
        if sample is None:
            skipped.append({"path": origin, "error": error})
            continue
        n_bytes = sum(_member_bytes(len(d)) for d in sample.members.values())
        if current is not None and size + n_bytes > shard_bytes and current.samples:
            shards.append(_close_shard(out, current))
            written += 1
            _write_index(out, {**index, "shards": shards, "skipped": skipped, "next_source_sample": i,
                               "samples": sum(s["samples"] for s in shards)})
            current = None
        if current is None:
            current = _open_shard(out, len(shards), sum(s["samples"] for s in shards))
            size = 0
        _add_sample(current, sample)
        size += n_bytes
    bar.close()
    if current is not None and current.samples:
        shards.append(_close_shard(out, current))
        written += 1
    elif current is not None:
        current.tar.close()
        current.tmp_path.unlink(missing_ok=True)
    if not shards:
        first_error = f": {skipped[0]['path']}: {skipped[0]['error']}" if skipped else ""
        raise ValueError(f"no sample of {source.root} could be read ({len(skipped)} skipped{first_error})")
    index.update(shards=shards, skipped=skipped, next_source_sample=total,
                 samples=sum(s["samples"] for s in shards), complete=True)
    _write_index(out, index)
    return ShardWriteResult(index, written, time.perf_counter() - start)


def _progress(total: int, done: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="sample", desc="shards", disable=not enabled, mininterval=1.0)


# --- reading -----------------------------------------------------------------------------------------------------
def read_index(folder, allow_incomplete: bool = False) -> dict:
    """shards.json of a shard folder, checked: a clear error for a folder that is not one, or was not finished."""
    path = Path(folder) / SHARD_INDEX
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no {SHARD_INDEX}: write shards with `fastdino prepare --format "
                                "shards`")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); write the shards again") from None
    if index.get("format") != FORMAT:
        raise ValueError(f"{path}: format {index.get('format')!r}, this fastdino reads {FORMAT!r}")
    if not index.get("complete") and not allow_incomplete:
        raise ValueError(f"{folder}: the shards were not finished (run `fastdino prepare` again to resume)")
    return index


class ShardReader:
    """Random access to the samples of a shard folder through the DALI index's offsets: one read per member,
    no scan of the tar. `reader[i]` -> {extension: bytes} of sample i (0 <= i < len(reader))."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.index = read_index(self.folder)
        self.shards = self.index["shards"]
        self._starts = [s["first_sample"] for s in self.shards]
        self._rows: dict[int, list[list[tuple[str, int, int]]]] = {}
        self._fds: dict[int, int] = {}

    def __len__(self) -> int:
        return self.index["samples"]

    def _members(self, shard: int) -> list[list[tuple[str, int, int]]]:
        if shard not in self._rows:
            lines = (self.folder / self.shards[shard]["index"]).read_text().splitlines()
            rows = []
            for line in lines[1:]:
                f = line.split()
                rows.append([(f[k], int(f[k + 1]), int(f[k + 2])) for k in range(0, len(f), 4)])
            if len(rows) != self.shards[shard]["samples"]:
                raise ValueError(f"{self.folder / self.shards[shard]['index']} lists {len(rows)} samples, "
                                 f"{SHARD_INDEX} says {self.shards[shard]['samples']}")
            self._rows[shard] = rows
        return self._rows[shard]

    def locate(self, i: int) -> tuple[int, int]:
        """(shard number, sample within the shard) of sample i."""
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} of a {len(self)}-sample shard set")
        shard = bisect_right(self._starts, i) - 1
        return shard, i - self._starts[shard]

    def _fd(self, shard: int) -> int:
        if shard not in self._fds:
            self._fds[shard] = os.open(self.folder / self.shards[shard]["file"], os.O_RDONLY)
        return self._fds[shard]

    def __getitem__(self, i: int) -> dict[str, bytes]:
        shard, j = self.locate(i)
        return {ext: os.pread(self._fd(shard), size, offset) for ext, offset, size in self._members(shard)[j]}

    def member(self, i: int, ext: str) -> bytes:
        """One member of sample i (e.g. "jpg", "a2.tif"): a single read."""
        shard, j = self.locate(i)
        for name, offset, size in self._members(shard)[j]:
            if name == ext:
                data = os.pread(self._fd(shard), size, offset)
                if len(data) != size:
                    raise OSError(f"{self.folder / self.shards[shard]['file']}: sample {i} member {ext!r} is cut "
                                  f"short ({len(data)} of {size} bytes)")
                return data
        raise KeyError(f"sample {i} of {self.folder} has no member {ext!r}")

    def extensions(self, i: int) -> list[str]:
        shard, j = self.locate(i)
        return [name for name, _, _ in self._members(shard)[j]]

    def table(self, shard: int) -> list[tuple[str, str, int, int | None]]:
        """(key, name, acquisitions, label) of every sample of a shard, from its table beside it."""
        path = self.folder / self.shards[shard]["table"]
        rows = []
        for line in path.read_text().splitlines()[1:]:
            key, name, n_acq, label = line.split("\t")
            rows.append((key, name, int(n_acq), int(label) if label else None))
        if len(rows) != self.shards[shard]["samples"]:
            raise ValueError(f"{path} lists {len(rows)} samples, {SHARD_INDEX} says {self.shards[shard]['samples']}")
        return rows

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __getstate__(self):  # DataLoader workers open their own file descriptors
        return {**self.__dict__, "_fds": {}}

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
