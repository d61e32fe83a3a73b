"""`fastdino finetune multilabel`: BigEarthNet 19-class multi-label fine-tuning, scored by micro mAP.

The preset is DINO-MC's `main_bigearthnet.py` (WennyXY/DINO-MC):
- model: the pretrained ViT with a Linear(D, 19) head on the CLS token (L36, --num_labels 19 L296), all trained;
- loss MultiLabelSoftMarginLoss (L223), i.e. the mean binary cross-entropy over the 19 classes;
- optimiser: --opt sgd by default (L305): SGD, momentum 0.9, no weight decay, lr 1e-5 (L284) x batch / 256
  (L124-131), cosine to 0 stepped once per epoch (L132); 100 epochs (L283), batch 32 (L288), last partial batch
  dropped (drop_last=True, L99);
- input: fastdino.finetune.data_bigearthnet (RGB, 2-sigma stretch, 224 px bicubic, [0, 1], no augmentation);
- score: micro-averaged average precision of the sigmoid outputs, scikit-learn's `average_precision_score(...,
  average='micro')` (L19, L262), here over the whole test split (micro_ap) and also the authors' way, per batch
  of 32 then averaged (micro_ap_batch_mean);
- --train-frac: a seeded fraction of the train split (the paper's 10% and 100% settings). The authors draw it
  with numpy's `choice`, which samples WITH replacement (utils/data.py L27-30, seed 42 main_bigearthnet.py
  L87-90), and shrink their evaluation split the same way; here the fraction is drawn without replacement
  (seed --seed, default 42) and val/test stay whole.
The authors evaluate on the val split and report the best epoch; here val chooses and test is scored once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn

from fastdino.device import select_device
from fastdino.eval.report import format_rows

from . import common
from .classify import build_sgd_finetune
from .data_bigearthnet import LABELS_19, RGB_BANDS, BigEarthNetDataset, BigEarthNetSplit, bad_patches
from .metrics import multilabel_scores

TASK = "multilabel"
PRESET = {"epochs": 100, "batch_size": 32, "base_lr": 1e-5, "weight_decay": 0.0, "momentum": 0.9, "img_size": 224,
          "drop_path": 0.0, "seed": 42, "train_frac": 1.0, "normalize": "none"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path,
                        help="BigEarthNet root: <patch>/<patch>_B0x.tif and <patch>_labels_metadata.json folders")
    parser.add_argument("--train-list", type=Path, help="training patch names, one per line [DATA/train.txt]")
    parser.add_argument("--val-list", type=Path, help="patches scored after every epoch [DATA/val.txt if present]")
    parser.add_argument("--test-list", type=Path, help="patches scored once at the end [DATA/test.txt if present]")
    parser.add_argument("--train-frac", type=float, help="fraction of the train split used, e.g. 0.1 [1]")
    parser.add_argument("--normalize", choices=("none", "checkpoint"),
                        help="RGB input scaling after [0, 1]: none (DINO-MC) or the checkpoint's mean/std [none]; a "
                             "multispectral backbone always gets its per-band statistics")
    parser.add_argument("--val-every", type=int, default=1, help="epochs between validations (DINO-MC: 1)")


def resolve_lists(args) -> dict[str, Path]:
    root = Path(args.data)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root} is not a folder")
    lists = {}
    for name in ("train", "val", "test"):
        given = getattr(args, f"{name}_list")
        if given is not None:
            lists[name] = Path(given)
        elif (root / f"{name}.txt").is_file():
            lists[name] = root / f"{name}.txt"
        elif (root / f"{name}.csv").is_file():
            lists[name] = root / f"{name}.csv"
    if "train" not in lists:
        raise FileNotFoundError(f"no train split: pass --train-list or put train.txt (patch names) in --data {root}")
    return lists


def run(args: argparse.Namespace) -> int:
    result = finetune(args)
    return common.print_result(format_table(result), result)


def finetune(args: argparse.Namespace) -> dict:
    recipe = common.recipe_from(args, PRESET)
    recipe["lr"] = recipe["base_lr"] * recipe["batch_size"] / 256
    lists = resolve_lists(args)
    recipe.update(train_list=str(lists["train"]), source=str(args.checkpoint), random_init=bool(args.random_init))
    resume_from = common.check_output(args.output, resume=args.resume, overwrite=args.overwrite)
    saved, recipe = common.load_resume(resume_from, recipe, TASK)
    lists["train"] = Path(recipe["train_list"])  # a resumed run trains on its saved list, fraction and seed
    device = select_device(args.device)
    loaded, model, optimizer, scheduler, history, start_epoch = build_sgd_finetune(args, recipe, saved, len(LABELS_19),
                                                                                 device)
    flagged = bad_patches(Path(args.data))
    bands = loaded.bands or RGB_BANDS  # every listed patch must have the band files the run reads
    splits = {name: BigEarthNetSplit.read(args.data, path, exclude=flagged, bands=bands)
              for name, path in lists.items()}
    common.check_disjoint({name: ([p.name for p in s.patches], str(lists[name])) for name, s in splits.items()},
                          "patch")
    splits["train"] = splits["train"].subset(recipe["train_frac"], recipe["seed"])
    notes = {name: {"patches": len(s.patches), "excluded_flagged": s.excluded, "without_19_class_label": s.unlabelled}
             for name, s in splits.items()}
    mean, std = common.input_normalisation(loaded, recipe["normalize"], args.normalize)
    datasets = {name: BigEarthNetDataset(s, recipe["img_size"], mean, std, loaded.bands) for name, s in splits.items()}
    common.check_readable(datasets)
    train_loader = common.make_loader(datasets["train"], recipe["batch_size"], args.num_workers, shuffle=True,
                                      seed=recipe["seed"], drop_last=len(datasets["train"]) >= recipe["batch_size"])
    eval_loaders = {name: common.make_loader(d, recipe["batch_size"], args.num_workers, shuffle=False, seed=0)
                    for name, d in datasets.items() if name != "train"}
    criterion = nn.MultiLabelSoftMarginLoss()

    def loss_of(model, batch, device):
        images, targets = batch
        return criterion(model(images.to(device)), targets.to(device)), len(targets)

    def validate(model):
        targets, scores = predict(model, eval_loaders["val"], device)
        s = multilabel_scores(targets, scores, recipe["batch_size"])
        return {"val_micro_ap": s["micro_ap"], "val_macro_ap": s["macro_ap"]}

    with common.new_run_folder(args.output, fresh=resume_from is None, overwrite=args.overwrite):
        common.write_json(Path(args.output) / "config.json", {"task": TASK, **recipe, "splits": notes,
                                                              "data": str(args.data), "model": loaded.arch,
                                                              "bands": loaded.bands})
        inputs = f"bands {', '.join(loaded.bands)}" if loaded.bands else "RGB"
        print(f"{TASK}: {loaded.arch} ({loaded.state}), {inputs}; splits {notes}; {recipe['epochs']} epochs, batch "
              f"{recipe['batch_size']}, SGD lr {recipe['lr']:.3g} (= {recipe['base_lr']:g} x "
              f"{recipe['batch_size']}/256), {recipe['img_size']} px, device {device}")
        train_seconds = common.fit(model, train_loader, optimizer, scheduler, loss_of, task=TASK, recipe=recipe,
                                   output=args.output, history=history, start_epoch=start_epoch, device=device,
                                   validate=validate if "val" in eval_loaders else None, val_every=args.val_every,
                                   log_every=args.log_every)
    scored = "test" if "test" in eval_loaders else "val" if "val" in eval_loaders else None
    if scored is None:
        raise ValueError("nothing to score: pass --test-list (and --val-list to choose the recipe)")
    targets, scores = predict(model, eval_loaders[scored], device)
    s = multilabel_scores(targets, scores, recipe["batch_size"])
    if loaded.bands:
        recipe = {**recipe, "normalize": "checkpoint"}  # multispectral: always the per-band statistics
    result = {
        "task": TASK, "scored_split": scored, "micro_ap": s["micro_ap"],
        "micro_ap_batch_mean": common.finite(s["micro_ap_batch_mean"]), "macro_ap": common.finite(s["macro_ap"]),
        "per_class_ap": {name: common.finite(ap) for name, ap in zip(LABELS_19, s["per_class_ap"], strict=True)},
        "positives_per_class": dict(zip(LABELS_19, targets.sum(0).int().tolist(), strict=True)),
        "arch": loaded.arch, "random_init": loaded.random_init, "checkpoint": loaded.source, "state": loaded.state,
        "conversion": loaded.conversion, "bands": loaded.bands, "n_train": len(datasets["train"]),
        "n_test": len(targets), "image_size": recipe["img_size"],
        **{k: recipe[k] for k in ("epochs", "batch_size", "base_lr", "lr", "weight_decay", "momentum", "train_frac",
                                  "normalize", "drop_path", "seed")},
        "splits": notes, "data": str(args.data), **{f"{n}_list": str(p) for n, p in lists.items()},
        "train_seconds": round(train_seconds, 1), "device": str(device), "history": history,
        **common.provenance(),
    }
    output = Path(args.output)
    from .plots import per_class_ap_figure

    title = (f"{loaded.arch} ({loaded.state}) fine-tuned {recipe['epochs']} ep, train-frac {recipe['train_frac']:g}: "
             f"{scored} micro mAP {s['micro_ap']:.2f}")
    result["picture"] = str(per_class_ap_figure(s["per_class_ap"], list(LABELS_19), output / "per_class_ap.png",
                                                title))
    result["output"] = str(common.write_json(output / "metrics.json", result))
    return result


@torch.no_grad()
def predict(model: nn.Module, loader, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets [N, 19], sigmoid scores [N, 19]) of a whole loader, in order, on the CPU."""
    model.eval()
    targets, scores = [], []
    for images, target in loader:
        scores.append(torch.sigmoid(model(images.to(device)).float()).cpu())
        targets.append(target)
    return torch.cat(targets), torch.cat(scores)


def format_table(result: dict) -> str:
    model = common.model_label(result["arch"], result["state"])
    method = f"finetune {result['epochs']} ep, frac {result['train_frac']:g}"
    macro = "-" if result["macro_ap"] is None else f"{result['macro_ap']:.2f}"
    return format_rows([
        ("model", "eval", "train", result["scored_split"], "size", "micro mAP", "macro mAP"),
        (model, method, str(result["n_train"]), str(result["n_test"]), str(result["image_size"]),
         f"{result['micro_ap']:.2f}", macro),
    ])
