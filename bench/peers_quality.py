"""Quality per CPU-minute against a peer: EuroSAT val k-NN top-1 of fastdino's `tiny` recipe and of lightly-train's
DINO, as a function of the wall minutes each training run has had on the same CPU.

A measurement script (not collected by pytest; it takes an hour):

    python -m bench.peers_quality run fastdino-tiny --minutes 30 --core 0 --out runs/peers/fastdino-tiny-30 &
    python -m bench.peers_quality run lightly-vit-tiny16 --minutes 30 --core 1 --out runs/peers/lightly16-30 &
    wait
    python -m bench.peers_quality eval runs/peers/*          # k-NN of every snapshot on EuroSAT val
    python -m bench.peers_quality report runs/peers/* --json bench/results/peers_quality.json \\
        --plot docs/images/peers_knn_minutes.png

How it is fair:
- Each run is pinned to one core (`--core`) with one torch thread and one data thread, so two runs side by side
  see the same machine at the same time; the clock starts when the training process starts (imports, dataset scan
  and model build count, as they do for a user), and the run is stopped at `--minutes`.
- Each arm's schedule spans a whole number of epochs, `--epochs`: pick the number that ends nearest the budget
  (a run whose schedule would end later is stopped at the budget and evaluated there).
- Snapshots every `--snapshot-minutes` (and at the stop) are scored with the same k-NN (DINO's eval_knn.py:
  k=20, temperature 0.07), the same EuroSAT train list as the memory bank and val list as the queries, each
  network on its own embedding: fastdino's teacher class token (what `fastdino eval` scores), lightly-train's
  teacher embedding model (the mean of the patch tokens, what its DINO head is trained on and `embed` returns).

The arms (ARMS below): fastdino's `tiny` preset as the README runs it, precision auto (bf16 on a CPU with native
bf16); lightly-train 0.18's DINO at its best CPU settings: bf16-mixed where the CPU has native bf16 (its
precision "auto" picks bf16 only on CUDA: `get_precision` in lightly_train/_commands/train_helpers.py), one
DataLoader worker, batch 32 as fastdino's, and its last-layer freeze off (its default freezes the head's last layer
for 1,250 steps, sized for ImageNet at batch 1024: longer than a 10-minute run here; fastdino's `tiny` does not
freeze either). Its method, views and optimiser are otherwise its defaults, at 64 px. Two networks: its ViT-Tiny/16
and the SAME network as fastdino's `tiny`, ViT-Tiny/8 at depth 4, so that method and architecture are told apart.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from fastdino.dataloading.augment import IMAGENET_MEAN, IMAGENET_STD

from fastdino.eval.features import EvalTransform, ImageDataset
from fastdino.eval.knn import knn_accuracy
from fastdino.eval.splits import load_split
from fastdino.eval.teacher import checkpoint_info, load_teacher, random_init_like

REPO = Path(__file__).resolve().parent.parent
SNAPSHOTS = "snapshots"  # <run>/snapshots/<seconds since start>.pt
LOCAL_SIZE = 32  # lightly-train has one local size: 32 px, its 96/224 ratio at 64 px rounded to whole patches of 16

# DINO's one local size for DINO-MC's claim (docs/notes/mc-vs-one-size-2026-12.md): 4 x 24 px, DINO's 96/224 ratio at
# 64 px floored to whole 8 px patches, with the preset's local scale and augmentations
ONE_SIZE_LOCALS = ("augment.local_views=[{size: 24, count: 4, scale: [0.05, 0.32], interpolation: bilinear, "
                   "blur_p: 0.5, jitter: [0.2, 0.2, 0.1, 0.02], grayscale_p: 0.05, blur_sigma: [0.03, 0.6]}]")

ARMS = {
    "fastdino-tiny": {"impl": "fastdino", "network": "ViT-Tiny/8, depth 4", "overrides": []},
    "fastdino-tiny-onesize": {"impl": "fastdino", "network": "ViT-Tiny/8, depth 4",
                              "overrides": ["--set", ONE_SIZE_LOCALS]},
    "lightly-vit-tiny16": {"impl": "lightly-train", "network": "ViT-Tiny/16, depth 12",
                           "model_args": {"img_size": 64}},
    "lightly-vit-tiny8-d4": {"impl": "lightly-train", "network": "ViT-Tiny/8, depth 4",
                             "model_args": {"img_size": 64, "patch_size": 8, "depth": 4}},
}


def eurosat() -> Path:
    root = Path(os.environ.get("FASTDINO_DATA", REPO.parent / "shared" / "data")) / "eurosat"
    if not (root / "train.txt").is_file():
        raise SystemExit(f"EuroSAT not found at {root} (set FASTDINO_DATA to the folder holding eurosat/)")
    return root


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("flags"):
            return [f for f in line.split(":", 1)[1].split() if f in wanted]
    return []


# ---- run ----------------------------------------------------------------------------------------------------


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a process, its threads and every process under it, live or reaped: the
    training's own work, whatever else the machine is running (the x axis of the comparison)."""
    import psutil

    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def run(arm: str, minutes: float, out: Path, core: int, epochs: int, snapshot_minutes: float, seed: int) -> None:
    """Train one arm in a child process pinned to `core`, snapshot it, stop it when it has used `minutes` of CPU."""
    spec, out = ARMS[arm], out.resolve()
    out.mkdir(parents=True, exist_ok=False)
    (out / SNAPSHOTS).mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "LIGHTLY_TRAIN_EVENTS_DISABLED": "1",
           "LIGHTLY_TRAIN_CACHE_DIR": str(out / "lightly-cache")}
    root = eurosat()
    if spec["impl"] == "fastdino":
        # checkpoints/last.pt every snapshot_minutes of wall time: each is a snapshot, placed at its CPU time
        cmd = [sys.executable, "-m", "fastdino", "train", "--data", str(root / "images"),
               "--data-list", str(root / "train.txt"), "--output", str(out / "run"), "--device", "cpu",
               "--set", f"run.epochs={epochs}", "--set", f"run.seed={seed}", "--set", "data.num_threads=1",
               "--set", f"run.checkpoint_every_minutes={snapshot_minutes}", *spec["overrides"]]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "_lightly_child", arm, str(out), str(epochs),
               str(snapshot_minutes), str(minutes), str(seed)]
    meta = {"arm": arm, **spec, "minutes": minutes, "epochs": epochs, "seed": seed, "core": core,
            "snapshot_minutes": snapshot_minutes, "cpu": cpu_model(), "cpu_flags": cpu_flags(),
            "command": [c.replace(str(root), "$EUROSAT").replace(str(out), "$OUT") for c in cmd]}
    t0 = time.time()
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    with open(out / "train.out", "w") as log:
        proc = subprocess.Popen(cmd, cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: os.sched_setaffinity(0, {core}))
        last_seen, stopped, cpu_s = None, False, 0.0
        while proc.poll() is None:
            time.sleep(1)
            cpu_s = max(cpu_s, tree_cpu_seconds(proc.pid))
            if spec["impl"] == "fastdino":
                last_seen = _copy_new_checkpoint(out, cpu_s, time.time() - t0, last_seen)
                if not stopped and cpu_s >= minutes * 60:
                    proc.send_signal(signal.SIGTERM)  # finish the step, save checkpoints/last.pt, exit 75
                    stopped = True
        if spec["impl"] == "fastdino":
            _copy_new_checkpoint(out, cpu_s, time.time() - t0, last_seen)
    meta.update(returncode=proc.returncode, wall_s=time.time() - t0, cpu_s=cpu_s)
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"{arm}: exit {proc.returncode} after {meta['wall_s'] / 60:.1f} wall min, {cpu_s / 60:.1f} CPU min; "
          f"{len(list((out / SNAPSHOTS).glob('*.pt')))} snapshots in {out / SNAPSHOTS}")


