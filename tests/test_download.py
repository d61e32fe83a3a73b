"""`fastdino download`: archives in the releases' layouts served from a loopback HTTP server (no real data)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fastdino.dataloading import build_source
from PIL import Image

import fastdino.download as download
from fastdino.cli import main
from fastdino.download import MARKER, DownloadError, download_dataset
from fastdino.download.catalogue import GB, RemoteFile

CLASSES = ("AnnualCrop", "Forest", "River")
PER_CLASS = 10


class _Server:
    """Serves `files` (url path -> bytes) with Range support; `drop[path] = n` cuts the next n responses midway."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if server.drop.get(self.path, 0) > 0:
                    server.drop[self.path] -= 1
                    self.wfile.write(body[start:start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server():
    s = _Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()
    s.thread.join(timeout=10)


def _jpeg(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _targz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _eurosat_rgb_zip() -> bytes:
    # The release: 2750/<Class>/<Class>_<i>.jpg
    return _zip({f"2750/{c}/{c}_{i}.jpg": _jpeg((20 * k, 100, 7 * i)) for k, c in enumerate(CLASSES)
                 for i in range(1, PER_CLASS + 1)})


def _serve(monkeypatch, server, name: str, archives: dict[str, bytes], *, hashes=None, size_bytes=None):
    """Point the catalogue's `name` at the server, with md5 checksums of the served bytes (or `hashes`)."""
    release = download.DATASETS[name]
    files = []
    for remote in release.files:
        path = "/" + remote.name.replace(" ", "_")
        server.files[path] = archives[remote.name]
        known = (hashes or {}).get(remote.name, "md5:" + hashlib.md5(archives[remote.name]).hexdigest())
        files.append(RemoteFile(remote.name, server.url(path), known,
                                remote.size_bytes if size_bytes is None else size_bytes))
    monkeypatch.setitem(download.DATASETS, name, dataclasses.replace(release, files=tuple(files)))


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_eurosat_is_laid_out_as_training_reads_it_with_a_stratified_split(server, monkeypatch, tmp_path):
    _serve(monkeypatch, server, "eurosat", {"EuroSAT.zip": _eurosat_rgb_zip()})
    target = download_dataset("eurosat", tmp_path / "data", yes=True, progressbar=False)

    assert target == tmp_path / "data" / "eurosat"
    assert (target / "images" / "Forest" / "Forest_3.jpg").is_file()
    splits = {s: _lines(target / f"{s}.txt") for s in ("train", "val", "test")}
    for c in CLASSES:  # 60 / 20 / 20 in every class
        assert [sum(line.startswith(c + "/") for line in splits[s]) for s in splits] == [6, 2, 2]
    everything = splits["train"] + splits["val"] + splits["test"]
    assert len(set(everything)) == len(everything) == len(CLASSES) * PER_CLASS
    source = build_source(target / "images", list_file=target / "train.txt")
    assert len(source.paths) == 18 and sorted(source.classes) == sorted(CLASSES)
    assert (target / MARKER).is_file()
    # the same seed gives the same split; a second run finds the folder complete and downloads nothing
    n_requests = len(server.requests)
    assert download_dataset("eurosat", tmp_path / "data", yes=True, progressbar=False) == target
    assert len(server.requests) == n_requests


def test_eurosat_split_files_sit_beside_images_where_the_readme_reads_them(server, monkeypatch, tmp_path):
    # The README's recipe: --data data/eurosat/images --data-list data/eurosat/train.txt
    _serve(monkeypatch, server, "eurosat", {"EuroSAT.zip": _eurosat_rgb_zip()})
    target = download_dataset("eurosat", tmp_path, yes=True, progressbar=False)
    for split in ("train", "val", "test"):
        assert (target / f"{split}.txt").is_file(), f"{split}.txt must be in {target}, as docs/data.md says"


def test_wrong_checksum_is_a_clear_error_and_leaves_no_tree(server, monkeypatch, tmp_path):
    wrong = "md5:" + "0" * 32
    _serve(monkeypatch, server, "eurosat", {"EuroSAT.zip": _eurosat_rgb_zip()}, hashes={"EuroSAT.zip": wrong})
    with pytest.raises(DownloadError) as error:
        download_dataset("eurosat", tmp_path, yes=True, progressbar=False)
    message = str(error.value)
    assert "EuroSAT.zip" in message and "0" * 32 in message and "got" in message
    assert not (tmp_path / "eurosat").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["downloads"]  # no staging folder left
    assert list((tmp_path / "downloads").iterdir()) == []  # no archive, no part


def test_interrupted_download_resumes_with_a_range_request(server, monkeypatch, tmp_path):
    archive = _eurosat_rgb_zip()
    _serve(monkeypatch, server, "eurosat", {"EuroSAT.zip": archive})
    server.drop["/EuroSAT.zip"] = 1
    with pytest.raises(DownloadError, match="run the command again to resume"):
        download_dataset("eurosat", tmp_path, yes=True, progressbar=False)
    part = tmp_path / "downloads" / "EuroSAT.zip.part"
    have = part.stat().st_size
    assert 0 < have < len(archive)
    assert not (tmp_path / "eurosat").exists()

    download_dataset("eurosat", tmp_path, yes=True, progressbar=False)
    assert server.requests[-1] == ("/EuroSAT.zip", f"bytes={have}-")
    assert (tmp_path / "downloads" / "EuroSAT.zip").read_bytes() == archive
    assert not part.exists()
    assert len(_lines(tmp_path / "eurosat" / "train.txt")) == 18


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_multi_gb_download_warns_and_asks_on_a_terminal(server, monkeypatch, tmp_path):
    _serve(monkeypatch, server, "eurosat", {"EuroSAT.zip": _eurosat_rgb_zip()}, size_bytes=7.3 * GB)
    out = io.StringIO()
    assert download_dataset("eurosat", tmp_path, out=out, stdin=_Terminal("n\n"), progressbar=False) is None
    assert "about 7.3 GB" in out.getvalue() and "min at 100 Mbit/s" in out.getvalue()
    assert server.requests == []  # declined before any byte was fetched

    out = io.StringIO()  # no terminal (a script): the warning only, then the download
    assert download_dataset("eurosat", tmp_path, out=out, stdin=io.StringIO(""), progressbar=False) is not None
    assert "WARNING" in out.getvalue() and "Continue?" not in out.getvalue()


def test_yes_skips_the_question(server, monkeypatch, tmp_path):
    _serve(monkeypatch, server, "eurosat", {"EuroSAT.zip": _eurosat_rgb_zip()}, size_bytes=7.3 * GB)
    out = io.StringIO()
    assert download_dataset("eurosat", tmp_path, yes=True, out=out, stdin=_Terminal(""), progressbar=False)
    assert "WARNING" in out.getvalue() and "Continue?" not in out.getvalue()


def test_eurosat_ms_gets_the_same_split_as_rgb(server, monkeypatch, tmp_path):
    tif = "ds/images/remote_sensing/otherDatasets/sentinel_2/tif"
    ms = _zip({f"{tif}/{c}/{c}_{i}.tif": b"II*\x00" + bytes([i]) for c in CLASSES for i in range(1, PER_CLASS + 1)})
    _serve(monkeypatch, server, "eurosat-ms", {"EuroSATallBands.zip": ms})
    _serve(monkeypatch, server, "eurosat", {"EuroSAT.zip": _eurosat_rgb_zip()})
    ms_root = download_dataset("eurosat-ms", tmp_path, yes=True, progressbar=False)
    rgb_root = download_dataset("eurosat", tmp_path, yes=True, progressbar=False)
    assert (ms_root / "River" / "River_1.tif").is_file()
    for split in ("train", "val", "test"):
        ms_lines = [line.replace(".tif", ".jpg") for line in _lines(ms_root / f"{split}.txt")]
        assert ms_lines == _lines(rgb_root / f"{split}.txt")


def test_seco_tree_is_kept_as_released(server, monkeypatch, tmp_path):
    members = {f"seco_100k/{loc:06d}/{prod}/B{b}.tif": b"x" for loc in range(3) for prod in ("p1", "p2")
               for b in (2, 3, 4)}
    members.update({f"seco_100k/{loc:06d}/p1.tif": b"preview" for loc in range(3)})
    _serve(monkeypatch, server, "seco-100k", {"seco_100k.zip": _zip(members)}, size_bytes=1e6)
    target = download_dataset("seco-100k", tmp_path, progressbar=False)
    assert (target / "000002" / "p2" / "B4.tif").is_file() and (target / "000000" / "p1.tif").is_file()
    assert sorted(p.name for p in target.iterdir() if p.is_dir()) == ["000000", "000001", "000002"]


def test_bigearthnet_gets_its_split_lists_and_flagged_patches(server, monkeypatch, tmp_path):
    patches = [f"S2A_MSIL2A_2017_{i}" for i in range(4)]
    tar = _targz({f"BigEarthNet-v1.0/{p}/{p}_{b}.tif": b"x" for p in patches for b in ("B02", "B03", "B04")})
    archives = {"BigEarthNet-S2-v1.0.tar.gz": tar,
                "bigearthnet-train.txt": ("\n".join(patches[:2]) + "\n").encode(),
                "bigearthnet-val.txt": (patches[2] + "\n").encode(),
                "bigearthnet-test.txt": (patches[3] + "\n").encode(),
                "patches_with_seasonal_snow.csv": b"",
                "patches_with_cloud_and_shadow.csv": (patches[0] + "\n").encode()}
    unverified = {n: None for n in archives if not n.endswith(".tar.gz")}
    _serve(monkeypatch, server, "bigearthnet", archives, hashes=unverified, size_bytes=1e6)
    out = io.StringIO()
    target = download_dataset("bigearthnet", tmp_path, out=out, progressbar=False)
    assert target == tmp_path / "BigEarthNet-v1.0"
    assert (target / patches[1] / f"{patches[1]}_B04.tif").is_file()
    assert _lines(target / "train.txt") == patches[:2] and _lines(target / "test.txt") == patches[3:]
    assert (target / "patches_with_cloud_and_shadow.csv").is_file()
    assert "bigearthnet-train.txt has no published checksum" in out.getvalue()


def test_oscd_zips_unpack_side_by_side(server, monkeypatch, tmp_path):
    images, train, test = (f"Onera Satellite Change Detection dataset - {k}" for k in ("Images", "Train Labels",
                                                                                       "Test Labels"))
    archives = {
        f"{images}.zip": _zip({f"{images}/train.txt": b"abudhabi", f"{images}/test.txt": b"brasilia",
                               f"{images}/abudhabi/imgs_1/x_B04.tif": b"x",
                               f"{images}/brasilia/imgs_1/x_B04.tif": b"x"}),
        f"{train}.zip": _zip({f"{train}/abudhabi/cm/cm.png": b"png"}),
        f"{test}.zip": _zip({"brasilia/cm/cm.png": b"png"}),  # no top folder: it gets the zip's name
    }
    _serve(monkeypatch, server, "oscd", archives, hashes=dict.fromkeys(archives), size_bytes=1e6)
    target = download_dataset("oscd", tmp_path, progressbar=False, out=io.StringIO())
    assert (target / images / "abudhabi" / "imgs_1" / "x_B04.tif").is_file()
    assert (target / train / "abudhabi" / "cm" / "cm.png").is_file()
    assert (target / test / "brasilia" / "cm" / "cm.png").is_file()


def test_archive_member_outside_the_folder_is_refused(server, monkeypatch, tmp_path):
    _serve(monkeypatch, server, "eurosat", {"EuroSAT.zip": _zip({"2750/Forest/Forest_1.jpg": b"x",
                                                                  "../../evil.txt": b"x"})})
    with pytest.raises(ValueError, match="outside"):
        download_dataset("eurosat", tmp_path / "data", yes=True, progressbar=False)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "data" / "eurosat").exists()


def test_a_foreign_folder_is_not_overwritten(tmp_path):
    (tmp_path / "eurosat").mkdir()
    with pytest.raises(FileExistsError, match="was not written by"):
        download_dataset("eurosat", tmp_path, yes=True, progressbar=False)


def test_cli_lists_the_datasets(capsys):
    assert main(["download", "--list"]) == 0
    listing = capsys.readouterr().out
    for name in ("eurosat", "eurosat-ms", "seco-100k", "seco-1m", "bigearthnet", "oscd"):
        assert name in listing
    assert main(["download", "nope"]) == 2
