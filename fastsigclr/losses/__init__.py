"""Contrastive losses as pure functions (plus thin nn.Module wrappers where a loss owns parameters)."""

from .sigmoid import (
    SigmoidPairwiseLoss,
    sigmoid_pairwise_chunked,
    sigmoid_pairwise_loss,
    sigmoid_pairwise_loss_reference,
)
from .tcl import (
    ContrastiveLoss,
    nt_xent_chunked,
    nt_xent_loss,
    nt_xent_loss_reference,
    supcon_loss,
    tcl_chunked,
    tcl_loss,
)

# name -> pure function (z, ...) -> scalar; the trainer picks its loss from here.
LOSSES = {
    "sigmoid": sigmoid_pairwise_loss,
    "nt_xent": nt_xent_loss,
    "supcon": supcon_loss,
    "tcl": tcl_loss,
}

__all__ = [
    "LOSSES",
    "ContrastiveLoss",
    "SigmoidPairwiseLoss",
    "nt_xent_chunked",
    "nt_xent_loss",
    "nt_xent_loss_reference",
    "sigmoid_pairwise_chunked",
    "sigmoid_pairwise_loss",
    "sigmoid_pairwise_loss_reference",
    "supcon_loss",
    "tcl_chunked",
    "tcl_loss",
]
