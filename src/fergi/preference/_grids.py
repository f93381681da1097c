"""The published search grids, built with the published arithmetic.

The values come from ``np.arange`` exactly as in the authors' code so that floating-point
comparisons (``|difference| >= d``) and the grid order, hence the tie-breaking, are the same.
Note the ensemble grid: ``w_IR + w_Pick <= 1`` is tested in floating point, which drops six
combinations whose sum is a hair above 1 (60 instead of 66 triples).
"""

from __future__ import annotations

import numpy as np

K_GRID: tuple[float, ...] = tuple(np.arange(0 + 0.1, 2.1 + 0.1, 0.1).tolist())
"""Exponential decay coefficient k: 0.1 .. 2.1 (the code's grid; the paper text says 2.0)."""

W_AU4_GRID: tuple[float, ...] = tuple(np.arange(0, 1 + 0.1, 0.1).tolist())
"""AU4 weight w_AU4: 0.0 .. 1.0; w_AU12 = 1 - w_AU4."""

THRESHOLD_GRID: tuple[float, ...] = tuple(np.arange(0.0, 1.0 + 0.02, 0.02).tolist())
"""Abstention threshold d on |AUcomb difference|: 0.00 .. 1.00."""

INTEGRATION_GRID: tuple[float, ...] = tuple(np.arange(0, 10.0 + 0.1, 0.1).tolist())
"""Integration weight a of eq. 10: 0.0 .. 10.0."""


def _ensemble_grid() -> tuple[tuple[float, float, float], ...]:
    w = np.arange(0, 1 + 0.1, 0.1)
    combos = [(w1, w2, 1 - w1 - w2) for w1 in w for w2 in w if (w1 + w2) <= 1]
    return tuple((float(a), float(b), float(c)) for a, b, c in combos if c >= 0)


ENSEMBLE_GRID: tuple[tuple[float, float, float], ...] = _ensemble_grid()
"""(w_IR, w_Pick, w_HPSv2) with w_HPSv2 = 1 - w_IR - w_Pick >= 0, on a 0.1 grid."""
