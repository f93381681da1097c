"""``linear12``: an L2-regularised pairwise logistic model over all 12 AUs.

The valence score of an image is ``w . sqrt(a)`` with ``a`` the 12 AU activation values
(after the model's normalisation). The square root tames the heavy right tail of
activation values (a few very large reactions would otherwise dominate the fit). ``w``
is fitted by logistic regression on within-session pairs of different rank: the
probability that image ``i`` ranks above ``j`` is ``sigmoid(w . (sqrt(a_i) - sqrt(a_j)))``
(no intercept: the model is antisymmetric in the pair). The regularisation strength ``C``
is chosen by an inner leave-one-participant-out loop on the training participants only,
so an outer LOPO evaluation is strictly nested.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fergi._errors import FergiError
from fergi.preference._base import PreferenceModel
from fergi.preference._pairs import correct_mask, pair_index
from fergi.schema import ACTIVATION_COLUMNS

C_GRID: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
"""Candidate inverse regularisation strengths (per pair: the penalty is ``|w|^2 / (2 C n)``)."""

QUANTILE_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.arange(0.0, 0.96, 0.01), 2).tolist())
"""Abstention thresholds searched, as quantiles of the training pairs' |score difference|."""


def _features(values: np.ndarray) -> np.ndarray:
    # Activation values are >= 0 by construction (max minus the first window); guard anyway.
    return np.sqrt(np.clip(values, 0.0, None))


def fit_pairwise_logistic(x: np.ndarray, sign: np.ndarray, c, *, weights=None, max_iter: int = 30,
                          tol: float = 1e-7) -> np.ndarray:
    """Newton fits of ``min sum_p w_fp log(1 + exp(-s_p x_p . b)) + |b|^2 n_f / (2 c)``.

    Parameters
    ----------
    x : ndarray of shape (n_pairs, n_features)
        Pair feature differences.
    sign : ndarray of shape (n_pairs,)
        +1 / -1 labels.
    c : float or ndarray of shape (n_fits,)
        Inverse regularisation strength of each fit (the penalty scales with the number
        of pairs a fit sees, so ``c`` means the same at any data size).
    weights : ndarray of shape (n_fits, n_pairs), optional
        Per-fit pair weights (0 leaves a pair out): many folds are solved at once.

    Returns
    -------
    ndarray of shape (n_fits, n_features)
    """
    z = x * np.asarray(sign, dtype=float)[:, None]
    c = np.atleast_1d(np.asarray(c, dtype=float))
    n_pairs, n_feat = z.shape
    weights = np.ones((len(c), n_pairs)) if weights is None else np.asarray(weights, dtype=float)
    n_fit = np.maximum(weights.sum(axis=1), 1.0)
    lam = n_fit / c
    beta = np.zeros((len(c), n_feat))
    eye = np.eye(n_feat)
    # Pairwise outer products once: every fit's Hessian is then one matrix product.
    outer = (z[:, :, None] * z[:, None, :]).reshape(n_pairs, n_feat * n_feat)
    for _ in range(max_iter):
        margin = beta @ z.T  # (fits, pairs)
        p = 0.5 * (1.0 + np.tanh(-0.5 * margin))  # sigmoid(-margin), stable
        grad = -(weights * p) @ z + lam[:, None] * beta
        curv = weights * p * (1.0 - p)
        hess = (curv @ outer).reshape(-1, n_feat, n_feat) + lam[:, None, None] * eye
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        beta -= step
        if np.max(np.abs(step)) < tol:
            break
    return beta


