"""The AU training loss of the FERGI paper (Supp. B.3, eqs. 11-17), as the authors ran it.

The network's 384 outputs are read as: output ``i`` (0-based) of the first 64 is the
regression intensity of AU ``i + 1``; output ``64 + 5 * i + (j - 1)`` is the logit of
"intensity of AU ``i + 1`` >= ``j``" for ``j = 1..5`` (AU-major order, the
``reshape(-1, 64, 5)`` of the authors' ``combination_loss.py``, so the ordinal logits of
their checkpoint mean the same here).

Where the printed equations and the authors' code (``utils.compute_weights``,
``combination_loss.CombinationLoss``, ShuangquanFeng/FERGI) differ, the code made the
published model and is the default; the printed version is an option
(:func:`mse_weights` ``method="paper-eq16"``).
"""

from __future__ import annotations

import numpy as np

from fergi._errors import FergiError
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


#: Choices of :func:`mse_weights`: the authors' code (default) and the printed eq. 16.
MSE_WEIGHTS = ("authors", "paper-eq16")


def mse_weights(counts: np.ndarray, method: str = "authors") -> np.ndarray:
    """Inverse-frequency weights ``w_{i,j}`` of the MSE loss (eq. 16).

    Intensities are merged into the groups {0, 1} and {2, 3, 4, 5}, and every
    intensity of a group gets the inverse of the group's count. The two methods
    differ only in the normalisation:

    ``"authors"`` (default)
        The authors' ``compute_weights(intensity_counts, 'inverse', AUs, device,
        groups=[[0, 1], [2, 3, 4, 5]])``, which made the published model: the six
        per-intensity weights of an AU sum to 1, i.e.
        ``w_low = (1/n_low) / (2/n_low + 4/n_high)`` and
        ``w_high = (1/n_high) / (2/n_low + 4/n_high)``.
    ``"paper-eq16"``
        Eq. 16 as printed: the numerators carry the group sizes 2 and 4, so the two
        *group* weights sum to 1 and every weight is 2x (intensities 0-1) or 4x (2-5)
        the authors'. This scales the MSE term up against the cosine and cross
        entropy terms (weighted 1:1:1 in both).

    Parameters
    ----------
    counts : numpy.ndarray
        ``(n_au, 6)`` counts from :func:`class_counts` (training set).
    method : {"authors", "paper-eq16"}, default "authors"

    Returns
    -------
    numpy.ndarray
        ``(n_au, 6)``: the weight of a sample of AU ``i`` with intensity ``j``.
        An AU with no samples gets zeros. (The authors' division is 0/0 = NaN there,
        which would turn their whole loss into NaN; it never happens on DISFA.)

    Raises
    ------
    fergi.FergiError
        Unknown ``method``.
    """
    if method not in MSE_WEIGHTS:
        raise FergiError(f"mse weights {method!r}: unknown (choose from {', '.join(MSE_WEIGHTS)})")
    counts = np.asarray(counts, dtype=float)
    # An empty group gets weight 0, as in the authors' `weights[counts_grouped > 0]`.
    low = _inv(counts[:, :2].sum(axis=1))
    high = _inv(counts[:, 2:].sum(axis=1))
    if method == "paper-eq16":
        low, high = 2 * low, 4 * high
        total = low + high
    else:
        # Their normalisation runs over the table's six columns, so each group's
        # inverse count enters once per intensity it holds.
        total = 2 * low + 4 * high
    w_low = np.divide(low, total, out=np.zeros_like(low), where=total > 0)
    w_high = np.divide(high, total, out=np.zeros_like(high), where=total > 0)
    return np.column_stack([w_low, w_low, w_high, w_high, w_high, w_high])


def bce_weights(counts: np.ndarray) -> np.ndarray:
    """Inverse-frequency weights ``w_{i,j,c}`` of the ordinal cross entropy (eq. 17).

    For threshold ``j = 1..5``, the positive class ("intensity >= j") is weighted by
    ``1 / sum_{j' >= j} n_{i,j'}`` and the negative class by
    ``1 / sum_{j' < j} n_{i,j'}``; the 10 weights of an AU are normalised to sum to 1.
    Eq. 17 as printed and the authors' code agree here: their
    ``compute_weights(threshold_counts, 'inverse', AUs, device)`` (no groups)
    normalises over all 5 x 2 entries of an AU, and an empty class gets weight 0.

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
    What the text names and the authors' code computes, a cosine similarity loss, is
    implemented: ``1 - <y, y_hat> / (||y|| ||y_hat||)``. A frame whose labelled AUs are
    all 0 has no direction: its cosine term is 1 whatever the prediction (no
    gradient), as ``eps`` in the denominator makes it.

    The reduction is the authors': each part is summed over the labelled AUs (and
    thresholds), not divided by the weights' sum (their ``# / reg_weights.sum(1)`` is
    commented out), then averaged over the batch; the parts are weighted 1:1:1.

    Parameters
    ----------
    outputs : torch.Tensor
        ``(B, 384)`` network outputs.
    target : torch.Tensor
        ``(B, 64)`` intensities 0-5 by AU slot; NaN where not labelled.
    w_mse : torch.Tensor
        ``(64, 6)`` weights of eq. 16 by slot (:func:`mse_weights`, :func:`expand_weights`).
        The weight of a label is looked up at its intensity rounded to 0-5 (the
        authors truncate with ``.long()``; DISFA's labels are integers, so they agree).
    w_bce : torch.Tensor
        ``(64, 5, 2)`` weights of eq. 17 by slot (:func:`bce_weights`).
    eps : float
        Guards the cosine's denominator (torch's default, which the authors use).

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

    # torch's cosine_similarity on the masked vectors, as the authors' CombinationLoss
    # calls it: each norm is clamped at eps, so a neutral frame (y = 0) gives 0 and no
    # gradient rather than 0/0.
    cos = 1.0 - F.cosine_similarity(reg * m, y, dim=1, eps=eps)

    thresholds = torch.arange(1, 6, device=y.device, dtype=y.dtype)
    chi = (y.unsqueeze(-1) >= thresholds).float()  # (B, 64, 5)
    w_neg, w_pos = w_bce[..., 0], w_bce[..., 1]  # (64, 5)
    wc = (chi * w_pos + (1 - chi) * w_neg) * m.unsqueeze(-1)
    ce = F.binary_cross_entropy_with_logits(logits, chi, reduction="none")
    bce = (wc * ce).sum(dim=(1, 2))

    parts = {"mse": mse.mean(), "cos": cos.mean(), "bce": bce.mean()}
    parts["loss"] = parts["mse"] + parts["cos"] + parts["bce"]
    return parts
