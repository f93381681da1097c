"""AUcomb valence score (paper eqs. 3-6) and its vectorised grid-search fit (eq. 9)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fergi._errors import FergiError
from fergi.preference._base import PreferenceModel
from fergi.preference._grids import K_GRID, THRESHOLD_GRID, W_AU4_GRID
from fergi.preference._pairs import PairIndex, pair_index

AU4 = "AU4_activation_value"
AU12 = "AU12_activation_value"
FORMULAS = ("paper", "published_code")

# Cap on the (parameter pair x image pair) matrices held at once, to bound memory on big data.
_CHUNK_ELEMENTS = 4_000_000


def aucomb_scores(au4, au12, k, w_au4, formula: str = "paper") -> np.ndarray:
    """AUcomb valence score of images (broadcasting over parameters).

    ``s_AU4 = -(1 - exp(-k a4))``, ``s_AU12 = 1 - exp(-k a12)`` and, with ``formula="paper"``
    (eq. 5), ``w_AU4 s_AU4 + (1 - w_AU4) s_AU12``. ``formula="published_code"`` gives the
    product ``w_AU4 s_AU12 s_AU4 + (1 - w_AU4) s_AU12`` that the published code used for
    Table 2 (see the release README, "Discrepancy").
    """
    k = np.asarray(k, dtype=float)
    w4 = np.asarray(w_au4, dtype=float)
    # Same operation order as the published code, so that results are bit-identical.
    s4 = -(1 - np.exp(-k * np.asarray(au4, dtype=float)))
    s12 = 1 - np.exp(-k * np.asarray(au12, dtype=float))
    w12 = 1 - w4
    if formula == "paper":
        return w4 * s4 + w12 * s12
    if formula == "published_code":
        return w4 * s12 * s4 + w12 * s12
    raise ValueError(f"formula must be one of {FORMULAS}, got {formula!r}")


def grid_counts(au4, au12, pairs: PairIndex, n_groups: int, k_grid, w_grid, d_grid,
                formula: str = "paper"):
    """Correct/incorrect counts of every (k, w_AU4, d) on every group's pairs at once.

    For each (k, w) the pairs' |differences| are binned by how many thresholds they pass
    (``searchsorted``); reverse cumulative sums of the bins then give the counts for all
    thresholds without re-sorting or looping over d.

    Returns
    -------
    n_correct, n_incorrect : ndarray, shape (len(k_grid) * len(w_grid), n_groups, len(d_grid))
        k varies slowest, then w (the published nested order).
    """
    k_grid = np.asarray(k_grid, dtype=float)
    w_grid = np.asarray(w_grid, dtype=float)
    d_grid = np.asarray(d_grid, dtype=float)
    kk = np.repeat(k_grid, len(w_grid))
    ww = np.tile(w_grid, len(k_grid))
    d_order = np.argsort(d_grid, kind="stable")
    d_sorted = d_grid[d_order]
    n_kw, n_d, n_pairs = len(kk), len(d_grid), len(pairs)
    hist_ok = np.zeros((n_kw, n_groups, n_d + 1), dtype=np.int64)
    hist_bad = np.zeros_like(hist_ok)
    step = max(1, _CHUNK_ELEMENTS // max(1, n_pairs + len(au4)))
    for start in range(0, n_kw, step):
        sl = slice(start, min(n_kw, start + step))
        m = sl.stop - sl.start
        scores = aucomb_scores(au4[None, :], au12[None, :], kk[sl, None], ww[sl, None], formula)
        diff = scores[:, pairs.a] - scores[:, pairs.b]
        ok = diff * pairs.sign > 0
        passed = np.searchsorted(d_sorted, np.abs(diff), side="right")
        flat = (np.arange(m)[:, None] * n_groups + pairs.group[None, :]) * (n_d + 1) + passed
        size = m * n_groups * (n_d + 1)
        hist_ok[sl] = np.bincount(flat[ok], minlength=size).reshape(m, n_groups, n_d + 1)
        hist_bad[sl] = np.bincount(flat[~ok], minlength=size).reshape(m, n_groups, n_d + 1)
    # A pair passing `passed` sorted thresholds is selected for sorted threshold j < passed.
    n_ok = np.cumsum(hist_ok[..., ::-1], axis=-1)[..., ::-1][..., 1:]
    n_bad = np.cumsum(hist_bad[..., ::-1], axis=-1)[..., ::-1][..., 1:]
    inverse = np.empty(n_d, dtype=np.int64)
    inverse[d_order] = np.arange(n_d)
    return n_ok[..., inverse], n_bad[..., inverse]


def best_index(n_ok: np.ndarray, n_bad: np.ndarray, penalty: float) -> int:
    """Flat index of the first maximum of ``n_ok - penalty * n_bad`` (grid order)."""
    return int(np.argmax((n_ok - penalty * n_bad).ravel()))


def _grid(value, grid, name):
    values = tuple(float(v) for v in (grid if value is None else (value,)))
    if not values:
        raise ValueError(f"{name}: empty grid")
    return values


class AUcombValence(PreferenceModel):
    """AUcomb valence score with abstention (paper eqs. 3-6 and 9).

    Parameters
    ----------
    k, w_au4, threshold : float or None
        Exponential decay coefficient, AU4 weight (``w_AU12 = 1 - w_AU4``) and abstention
        threshold ``d`` on |score difference|. ``None`` (default) means "search the grid";
        a number fixes the parameter (and makes the model usable without fitting when all
        three are given).
    k_grid, w_au4_grid, threshold_grid : sequence of float
        Search grids, searched in this nested order (k outermost); the first maximum wins.
        Defaults are the published grids.
    penalty : float
        Fit objective ``n_correct - penalty * n_incorrect`` on the training pairs whose
        |difference| >= d (eq. 9: 2).
    formula : {"paper", "published_code"}
        Eq. 5 as written, or the product formula the published code used for Table 2.

    Attributes
    ----------
    k_, w_au4_, threshold_ : float
        Fitted parameters.
    n_correct_, n_incorrect_, n_pairs_ : int
        Training counts at the optimum (selected pairs) and the number of training pairs.
    """

    required_columns = (AU4, AU12)

    def __init__(self, k=None, w_au4=None, threshold=None, *, k_grid=K_GRID,
                 w_au4_grid=W_AU4_GRID, threshold_grid=THRESHOLD_GRID, penalty=2.0,
                 formula="paper"):
        self.k = k
        self.w_au4 = w_au4
        self.threshold = threshold
        self.k_grid = k_grid
        self.w_au4_grid = w_au4_grid
        self.threshold_grid = threshold_grid
        self.penalty = penalty
        self.formula = formula

    # -- fitting -----------------------------------------------------------------------
    def _grids(self):
        if self.formula not in FORMULAS:
            raise ValueError(f"formula must be one of {FORMULAS}, got {self.formula!r}")
        return (
            _grid(self.k, self.k_grid, "k_grid"),
            _grid(self.w_au4, self.w_au4_grid, "w_au4_grid"),
            _grid(self.threshold, self.threshold_grid, "threshold_grid"),
        )

    def _arrays(self, table):
        self._check_table(table)
        return table[AU4].to_numpy(dtype=float), table[AU12].to_numpy(dtype=float)

    def _set_fit(self, ks, ws, ds, flat, n_ok, n_bad, n_pairs):
        n_w, n_d = len(ws), len(ds)
        self.k_ = ks[flat // (n_w * n_d)]
        self.w_au4_ = ws[(flat // n_d) % n_w]
        self.threshold_ = ds[flat % n_d]
        self.n_correct_ = int(n_ok.ravel()[flat])
        self.n_incorrect_ = int(n_bad.ravel()[flat])
        self.n_pairs_ = int(n_pairs)
        self.is_fitted_ = True
        return self

    def fit(self, table: pd.DataFrame, y=None, *, groups=None):
        """Grid-search (k, w_AU4, d) on every within-session pair of different rank.

        Parameters
        ----------
        table : DataFrame
            Image table with ``participant, session, image``, ``AU4_activation_value``,
            ``AU12_activation_value`` and (unless ``y`` is given) ``rank_score``.
        y : array-like, optional
            Rank scores (higher is better), one per row of ``table``.
        groups : array-like, optional
            Participant labels (accepted for API symmetry; pairs never cross sessions).
        """
        au4, au12 = self._arrays(table)
        pairs = pair_index(table, ranks=y)
        if len(pairs) == 0:
            raise FergiError("image table: no pair of images with different rank to fit on")
        ks, ws, ds = self._grids()
        pairs = PairIndex(pairs.a, pairs.b, pairs.sign, np.zeros(len(pairs), np.int64), pairs.group_labels)
        n_ok, n_bad = grid_counts(au4, au12, pairs, 1, ks, ws, ds, self.formula)
        n_ok, n_bad = n_ok[:, 0, :], n_bad[:, 0, :]
        return self._set_fit(ks, ws, ds, best_index(n_ok, n_bad, self.penalty), n_ok, n_bad, len(pairs))

    def _lopo_fit(self, table: pd.DataFrame, y, pairs: PairIndex):
        """Fit every leave-one-group-out fold from one pass over the grid.

        Returns ``{group_label: fitted copy}``; the training counts of a fold are the totals
        minus the held-out group's counts.
        """
        au4, au12 = self._arrays(table)
        ks, ws, ds = self._grids()
        n_groups = len(pairs.group_labels)
        n_ok, n_bad = grid_counts(au4, au12, pairs, n_groups, ks, ws, ds, self.formula)
        total_ok, total_bad = n_ok.sum(axis=1), n_bad.sum(axis=1)
        n_per_group = np.bincount(pairs.group, minlength=n_groups)
        fitted = {}
        for g, label in enumerate(pairs.group_labels):
            train_ok, train_bad = total_ok - n_ok[:, g], total_bad - n_bad[:, g]
            flat = best_index(train_ok, train_bad, self.penalty)
            model = type(self)(**self.get_params())
            fitted[label] = model._set_fit(ks, ws, ds, flat, train_ok, train_bad,
                                           len(pairs) - n_per_group[g])
        return fitted

    # -- scoring -----------------------------------------------------------------------
    def _params(self):
        if getattr(self, "is_fitted_", False):
            return self.k_, self.w_au4_, self.threshold_
        if None not in (self.k, self.w_au4, self.threshold):
            return float(self.k), float(self.w_au4), float(self.threshold)
        raise FergiError("AUcombValence: not fitted yet (call fit, give k, w_au4 and threshold, or load a model file)")

    @property
    def abstention_threshold(self) -> float:
        return self._params()[2]

    def score_images(self, table: pd.DataFrame) -> np.ndarray:
        """AUcomb valence score of every image (row) of ``table``."""
        k, w4, _ = self._params()
        au4, au12 = self._arrays(table)
        return aucomb_scores(au4, au12, k, w4, self.formula)

    def to_dict(self) -> dict:
        k, w4, d = self._params()
        return {"k": k, "w_au4": w4, "threshold": d, "formula": self.formula,
                "penalty": self.penalty}

    @classmethod
    def from_dict(cls, data: dict) -> AUcombValence:
        k, w4, d = (float(data[x]) for x in ("k", "w_au4", "threshold"))
        formula = data.get("formula", "paper")
        if formula not in FORMULAS:
            raise ValueError(f"formula must be one of {FORMULAS}, got {formula!r}")
        if not (np.isfinite(k) and k > 0):
            raise ValueError(f"k must be a positive number, got {k}")
        if not (np.isfinite(w4) and 0 <= w4 <= 1):
            raise ValueError(f"w_au4 must be between 0 and 1, got {w4}")
        if not (np.isfinite(d) and d >= 0):
            raise ValueError(f"threshold must be a number >= 0, got {d}")
        model = cls(k=data["k"], w_au4=data["w_au4"], threshold=data["threshold"],
                    formula=data.get("formula", "paper"), penalty=data.get("penalty", 2.0))
        model.k_, model.w_au4_, model.threshold_ = (float(data[x]) for x in ("k", "w_au4", "threshold"))
        model.is_fitted_ = True
        return model