def _snapshot_name(cpu_s: float, wall_s: float) -> str:
    return f"cpu{cpu_s:07.1f}_wall{wall_s:07.1f}.pt"


def _copy_new_checkpoint(out: Path, cpu_s: float, wall_s: float, last_seen: float | None) -> float | None:
    """fastdino writes checkpoints/last.pt atomically (rename): a changed mtime is a whole new file."""
    last = out / "run" / "checkpoints" / "last.pt"
    if not last.is_file():
        return last_seen
    mtime = last.stat().st_mtime
    if mtime == last_seen:
        return last_seen
    target = out / SNAPSHOTS / _snapshot_name(cpu_s, wall_s)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(last.read_bytes())
    tmp.rename(target)
    return mtime


def _lightly_child(arm: str, out: str, epochs: str, snapshot_minutes: str, minutes: str, seed: str) -> None:
    """lightly-train's DINO, run as a user runs it, plus a callback that snapshots its teacher embedding model every
    `snapshot_minutes` of CPU time and stops it at the budget (at a step's end)."""
    t0 = time.time()
    import lightly_train
    from lightly_train._callbacks import callback_helpers
    from pytorch_lightning import Callback

    torch.set_num_threads(1)
    out_dir, spec = Path(out), ARMS[arm]
    every, budget = float(snapshot_minutes) * 60, float(minutes) * 60

    class Snapshots(Callback):
        def __init__(self):
            self.next_at = every

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            cpu_s = tree_cpu_seconds(os.getpid())
            if cpu_s >= budget:
                trainer.should_stop = True
                self._save(pl_module, cpu_s)
            elif cpu_s >= self.next_at:
                self._save(pl_module, cpu_s)
                self.next_at += every

        def on_train_end(self, trainer, pl_module):
            if not trainer.should_stop:  # the schedule ended inside the budget
                self._save(pl_module, tree_cpu_seconds(os.getpid()))

        def _save(self, pl_module, cpu_s):
            target = out_dir / SNAPSHOTS / _snapshot_name(cpu_s, time.time() - t0)
            tmp = target.with_suffix(".tmp")
            torch.save({"model": pl_module.teacher_embedding_model, "step": pl_module.trainer.global_step}, tmp)
            tmp.rename(target)

    get_callbacks = callback_helpers.get_callbacks
    callback_helpers.get_callbacks = lambda **kw: [*get_callbacks(**kw), Snapshots()]
    root = eurosat()
    files = [str(root / "images" / p) for p in (root / "train.txt").read_text().split() if p]
    precision = "bf16-mixed" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "32-true"
    print(f"lightly-train {lightly_train.__version__}: precision {precision}, import {time.time() - t0:.1f} s",
          flush=True)
    lightly_train.pretrain(
        out=str(out_dir / "run"), data=files, method="dino", model="timm/vit_tiny_patch16_224",
        model_args=spec["model_args"], method_args={"student_freeze_last_layer_steps": 0},
        transform_args={"image_size": (64, 64), "local_view": {"view_size": (LOCAL_SIZE, LOCAL_SIZE)}},
        epochs=int(epochs), batch_size=32, num_workers=1, accelerator="cpu", devices=1, precision=precision,
        loggers={"tensorboard": None}, seed=int(seed))


