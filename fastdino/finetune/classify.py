"""`fastdino finetune classify`: single-label fine-tuning of the whole backbone plus a linear head.

The preset is DINO-MC's `main_eurosat.py` (WennyXY/DINO-MC):
- model: the pretrained ViT with a Linear(D, classes) head on the final-norm CLS token (the ViT is built with
  num_classes, L33; its forward applies the head to token 0, utils/vision_transformer.py L209-216; head weights
  trunc_normal(std 0.02), bias 0, L159-169); every parameter is trained;
- SGD, momentum 0.9, no weight decay, lr 0.001 x batch / 256 (L101-106, --lr L262), cosine to 0 over the
  epochs, stepped once per epoch (CosineAnnealingLR, L107, L128); 100 epochs (L261); batch 32 (L266);
  cross-entropy (L178); 224 px with the augmentation of fastdino.finetune.data_classify.
- The authors report the best accuracy over the epochs on their evaluation folder (L137); here the recipe is
  chosen on --val-list and --test-list is scored once, with the final weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn

from fastdino.device import select_device

from . import common
from .backbones import backbone_from_args, set_drop_path
from .data_classify import LabelledImages, LoadBands, eval_transform, load_rgb, read_splits, train_transform
from .metrics import confusion_matrix, topk_accuracy

TASK = "classify"
# main_eurosat.py: --epochs L261, --lr L262 (per 256 images), --batch_size_per_gpu L266, SGD L101-106
PRESET = {"epochs": 100, "batch_size": 32, "base_lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9, "img_size": 224,
          "drop_path": 0.0, "seed": 0}


class Classifier(nn.Module):
    """backbone -> [B, D] -> Linear(D, num_classes)."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path,
                        help="root of the images (the list files' paths are relative to it), or a folder with "
                             "train/, val/ (and test/) ImageFolders")
    parser.add_argument("--train-list", type=Path, help="training images, one path per line (<class>/<file>)")
    parser.add_argument("--val-list", type=Path, help="images scored after every epoch (choose recipes on these)")
    parser.add_argument("--test-list", type=Path, help="images scored once, at the end")
    parser.add_argument("--val-every", type=int, default=1, help="epochs between validations (DINO-MC: 1)")
    parser.add_argument("--file-bands",
                        help="multispectral backbone: band order of multi-band files (eurosat-ms, esa, esa-12 or "
                             "B1,B2,...; default: the checkpoint's data.file_bands; prepared.json of `fastdino "
                             "prepare` wins)")


def run(args: argparse.Namespace) -> int:
    from fastdino.eval.report import format_table

    result = finetune(args)
    return common.print_result(format_table(result), result)


def resolve_recipe(args: argparse.Namespace) -> dict:
    """The preset with the command-line overrides; lr is the base lr scaled by batch/256 (main_eurosat.py L103)."""
    recipe = common.recipe_from(args, PRESET)
    recipe["lr"] = recipe["base_lr"] * recipe["batch_size"] / 256
    recipe.update(train_list=str(args.train_list) if args.train_list else None, source=str(args.checkpoint),
                  random_init=bool(args.random_init))
    return recipe


def build_sgd_finetune(args: argparse.Namespace, recipe: dict, saved: dict | None, n_outputs: int, device):
    """The backbone + Linear head, SGD and the per-epoch cosine of the authors' EuroSAT and BigEarthNet scripts
    (main_eurosat.py L101-107, main_bigearthnet.py L124-132), restored from `saved` when resuming.
    Returns (loaded backbone, model, optimizer, scheduler, history, start epoch)."""
    common.seed_everything(recipe["seed"])
    loaded = backbone_from_args(args, random_init=recipe["random_init"], img_size=recipe["img_size"],
                                seed=recipe["seed"])
    set_drop_path(loaded.backbone, recipe["drop_path"])
    model = Classifier(loaded.backbone, n_outputs).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"],
                                weight_decay=recipe["weight_decay"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe["epochs"], eta_min=0)
    history, start_epoch = [], 0
    if saved is not None:
        common.restore(saved, model, optimizer, scheduler)
        history, start_epoch = list(saved["history"]), int(saved["epoch"])
    return loaded, model, optimizer, scheduler, history, start_epoch


