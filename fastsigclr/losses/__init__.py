"""Contrastive losses as pure functions (plus thin nn.Module wrappers where a loss owns parameters)."""

from .sigmoid import (
    SigmoidPairwiseLoss,
    sigmoid_pairwise_chunked,
    sigmoid_pairwise_loss,
    sigmoid_pairwise_loss_reference,
)

# name -> pure function (z, ...) -> scalar; the trainer picks its loss from here.
LOSSES = {
    "sigmoid": sigmoid_pairwise_loss,
}

__all__ = [
    "LOSSES",
    "SigmoidPairwiseLoss",
    "sigmoid_pairwise_chunked",
    "sigmoid_pairwise_loss",
    "sigmoid_pairwise_loss_reference",
]
