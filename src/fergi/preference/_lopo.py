"""Leave-one-participant-out (LOPO) evaluation of any preference model."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fergi._errors import FergiError
from fergi.preference._base import PreferenceModel, clone
from fergi.preference._coverage import coverage_curve
from fergi.preference._pairs import (
    KEY_COLUMNS,
    correct_mask,
    pair_index,
    require_columns,
)

logger = logging.getLogger(__name__)


@dataclass
class LOPOResult:
    """Outcome of :func:`lopo_evaluate`.

    Attributes
    ----------
    per_participant : DataFrame
        ``participant, n_pairs, n_selected, n_correct, n_incorrect, accuracy`` (percent, on
        the selected pairs) for every held-out participant.
    pooled : dict
        The same counts summed over participants, ``accuracy`` and ``coverage`` in percent.
    estimators : dict
        The model fitted on each fold, keyed by the held-out participant.
    scores : ndarray
        Out-of-fold score of every image (row of the table): each image is scored by the
        model of the fold where its participant was held out.
    coverage : dict
        Accuracy-versus-coverage curve of the out-of-fold scores over all pairs.
    """

    per_participant: pd.DataFrame
    pooled: dict
    estimators: dict = field(repr=False)
    scores: np.ndarray = field(repr=False)
    coverage: dict = field(repr=False)

    def summary(self) -> str:
        """One line: pooled accuracy and how many pairs it covers."""
        p = self.pooled
        return (f"LOPO accuracy {p['accuracy']:.2f}% on {p['n_selected']} of {p['n_pairs']} pairs "
                f"({p['coverage']:.2f}% predicted), {len(self.per_participant)} participants")


def check_participants(table: pd.DataFrame, groups=None) -> None:
    """Raise when a participant has fewer than two images (no pair can be formed)."""
    labels = table["participant"] if groups is None else pd.Series(np.asarray(groups))
    sizes = labels.astype(str).value_counts()
    lonely = sorted(sizes[sizes < 2].index)
    if lonely:
        raise FergiError(
            f"image table: participant(s) {', '.join(lonely)} have only one valid image "
            "(at least two are needed to form a pair); remove them"
        )


def lopo_evaluate(model: PreferenceModel, table: pd.DataFrame, *, y=None, groups=None) -> LOPOResult:
    """Fit ``model`` on all participants but one, test on the held-out one, for each participant.

    Pairs are the within-session pairs of different rank; a prediction is correct when the
    score difference has the strict sign of the rank difference (a zero difference is wrong).
    Models with an abstention threshold are scored on the pairs they select.

    Parameters
    ----------
    model : PreferenceModel
        Unfitted model (it is cloned per fold), e.g. ``AUcombValence()`` or ``FAUNet()``.
    table : DataFrame
        Image table with ``participant, session, image, rank_score`` and the model's columns.
    y : array-like, optional
        Rank scores instead of ``table["rank_score"]``.
    groups : array-like, optional
        Group (participant) label of every row; default ``table["participant"]``.

    Returns
    -------
    LOPOResult
    """
    require_columns(table, KEY_COLUMNS)
    model._check_table(table)
    check_participants(table, groups)
    table = table.reset_index(drop=True)
    pairs = pair_index(table, ranks=y, groups=groups)
    labels = pairs.group_labels
    if len(labels) < 2:
        raise FergiError("image table: leave-one-participant-out needs at least two participants")
    if len(pairs) == 0:
        raise FergiError("image table: no pair of images with different rank (are the rankings missing?)")
    image_group = pd.Categorical(
        (table["participant"] if groups is None else pd.Series(np.asarray(groups))).astype(str),
        categories=labels,
    ).codes
    if hasattr(model, "_lopo_fit"):
        fits = model._lopo_fit(table, y, pairs)
    else:
        ranks = table["rank_score"].to_numpy() if y is None else np.asarray(y)
        all_groups = None if groups is None else np.asarray(groups)
        fits = {}
        for g, label in enumerate(labels):
            train = image_group != g
            fits[label] = clone(model).fit(
                table[train], ranks[train],
                groups=None if all_groups is None else all_groups[train],
            )
    scores = np.empty(len(table))
    for g, label in enumerate(labels):
        rows = image_group == g
        scores[rows] = fits[label].score_images(table[rows])
    diff = scores[pairs.a] - scores[pairs.b]
    selected = np.ones(len(pairs), bool)
    for g, label in enumerate(labels):
        threshold = fits[label].abstention_threshold
        if threshold is not None:
            in_group = pairs.group == g
            selected[in_group] = np.abs(diff[in_group]) >= threshold
    ok = correct_mask(diff, pairs.sign)
    n_groups = len(labels)
    per = pd.DataFrame({
        "participant": labels.astype(str),
        "n_pairs": np.bincount(pairs.group, minlength=n_groups),
        "n_selected": np.bincount(pairs.group, weights=selected, minlength=n_groups).astype(int),
        "n_correct": np.bincount(pairs.group, weights=ok & selected, minlength=n_groups).astype(int),
    })
    per["n_incorrect"] = per["n_selected"] - per["n_correct"]
    with np.errstate(invalid="ignore", divide="ignore"):
        per["accuracy"] = (100.0 * per["n_correct"] / per["n_selected"]).round(2)
    n_sel, n_ok = int(per["n_selected"].sum()), int(per["n_correct"].sum())
    pooled = {
        "n_pairs": len(pairs),
        "n_selected": n_sel,
        "n_correct": n_ok,
        "n_incorrect": n_sel - n_ok,
        "accuracy": round(100.0 * n_ok / n_sel, 2) if n_sel else float("nan"),
        "coverage": round(100.0 * n_sel / len(pairs), 2),
    }
    return LOPOResult(per, pooled, fits, scores, coverage_curve(diff, pairs.sign))

