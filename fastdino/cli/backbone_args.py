"""The options that name the backbone a command reads, declared once for `fastdino eval`, `fastdino finetune` and
`fastdino export` (fastdino.models.convert.load_backbone reads what they name)."""

from __future__ import annotations

import argparse
from pathlib import Path

# What every backbone-reading command reads (fastdino.models.convert); finetune also reads exported backbones.
SOURCES = ("a fastdino checkpoint (RUN/checkpoints/last.pt)", "a DINO / DINO-MC checkpoint.pth",
           "a backbone state dict (e.g. dino_vits8_pretrain.pth)")
EXPORTED = "an exported backbone (.safetensors)"


def add_backbone_arguments(parser: argparse.ArgumentParser, *, action: str, required: bool = True,
                           exported: bool = False, checks: bool = True, random_init: bool = False,
                           title: str = "backbone") -> argparse._ArgumentGroup:
    """--checkpoint and --checkpoint-key (default teacher), in a group `title` of `parser`.

    action: what the command does with the network ("evaluate", "fine-tune", "export"), for the help.
    required: --checkpoint must be given (finetune: not with --random-init --arch, which builds one).
    exported: the command also reads `fastdino export`'s .safetensors files.
    checks: --arch / --patch-size (the model expected: an error if the checkpoint holds another) and --pos-embed.
    random_init: --random-init, an untrained backbone of the same architecture (the baseline)."""
    group = parser.add_argument_group(title)
    sources = (*SOURCES, EXPORTED) if exported else SOURCES
    group.add_argument("--checkpoint", required=required, type=Path,
                       help=", ".join(sources[:-1]) + ", or " + sources[-1])
    group.add_argument("--checkpoint-key", choices=["teacher", "student"], default="teacher",
                       help=f"which network of a training checkpoint to {action} (default: the teacher, the one DINO "
                            "evaluates and DINO-MC fine-tunes)")
    if checks:
        group.add_argument("--pos-embed", choices=["timm", "dino"],
                           help="ViT position-embedding interpolation at other sizes (default: the run's config; "
                                "DINO's for checkpoints of the original code)")
        builds = random_init and not required  # --random-init without --checkpoint builds --arch
        group.add_argument("--arch", help="expected architecture (an error if the checkpoint holds another)" + (
            "; with --random-init alone: the backbone to build (vit_small, resnet50, ...)" if builds else ""))
        group.add_argument("--patch-size", type=int, help="expected ViT patch size (an error if the checkpoint holds "
                           "another)" + ("; with --random-init alone: the one built" if builds else ""))
    if random_init:
        group.add_argument("--random-init", action="store_true",
                           help=f"{action} an untrained backbone instead (of the checkpoint's architecture"
                                f"{', or --arch' if not required else ''}): the baseline")
    return group
