"""Contrastive losses as pure functions, thin nn.Module wrappers, references, and ``LOSSES``: the
one registry (training method → LossSpec) that the trainer, the distributed wrapper, the loss
benchmark and the command line read. Adding a loss: one module with its functions, module,
reference and ``SPEC`` (see ``spec.LossSpec``), its import and one line below."""

from . import dcl, ntxent, sigmoid, tcl
from .ntxent import NTXentLoss, nt_xent_chunked, nt_xent_loss, nt_xent_loss_reference
from .ranks import DistributedCriterion
from .siglip import SigLipLoss, siglip_loss, siglip_loss_distributed, siglip_loss_reference
from .sigmoid import (
    SigmoidPairwiseLoss,
    sigmoid_blocks,
    sigmoid_pairwise_loss,
    sigmoid_pairwise_loss_distributed,
    sigmoid_pairwise_loss_reference,
)
from .sigmoid_torch import sigmoid_block_chunked
from .spec import HyperParam, LossSpec
from .tcl import TCLLoss, supcon_loss, tcl_chunked, tcl_loss, tcl_loss_reference

# training method (`fastsigclr train --method`) -> its loss
LOSSES: dict[str, LossSpec] = {
    "sigclr": sigmoid.SPEC,
    "simclr": ntxent.SPEC,
    "supcon": tcl.SUPCON,
    "tcl": tcl.TCL,
    "dcl": dcl.SPEC,
}

__all__ = [
    "LOSSES",
    "DistributedCriterion",
    "HyperParam",
    "LossSpec",
    "NTXentLoss",
    "SigLipLoss",
    "SigmoidPairwiseLoss",
    "TCLLoss",
    "nt_xent_chunked",
    "nt_xent_loss",
    "nt_xent_loss_reference",
    "siglip_loss",
    "siglip_loss_distributed",
    "siglip_loss_reference",
    "sigmoid_block_chunked",
    "sigmoid_blocks",
    "sigmoid_pairwise_loss",
    "sigmoid_pairwise_loss_distributed",
    "sigmoid_pairwise_loss_reference",
    "supcon_loss",
    "tcl_chunked",
    "tcl_loss",
    "tcl_loss_reference",
]
