"""Reaction features: frame and clip validity, AU activation values, screening."""

from fergi.features._activation import (
    compute_activation_values,
    frame_validity,
    image_table,
    screen_participants,
    window_length,
)
from fergi.features._normalize import (
    NORMALIZATIONS,
    QuantileNormalizer,
    baseline_levels,
    baseline_normalize,
)

__all__ = [
    "NORMALIZATIONS",
    "QuantileNormalizer",
    "baseline_levels",
    "baseline_normalize",
    "compute_activation_values",
    "frame_validity",
    "image_table",
    "screen_participants",
    "window_length",
]
