"""Helpers shared by the figure modules."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path_stem: str | os.PathLike, formats: Sequence[str]) -> list[Path]:
    """Write ``fig`` as ``path_stem.<format>`` for each format and close it."""
    import matplotlib.pyplot as plt

    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        # The tight box once, not per format: bbox_inches="tight" draws the figure an extra
        # time on every save, and the 12-panel figures take seconds per draw.
        bbox = None
        if formats:
            bbox = fig.get_tightbbox(fig.canvas.get_renderer()).padded(0.1)
        for fmt in formats:
            path = stem.with_suffix(f".{fmt}")
            fig.savefig(path, dpi=150 if fmt == "png" else None, bbox_inches=bbox)
            paths.append(path)
    finally:
        plt.close(fig)
    return paths
