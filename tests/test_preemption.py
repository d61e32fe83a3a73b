"""Step checkpoints, exact mid-epoch resume, stop signals, --resume auto, damaged checkpoints and skipped images.

Every run here is a ViT-Tiny on a dozen generated 32 px images, a few steps long, on one CPU thread. The
interrupted runs die in a subprocess (kill -9: no cleanup at all) or stop on a real signal; the resumed run must
end with every tensor of its final checkpoint bitwise equal to an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.multiprocessing as mp
from fastdino.dataloading import AugmentationSpec, build_pipeline, build_source, dali_available, make_synthetic_dataset

from fastdino import checkpoint as ckpt_io
from fastdino.cli import main
from fastdino.config import Config, save_config
from fastdino.distributed import DistInfo
from fastdino.preemption import EXIT_PREEMPTED, RunControl, StopSignals, resume_command
from fastdino.run_config import load_config
from fastdino.schedules import schedule_warnings
from fastdino.train import train

needs_dali = pytest.mark.skipif(not dali_available(),
                                reason="nvidia-dali is not installed (pip install 'fastdino[dali]')")
SMALL = ["model.img_size=32", "model.out_dim=256", "model.hidden_dim=64", "model.bottleneck_dim=32",
         "augment.global_views=[{size: 32}, {size: 32, blur_p: 0.1, solarize_p: 0.2}]",
         "augment.local_views=[{size: 16, count: 2, scale: [0.05, 0.32]}]", "run.log_every=1",
         "optim.warmup_epochs=1", "run.device=cpu"]
QUIET = lambda msg: None  # noqa: E731


def _fast_runs(monkeypatch) -> None:
    """What these tests do not look at and a loaded 2-core machine spends most of a tiny run on: the curves plot
    at the end (matplotlib) and fsync (power-cut durability; the atomic rename is still what happens)."""
    import fastdino.monitor.curves

    monkeypatch.setattr(fastdino.monitor.curves, "plot_curves", lambda run_dir, out: out)
    monkeypatch.setattr(os, "fsync", lambda fd: None)


@pytest.fixture(autouse=True)
def one_thread(tmp_path, monkeypatch):
    """One intra-op thread (a 2-core machine shared by many); the demo dataset goes to tmp."""
    monkeypatch.setenv("FASTDINO_CACHE", str(tmp_path / "cache"))
    _fast_runs(monkeypatch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_config(tmp_path, *, backend: str = "torch", epochs: int = 2, batch: int = 4, n_images: int = 12,
                 extra: list[str] = ()) -> Config:
    data = tmp_path / "data"
    if not data.exists():
        make_synthetic_dataset(data, n_images=n_images, size=32)
    threads = 0 if backend == "torch" else 1
    return load_config("tiny", overrides=[*SMALL, f"data.path={data}", f"data.backend={backend}",
                                          f"data.num_threads={threads}", f"run.epochs={epochs}",
                                          f"run.batch_size={batch}", *extra])


def assert_same(a, b, where: str = "checkpoint") -> None:
    """Every tensor bitwise equal, every other value equal, recursively."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{k}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_training_state(run_a, run_b) -> None:
    a, b = ckpt_io.load_checkpoint(run_a), ckpt_io.load_checkpoint(run_b)
    for key in ("student", "teacher", "optimizer", "scaler", "dino_loss", "epoch", "batch", "iteration"):
        assert_same(a[key], b[key], key)


def records(run_dir, kind: str = "step") -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def run_script(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          env=env, timeout=600)


# ---- kill -9 right after a mid-epoch checkpoint, resume, compare with the uninterrupted run ------------------