# ---- eval ---------------------------------------------------------------------------------------------------


def evaluate(run_dirs: list[Path], every: float) -> None:
    """k-NN top-1 on EuroSAT val of the snapshots nearest each multiple of `every` CPU minutes and of each run's
    last one (those not yet scored); results in <run>/knn.json. The images are decoded and normalised once (every
    arm evaluates at 64 px with ImageNet's mean / std) and each snapshot only runs its network."""
    root = eurosat()
    split = load_split(root / "images", root / "train.txt", root / "val.txt")
    images: dict = {}  # (transform, part) -> normalised images, labels

    def features(backbone, transform, part):
        if (transform, part) not in images:
            dataset = ImageDataset(split[f"{part}_paths"], split[f"{part}_labels"], transform)
            loader = torch.utils.data.DataLoader(dataset, batch_size=512, num_workers=0)
            xs, ys = zip(*loader, strict=True)
            images[(transform, part)] = torch.cat(xs), torch.cat(ys)
        x, y = images[(transform, part)]
        with torch.no_grad():
            out = torch.cat([F.normalize(backbone(x[i:i + 512]).float(), dim=1) for i in range(0, len(x), 512)])
        return out, y

    for run_dir in run_dirs:
        meta = json.loads((run_dir / "meta.json").read_text())
        scored_path = run_dir / "knn.json"
        scored = json.loads(scored_path.read_text()) if scored_path.exists() else {}
        for snap in _chosen(sorted((run_dir / SNAPSHOTS).glob("*.pt")), every):
            if snap.name in scored:
                continue
            backbone, transform, info = _load_snapshot(meta, snap)
            acc = knn_accuracy(*features(backbone, transform, "train"), *features(backbone, transform, "test"),
                               len(split["classes"]))
            cpu_s, wall_s = _snapshot_times(snap)
            scored[snap.name] = {"cpu_minutes": cpu_s / 60, "wall_minutes": wall_s / 60, "val_top1": acc["top1"],
                                 **info}
            print(f"{run_dir.name} {cpu_s / 60:5.1f} CPU min: val k-NN {acc['top1']:.2f} {info}", flush=True)
            scored_path.write_text(json.dumps(scored, indent=1))
        snaps = sorted((run_dir / SNAPSHOTS).glob("*.pt"))
        if snaps and "random_init" not in scored:
            backbone, transform, _ = _load_snapshot(meta, snaps[0], random_init=True)
            acc = knn_accuracy(*features(backbone, transform, "train"), *features(backbone, transform, "test"),
                               len(split["classes"]))
            scored["random_init"] = {"val_top1": acc["top1"]}
            print(f"{run_dir.name} random init: val k-NN {acc['top1']:.2f}", flush=True)
            scored_path.write_text(json.dumps(scored, indent=1))


