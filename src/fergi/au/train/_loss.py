"""The AU training loss of the FERGI paper (Supp. B.3, eqs. 11-17).

The network's 384 outputs are read as: output ``i`` (0-based) of the first 64 is the
regression intensity of AU ``i + 1``; output ``64 + 5 * i + (j - 1)`` is the logit of
"intensity of AU ``i + 1`` >= ``j``" for ``j = 1..5`` (AU-major order; only the
first 64 outputs are used at inference, so this order is fergi's own choice).
"""

from __future__ import annotations

import numpy as np

from fergi.au._ir50 import N_AU_SLOTS

N_LEVELS = 6  #: intensities 0..5


def class_counts(labels: np.ndarray) -> np.ndarray:
    """Counts ``n_{i,j}`` of each intensity ``j = 0..5`` of each AU ``i``.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(N, n_au)`` intensities; NaN (unlabelled) is not counted. Non-integer
        intensities are rounded to the nearest level.

    Returns
    -------
    numpy.ndarray
        ``(n_au, 6)`` int64.
    """
    labels = np.asarray(labels, dtype=float)
    counts = np.zeros((labels.shape[1], N_LEVELS), dtype=np.int64)
    for i in range(labels.shape[1]):
        col = labels[:, i]
        col = np.clip(np.rint(col[np.isfinite(col)]), 0, 5).astype(np.int64)
        counts[i] = np.bincount(col, minlength=N_LEVELS)
    return counts


def _inv(n: np.ndarray) -> np.ndarray:
    # An empty group has no samples that could use its weight; its inverse
    # frequency counts as 0 so the groups that exist share the whole weight.
    n = np.asarray(n, dtype=float)
    return np.divide(1.0, n, out=np.zeros_like(n), where=n > 0)


def mse_weights(counts: np.ndarray) -> np.ndarray:
    """Inverse-frequency weights ``w_{i,j}`` of the MSE loss (eq. 16).

    Intensities are merged into the groups {0, 1} and {2, 3, 4, 5}; each group's
    inverse frequency is multiplied by its number of levels (2 and 4), and the two
    are normalised to sum to 1 per AU.

    Parameters
    ----------
    counts : numpy.ndarray
        ``(n_au, 6)`` counts from :func:`class_counts` (training set).

    Returns
    -------
    numpy.ndarray
        ``(n_au, 6)``: the weight of a sample of AU ``i`` with intensity ``j``.
        An AU with no samples gets zeros.
    """
    counts = np.asarray(counts, dtype=float)
    low = 2 * _inv(counts[:, :2].sum(axis=1))
    high = 4 * _inv(counts[:, 2:].sum(axis=1))
    total = low + high
    w_low = np.divide(low, total, out=np.zeros_like(low), where=total > 0)
    w_high = np.divide(high, total, out=np.zeros_like(high), where=total > 0)
    return np.column_stack([w_low, w_low, w_high, w_high, w_high, w_high])


def bce_weights(counts: np.ndarray) -> np.ndarray:
    """Inverse-frequency weights ``w_{i,j,c}`` of the ordinal cross entropy (eq. 17).

    For threshold ``j = 1..5``, the positive class ("intensity >= j") is weighted by
    ``1 / sum_{j' >= j} n_{i,j'}`` and the negative class by
    ``1 / sum_{j' < j} n_{i,j'}``; the 10 weights of an AU are normalised to sum to 1.

    Parameters
    ----------
    counts : numpy.ndarray
        ``(n_au, 6)`` counts from :func:`class_counts`.

    Returns
    -------
    numpy.ndarray
        ``(n_au, 5, 2)``: ``[i, j - 1, 0]`` weights a negative sample of threshold
        ``j``, ``[i, j - 1, 1]`` a positive one.
    """
    counts = np.asarray(counts, dtype=float)
    below = np.cumsum(counts, axis=1)[:, :5]  # sum_{j' <= j-1} for j = 1..5
    at_or_above = counts.sum(axis=1, keepdims=True) - below
    neg, pos = _inv(below), _inv(at_or_above)
    z = (neg + pos).sum(axis=1, keepdims=True)
    neg = np.divide(neg, z, out=np.zeros_like(neg), where=z > 0)
    pos = np.divide(pos, z, out=np.zeros_like(pos), where=z > 0)
    return np.stack([neg, pos], axis=-1)


