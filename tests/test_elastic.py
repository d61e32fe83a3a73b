"""Two nodes on one machine: two `torchrun --nnodes 2` launches meet at a c10d rendezvous on 127.0.0.1 (gloo),
train on shards split across the nodes, and survive a worker killed mid-epoch: torchrun's elastic restart
(--max-restarts) starts the group again, `--resume auto` continues from the last step checkpoint, and the run
ends where an uninterrupted one does (bitwise)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fastdino.dataloading import build_source
from fastdino.dataloading.shards import read_index, write_shards

from fastdino import checkpoint as ckpt_io
from fastdino.config import save_config
from tests._data_helpers import write_image
from tests.test_preemption import assert_same_training_state, records, small_config

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_elastic_worker.py")
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shards(tmp_path) -> Path:
    """16 noise images of ~200 KB: several 1 MiB shards, so that the two nodes read different shards."""
    for i in range(16):
        write_image(tmp_path / "images" / f"{i:02d}.png", (256, 256), seed=i)
    out = tmp_path / "shards"
    write_shards(build_source(tmp_path / "images"), out, shard_bytes=1 << 20, progress=False)
    assert len(read_index(out)["shards"]) >= 4
    return out


def _two_nodes(config_file: Path, output: Path, env: dict, timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """The same torchrun line twice, as two nodes would run it; c10d assigns the node ranks."""
    endpoint = f"127.0.0.1:{_free_port()}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
           "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", output.name, "--max-restarts", "3",
           "--monitor-interval", "0.5", str(WORKER), "train", "--config", str(config_file), "--output", str(output),
           "--resume", "auto"]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    out = []
    for p in procs:
        try:
            stdout, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append(subprocess.CompletedProcess(cmd, p.returncode, stdout))
    return out


def test_two_nodes_on_shards_survive_a_killed_worker_and_end_as_an_uninterrupted_run(tmp_path):
    shards = _shards(tmp_path)
    # 16 images, global batch 4 (2 per node): 4 steps an epoch; a step checkpoint every 2 steps
    config = small_config(tmp_path, extra=[f"data.path={shards}", "run.checkpoint_every_steps=2", "run.epochs=3",
                                           "data.num_threads=0", "data.backend=torch"])
    save_config(config, tmp_path / "config.yaml")
    # a fresh rendezvous store per round, as docs/distributed.md says (fastdino.distributed.elastic_store_warning)
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "OMP_NUM_THREADS": "1",
           "FASTDINO_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("FASTDINO_TEST_KILL_ONCE", None)

    whole = _two_nodes(tmp_path / "config.yaml", tmp_path / "whole", env)
    assert [p.returncode for p in whole] == [0, 0], whole[0].stdout[-3000:] + whole[1].stdout[-3000:]

    marker = tmp_path / "killed"
    cut = _two_nodes(tmp_path / "config.yaml", tmp_path / "cut", {**env, "FASTDINO_TEST_KILL_ONCE": str(marker)})
    assert [p.returncode for p in cut] == [0, 0], cut[0].stdout[-3000:] + cut[1].stdout[-3000:]
    assert marker.read_text() == "killed after epoch 1 batch 2\n"  # a worker did die mid-epoch
    logs = cut[0].stdout + cut[1].stdout
    assert "failed (exitcode: -9)" in logs  # torchrun saw the worker die, restarted the group, and it finished
    assert "at epoch 1, batch 2" in (tmp_path / "cut" / "train.log").read_text()  # resumed mid-epoch

    assert ckpt_io.load_checkpoint(tmp_path / "cut")["epoch"] == ckpt_io.load_checkpoint(tmp_path / "whole")["epoch"]
    assert_same_training_state(tmp_path / "whole", tmp_path / "cut")
    steps = {r["iteration"]: r["loss"] for r in records(tmp_path / "cut")}  # the resumed steps logged again
    assert steps == {r["iteration"]: r["loss"] for r in records(tmp_path / "whole")}


def test_elastic_restarts_on_torchruns_shared_store_get_the_advice(monkeypatch):
    from fastdino.distributed import elastic_store_warning

    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in elastic_store_warning()
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "0")  # no restarts: no stale addresses to read
    assert elastic_store_warning() is None
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 given
    assert elastic_store_warning() is None