_KILLED_AFTER_STEP_CHECKPOINT = """
    import os, signal, sys, torch
    torch.set_num_threads(1)
    from fastdino import checkpoint as ckpt_io
    from fastdino.config import read_config
    from fastdino.train import train

    real_save_last = ckpt_io.save_last

    def save_then_die(state, folder):  # the first mid-epoch checkpoint of epoch 1, then kill -9 (no cleanup)
        path = real_save_last(state, folder)
        if state["epoch"] == 1 and state["batch"] > 0:
            os.kill(os.getpid(), signal.SIGKILL)
        return path

    ckpt_io.save_last = save_then_die
    train(read_config(sys.argv[1]), sys.argv[2], echo=print)
"""


@pytest.mark.parametrize("backend", ["torch", pytest.param("dali-cpu", marks=needs_dali)])
def test_killed_after_a_mid_epoch_checkpoint_resumes_bitwise(tmp_path, backend):
    # 3 batches per epoch, a step checkpoint every 2 steps: after steps 2 (epoch 0, batch 2) and 4 (epoch 1, batch 1)
    config = small_config(tmp_path, backend=backend, extra=["run.checkpoint_every_steps=2"])
    full, part = tmp_path / "full", tmp_path / "part"
    train(config, full, echo=QUIET)

    save_config(config, tmp_path / "config.yaml")
    proc = run_script(_KILLED_AFTER_STEP_CHECKPOINT, str(tmp_path / "config.yaml"), str(part))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    state = ckpt_io.load_checkpoint(part)
    assert (state["epoch"], state["batch"], state["iteration"]) == (1, 1, 4)
    # one entry per rank: the torch pipeline needs only the position, DALI its generators' state too
    assert state["data"] == [{}] if backend == "torch" else "dali" in state["data"][0]
    assert len(records(part)) == 4

    summary = train(config, part, resume=True, echo=QUIET)
    assert summary["steps"] == 6 and summary["stopped"] is None
    assert_same_training_state(full, part)
    assert [r["loss"] for r in records(part)] == [r["loss"] for r in records(full)]
    assert [r["loss"] for r in records(part, "epoch")] == [r["loss"] for r in records(full, "epoch")]


# ---- the pipelines continue an epoch at any batch --------------------------------------------------------


def _batches(pipe, epoch, start=0, state=None, n=None):
    pipe.set_epoch(epoch, start, state)
    out = []
    for views in pipe:
        out.append([v.clone() for v in views])
        if n is not None and len(out) == n:
            break
    return out


@pytest.mark.parametrize("backend", ["torch", pytest.param("dali-cpu", marks=needs_dali)])
def test_pipeline_continues_an_epoch_exactly_from_its_state(tmp_path, backend):
    make_synthetic_dataset(tmp_path / "data", n_images=20, size=32)
    spec = AugmentationSpec.preset("tiny")

    def pipe():
        return build_pipeline(build_source(tmp_path / "data"), spec, batch_size=4, backend=backend,
                              num_threads=0 if backend == "torch" else 1, seed=3)

    whole = _batches(pipe(), epoch=1)
    assert len(whole) == 5
    first = pipe()
    _batches(first, epoch=0)  # history must not matter: epoch 1 after epoch 0 == epoch 1 on a fresh pipeline
    head = _batches(first, epoch=1, n=2)
    state = first.state_dict()
    rest = _batches(pipe(), epoch=1, start=2, state=state)
    assert len(rest) == 3
    for got, want in zip(head + rest, whole, strict=True):
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g, w)


@pytest.mark.cuda
@needs_dali
def test_dali_gpu_pipeline_continues_an_epoch_exactly_from_its_state(tmp_path):
    make_synthetic_dataset(tmp_path / "data", n_images=20, size=32)
    spec = AugmentationSpec.preset("tiny")

    def pipe():
        return build_pipeline(build_source(tmp_path / "data"), spec, batch_size=4, backend="dali-gpu",
                              device="cuda", num_threads=2, seed=3)

    whole = _batches(pipe(), epoch=1)
    first = pipe()
    head = _batches(first, epoch=1, n=2)
    rest = _batches(pipe(), epoch=1, start=2, state=first.state_dict())
    for got, want in zip(head + rest, whole, strict=True):
        for g, w in zip(got, want, strict=True):
            assert g.device.type == "cuda" and torch.equal(g, w)