def expand_weights(weights: np.ndarray, au_numbers) -> np.ndarray:
    """Place per-AU weights of the labelled AUs into the 64 AU slots (zeros elsewhere)."""
    weights = np.asarray(weights, dtype=np.float32)
    out = np.zeros((N_AU_SLOTS, *weights.shape[1:]), dtype=np.float32)
    for k, au in enumerate(au_numbers):
        out[int(au) - 1] = weights[k]
    return out


def au_loss(outputs, target, w_mse, w_bce, *, eps: float = 1e-8) -> dict:
    """The loss E of eq. 11 on a batch, with its three parts.

    ``E = E_reg,MSE + E_reg,cos + E_class`` per sample (eqs. 12-14), averaged over
    the batch. Only labelled AU slots (finite ``target``) enter any term: the other
    52 of the 64 slots are masked out of the MSE, of both sums and norms of the
    cosine, and of the cross entropy.

    Eq. 13 is printed as ``1 - <y, y_hat> / ((sum y^2)(sum y_hat^2))``; without
    square roots that is not a cosine and depends on the scale of the intensities.
    What the text names, a cosine similarity loss, is implemented:
    ``1 - <y, y_hat> / (||y|| ||y_hat||)``. A frame whose labelled AUs are all 0 has
    no direction: its cosine term is 1 whatever the prediction (no gradient), as
    ``eps`` in the denominator makes it.

    Parameters
    ----------
    outputs : torch.Tensor
        ``(B, 384)`` network outputs.
    target : torch.Tensor
        ``(B, 64)`` intensities 0-5 by AU slot; NaN where not labelled.
    w_mse : torch.Tensor
        ``(64, 6)`` weights of eq. 16 by slot (:func:`mse_weights`, :func:`expand_weights`).
    w_bce : torch.Tensor
        ``(64, 5, 2)`` weights of eq. 17 by slot (:func:`bce_weights`).
    eps : float
        Guards the cosine's denominator.

    Returns
    -------
    dict
        ``loss`` (the total, differentiable), ``mse``, ``cos``, ``bce`` (tensors).
    """
    import torch
    import torch.nn.functional as F

    outputs = outputs.float()
    b = outputs.shape[0]
    reg = outputs[:, :N_AU_SLOTS]
    logits = outputs[:, N_AU_SLOTS:].reshape(b, N_AU_SLOTS, 5)
    mask = torch.isfinite(target)
    y = torch.where(mask, target, torch.zeros_like(target)).float()
    m = mask.float()
    level = y.round().clamp(0, 5).long()

    w = w_mse[torch.arange(N_AU_SLOTS, device=y.device), level] * m  # (B, 64)
    mse = (w * (y - reg) ** 2).sum(dim=1)

    reg_m = reg * m
    dot = (y * reg_m).sum(dim=1)
    # sqrt of the clamped product: the gradient of sqrt(0) would be infinite (NaN).
    norm = (y.pow(2).sum(dim=1) * reg_m.pow(2).sum(dim=1)).clamp_min(eps * eps).sqrt()
    cos = 1.0 - dot / norm

    thresholds = torch.arange(1, 6, device=y.device, dtype=y.dtype)
    chi = (y.unsqueeze(-1) >= thresholds).float()  # (B, 64, 5)
    w_neg, w_pos = w_bce[..., 0], w_bce[..., 1]  # (64, 5)
    wc = (chi * w_pos + (1 - chi) * w_neg) * m.unsqueeze(-1)
    ce = F.binary_cross_entropy_with_logits(logits, chi, reduction="none")
    bce = (wc * ce).sum(dim=(1, 2))

    parts = {"mse": mse.mean(), "cos": cos.mean(), "bce": bce.mean()}
    parts["loss"] = parts["mse"] + parts["cos"] + parts["bce"]
    return parts
