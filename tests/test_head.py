"""fastdino.models.DINOHead: DINO's projection head."""

import copy

import pytest
import torch

from fastdino.models import DINOHead


def test_shape_and_layers():
    head = DINOHead(24, out_dim=100, hidden_dim=32, bottleneck_dim=8)
    assert head(torch.randn(5, 24)).shape == (5, 100)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(24, 32), (32, 32), (32, 8)]
    assert sum(isinstance(m, torch.nn.GELU) for m in head.mlp) == 2
    assert head.last_layer.bias is None
    assert DINOHead(24, out_dim=10, nlayers=1, bottleneck_dim=8)(torch.randn(2, 24)).shape == (2, 10)


def test_defaults_match_dino():
    head = DINOHead(384, out_dim=1024)
    assert head.mlp[0].out_features == 2048 and head.mlp[-1].out_features == 256
    assert head.last_layer.weight.shape == (1024, 256)


def test_bottleneck_is_normalised():
    """The bottleneck output is L2-normalised, so scaling the MLP's output changes nothing."""
    head = DINOHead(24, out_dim=50, hidden_dim=32, bottleneck_dim=8)
    x = torch.randn(4, 24)
    out = head(x)
    with torch.no_grad():
        head.mlp[-1].weight.mul_(7.0)
        head.mlp[-1].bias.mul_(7.0)
    torch.testing.assert_close(head(x), out)


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_weight_norm_last_layer(norm_last_layer):
    head = DINOHead(24, out_dim=50, hidden_dim=32, bottleneck_dim=8, norm_last_layer=norm_last_layer)
    params = dict(head.named_parameters())
    g = params["last_layer.parametrizations.weight.original0"]
    v = params["last_layer.parametrizations.weight.original1"]
    assert g.shape == (50, 1) and v.shape == (50, 8)
    assert g.eq(1).all() and g.requires_grad is not norm_last_layer
    # Unit gain: every prototype (row of the weight) is a unit vector, so |logit| <= 1 for a unit bottleneck.
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(50))
    torch.testing.assert_close(head.last_layer.weight, v / v.norm(dim=1, keepdim=True))
    out = head(torch.randn(6, 24))
    assert out.abs().max() <= 1 + 1e-5
    out.sum().backward()
    assert v.grad is not None
    assert (g.grad is None) is norm_last_layer


def test_state_dict_names_are_stable_and_head_copies():
    head = DINOHead(24, out_dim=50, hidden_dim=32, bottleneck_dim=8)
    twin = copy.deepcopy(head)  # the teacher is often a copy of the student
    assert list(twin.state_dict()) == list(head.state_dict())
    assert all(type(p) is torch.nn.Parameter for p in head.parameters())
    x = torch.randn(3, 24)
    torch.testing.assert_close(twin(x), head(x))