# ---- stop signals -------------------------------------------------------------------------------------------

_CLI_WITH_A_SIGNAL_AFTER_STEP = """
    import os, signal, sys, torch
    torch.set_num_threads(1)
    import fastdino.train as train_module
    from fastdino.cli import main

    real_build, after = train_module.build_training, int(sys.argv[1])

    def build_and_signal(*args, **kwargs):  # the cluster's SIGTERM arrives during step `after`
        tr = real_build(*args, **kwargs)
        step, calls = tr.step, []

        def step_then_signal(*a, **k):
            loss = step(*a, **k)
            calls.append(1)
            if len(calls) == after:
                os.kill(os.getpid(), signal.SIGTERM)
            return loss

        tr.step = step_then_signal
        return tr

    train_module.build_training = build_and_signal
    sys.exit(main(sys.argv[2:]))
"""


def test_sigterm_finishes_the_step_saves_and_exits_75_with_the_resume_command(tmp_path):
    config = small_config(tmp_path, epochs=2)
    save_config(config, tmp_path / "exp.yaml")
    run = tmp_path / "run"
    proc = run_script(_CLI_WITH_A_SIGNAL_AFTER_STEP, "2", "train", "--config", str(tmp_path / "exp.yaml"),
                      "--output", str(run))
    assert proc.returncode == EXIT_PREEMPTED == 75, proc.stderr[-3000:]
    command = f"fastdino train --output {run} --resume"
    assert "stopped by SIGTERM after step 2 (epoch 1/2, 2 of 3 batches done)" in proc.stdout
    assert proc.stdout.rstrip().endswith(command)
    state = ckpt_io.load_checkpoint(run)
    assert (state["epoch"], state["batch"], state["iteration"]) == (0, 2, 2)
    assert records(run, "summary")[-1]["stopped"] == "SIGTERM"

    assert main(command.split()[1:]) == 0  # the printed command, as printed
    assert [r["iteration"] for r in records(run)] == list(range(6))
    assert (run / "checkpoints" / "epoch_0002.pt").is_file()


def test_stop_signals_are_restored_and_configurable():
    before = signal.getsignal(signal.SIGUSR1)
    with StopSignals(["SIGUSR2", "usr1"]) as s:
        assert s.installed and s.received is None
        os.kill(os.getpid(), signal.SIGUSR1)
        assert s.received == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is before
    with pytest.raises(ValueError, match="SIGKILL"):
        StopSignals(["SIGKILL"])
    assert main(["train", "--set", "run.stop_signals=[SIGNOPE]"]) == 2


def test_checkpoint_cadence_in_steps_and_minutes():
    now = [0.0]
    control = RunControl(every_steps=3, every_minutes=1.0, signals=StopSignals([]), dist_info=DistInfo(),
                         clock=lambda: now[0])
    assert [control.after_step(d).save for d in (1, 2, 3, 4)] == [False, False, True, False]
    now[0] = 59.0
    assert not control.after_step(5).save
    now[0] = 60.0
    assert control.after_step(7).save
    control.saved()  # any save (step or epoch) restarts the clock
    assert not control.after_step(8).save


def test_step_checkpoints_by_time_keep_the_previous_last_pt(tmp_path):
    config = small_config(tmp_path, epochs=1, extra=["run.checkpoint_every_minutes=1e-9"])  # due at every step
    saved = []
    real = ckpt_io.save_last

    def spy(state, folder):
        saved.append((state["epoch"], state["batch"]))
        return real(state, folder)

    ckpt_io.save_last = spy
    try:
        train(config, tmp_path / "run", echo=QUIET)
    finally:
        ckpt_io.save_last = real
    assert saved == [(0, 1), (0, 2), (1, 0)]  # two mid-epoch, then the epoch end
    folder = tmp_path / "run" / "checkpoints"
    assert ckpt_io.load_checkpoint(folder / "previous.pt")["batch"] == 2
    assert ckpt_io.load_checkpoint(folder / "last.pt")["epoch"] == 1


