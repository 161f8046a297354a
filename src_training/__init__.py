"""Training and evaluation (no Qt): datasets, point sampler, losses, the one training loop, metrics, CLIs and
torchrun. May import napari_imedsam.model and napari_imedsam.io only."""
