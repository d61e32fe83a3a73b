"""The training losses by name, as the log writes them: metrics.jsonl keys and how the progress line, train.log and
curves.png label them.

The step returns the weighted total and records each objective's unweighted term under its name (train.py,
`forward_loss`); the log reduces and prints every recorded name alike. The total keeps the key "loss" and the terms
"koleo" and "ibot", the keys of every metrics.jsonl fastdino has written, so old runs still plot and resume.
"""

from __future__ import annotations

TOTAL = "loss"  # the weighted sum of the terms: what the optimiser minimises
TOTAL_LABEL = "total loss"
TERM_LABELS = {  # each objective's term: metrics.jsonl key -> label
    "dino": "DINO",  # the DINO loss (CLS tokens), logged as a term when another objective adds to it
    "koleo": "KoLeo",  # DINOv2's KoLeo regulariser (loss.koleo_weight)
    "ibot": "iBOT",  # iBOT's masked-patch loss (loss.ibot_weight)
}


def term_label(name: str) -> str:
    """How the log labels a term (its key, for a name the table does not know)."""
    return TERM_LABELS.get(name, name)
