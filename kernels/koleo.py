"""DINOv2's KoLeo regulariser: spread the student's backbone features over the unit sphere.

The Kozachenko-Leonenko differential-entropy estimator (Sablayrolles et al. 2018, "Spreading vectors for similarity
search") is, up to constants, the mean log distance of each point to its nearest neighbour; maximising it pushes
the batch's features apart, uniformly. DINOv2 adds 0.1 x its negative to the DINO loss, on the L2-normalised CLS
features of the student's global views, one global view at a time, so two crops of one image are never each
other's neighbour (dinov2/loss/koleo_loss.py; dinov2/train/ssl_meta_arch.py, `koleo_loss`; weight 0.1 in
dinov2/configs/ssl_default_config.yaml). Like DINOv2 it runs on each rank's own batch. torch only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """-mean_i log ||x_i - x_nn(i)||, x = features [B, D] L2-normalised in fp32, nn(i) the nearest other row
    (found without gradient, as DINOv2 does; the distance itself is differentiable). B >= 2."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"koleo_loss needs features [B, D] with B >= 2, got shape {tuple(features.shape)}")
    x = F.normalize(features.float(), dim=1, eps=eps)
    with torch.no_grad():
        dots = x @ x.T
        dots.fill_diagonal_(-2.0)  # below any cosine: a row is never its own neighbour
        nearest = dots.argmax(dim=1)
    # torch's PairwiseDistance adds eps to the difference (DINOv2's pdist): a duplicate row gives a finite loss.
    distances = (x - x[nearest] + eps).norm(dim=1)
    return -torch.log(distances + eps).mean()


def koleo_per_view(features: torch.Tensor, n_views: int) -> torch.Tensor:
    """Sum of `koleo_loss` over the n_views equal chunks of features [n_views * B, D] (views stacked in order)."""
    return sum(koleo_loss(chunk) for chunk in features.chunk(n_views))
