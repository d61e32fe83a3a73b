"""Cached, checksummed, resumable downloads.

pooch does the caching and the checksum (a file already in the cache with the right hash is not fetched again; a
wrong hash deletes the download and raises). pooch itself streams into a fresh temporary file each time, so an
interrupted download starts over; `ResumableDownloader` keeps the bytes in `<name>.part` instead and continues them
with an HTTP Range request.
"""

from __future__ import annotations

import http.client
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .catalogue import RemoteFile

CHUNK_BYTES = 1 << 20


class DownloadError(RuntimeError):
    """A download that failed: an interrupted transfer (run again to resume) or a wrong checksum."""


class ResumableDownloader:
    """A pooch downloader: bytes go to `part` (kept across failures), continued with `Range: bytes=<have>-`."""

    def __init__(self, part: Path, progressbar: bool = True, timeout_s: float = 60.0):
        self.part = Path(part)
        self.progressbar = progressbar
        self.timeout_s = timeout_s

    def __call__(self, url: str, output_file, pooch=None, check_only: bool = False) -> None:
        self._fill_part(url)
        shutil.move(str(self.part), str(output_file))

    def _fill_part(self, url: str) -> None:
        have = self.part.stat().st_size if self.part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as error:
            if error.code == 416 and have:  # nothing left to send: the part is complete
                return
            raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from error
        except (urllib.error.URLError, OSError) as error:
            raise DownloadError(f"{url}: {error}; run the command again to retry") from error
        with response:
            if have and response.status != 206:  # the server ignored the Range: start over
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            self._copy(response, url, have, total)

    def _copy(self, response, url: str, have: int, total: int | None) -> None:
        self.part.parent.mkdir(parents=True, exist_ok=True)
        with open(self.part, "ab" if have else "wb") as out, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=self.part.name[: -len(".part")],
            disable=not self.progressbar,
        ) as bar:
            try:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    bar.update(len(chunk))
            except (http.client.IncompleteRead, OSError) as error:
                if isinstance(error, http.client.IncompleteRead):
                    out.write(error.partial)  # what arrived before the connection dropped is kept
                raise self._interrupted(url, out.tell(), total, error.__class__.__name__) from error
            got = out.tell()
        if total is not None and got != total:
            raise self._interrupted(url, got, total, "short response")

    def _interrupted(self, url: str, got: int, total: int | None, why: str) -> DownloadError:
        of = f" of {total:,}" if total is not None else ""
        return DownloadError(f"download of {url} stopped at {got:,}{of} bytes ({why}); the part is kept in "
                             f"{self.part}: run the command again to resume")


def fetch(remote: RemoteFile, cache: Path, progressbar: bool = True) -> Path:
    """Download `remote` into `cache` (resuming a part, skipping a file already there with the right checksum)."""
    pooch = _import_pooch()
    cache.mkdir(parents=True, exist_ok=True)
    downloader = ResumableDownloader(cache / f"{remote.name}.part", progressbar=progressbar)
    try:
        path = pooch.retrieve(remote.url, known_hash=remote.known_hash, fname=remote.name, path=cache,
                              downloader=downloader, progressbar=False)
    except ValueError as error:  # pooch's hash mismatch: it has already deleted the download
        downloader.part.unlink(missing_ok=True)
        raise DownloadError(
            f"checksum of {remote.name} (from {remote.url}) does not match: {error}. The download was deleted; "
            "if the release changed, the URL or checksum in fastdino/download/catalogue.py needs updating"
        ) from error
    return Path(path)


def file_sha256(path: Path) -> str:
    return _import_pooch().file_hash(str(path), alg="sha256")


def _import_pooch():
    try:
        import pooch  # optional: only `fastdino download` needs it
    except ImportError as error:
        raise ImportError("`fastdino download` needs pooch: pip install 'fastdino[download]' (or pip install pooch)") \
            from error
    return pooch