def _snapshot_times(snap: Path) -> tuple[float, float]:
    cpu, wall = snap.stem.split("_")
    return float(cpu.removeprefix("cpu")), float(wall.removeprefix("wall"))


def _chosen(snaps: list[Path], every: float) -> list[Path]:
    """The snapshot nearest each multiple of `every` CPU minutes, and the last."""
    if not snaps or every <= 0:
        return snaps
    minutes = [_snapshot_times(s)[0] / 60 for s in snaps]
    picked = {len(snaps) - 1}
    for k in range(1, int(minutes[-1] / every) + 1):
        picked.add(min(range(len(snaps)), key=lambda i: abs(minutes[i] - k * every)))
    return [snaps[i] for i in sorted(picked)]


def _load_snapshot(meta: dict, snap: Path, random_init: bool = False):
    """(network, eval transform, steps / images) of a snapshot; random_init: the same architecture untrained
    (seed 0), the level each arm's training must beat."""
    if meta["impl"] == "fastdino":
        backbone, config = load_teacher(snap)
        if random_init:
            backbone = random_init_like(config, seed=0)
        info = checkpoint_info(snap)
        steps = info["iteration"]
        batch = config["run"]["batch_size"]
        return backbone, EvalTransform.from_config(config), {"steps": steps, "images": steps * batch}
    saved = torch.load(snap, map_location="cpu", weights_only=False)
    model = saved["model"].float().eval()
    if random_init:  # timm's own initialisation, as lightly-train starts from
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model.wrapped_model.get_model().init_weights()

    class Embed(torch.nn.Module):  # lightly-train's embedding: (B, D, 1, 1) -> (B, D)
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x).flatten(1)

    transform = EvalTransform(64, tuple(IMAGENET_MEAN), tuple(IMAGENET_STD))  # lightly-train's normalisation
    return Embed(model), transform, {"steps": saved["step"], "images": saved["step"] * 32}


