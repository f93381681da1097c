"""Reaction features: frame and clip validity, AU activation values, screening."""

from fergi.features._activation import (
    compute_activation_values,
    frame_validity,
    image_table,
    screen_participants,
    window_length,
)

__all__ = [
    "compute_activation_values",
    "frame_validity",
    "image_table",
    "screen_participants",
    "window_length",
]
