"""`fastdino finetune change`: OSCD change detection with a Siamese encoder on the pretrained backbone.

The preset is DINO-MC's `main_oscd.py` (WennyXY/DINO-MC): the network of fastdino.finetune.change_model with the
encoder frozen; Adam, lr 0.003 (--lr L117), weight decay 1e-4, only the decoder's parameters (L100-102);
ExponentialLR(0.95) stepped once per epoch (L103); 50 epochs (L118); batch 32 (L119) of 96 px tiles, shuffled,
last partial batch dropped (oscd_datamodule.py L80-87); BCEWithLogitsLoss (--loss_function L116, L34, L95);
seed 42 (L107). Scores: precision, recall, F1 and IoU of the change class, probability > 0.5 (L38-41), here over
every real pixel of the test cities (fastdino.finetune.data_oscd explains the tiling).

OSCD has no validation split; --val-list names train cities to hold out and score after every epoch (choose
the recipe on them), --test-list's cities are scored once at the end.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from fastdino.device import select_device
from fastdino.eval.report import format_rows

from . import common
from .backbones import backbone_from_args, set_drop_path
from .change_model import ChangeNet
from .data_oscd import (
    SOURCES,
    TILE,
    ChangeTiles,
    City,
    city_scale,
    crop_padded,
    find_layout,
    read_city,
    read_city_list,
    split_cities,
    tile_origins,
    to_tensor,
)
from .metrics import add_counts, binary_counts, change_scores, is_change

TASK = "change"
PRESET = {"epochs": 50, "batch_size": 32, "base_lr": 3e-3, "weight_decay": 1e-4, "img_size": TILE,
          "drop_path": 0.0, "seed": 42, "normalize": "none", "train_backbone": False, "scale_lr": False}
THRESHOLD = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path,
                        help="OSCD root: the release's three folders (Images, Train Labels, Test Labels) or "
                             "SeCo's images/, train_labels/, val_labels/")
    parser.add_argument("--train-labels", type=Path, help="folder of <city>/cm/cm.png for the train cities")
    parser.add_argument("--test-labels", type=Path, help="folder of <city>/cm/cm.png for the test cities")
    parser.add_argument("--train-list", type=Path, help="train cities (comma- or line-separated) [Images/train.txt]")
    parser.add_argument("--val-list", type=Path, help="train cities held out and scored after every epoch")
    parser.add_argument("--test-list", type=Path, help="cities scored once at the end [Images/test.txt]")
    parser.add_argument("--source", choices=SOURCES, default="bands",
                        help="imgs_1/imgs_2 band TIFFs (DINO-MC), the co-registered imgs_*_rect bands, or the pair/ "
                             "RGB pngs [bands]")
    parser.add_argument("--normalize", choices=("none", "checkpoint"),
                        help="RGB input scaling after [0, 1]: none (DINO-MC) or the checkpoint's mean/std [none]; a "
                             "multispectral backbone always gets its per-band statistics")
    parser.add_argument("--train-backbone", action="store_true", default=None,
                        help="train the encoder too (DINO-MC freezes it)")
    parser.add_argument("--val-every", type=int, default=1, help="epochs between validations")


def run(args: argparse.Namespace) -> int:
    result = finetune(args)
    return common.print_result(format_table(result), result)


def read_cities(args, bands=None) -> tuple[dict[str, list[City]], dict[str, str]]:
    """{split: cities} read and checked up front (missing masks, mismatched pairs), and where each came from.
    bands: a multispectral backbone's bands (None: RGB)."""
    layout = find_layout(args.data, args.train_labels, args.test_labels, args.train_list, args.test_list)
    train_names, train_where = split_cities(layout, "train")
    names, where = {"train": train_names}, {"train_list": train_where}
    if args.val_list is not None:
        val_names = read_city_list(args.val_list)
        unknown = sorted(set(val_names) - set(train_names))
        if unknown:
            raise ValueError(f"--val-list {args.val_list}: {unknown} are not train cities (validation cities are "
                             f"held out of {train_where}, with their train labels)")
        names["train"] = [n for n in train_names if n not in set(val_names)]
        names["val"] = val_names
        if not names["train"]:
            raise ValueError(f"--val-list {args.val_list} holds out every train city")
    test = split_cities(layout, "test")
    if test is not None:
        if "test" not in layout.labels:
            raise FileNotFoundError(f"test cities listed in {test[1]} but no test labels folder: pass --test-labels")
        names["test"], where["test_list"] = test
        common.check_disjoint({"train": (train_names, train_where), "test": test}, "city")
    cities = {split: [read_city(layout.images, layout.labels["test" if split == "test" else "train"], n, args.source,
                                bands) for n in city_names] for split, city_names in names.items()}
    where = {"images": str(layout.images), **{f"{k}_labels": str(v) for k, v in layout.labels.items()}, **where}
    return cities, where


