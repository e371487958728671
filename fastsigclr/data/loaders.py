"""Loader backends by name: each turns uint8 images + labels + an AugmentSpec into batches of
(views (V·B, 3, S, S) channels_last, labels (B,))."""

from fastsigclr.data.gpu_loader import GpuLoader

LOADERS = {
    "gpu": GpuLoader,
}