class Linear12Valence(PreferenceModel):
    """Pairwise logistic valence over the square roots of all 12 AU activation values.

    Parameters
    ----------
    c : float or None
        Inverse regularisation strength; ``None`` (default) picks it from ``c_grid`` by
        inner leave-one-participant-out on the training data (accuracy on all pairs,
        the first maximum wins).
    c_grid : sequence of float
    columns : sequence of str
        Activation columns (default the 12 AUs).
    penalty : float
        Abstention threshold objective ``n_correct - penalty * n_incorrect`` on the
        training pairs (eq. 9's rule).
    threshold_quantiles : sequence of float
        Candidate thresholds, as quantiles of the training pairs' |score difference|.

    Attributes
    ----------
    coef_ : ndarray of shape (12,)
    c_ : float
    threshold_ : float
    n_pairs_ : int
    """

    def __init__(self, c=None, *, c_grid=C_GRID, columns=ACTIVATION_COLUMNS, penalty=2.0,
                 threshold_quantiles=QUANTILE_THRESHOLDS):
        self.c = c
        self.c_grid = c_grid
        self.columns = columns
        self.penalty = penalty
        self.threshold_quantiles = threshold_quantiles

    @property
    def required_columns(self):
        return tuple(self.columns)

    def _x(self, table):
        self._check_table(table)
        return _features(table[list(self.columns)].to_numpy(dtype=float))

    def _choose_c(self, x, pairs) -> float:
        grid = np.asarray(self.c_grid, dtype=float)
        groups = pairs.group
        n_groups = int(groups.max()) + 1 if len(groups) else 0
        if len(grid) == 1 or n_groups < 3:
            return float(grid[-1] if n_groups < 3 else grid[0])
        diff = x[pairs.a] - x[pairs.b]
        # Every (C, held-out group) fit solved at once by batched Newton steps.
        held = np.repeat(np.arange(n_groups), len(grid))
        cs = np.tile(grid, n_groups)
        weights = (groups[None, :] != held[:, None]).astype(float)
        beta = fit_pairwise_logistic(diff, pairs.sign, cs, weights=weights)
        ok = correct_mask(beta @ diff.T, pairs.sign[None, :])  # (fits, pairs)
        in_held = groups[None, :] == held[:, None]
        n_ok = (ok & in_held).sum(axis=1).reshape(n_groups, len(grid)).sum(axis=0)
        return float(grid[int(np.argmax(n_ok))])

    def fit(self, table: pd.DataFrame, y=None, *, groups=None):
        """Fit the weights (choosing ``C`` by inner LOPO when not given) and the threshold."""
        x = self._x(table)
        pairs = pair_index(table, ranks=y, groups=groups)
        if len(pairs) == 0:
            raise FergiError("image table: no pair of images with different rank to fit on")
        self.c_ = float(self.c) if self.c is not None else self._choose_c(x, pairs)
        diff = x[pairs.a] - x[pairs.b]
        self.coef_ = fit_pairwise_logistic(diff, pairs.sign, self.c_)[0]
        d = diff @ self.coef_
        self.threshold_ = fit_threshold(d, pairs.sign, self.threshold_quantiles, self.penalty)
        self.n_pairs_ = len(pairs)
        self.is_fitted_ = True
        return self

    @property
    def abstention_threshold(self) -> float:
        self._check_fitted()
        return self.threshold_

    def score_images(self, table: pd.DataFrame) -> np.ndarray:
        self._check_fitted()
        return self._x(table) @ self.coef_

    def to_dict(self) -> dict:
        self._check_fitted()
        return {"columns": list(self.columns), "coef": [float(v) for v in self.coef_],
                "c": self.c_, "threshold": self.threshold_, "penalty": self.penalty}

    @classmethod
    def from_dict(cls, data: dict) -> Linear12Valence:
        coef = np.asarray(data["coef"], dtype=float)
        columns = tuple(data["columns"])
        if coef.shape != (len(columns),) or not np.isfinite(coef).all():
            raise ValueError("coef must hold one finite weight per column")
        threshold = float(data["threshold"])
        if not (np.isfinite(threshold) and threshold >= 0):
            raise ValueError(f"threshold must be a number >= 0, got {threshold}")
        model = cls(c=float(data["c"]), columns=columns, penalty=float(data.get("penalty", 2.0)))
        model.coef_, model.c_, model.threshold_ = coef, float(data["c"]), threshold
        model.n_pairs_ = 0
        model.is_fitted_ = True
        return model


def fit_threshold(diff: np.ndarray, sign: np.ndarray, quantiles, penalty: float = 2.0) -> float:
    """Abstention threshold maximising ``n_correct - penalty * n_incorrect`` (eq. 9's rule).

    Candidates are quantiles of |diff|; pairs with ``|diff| >= d`` are selected; the
    first maximum (smallest threshold) wins.
    """
    magnitude = np.abs(np.asarray(diff, dtype=float))
    if len(magnitude) == 0:
        return 0.0
    candidates = np.quantile(magnitude, np.asarray(quantiles, dtype=float))
    ok = correct_mask(diff, sign)
    selected = magnitude[None, :] >= candidates[:, None]
    n_ok = (selected & ok[None, :]).sum(axis=1)
    n_bad = selected.sum(axis=1) - n_ok
    return float(candidates[int(np.argmax(n_ok - penalty * n_bad))])
