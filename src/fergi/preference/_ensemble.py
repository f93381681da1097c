"""Ensemble baseline score (eqs. 7-8) and integration with a valence score (eq. 10)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from fergi._errors import FergiError
from fergi.datasets import UNTRAINED_IN_RELEASE, untrained_columns
from fergi.preference._base import PreferenceModel, clone
from fergi.preference._grids import ENSEMBLE_GRID, INTEGRATION_GRID
from fergi.preference._pairs import PairIndex, correct_mask, pair_index

logger = logging.getLogger(__name__)

#: The default ensemble. Never Aesthetic_score or BLIP_score: in the authors' release those
#: are untrained networks' output (:data:`fergi.datasets.UNTRAINED_IN_RELEASE`).
ENSEMBLE_COLUMNS = ("ImageReward_score", "PickScore", "HPS_V2_score")
_warned: set = set()


def _warn_untrained(table: pd.DataFrame, columns) -> None:
    """Say once per column when a fit uses a score column of untrained output."""
    for column in untrained_columns(table, columns):
        if column not in _warned:
            _warned.add(column)
            logger.warning("%s: these values are untrained output (%s); a model fitted on "
                           "them learns noise", column, UNTRAINED_IN_RELEASE[column])


def zscore_stats(values: np.ndarray, train: np.ndarray | None = None):
    """Mean and standard deviation (ddof=1) of the training rows, column-wise."""
    rows = values if train is None else values[train]
    if len(rows) < 2:
        raise FergiError("image table: at least two training images are needed to z-score the scores")
    return rows.mean(axis=0), rows.std(axis=0, ddof=1)


def weighted_sum(z: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_c weights[..., c] * z[:, c]`` added left to right (the published order)."""
    weights = np.asarray(weights, dtype=float)
    out = weights[..., 0, None] * z[:, 0]
    for c in range(1, z.shape[1]):
        out = out + weights[..., c, None] * z[:, c]
    return out


def grid_correct(scores: np.ndarray, pairs: PairIndex, n_groups: int):
    """Correct counts per (grid row, group) for a (grid, images) score matrix."""
    ok = correct_mask(scores[:, pairs.a] - scores[:, pairs.b], pairs.sign)
    m = scores.shape[0]
    flat = np.arange(m)[:, None] * n_groups + pairs.group[None, :]
    n_ok = np.bincount(flat[ok], minlength=m * n_groups).reshape(m, n_groups)
    n_all = np.bincount(pairs.group, minlength=n_groups)
    return n_ok, n_all[None, :] - n_ok


class EnsembleScore(PreferenceModel):
    """Weighted sum of z-scored pre-trained scores (paper eqs. 7-8).

    Parameters
    ----------
    columns : sequence of str
        Score columns to combine (default ImageReward, PickScore, HPS v2).
    weight_grid : sequence of weight tuples
        Candidate weights, one entry per column, searched in order; the first combination
        with the highest training accuracy wins. Default: the published 0.1 grid.

    Attributes
    ----------
    mean_, std_ : ndarray
        Training mean and standard deviation (ddof=1) of each column, used for z-scoring.
    weights_ : ndarray
        Fitted weights.
    n_correct_, n_pairs_ : int
        Training accuracy counts at the optimum.
    """

    def __init__(self, columns=ENSEMBLE_COLUMNS, weight_grid=ENSEMBLE_GRID):
        self.columns = columns
        self.weight_grid = weight_grid

    @property
    def required_columns(self):
        return tuple(self.columns)

    def _z(self, table, mean=None, std=None):
        self._check_table(table)
        values = table[list(self.columns)].to_numpy(dtype=float)
        if mean is None:
            mean, std = zscore_stats(values)
        return (values - mean) / std, mean, std

    def fit(self, table: pd.DataFrame, y=None, *, groups=None):
        """z-score the columns on ``table`` and grid-search the weights on its pairs."""
        z, self.mean_, self.std_ = self._z(table)
        _warn_untrained(table, self.columns)
        grid = np.asarray(self.weight_grid, dtype=float).reshape(-1, len(self.columns))
        pairs = pair_index(table, ranks=y)
        pairs = PairIndex(pairs.a, pairs.b, pairs.sign, np.zeros(len(pairs), np.int64), pairs.group_labels)
        n_ok, _ = grid_correct(weighted_sum(z, grid), pairs, 1)
        best = int(np.argmax(n_ok[:, 0]))
        self.weights_ = grid[best]
        self.n_correct_, self.n_pairs_ = int(n_ok[best, 0]), len(pairs)
        self.is_fitted_ = True
        return self

    def score_images(self, table: pd.DataFrame) -> np.ndarray:
        """Ensemble score of every image, z-scored with the training statistics."""
        self._check_fitted()
        z, _, _ = self._z(table, self.mean_, self.std_)
        return weighted_sum(z, self.weights_)


