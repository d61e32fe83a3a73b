"""DINOv2's KoLeo regulariser (kernels/koleo.py) against a brute-force nearest-neighbour loop, and in the step."""

from __future__ import annotations

import json
import math

import pytest
import torch
from fastdino.kernels import koleo_loss, koleo_per_view
from test_train import build, fixed_views, scaled_config

from fastdino.config import ConfigError
from fastdino.run_config import load_config


def brute_force_koleo(features: torch.Tensor) -> torch.Tensor:
    """-mean log distance to the nearest other row, one row at a time (float64), DINOv2's eps included."""
    x = features.double()
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-8)
    terms = []
    for i in range(len(x)):
        others = [j for j in range(len(x)) if j != i]
        d = torch.stack([(x[i] - x[j] + 1e-8).norm() for j in others])
        terms.append(torch.log(d.min() + 1e-8))
    return -torch.stack(terms).mean()


@pytest.mark.parametrize("rows,dim", [(2, 3), (7, 16), (33, 192)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_koleo_equals_brute_force_values_and_gradients(rows, dim, dtype):
    g = torch.Generator().manual_seed(rows * dim)
    base = torch.randn(rows, dim, generator=g).to(dtype)
    x = base.clone().requires_grad_(True)
    xr = base.double().clone().requires_grad_(True)
    loss, ref = koleo_loss(x), brute_force_koleo(xr)
    assert loss.dtype == torch.float32  # computed in fp32 whatever the input (DINOv2: autocast off)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-3, atol=1e-4 if dtype == torch.float32 else 2e-2)


def test_koleo_gradient_spreads_the_features():
    """Descending the loss pushes the closest pair apart: the smallest pairwise distance grows."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(16, 8, generator=g) * 0.05 + torch.randn(1, 8, generator=g)).requires_grad_(True)

    def min_distance(v):
        v = torch.nn.functional.normalize(v.detach(), dim=1)
        d = torch.cdist(v, v) + torch.eye(len(v)) * 9
        return d.min().item()

    before = min_distance(x)
    opt = torch.optim.SGD([x], lr=0.05)
    for _ in range(50):
        opt.zero_grad()
        koleo_loss(x).backward()
        opt.step()
    assert min_distance(x) > 2 * before


def test_two_crops_of_an_image_are_never_neighbours():
    """Per view: the same features in two views cost what each view costs alone; pooled, they would be at
    distance 0 from each other (log eps)."""
    x = torch.randn(5, 12, generator=torch.Generator().manual_seed(1))
    both = torch.cat([x, x])
    torch.testing.assert_close(koleo_per_view(both, 2), 2 * koleo_loss(x))
    assert koleo_loss(both) > -math.log(1e-6)  # what pooling the views would do


def test_koleo_needs_two_rows():
    with pytest.raises(ValueError, match="B >= 2"):
        koleo_loss(torch.randn(1, 4))


def test_koleo_weight_is_validated():
    with pytest.raises(ConfigError, match="loss.koleo_weight"):
        load_config("tiny", overrides=["loss.koleo_weight=-0.1"])
    # DINO's loss in the presets that reproduce DINO / DINO-MC; the CPU preset adds DINOv2's term (docs/eval.md)
    assert load_config("dino-mc-vits8").loss.koleo_weight == 0.0
    assert load_config("tiny").loss.koleo_weight == 0.1


def test_step_adds_the_weighted_koleo_of_the_global_views():
    """The step's loss with loss.koleo_weight=w is DINO's loss + w x KoLeo of the student's global-view
    features (same weights, same views), for the packed and the reference student alike."""
    w = 0.5
    # without iBOT's masks (on in the tiny preset), so the expected features are the unmasked views'
    plain = scaled_config("tiny", overrides=["loss.koleo_weight=0", "loss.ibot_weight=0"])
    with_koleo = scaled_config("tiny", overrides=[f"loss.koleo_weight={w}", "loss.ibot_weight=0"])
    views = fixed_views(plain, batch=4)
    for reference in (False, True):
        tr = build(with_koleo, reference=reference)
        features = tr.student["backbone"](torch.cat(views[:1])), tr.student["backbone"](torch.cat(views[1:2]))
        expected_koleo = sum(koleo_loss(f) for f in features).detach()
        dino_only = build(plain, reference=reference).step(views, lr=0.0, wd=0.04, momentum=0.99, epoch=1)
        total = tr.step(views, lr=0.0, wd=0.04, momentum=0.99, epoch=1)
        torch.testing.assert_close(total, dino_only + w * expected_koleo, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weight", [0.1, 0.0])
def test_the_log_shows_the_koleo_term_when_it_is_on(tmp_path, weight):
    from test_train import loop_config

    from fastdino.train import train

    run = tmp_path / "run"
    train(loop_config(tmp_path, 1, [f"loss.koleo_weight={weight}"]), run, echo=lambda msg: None)
    steps = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == "step"]
    assert steps
    if weight:
        assert all(math.isfinite(r["koleo"]) for r in steps)
        assert "(KoLeo " in (run / "train.log").read_text()
    else:
        assert not any("koleo" in r for r in steps)


def test_koleo_needs_two_images_per_rank():
    config = scaled_config("tiny", overrides=["run.batch_size=1"])
    with pytest.raises(ConfigError, match="loss.koleo_weight=0.1 needs at least 2 images per rank"):
        build(config)
