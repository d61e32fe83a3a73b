"""The wheel `pip install .` would install holds every file of the three source folders (fastdino/, kernels/ and
dataloading/, the last two under the fastdino namespace), the `fastdino` console script and the extras.

Built from a copy of the sources (setuptools reuses a build/ folder, which could hide a missing file), without build
isolation (no download). The full check, a non-editable install into a fresh virtual environment outside the
checkout that runs `fastdino --version`, the imports and a short `fastdino train`, is a step of .ci/run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import fastdino

ROOT = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = {"fastdino": "fastdino", "kernels": "fastdino/kernels", "dataloading": "fastdino/dataloading"}
BUILD_FILES = ("pyproject.toml", "README.md")


def source_files(root: Path) -> set[str]:
    """Every file of the source folders as the wheel names it (bytecode caches left out)."""
    files = set()
    for folder, installed in SOURCE_FOLDERS.items():
        for path in (root / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.add(f"{installed}/{path.relative_to(root / folder).as_posix()}")
    return files


def build_wheel(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for folder in SOURCE_FOLDERS:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in BUILD_FILES:
        shutil.copy(ROOT / name, src / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("fastdino-*.whl")
    return wheel


def test_wheel_holds_every_source_file_the_console_script_and_the_extras(tmp_path):
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = z.read(info).decode()
        entry_points = z.read(info.replace("METADATA", "entry_points.txt")).decode()
    packaged = {n for n in names if n.startswith("fastdino/")}
    missing = sorted(source_files(ROOT) - packaged)
    assert not missing, f"not in the wheel (list the package in pyproject.toml [tool.setuptools]): {missing}"
    assert f"Version: {fastdino.__version__}\n" in metadata  # `fastdino --version` prints fastdino.__version__
    assert "fastdino = fastdino.cli:main" in entry_points
    assert {"Provides-Extra: tensorboard", "Provides-Extra: dali"} <= set(metadata.splitlines())