def finetune(args: argparse.Namespace) -> dict:
    recipe = common.recipe_from(args, PRESET)
    recipe.pop("scale_lr")
    recipe["lr"] = recipe["base_lr"]
    recipe["tile_size"] = recipe.pop("img_size")
    layout = find_layout(args.data, args.train_labels, args.test_labels, args.train_list, args.test_list)
    train_list = layout.lists.get("train")  # None: the cities of the train labels folder
    recipe.update(train_list=str(train_list) if train_list else None, source=str(args.checkpoint),
                  random_init=bool(args.random_init), source_images=args.source)
    resume_from = common.check_output(args.output, resume=args.resume, overwrite=args.overwrite)
    saved, recipe = common.load_resume(resume_from, recipe, TASK)
    # A resumed run reads the saved run's train cities and images, whatever this command line says.
    saved_list = Path(recipe["train_list"]) if recipe["train_list"] else None
    args = argparse.Namespace(**{**vars(args), "train_list": saved_list,
                                 "source": recipe.get("source_images", args.source)})
    device = select_device(args.device)
    common.seed_everything(recipe["seed"])
    loaded = backbone_from_args(args, random_init=recipe["random_init"], img_size=recipe["tile_size"],
                                seed=recipe["seed"])
    cities, where = read_cities(args, loaded.bands)
    set_drop_path(loaded.backbone, recipe["drop_path"])
    model = ChangeNet(loaded.backbone, freeze_encoder=not recipe["train_backbone"]).to(device)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.95)
    history, start_epoch = [], 0
    if saved is not None:
        common.restore(saved, model, optimizer, scheduler)
        history, start_epoch = list(saved["history"]), int(saved["epoch"])
    mean, std = common.input_normalisation(loaded, recipe["normalize"], args.normalize)
    tile = recipe["tile_size"]
    train_set = ChangeTiles(cities["train"], tile, augment=True, mean=mean, std=std)
    notes = {split: [c.name for c in cs] for split, cs in cities.items()}
    train_loader = common.make_loader(train_set, recipe["batch_size"], args.num_workers, shuffle=True,
                                      seed=recipe["seed"], drop_last=len(train_set) >= recipe["batch_size"])
    criterion = nn.BCEWithLogitsLoss()

    def loss_of(model, batch, device):
        a, b, mask = (t.to(device) for t in batch)
        return criterion(model(a, b), mask), len(mask)

    def validate(model):
        scores = evaluate(model, cities["val"], tile, recipe["batch_size"], device, mean, std)[0]
        return {f"val_{k}": scores[k] for k in ("precision", "recall", "f1", "iou")}

    with common.new_run_folder(args.output, fresh=resume_from is None, overwrite=args.overwrite):
        common.write_json(Path(args.output) / "config.json", {"task": TASK, **recipe, "cities": notes, **where,
                                                              "source_images": args.source, "model": loaded.arch,
                                                              "bands": loaded.bands})
        inputs = f"bands {', '.join(loaded.bands)}" if loaded.bands else "RGB"
        print(f"{TASK}: {loaded.arch} ({loaded.state}), {inputs}, encoder "
              f"{'trained' if recipe['train_backbone'] else 'frozen'}; {len(cities['train'])} train cities, "
              f"{len(train_set)} tiles of {tile} px; {recipe['epochs']} epochs, batch {recipe['batch_size']}, Adam lr "
              f"{recipe['lr']:g}, device {device}")
        train_seconds = common.fit(model, train_loader, optimizer, scheduler, loss_of, task=TASK, recipe=recipe,
                                   output=args.output, history=history, start_epoch=start_epoch, device=device,
                                   validate=validate if "val" in cities else None, val_every=args.val_every,
                                   log_every=args.log_every)
    scored = "test" if "test" in cities else "val" if "val" in cities else None
    if scored is None:
        raise ValueError("nothing to score: give test cities (--test-list, Images/test.txt or a test labels "
                         "folder)")
    scores, per_city, maps = evaluate(model, cities[scored], tile, recipe["batch_size"], device, mean, std)
    if loaded.bands:
        recipe = {**recipe, "normalize": "checkpoint"}  # multispectral: always the per-band statistics
    result = {
        "task": TASK, "scored_split": scored, "threshold": THRESHOLD, **scores, "per_city": per_city,
        "arch": loaded.arch, "random_init": loaded.random_init, "checkpoint": loaded.source, "state": loaded.state,
        "conversion": loaded.conversion, "bands": loaded.bands,
        "encoder": "trained" if recipe["train_backbone"] else "frozen",
        "n_train_tiles": len(train_set), "cities": notes, "tile_size": tile, "source_images": args.source,
        **{k: recipe[k] for k in ("epochs", "batch_size", "lr", "weight_decay", "normalize", "drop_path", "seed")},
        **where, "train_seconds": round(train_seconds, 1), "device": str(device), "history": history,
        **common.provenance(),
    }
    output = Path(args.output)
    result["picture"] = str(masks_picture(cities[scored], maps, per_city, output, result))
    result["output"] = str(common.write_json(output / "metrics.json", result))
    return result