def integration_grid_fit(base: np.ndarray, valence: np.ndarray, pairs: PairIndex,
                         train: np.ndarray, a_grid) -> int:
    """Index of the first ``a`` maximising training accuracy of ``base + a * valence``."""
    a = np.asarray(a_grid, dtype=float)
    scores = base[None, :] + a[:, None] * valence[None, :]
    tp = pairs.subset(train)
    ok = correct_mask(scores[:, tp.a] - scores[:, tp.b], tp.sign)
    return int(np.argmax(ok.sum(axis=1)))


class IntegratedScore(PreferenceModel):
    """A pre-trained score integrated with a facial valence score: ``s_m + a * s_AU`` (eq. 10).

    Parameters
    ----------
    base : str or PreferenceModel
        A score column (z-scored on the training images, as in the paper) or a model such as
        :class:`EnsembleScore` (fitted on the training images).
    valence : str or PreferenceModel
        A column of precomputed valence scores, or a model such as
        :class:`~fergi.preference.AUcombValence` (fitted on the training images).
    a_grid : sequence of float
        Candidate integration weights; the first maximum of training accuracy wins.

    Attributes
    ----------
    a_ : float
        Fitted integration weight.
    base_, valence_ : fitted models (when given as models)
    mean_, std_ : float
        z-scoring statistics of a base column.
    """

    def __init__(self, base="ImageReward_score", valence="AUcomb_valence_score",
                 a_grid=INTEGRATION_GRID):
        self.base = base
        self.valence = valence
        self.a_grid = a_grid

    @property
    def required_columns(self):
        cols = []
        for part in (self.base, self.valence):
            cols += [part] if isinstance(part, str) else list(part.required_columns)
        return tuple(dict.fromkeys(cols))

    def _parts(self, table, fit: bool, y=None, groups=None):
        self._check_table(table)
        if isinstance(self.base, str):
            values = table[self.base].to_numpy(dtype=float)
            if fit:
                _warn_untrained(table, (self.base,))
                self.mean_, self.std_ = (float(v[0]) for v in zscore_stats(values[:, None]))
            base = (values - self.mean_) / self.std_
        else:
            if fit:
                self.base_ = clone(self.base).fit(table, y, groups=groups)
            base = self.base_.score_images(table)
        if isinstance(self.valence, str):
            valence = table[self.valence].to_numpy(dtype=float)
        else:
            if fit:
                self.valence_ = clone(self.valence).fit(table, y, groups=groups)
            valence = self.valence_.score_images(table)
        return base, valence

    def fit(self, table: pd.DataFrame, y=None, *, groups=None):
        """Fit the parts on ``table`` and grid-search ``a`` on its pairs."""
        base, valence = self._parts(table, True, y, groups)
        pairs = pair_index(table, ranks=y)
        best = integration_grid_fit(base, valence, pairs, np.ones(len(pairs), bool), self.a_grid)
        self.a_ = float(self.a_grid[best])
        self.is_fitted_ = True
        return self

    def score_images(self, table: pd.DataFrame) -> np.ndarray:
        self._check_fitted()
        base, valence = self._parts(table, False)
        return base + self.a_ * valence
