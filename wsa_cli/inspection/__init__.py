"""``wsa inspect``: per-layer scope reports of checkpoints, side-by-side comparison, histograms."""

from wsa_cli.inspection.report import (
    Comparison,
    Histogram,
    LayerComparison,
    ModelReport,
    compare_reports,
    inspect_checkpoint,
    kl_to_target,
    layer_histogram,
)

__all__ = [
    "Comparison",
    "Histogram",
    "LayerComparison",
    "ModelReport",
    "compare_reports",
    "inspect_checkpoint",
    "kl_to_target",
    "layer_histogram",
]
