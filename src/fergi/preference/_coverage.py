"""Accuracy versus coverage: accuracy on the top x% of pairs by |score difference|."""

from __future__ import annotations

import numpy as np

from fergi.preference._pairs import correct_mask

PERCENTS = tuple(range(1, 101))


def coverage_curve(diff: np.ndarray, sign: np.ndarray, percents=PERCENTS) -> dict:
    """Accuracy on the ``x`` % of pairs with the largest |difference|, for every ``x``.

    One stable sort and a cumulative sum answer all coverages at once. The top
    ``ceil(x / 100 * n)`` pairs are kept (ties at the boundary are broken by pair order).

    Returns
    -------
    dict
        ``percent``, ``n_pairs`` (kept pairs) and ``accuracy`` (percent) lists.
    """
    diff = np.asarray(diff, dtype=float)
    order = np.argsort(-np.abs(diff), kind="stable")
    ok = np.cumsum(correct_mask(diff[order], np.asarray(sign)[order]))
    n = len(diff)
    percents = np.asarray(percents, dtype=float)
    kept = np.maximum(1, np.ceil(percents / 100.0 * n - 1e-9).astype(np.int64)) if n else np.zeros(len(percents), np.int64)
    accuracy = [round(100.0 * ok[m - 1] / m, 4) if n else float("nan") for m in kept]
    return {"percent": [float(p) for p in percents], "n_pairs": [int(m) for m in kept],
            "accuracy": accuracy}
