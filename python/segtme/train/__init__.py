"""Training: HV targets, losses, trainer (torchrun-ready), pseudo-labels, curriculum."""
