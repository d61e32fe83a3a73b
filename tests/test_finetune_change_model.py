"""The Siamese change network (DINO-MC models/segmentation.py adapted to fastdino backbones) and the stitching of
tile predictions back into whole images."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from _eval_fixtures import one_thread  # noqa: F401 (autouse)

from fastdino.finetune.change import evaluate, predict_city
from fastdino.finetune.change_model import ChangeNet
from fastdino.finetune.data_oscd import City
from fastdino.models import create_backbone


def vit(patch: int, img: int = 32):
    torch.manual_seed(0)
    return create_backbone("vit_tiny", patch_size=patch, img_size=img)


@pytest.mark.parametrize(("patch", "size", "levels"), [(8, 32, 3), (16, 64, 4), (16, 48, 4)])
def test_vit_change_net_outputs_one_logit_per_pixel(patch, size, levels):
    net = ChangeNet(vit(patch)).eval()
    assert net.encoder.indices == {3: [3, 7, 11], 4: [2, 5, 8, 11]}[levels]
    # Widths halve towards the finer levels, D / 2^(levels-1) ... D, like a CNN pyramid.
    assert [n.out_channels for n in net.neck] == [192 // 2 ** (levels - 1 - i) for i in range(levels)]
    x1, x2 = torch.randn(2, 3, size, size), torch.randn(2, 3, size, size)
    with torch.no_grad():
        out = net(x1, x2)
    assert out.shape == (2, 1, size, size)
    with torch.no_grad():  # |f1 - f2| makes the network blind to which date comes first
        torch.testing.assert_close(net(x2, x1), out)
        same_a, same_b = net(x1, x1), net(x2, x2)
    torch.testing.assert_close(same_a, same_b)  # identical dates: all differences 0, whatever the image


def test_resnet_levels_are_the_authors_five_maps():
    torch.manual_seed(0)
    net = ChangeNet(create_backbone("resnet50")).eval()
    # main_oscd.py L167-168: ResNet children 0, 4, 5, 6, 7 with 64, 256, 512, 1024, 2048 channels
    assert net.encoder.channels == [64, 256, 512, 1024, 2048]
    assert all(isinstance(n, nn.Identity) for n in net.neck)
    assert [c.out_channels for c in net.decoder.shrink] == [64, 256, 512, 1024]
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_frozen_encoder_gets_no_gradient_and_stays_in_eval_mode():
    net = ChangeNet(vit(8))
    encoder_before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    trainable = net.trainable_parameters()
    assert trainable and not any(p is q for p in trainable for q in net.encoder.parameters())
    optimizer = torch.optim.Adam(trainable, lr=0.1)
    net.train()
    assert not net.encoder.training and net.decoder.training
    loss = net(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)).mean()
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in net.encoder.parameters())
    assert all(torch.equal(v, encoder_before[k]) for k, v in net.encoder.state_dict().items())
    trained = ChangeNet(vit(8), freeze_encoder=False)
    assert len(trained.trainable_parameters()) == len(list(trained.parameters()))


class _BrighterInDate2(nn.Module):
    """A stand-in network: logit = 50 * (mean over channels of date 2 - date 1) - 10: positive where date 2 is
    brighter by more than 0.2."""

    def forward(self, a, b):
        return 50 * (b - a).mean(1, keepdim=True) - 10


def test_stitched_prediction_covers_every_pixel_exactly_once_including_borders():
    rng = np.random.default_rng(0)
    h, w = 70, 45  # not multiples of the tile: the last row and column of tiles run past the border
    mask = rng.random((h, w)) > 0.7
    image1 = rng.integers(0, 100, (h, w, 3)).astype(np.uint8)
    image2 = image1 + (mask[..., None] * 120).astype(np.uint8)
    city = City("x", image1, image2, mask)
    prob = predict_city(_BrighterInDate2(), city, tile=32, batch_size=3, device="cpu")
    assert prob.shape == (h, w)
    assert np.array_equal(prob > 0.5, mask)
    scores, per_city, _ = evaluate(_BrighterInDate2(), [city], 32, 4, "cpu")
    assert scores["f1"] == 100.0 and scores["tp"] + scores["tn"] == h * w and per_city["x"]["fp"] == 0