# ---- two gloo ranks: a signal on one rank stops both at the same step --------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, ports: list[int], config: Config, root: str) -> None:
    import pathlib

    import fastdino.train as train_module

    torch.set_num_threads(1)
    _fast_runs(pytest.MonkeyPatch())
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1")
    root = pathlib.Path(root)
    real_build = train_module.build_training

    def build_and_signal_rank_1(*args, **kwargs):  # SIGUSR1 reaches rank 1 only, during step 2
        tr = real_build(*args, **kwargs)
        step, calls = tr.step, []

        def step_then_signal(*a, **k):
            loss = step(*a, **k)
            calls.append(1)
            if rank == 1 and len(calls) == 2:
                os.kill(os.getpid(), signal.SIGUSR1)
            return loss

        tr.step = step_then_signal
        return tr

    results = {}
    os.environ["MASTER_PORT"] = str(ports[0])
    results["full"] = train(config, root / "full", echo=QUIET)
    train_module.build_training = build_and_signal_rank_1
    os.environ["MASTER_PORT"] = str(ports[1])
    results["stopped"] = train(config, root / "part", echo=QUIET)
    if rank == 0:
        state = ckpt_io.load_checkpoint(root / "part")
        results["stopped_at"] = [state["epoch"], state["batch"], state["iteration"]]
    train_module.build_training = real_build
    os.environ["MASTER_PORT"] = str(ports[2])
    results["resumed"] = train(config, root / "part", resume=True, echo=QUIET)
    (root / f"rank{rank}.json").write_text(json.dumps(results))


