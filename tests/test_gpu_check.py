"""bench/gpu_check.sh, the one command for a lent GPU: its dry run here (no GPU: it says so and exits 0) and the
one-page summary it builds from pytest's and pytest-benchmark's own output files."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bench.gpu_summary import build, describe_machine, env_section

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is what the script does without a GPU")
def test_gpu_check_dry_run_without_a_gpu(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out)], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable}, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "no CUDA GPU is visible" in result.stdout
    assert "No CUDA GPU is visible" in (out / "summary.md").read_text()
    assert "no CUDA GPU is visible" in (out / "log").read_text()
    assert not (out / "tests.xml").exists()  # nothing was run


def test_gpu_check_needs_an_output_folder():
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0 and "usage: bench/gpu_check.sh OUT_DIR" in result.stderr


FAKE_TESTS = '''
import pytest

def test_passes():
    pass

def test_fails():
    assert 1 == 2, "values differ"

def test_skips():
    pytest.skip("xformers is not installed")

@pytest.mark.parametrize("impl", ["fastdino", "reference"])
def test_bench(benchmark, impl):
    benchmark.group = "dino_loss fwd+bwd cuda"
    benchmark.extra_info.update(impl=impl, images=64, bytes_moved=3e9, peak_gbps=3350.0, peak_mem_bytes=2**30)
    benchmark(lambda: None)
'''


def test_summary_from_the_files_pytest_writes(tmp_path):
    """Real JUnit XML and pytest-benchmark JSON from a small run; the medians are then set so that the numbers
    of the summary are known (tests never time things)."""
    (tmp_path / "test_fake.py").write_text(textwrap.dedent(FAKE_TESTS))
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([sys.executable, "-m", "pytest", str(tmp_path / "test_fake.py"), "-q", "-p", "no:cacheprovider",
                    "--rootdir", str(tmp_path), "--junitxml", str(out / "tests.xml"), "--benchmark-json",
                    str(out / "step.json"), "--benchmark-min-rounds=1", "--benchmark-max-time=0.001",
                    "--benchmark-warmup=off"], cwd=tmp_path, capture_output=True, timeout=300)
    bench = json.loads((out / "step.json").read_text())
    for b in bench["benchmarks"]:
        b["stats"]["median"] = 0.004 if b["extra_info"]["impl"] == "reference" else 0.001
    (out / "step.json").write_text(json.dumps(bench))
    env = dict(device="NVIDIA H100 80GB HBM3", capability="9.0", memory_gib=79.2, gpus=1, torch="2.11.0+cu130",
               cuda="13.0", triton="3.6.0", python="3.12.3", commit="abc1234", xformers="0.0.35",
               xformers_info="memory_efficient_attention.ckF:     unavailable\n"
                             "memory_efficient_attention.fa2F@2.5.7-pt:   available\n", dali=None)
    (out / "env.json").write_text(json.dumps(env))
    phases = tmp_path / "phases.tsv"
    phases.write_text("setup\t0\t12\ntests\t1\t80\nbench\t124\t100\nstep\t0\t95\n")

    text = build(out, phases)
    assert "NVIDIA H100 80GB HBM3 (compute capability 9.0" in text
    assert "fmha operators available: fa2F@2.5.7-pt." in text  # "unavailable" ones are not listed
    assert "DALI: absent, so the dali-gpu tests skip" in text
    assert "| tests | **exit 1** | 80 |" in text and "| bench | **timeout** | 100 |" in text
    assert "3 passed, 1 failed, 1 skipped." in text  # the two benchmarks are tests that pass
    assert "FAILED test_fake::test_fails: AssertionError: values differ" in text
    assert "skipped (1): " in text and "xformers is not installed" in text
    assert "bench.json is missing" in text
    # 3 GB in 1 ms = 3000 GB/s, 90% of 3350; 64 images in 1 ms; 4x the reference.
    assert "| fastdino | 1.000 | 4.00 | 3000 (90%) | 64000 | 1024 |" in text
    assert "| reference | 4.000 | 1.00 | 750 (22%) | 16000 | 1024 |" in text


def test_summary_without_a_gpu(tmp_path):
    text = build(tmp_path, no_gpu=True)
    assert "No CUDA GPU is visible" in text and "no test or benchmark was run" in text


def test_machine_description_lists_what_is_really_installed():
    env = describe_machine()
    assert env["torch"] == torch.__version__ and env["gpus"] == torch.cuda.device_count()
    text = "\n".join(env_section(env))
    try:
        import xformers
    except ImportError:
        assert env["xformers"] is None and "xformers: absent" in text
    else:  # the operator list parsed from the real `python -m xformers.info`, not "unavailable" ones
        assert env["xformers"] == xformers.__version__
        listed = text.split("fmha operators available: ")[1].split(".\n")[0]
        info = dict(line.split(":", 1) for line in env["xformers_info"].splitlines() if ":" in line)
        expected = [k.strip().removeprefix("memory_efficient_attention.") for k, v in info.items()
                    if k.startswith("memory_efficient_attention.") and v.strip() == "available"]
        assert listed == (", ".join(expected) or "none listed")
        assert "memory_efficient_attention." in env["xformers_info"]
