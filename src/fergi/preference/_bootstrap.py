"""Participant-bootstrap confidence intervals for pairwise accuracy.

Pairs of one participant are not independent (the same face, the same taste), so the
unit of resampling is the participant: each replicate draws participants with
replacement and pools their pairs.
"""

from __future__ import annotations

import numpy as np

from fergi.preference._pairs import correct_mask

N_BOOT = 2000
SEED = 0


def _draws(n_groups: int, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap counts: how often each participant is drawn in each replicate."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n_groups, size=(n_boot, n_groups))
    counts = np.zeros((n_boot, n_groups), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(n_boot), n_groups), picks.ravel()), 1)
    return counts


def _interval(replicates: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates, in percent, 2 decimals."""
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(replicates, [alpha, 1.0 - alpha])
    return (round(float(low), 2), round(float(high), 2))


def bootstrap_ratio(numerator, denominator, *, n_boot: int = N_BOOT, seed: int = SEED,
                    level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``sum(numerator) / sum(denominator)`` over participants.

    Parameters
    ----------
    numerator, denominator : array-like of shape (n_participants,)
        Per-participant counts (e.g. correct and selected pairs).

    Returns
    -------
    (low, high) : percent
    """
    num = np.asarray(numerator, dtype=float)
    den = np.asarray(denominator, dtype=float)
    if len(num) == 0 or den.sum() == 0:
        return (float("nan"), float("nan"))
    counts = _draws(len(num), n_boot, seed)
    top, bottom = counts @ num, counts @ den
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = 100.0 * top / bottom
    ratio = ratio[np.isfinite(ratio)]
    return _interval(ratio, level)


def selective_accuracy(diff, sign, percent: float) -> float:
    """Accuracy (percent) on the ``percent`` % of pairs with the largest |difference|."""
    diff = np.asarray(diff, dtype=float)
    n = len(diff)
    if n == 0:
        return float("nan")
    kept = max(1, int(np.ceil(percent / 100.0 * n - 1e-9)))
    order = np.argsort(-np.abs(diff), kind="stable")[:kept]
    return round(100.0 * float(correct_mask(diff[order], np.asarray(sign)[order]).mean()), 2)


def bootstrap_selective(diff, sign, group, percent: float, *, n_boot: int = N_BOOT,
                        seed: int = SEED, level: float = 0.95) -> tuple[float, float]:
    """Participant-bootstrap interval of :func:`selective_accuracy` at ``percent`` coverage.

    In each replicate the pairs of the drawn participants (with their multiplicity) are
    ranked by |difference| and the top ``percent`` % are scored.
    """
    diff = np.asarray(diff, dtype=float)
    sign = np.asarray(sign)
    group = np.asarray(group)
    if len(diff) == 0:
        return (float("nan"), float("nan"))
    n_groups = int(group.max()) + 1
    order = np.argsort(-np.abs(diff), kind="stable")
    ok = correct_mask(diff[order], sign[order]).astype(float)
    g_sorted = group[order]
    counts = _draws(n_groups, n_boot, seed)
    weight = counts[:, g_sorted]  # (boot, pairs) in |diff| order
    cum_w = np.cumsum(weight, axis=1)
    cum_ok = np.cumsum(weight * ok[None, :], axis=1)
    total = cum_w[:, -1]
    kept = np.maximum(1, np.ceil(percent / 100.0 * total - 1e-9))
    # First position where the cumulative weight reaches the kept count.
    pos = np.array([np.searchsorted(cw, k) for cw, k in zip(cum_w, kept, strict=True)])
    pos = np.minimum(pos, cum_w.shape[1] - 1)
    rows = np.arange(len(pos))
    # Take whole pairs up to pos (a drawn-twice pair counts twice).
    acc = 100.0 * cum_ok[rows, pos] / cum_w[rows, pos]
    return _interval(acc, level)


def paired_difference(correct_a, correct_b, n_pairs, *, n_boot: int = N_BOOT, seed: int = SEED,
                      level: float = 0.95) -> dict:
    """Accuracy difference of two models on the same pairs, with a participant-bootstrap interval.

    Parameters
    ----------
    correct_a, correct_b, n_pairs : array-like of shape (n_participants,)
        Per-participant correct counts of model A and B on the same pairs, and the pair
        counts.

    Returns
    -------
    dict
        ``difference`` (A minus B, percentage points) and ``ci``.
    """
    a = np.asarray(correct_a, dtype=float)
    b = np.asarray(correct_b, dtype=float)
    n = np.asarray(n_pairs, dtype=float)
    if n.sum() == 0:
        return {"difference": float("nan"), "ci": (float("nan"), float("nan"))}
    counts = _draws(len(n), n_boot, seed)
    boot = 100.0 * (counts @ (a - b)) / (counts @ n)
    return {"difference": round(100.0 * float((a - b).sum() / n.sum()), 2),
            "ci": _interval(boot, level)}