def test_sigusr1_on_one_of_two_gloo_ranks_stops_both_at_the_same_step(tmp_path):
    config = small_config(tmp_path, epochs=2, extra=["run.checkpoint_every_minutes=0"])  # 3 steps per epoch
    mp.spawn(_rank_main, args=([_free_port() for _ in range(3)], config, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # Rank 1's flag is exchanged after step 2 and read after step 3 (the exchange is asynchronous: one step late).
    assert [r["stopped"]["stopped"] for r in ranks] == ["SIGUSR1", "SIGUSR1"]
    assert [r["stopped"]["steps"] for r in ranks] == [3, 3]
    assert ranks[0]["stopped_at"] == [1, 0, 3]  # epoch 0 done: the epoch-end checkpoint is the stop's
    assert [r["resumed"]["steps"] for r in ranks] == [6, 6]
    assert_same_training_state(tmp_path / "full", tmp_path / "part")


# ---- --resume auto, --max-steps, schedule warnings -----------------------------------------------------------


def _cli_args(config: Config, tmp_path) -> list[str]:
    save_config(config, tmp_path / "exp.yaml")
    return ["train", "--config", str(tmp_path / "exp.yaml")]


def test_resume_auto_starts_fresh_then_continues_with_the_same_command(tmp_path, capsys, monkeypatch):
    import fastdino.train as train_module

    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").write_text("a first attempt that died before its first checkpoint\n")
    command = [*_cli_args(small_config(tmp_path, epochs=2), tmp_path), "--output", str(run), "--resume", "auto"]

    real_build, calls = train_module.build_training, []

    def build_and_preempt(*args, **kwargs):  # the first attempt is preempted after its 4th step
        tr = real_build(*args, **kwargs)
        step = tr.step

        def step_then_signal(*a, **k):
            loss = step(*a, **k)
            calls.append(1)
            if len(calls) == 4:
                os.kill(os.getpid(), signal.SIGUSR1)
            return loss

        tr.step = step_then_signal
        return tr

    monkeypatch.setattr(train_module, "build_training", build_and_preempt)
    assert main(command) == EXIT_PREEMPTED
    out = capsys.readouterr().out
    assert "stopped by SIGUSR1 after step 4" in out and "resumed from" not in out
    assert main(command) == 0  # the requeued job: the same command
    assert "resumed from" in capsys.readouterr().out
    assert [r["iteration"] for r in records(run)] == list(range(6))
    assert main(["train", "--resume", "auto"]) == 2
    assert "--resume auto needs --output" in capsys.readouterr().err


def test_max_steps_flag_and_its_checkpoint_position(tmp_path, capsys, monkeypatch):
    args = [*_cli_args(small_config(tmp_path, epochs=2), tmp_path), "--output", str(tmp_path / "run")]
    assert main([*args, "--max-steps", "4"]) == 0
    state = ckpt_io.load_checkpoint(tmp_path / "run")
    assert (state["epoch"], state["batch"], state["iteration"]) == (1, 1, 4)

    # torch.set_rng_state takes a CPU ByteTensor only: the resume path loads checkpoints with map_location='cpu'
    # (weights and optimiser state reach their device through load_state_dict), and set_rng_state moves any
    # generator state back to the CPU. The real thing on a GPU: test_cuda_resume_restores_the_rng_state.
    loads, rng_states = [], []
    real_load, real_set = torch.load, torch.set_rng_state
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k.get("map_location")) or real_load(*a, **k))
    monkeypatch.setattr(torch, "set_rng_state", lambda s: rng_states.append(s) or real_set(s))
    assert main(["train", "--output", str(tmp_path / "run"), "--resume", "--max-steps", "5"]) == 0
    assert loads and all(str(m) in ("cpu", "meta") for m in loads)  # meta: the CLI's readability check
    assert rng_states and all(s.device.type == "cpu" and s.dtype == torch.uint8 for s in rng_states)
    assert [r["iteration"] for r in records(tmp_path / "run")] == list(range(5))

    capsys.readouterr()
    assert main(["train", "--output", str(tmp_path / "run"), "--resume", "--max-steps", "5"]) == 2
    assert "is at step 5, the end of this run" in capsys.readouterr().err


def test_schedule_warnings():
    one = schedule_warnings(epochs=1, iters_per_epoch=8, warmup_epochs=1, freeze_last_layer=1)
    assert any("optim.warmup_epochs=1 >= run.epochs=1" in w for w in one)
    assert any("last layer never trains" in w for w in one)
    assert schedule_warnings(epochs=100, iters_per_epoch=8, warmup_epochs=10, freeze_last_layer=1) == []
    (cut,) = schedule_warnings(epochs=100, iters_per_epoch=8, warmup_epochs=10, max_steps=50)
    assert "run.max_steps=50 stops inside the lr warm-up (80 steps" in cut
    assert "teacher temperature" in schedule_warnings(epochs=5, iters_per_epoch=8, warmup_epochs=1,
                                                      warmup_teacher_temp_epochs=30)[0]


# ---- damaged checkpoints --------------------------------------------------------------------------------------