# ---- report -------------------------------------------------------------------------------------------------


def report(run_dirs: list[Path], json_path: Path | None, plot_path: Path | None) -> None:
    """One line per run (its last snapshot), the JSON of every point, and the curves in one picture."""
    runs = []
    for run_dir in run_dirs:
        meta = json.loads((run_dir / "meta.json").read_text())
        scored = json.loads((run_dir / "knn.json").read_text())
        random_init = scored.pop("random_init", {}).get("val_top1")
        points = sorted(scored.values(), key=lambda p: p["cpu_minutes"])
        runs.append({k: meta.get(k) for k in ("arm", "impl", "network", "minutes", "epochs", "seed", "core", "cpu",
                                               "cpu_flags", "wall_s", "cpu_s", "returncode")} |
                    {"name": run_dir.name, "random_init_val_top1": random_init, "points": points})
        last = points[-1]
        print(f"{run_dir.name:28s} {meta['network']:20s} budget {meta['minutes']:4.0f} CPU min, {meta['epochs']} "
              f"epochs: {last['cpu_minutes']:5.1f} CPU min ({last['wall_minutes']:5.1f} wall), {last['steps']} steps, "
              f"{last['images'] / (last['cpu_minutes'] * 60):5.1f} img per CPU-s -> val k-NN {last['val_top1']:.2f}")
    if json_path:
        json_path.write_text(json.dumps({"meta": {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_model(),
                                                  "cpu_flags": cpu_flags(), "cores_per_run": 1,
                                                  "script": "bench/peers_quality.py"}, "runs": runs}, indent=1))
    if plot_path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        colours = {"fastdino-tiny": "tab:blue", "lightly-vit-tiny16": "tab:orange", "lightly-vit-tiny8-d4": "tab:red",
                   "fastdino-tiny-onesize": "tab:green"}
        longest = max(r["minutes"] for r in runs)
        for r in runs:
            xs = [p["cpu_minutes"] for p in r["points"]]
            ys = [p["val_top1"] for p in r["points"]]
            ax.plot(xs, ys, "-o" if r["minutes"] >= longest else "--s", color=colours.get(r["arm"]), ms=3,
                    label=f"{r['arm']} ({r['network']}), {r['epochs']}-epoch schedule, seed {r['seed']}")
            if r["random_init_val_top1"] is not None:  # the untrained network: what training has to beat
                ax.axhline(r["random_init_val_top1"], color=colours.get(r["arm"]), ls=":", lw=1)
        ax.set_xlabel("CPU minutes of the training run (every thread and process)")
        ax.set_ylabel("EuroSAT val k-NN top-1 (%); dotted: random init")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(plot_path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_lightly_child":
        return _lightly_child(*argv[1:])
    p = argparse.ArgumentParser(prog="python -m bench.peers_quality", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train one arm for a wall budget on one core, with snapshots")
    r.add_argument("arm", choices=sorted(ARMS))
    r.add_argument("--minutes", type=float, required=True)
    r.add_argument("--epochs", type=int, required=True, help="the schedule's length (whole epochs)")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--core", type=int, default=0)
    r.add_argument("--snapshot-minutes", type=float, default=5.0)
    r.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("eval", help="k-NN on EuroSAT val of every snapshot")
    e.add_argument("runs", type=Path, nargs="+")
    e.add_argument("--every", type=float, default=5.0, help="CPU minutes between scored snapshots (0: all)")
    s = sub.add_parser("report", help="table, JSON and plot")
    s.add_argument("runs", type=Path, nargs="+")
    s.add_argument("--json", type=Path)
    s.add_argument("--plot", type=Path)
    a = p.parse_args(argv)
    if a.cmd == "run":
        run(a.arm, a.minutes, a.out, a.core, a.epochs, a.snapshot_minutes, a.seed)
    elif a.cmd == "eval":
        evaluate(a.runs, a.every)
    else:
        report(a.runs, a.json, a.plot)


if __name__ == "__main__":
    main()
