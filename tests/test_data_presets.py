"""The augmentation presets equal docs/data.md's "Views per preset" table, whose every value names the original
file and line it comes from: change a preset and this fails until the table (and its source) says the same."""

from pathlib import Path

import pytest
from fastdino.dataloading import AugmentationSpec

DOC = Path(__file__).resolve().parents[1] / "docs" / "data.md"
COLUMNS = ["preset", "view", "size", "count", "scale", "interpolation", "order", "flip", "jitter", "jitter p",
           "grayscale", "blur", "blur radius", "solarize", "date", "teacher", "from"]


def table_rows() -> list[dict[str, str]]:
    lines = DOC.read_text().splitlines()
    start = lines.index("### Views per preset")
    header = next(i for i in range(start, len(lines)) if lines[i].startswith("| preset | view |"))
    cells = [c.strip() for c in lines[header].strip("|").split("|")]
    assert [c.split(" (")[0] for c in cells] == COLUMNS
    rows = []
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(COLUMNS, [c.strip() for c in line.strip("|").split("|")], strict=True)))
    return rows


def _pair(text: str) -> tuple[float, float]:
    lo, hi = text.split("-")
    return float(lo), float(hi)


def expected_groups(rows: list[dict]) -> list[dict]:
    """One entry per ViewGroup the rows describe (a row with several sizes is one group per size)."""
    out = []
    for r in rows:
        for size in r["size"].split(","):
            g = dict(size=int(size), count=int(r["count"]), scale=_pair(r["scale"]), interpolation=r["interpolation"],
                     colour_before_crop=r["order"] == "colour first", flip_p=float(r["flip"]),
                     jitter_p=float(r["jitter p"]), grayscale_p=float(r["grayscale"]), blur_p=float(r["blur"]),
                     solarize_p=float(r["solarize"]), date=0 if r["date"] == "-" else int(r["date"].lstrip("t")),
                     teacher=r["teacher"] == "yes")
            if r["jitter"] != "-":
                g["jitter"] = tuple(float(x) for x in r["jitter"].split(","))
            if r["blur radius"] != "-":
                g["blur_sigma"] = _pair(r["blur radius"])
            assert r["order"] in ("crop first", "colour first", "crop only"), r["order"]
            if r["order"] == "crop only":  # nothing but the crop
                assert g["flip_p"] == g["jitter_p"] == g["grayscale_p"] == g["blur_p"] == g["solarize_p"] == 0
            assert r["from"], f"{r['preset']} {r['view']}: no source given"
            out.append(g)
    return out


ROWS = table_rows()


def test_the_table_covers_every_preset():
    assert sorted({r["preset"] for r in ROWS}) == AugmentationSpec.presets()


@pytest.mark.parametrize("name", AugmentationSpec.presets())
def test_preset_equals_the_table(name):
    spec = AugmentationSpec.preset(name)
    want = expected_groups([r for r in ROWS if r["preset"] == name])
    groups = spec.global_views + spec.local_views
    assert len(groups) == len(want)
    for i, (g, w) in enumerate(zip(groups, want, strict=True)):
        got = {k: getattr(g, k) for k in w if k != "teacher"}
        assert got == {k: v for k, v in w.items() if k != "teacher"}, f"{name} group {i}"
        assert (i < len(spec.global_views)) == w["teacher"], f"{name} group {i}: teacher view?"
        assert g.ratio == (3 / 4, 4 / 3)  # torchvision's RandomResizedCrop default, everywhere
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    temporal = any(r["date"] != "-" for r in ROWS if r["preset"] == name)
    assert (spec.n_dates > 1) == temporal
