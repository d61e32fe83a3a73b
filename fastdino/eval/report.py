"""How every fastdino result is printed: a small fixed-width table (eval, finetune)."""

from __future__ import annotations


def format_table(result: dict) -> str:
    """A small fixed-width table of what was evaluated and how well."""
    state = "random init" if result["random_init"] else f"epoch {result['checkpoint_epoch']}"
    model = f"{result['arch']} ({state})"
    if result["task"] == "knn":
        method = f"k-NN k={result['k']} T={result['temperature']}"
    elif result["task"] != "linear":  # `fastdino finetune classify` prints its result through this table too
        method = f"{result['task']} {result['epochs']} ep"
    elif result.get("protocol") == "dino":
        method = f"linear, DINO protocol, {result['epochs']} ep"
    else:
        method = f"linear, fast probe, {result['epochs']} ep"
    rows = [
        ("model", "eval", "train", "test", "size", "top-1", "top-5"),
        (model, method, str(result["n_train"]), str(result["n_test"]), str(result["image_size"]),
         f"{result['top1']:.2f}", f"{result['top5']:.2f}"),
    ]
    return format_rows(rows)


def format_rows(rows: list[tuple[str, ...]]) -> str:
    """A fixed-width table, the header (first row) underlined: how every fastdino result is printed."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