def finetune(args: argparse.Namespace) -> dict:
    recipe = resolve_recipe(args)
    resume_from = common.check_output(args.output, resume=args.resume, overwrite=args.overwrite)
    saved, recipe = common.load_resume(resume_from, recipe, TASK)
    train_list = Path(recipe["train_list"]) if recipe["train_list"] else None  # resumed: the saved run's list
    splits, classes = read_splits(args.data, {"train": train_list, "val": args.val_list, "test": args.test_list})
    common.check_disjoint({name: (split.paths, split.where) for name, split in splits.items()}, "image")
    device = select_device(args.device)
    loaded, model, optimizer, scheduler, history, start_epoch = build_sgd_finetune(args, recipe, saved, len(classes),
                                                                                 device)
    size, mean, std = recipe["img_size"], loaded.mean, loaded.std
    load, multispectral = load_rgb, bool(loaded.bands)
    if multispectral:
        from fastdino.dataloading.band_files import file_band_order

        load = LoadBands(loaded.bands, file_band_order(args.file_bands or loaded.file_bands, args.data))
    loaders = {name: common.make_loader(LabelledImages(split, (train_transform if name == "train" else eval_transform)(
        size, mean, std, multispectral), load), recipe["batch_size"], args.num_workers, shuffle=name == "train",
        seed=recipe["seed"]) for name, split in splits.items()}
    common.check_readable({name: loader.dataset for name, loader in loaders.items()})
    def loss_of(model, batch, device):
        images, labels = batch
        return nn.functional.cross_entropy(model(images.to(device)), labels.to(device)), len(labels)

    def validate(model):
        scores, labels = predict(model, loaders["val"], device)
        return {"val_top1": topk_accuracy(scores, labels, 1), "val_top5": topk_accuracy(scores, labels, 5)}

    with common.new_run_folder(args.output, fresh=resume_from is None, overwrite=args.overwrite):
        common.write_json(Path(args.output) / "config.json", {"task": TASK, **recipe, "classes": classes,
                                                              "data": str(args.data), "model": loaded.arch,
                                                              "bands": loaded.bands})
        print(f"{TASK}: {loaded.arch} ({loaded.state}), {len(classes)} classes, {len(splits['train'].paths)} train "
              f"images; {recipe['epochs']} epochs, batch {recipe['batch_size']}, SGD lr {recipe['lr']:.3g} "
              f"(= {recipe['base_lr']:g} x {recipe['batch_size']}/256), {size} px, device {device}")
        train_seconds = common.fit(model, loaders["train"], optimizer, scheduler, loss_of, task=TASK, recipe=recipe,
                                   output=args.output, history=history, start_epoch=start_epoch, device=device,
                                   validate=validate if "val" in loaders else None, val_every=args.val_every,
                                   log_every=args.log_every, extra={"classes": classes})

    scored = "test" if "test" in loaders else "val" if "val" in loaders else None
    if scored is None:
        raise ValueError("nothing to score: pass --test-list (and --val-list to choose the recipe)")
    scores, labels = predict(model, loaders[scored], device)
    matrix = confusion_matrix(scores.argmax(1), labels, len(classes))
    result = {
        "task": TASK, "scored_split": scored, "top1": topk_accuracy(scores, labels, 1),
        "top5": topk_accuracy(scores, labels, 5),
        "per_class_accuracy": {c: 100.0 * matrix[i, i].item() / max(matrix[i].sum().item(), 1)
                               for i, c in enumerate(classes)},
        "confusion_matrix": matrix.tolist(), "classes": classes,
        "val_top1": history[-1].get("val_top1") if history else None,
        "arch": loaded.arch, "random_init": loaded.random_init, "checkpoint": loaded.source,
        "checkpoint_epoch": loaded.checkpoint_epoch, "state": loaded.state, "conversion": loaded.conversion,
        "bands": loaded.bands,
        "n_train": len(splits["train"].paths), "n_test": len(labels), "image_size": size,
        **{k: recipe[k] for k in ("epochs", "batch_size", "base_lr", "lr", "weight_decay", "momentum", "drop_path",
                                  "seed")},
        "data": str(args.data), **{f"{s}_list": splits[s].where for s in splits},
        "train_seconds": round(train_seconds, 1),
        "device": str(device), "torch_threads": torch.get_num_threads(), "history": history,
        **common.provenance(),
    }
    output = Path(args.output)
    result["picture"] = str(confusion_matrix_picture(matrix, classes, output, result))
    result["output"] = str(common.write_json(output / "metrics.json", result))
    return result


def confusion_matrix_picture(matrix, classes, output: Path, result: dict) -> Path:
    from .plots import confusion_matrix_figure

    title = (f"{result['arch']} ({result['state']}) fine-tuned {result['epochs']} ep at {result['image_size']} px: "
             f"{result['scored_split']} top-1 {result['top1']:.2f}")
    return confusion_matrix_figure(matrix, classes, output / "confusion_matrix.png", title)


@torch.no_grad()
def predict(model: nn.Module, loader, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Class scores [N, C] (CPU, float32) and labels [N] of a whole loader, in order."""
    model.eval()
    scores, labels = [], []
    for images, targets in loader:
        scores.append(model(images.to(device)).float().cpu())
        labels.append(torch.as_tensor(targets))
    return torch.cat(scores), torch.cat(labels)
