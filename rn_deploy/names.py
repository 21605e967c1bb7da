"""Tensor and axis names, defined once and used by export, profiles, runners and manifests."""

INPUT = "input"
OUTPUT = "logits"
BATCH, HEIGHT, WIDTH = "batch", "height", "width"