@torch.no_grad()
def predict_city(model: nn.Module, city: City, tile: int, batch_size: int, device, mean=None, std=None) -> np.ndarray:
    """Change probability [H, W] of a whole city: its tiles predicted in batches and stitched back."""
    model.eval()
    height, width = city.mask.shape
    origins = tile_origins(height, width, tile)
    canvas = np.zeros((math.ceil(height / tile) * tile, math.ceil(width / tile) * tile), dtype=np.float32)
    for start in range(0, len(origins), batch_size):
        chunk = origins[start:start + batch_size]
        scale = city_scale(city)
        a = torch.stack([to_tensor(crop_padded(city.image1, y, x, tile), mean, std, scale) for y, x in chunk])
        b = torch.stack([to_tensor(crop_padded(city.image2, y, x, tile), mean, std, scale) for y, x in chunk])
        prob = torch.sigmoid(model(a.to(device), b.to(device)).float())[:, 0].cpu().numpy()
        for (y, x), p in zip(chunk, prob, strict=True):
            canvas[y:y + tile, x:x + tile] = p
    return canvas[:height, :width]


def evaluate(model, cities: list[City], tile: int, batch_size: int, device, mean=None, std=None):
    """(scores over all pixels of all cities, per-city scores, probability maps)."""
    total, per_city, maps = {}, {}, []
    for city in cities:
        prob = predict_city(model, city, tile, batch_size, device, mean, std)
        counts = binary_counts(torch.from_numpy(prob), torch.from_numpy(city.mask), THRESHOLD)
        per_city[city.name] = {**change_scores(counts), **counts}
        total = add_counts(total, counts)
        maps.append(prob)
    return {**change_scores(total), **total}, per_city, maps


def masks_picture(cities: list[City], maps: list[np.ndarray], per_city: dict, output: Path, result: dict) -> Path:
    from .plots import change_masks_figure

    rows = [{"name": c.name, "image1": display(c, c.image1), "image2": display(c, c.image2),
             "truth": c.mask.astype(np.float32),
             "prediction": is_change(p, THRESHOLD).astype(np.float32), "f1": per_city[c.name]["f1"]}
            for c, p in zip(cities, maps, strict=True)]
    title = (f"{result['arch']} ({result['state']}), {result['epochs']} ep: {result['scored_split']} F1 "
             f"{result['f1']:.2f}, IoU {result['iou']:.2f} (threshold {THRESHOLD})")
    return change_masks_figure(rows, output / "change_masks.png", title)


def display(city: City, image: np.ndarray) -> np.ndarray:
    """An 8-bit RGB picture of one date: the image itself, or a multispectral image's true-colour composite."""
    if not city.bands:
        return image
    from fastdino.dataloading.band_files import rgb_composite

    return rgb_composite(image, city.bands)


def format_table(result: dict) -> str:
    model = common.model_label(result["arch"], result["state"])
    method = f"change {result['epochs']} ep, encoder {result['encoder']}"
    return format_rows([
        ("model", "eval", "train tiles", f"{result['scored_split']} cities", "tile", "precision", "recall", "F1",
         "IoU"),
        (model, method, str(result["n_train_tiles"]), str(len(result["cities"][result["scored_split"]])),
         str(result["tile_size"]), f"{result['precision']:.2f}", f"{result['recall']:.2f}", f"{result['f1']:.2f}",
         f"{result['iou']:.2f}"),
    ])
