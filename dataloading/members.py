"""A file inside a shard, as the readers see it: where a file tree has a path, a shard source has a ShardMember.

The readers (decode, bands, multispectral, the DALI feeders) open `open_member(x)` where they opened a path, so
the same code reads both; this module imports nothing of the package, so every reader can import it.
"""

from __future__ import annotations

import io
from pathlib import Path

SHARD_INDEX = "shards.json"  # the index of a shard folder (shards.py)


class ShardMember:
    """One file inside a shard: member `ext` of sample `sample` ("jpg", "a2.tif", "npy"; None: the sample's only
    image member). Hashable, so the feeders can remember which ones they found corrupt."""

    __slots__ = ("reader", "sample", "ext", "name")

    def __init__(self, reader, sample: int, ext: str | None = None, name: str = ""):
        self.reader, self.sample, self.ext, self.name = reader, sample, ext, name

    def resolved_ext(self) -> str:
        if self.ext is not None:
            return self.ext
        exts = [e for e in self.reader.extensions(self.sample) if e not in ("json", "cls")]
        if len(exts) != 1:
            raise ValueError(f"{self}: expected one image member, found {exts}")
        return exts[0]

    def read(self) -> bytes:
        return self.reader.member(self.sample, self.resolved_ext())

    @property
    def suffix(self) -> str:
        return "." + self.resolved_ext().rsplit(".", 1)[-1]

    def __eq__(self, other) -> bool:
        return isinstance(other, ShardMember) and (self.reader.folder, self.sample, self.ext) == \
            (other.reader.folder, other.sample, other.ext)

    def __hash__(self) -> int:
        return hash((str(self.reader.folder), self.sample, self.ext))

    def __fspath__(self) -> str:
        """A path inside the shard, for messages and for code that names a file's folder: <shard.tar>/<name>
        (name: the image's relative path; a SeCo acquisition's <location>/a<j>.tif or <location>/a<j>/<B>.tif).
        It names the member; it is not a file that open() can read (read it with open_member / read_member)."""
        shard, _ = self.reader.locate(self.sample)
        return str(self.reader.folder / self.reader.shards[shard]["file"] / (self.name or f"sample-{self.sample}"))

    def __str__(self) -> str:
        return self.__fspath__()

    __repr__ = __str__


def open_member(item):
    """A file object over a ShardMember's bytes (PIL, numpy and tifffile read it), or the path itself."""
    return io.BytesIO(item.read()) if isinstance(item, ShardMember) else item


def read_member(item) -> bytes:
    """The bytes of a ShardMember or of a file."""
    return item.read() if isinstance(item, ShardMember) else Path(item).read_bytes()


def suffix(item) -> str:
    """'.npy', '.tif', ... of a ShardMember or a path, lower case."""
    return (item.suffix if isinstance(item, ShardMember) else Path(item).suffix).lower()