def test_truncated_last_pt_names_the_newest_readable_checkpoint(tmp_path, capsys):
    config = small_config(tmp_path, epochs=2, extra=["run.checkpoint_every_steps=2", "run.checkpoint_every=1"])
    run = tmp_path / "run"
    train(config, run, echo=QUIET, max_steps=5)  # last.pt at step 5; previous.pt at step 4; epoch_0001 at 3
    folder = run / "checkpoints"
    assert [ckpt_io.load_checkpoint(folder / n)["iteration"] for n in ("last.pt", "previous.pt")] == [5, 4]
    data = (folder / "last.pt").read_bytes()
    (folder / "last.pt").write_bytes(data[: len(data) // 3])  # a partial copy

    assert main(["train", "--output", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {folder / 'last.pt'} could not be read" in err
    assert f"the newest readable checkpoint is {folder / 'previous.pt'} (step 4)" in err
    with pytest.raises(ckpt_io.CheckpointError, match="previous.pt"):
        train(config, run, resume=True, echo=QUIET)

    (folder / "last.pt").rename(folder / "last.pt.bad")  # what the message says to do
    assert ckpt_io.find_latest(run) == folder / "previous.pt"
    (folder / "previous.pt").write_bytes(b"")  # also damaged: the epoch checkpoint is the newest readable one
    assert ckpt_io.find_latest(run) == folder / "epoch_0001.pt"


@pytest.mark.cuda
def test_cuda_resume_restores_the_rng_state(tmp_path):
    path = tmp_path / "rng.pt"
    ckpt_io.save_checkpoint({"rng": ckpt_io.rng_state()}, path)
    expected, expected_cuda = torch.rand(3), torch.rand(3, device="cuda")
    loaded = ckpt_io.load_checkpoint(path, map_location="cuda")  # what the old resume path handed over
    assert loaded["rng"]["torch"].device.type == "cuda"
    ckpt_io.set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(3), expected) and torch.equal(torch.rand(3, device="cuda"), expected_cuda)

    config = small_config(tmp_path, epochs=1, extra=["run.device=cuda"])
    train(config, tmp_path / "run", echo=QUIET, max_steps=1)  # stops mid-epoch: last.pt at batch 1
    summary = train(config, tmp_path / "run", resume=True, echo=QUIET)
    assert summary["steps"] == 3 and summary["device"].startswith("cuda")


# ---- what a run skipped is in its records; --data that is not a dataset -----------------------------------------


@pytest.mark.parametrize("backend", ["torch", pytest.param("dali-cpu", marks=needs_dali)])
def test_corrupt_images_go_to_train_log_metrics_and_the_summary(tmp_path, backend, capsys, recwarn):
    config = small_config(tmp_path, backend=backend, epochs=1, extra=["optim.freeze_last_layer=1"])
    bad = sorted((tmp_path / "data").rglob("*.jpg"))[5]
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    summary = train(config, tmp_path / "run", echo=print)
    assert summary["skipped_images"] == 1
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"WARNING: skipped corrupt or unreadable image {bad}" in log
    assert "1 corrupt or unreadable image(s) skipped" in log.splitlines()[-1]
    # one epoch with one warm-up epoch (the tiny preset's --epochs 1) and one frozen epoch: said at the start, in
    # train.log too
    assert "WARNING: optim.warmup_epochs=1 >= run.epochs=1: the whole run is the linear lr warm-up" in log
    assert "WARNING: optim.freeze_last_layer=1 >= run.epochs=1" in log
    assert [r["file"] for r in records(tmp_path / "run", "skipped_image")] == [str(bad)]
    assert not [w for w in recwarn if "corrupt" in str(w.message)]  # logged once, not also as a raw warning


def test_data_pointing_at_one_image_or_a_binary_file_says_what_was_expected(tmp_path, capsys):
    image = sorted(make_synthetic_dataset(tmp_path / "data", n_images=4, size=32).rglob("*.jpg"))[0]
    assert main(["train", "--data", str(image), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"data path '{image}' is a single image" in err and "a folder of images" in err and "text file" in err
    blob = tmp_path / "images.bin"
    blob.write_bytes(image.read_bytes())
    assert main(["train", "--data", str(blob), "--output", str(tmp_path / "run")]) == 2
    assert f"list file '{blob}' is not a text file" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_resume_command_names_the_launcher(monkeypatch, tmp_path):
    for var in ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    assert resume_command(tmp_path / "r un") == f"fastdino train --output '{tmp_path / 'r un'}' --resume"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert resume_command("r") == "torchrun --standalone --nproc_per_node 4 -m fastdino train --output r --resume"
    monkeypatch.setenv("WORLD_SIZE", "8")  # two nodes
    assert resume_command("r").startswith("<your torchrun launch line on each node> -m fastdino train")
