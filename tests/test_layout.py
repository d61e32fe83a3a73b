"""The package's layout (docs/ARCHITECTURE.md, "Module map"): the root keeps the trainer's spine, the models import no
data, training or command-line code, and `fastdino --help` imports no subcommand."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from fastdino.dataloading.band_files import RGB

import fastdino
from fastdino.models.inflate import RGB as INFLATE_RGB

ROOT_MODULES = {"__init__", "__main__", "config", "run_config", "train", "checkpoint", "run_folder", "device",
                "distributed", "preemption", "schedules", "loss_terms", "multi_tensor"}


def modules_loaded_by(code: str) -> set[str]:
    """The fastdino modules that running `code` in a fresh interpreter imports."""
    done = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\n"
                           "print('\\n'.join(m for m in sys.modules if m.startswith('fastdino')))"],
                          capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_the_root_holds_the_trainers_spine_only():
    root = Path(fastdino.__file__).parent
    assert {p.stem for p in root.glob("*.py")} == ROOT_MODULES


def test_models_import_no_data_training_or_command_line_code():
    loaded = modules_loaded_by("import fastdino.models, fastdino.models.convert, fastdino.models.export, "
                               "fastdino.models.inflate")
    outside = sorted(m for m in loaded if m.startswith(("fastdino.dataloading", "fastdino.train", "fastdino.cli",
                                                        "fastdino.run_config", "fastdino.eval", "fastdino.bands")))
    assert not outside, f"fastdino.models imports {outside}"


def test_help_imports_no_subcommand_module():
    loaded = modules_loaded_by("from fastdino.cli import build_parser\nbuild_parser([])")
    assert loaded <= {"fastdino", "fastdino.cli"}, sorted(loaded)


def test_inflate_names_the_rgb_bands_as_the_data_does():
    assert INFLATE_RGB == RGB


def test_the_import_contracts_hold(tmp_path):
    """pyproject's [tool.importlinter] contracts, by `lint-imports`, on a copy laid out as installed (kernels/ and
    dataloading/ inside fastdino/: the editable install maps them there, where import-linter cannot follow)."""
    repo = Path(__file__).resolve().parent.parent
    package = tmp_path / "fastdino"
    shutil.copytree(repo / "fastdino", package, ignore=shutil.ignore_patterns("__pycache__"))
    for room in ("kernels", "dataloading"):
        shutil.copytree(repo / room, package / room, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(repo / "pyproject.toml", tmp_path)
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.exists(), 'lint-imports not found: pip install -e ".[dev]" installs import-linter'
    done = subprocess.run([str(lint_imports), "--config", "pyproject.toml", "--no-cache"], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
