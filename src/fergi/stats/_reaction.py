"""Statistics of Sec. 6.1: AU activation values against ratings and emotions."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from fergi._errors import FergiError
from fergi._validation import require_columns
from fergi.schema import AU_NAMES, EMOTIONS, activation_column

STAT_COLUMNS = ("au", "test", "statistic_name", "statistic", "p", "n", "significant")


def reaction_statistics(
    table: pd.DataFrame,
    *,
    aus: Sequence[str] = AU_NAMES,
    emotions: Sequence[str] = EMOTIONS,
    rating: str = "overall_rating",
    midpoint: float = 4.0,
    missing_ratings: Sequence[float] = (0,),
    alpha: float = 0.05,
    n_tests: int | None = None,
) -> pd.DataFrame:
    """Correlate reaction activation values with ratings and emotions (Sec. 6.1).

    For every AU:

    * ``rating``: Spearman correlation of the activation value with the rating;
    * ``extremity``: Spearman correlation with ``|rating - midpoint|``;
    * one two-sided Wilcoxon rank-sum test per emotion (normal approximation,
      :func:`scipy.stats.ranksums`) of images with the emotion ticked against
      the rest; ``z > 0`` means higher activation with the emotion.

    Ratings listed in ``missing_ratings`` (0 = no answer in the release) are left
    out of the two correlations; the emotion tests use every image.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per image with ``<AU>_activation_value`` columns, the rating and
        the emotion flags (:func:`fergi.features.image_table`).
    aus, emotions : sequence of str
        AUs and emotions to test.
    rating : str, default "overall_rating"
    midpoint : float, default 4.0
        Centre of the rating scale for the extremity.
    missing_ratings : sequence of float, default (0,)
        Rating values that mean "no answer".
    alpha : float, default 0.05
        Family-wise significance level.
    n_tests : int, optional
        Number of tests for the Bonferroni correction; default
        ``len(aus) * (2 + len(emotions))`` (12 x 8 = 96 in the paper).

    Returns
    -------
    pandas.DataFrame
        Tidy table with columns ``au, test, statistic_name, statistic, p, n,
        significant`` where ``test`` is ``"rating"``, ``"extremity"`` or an emotion.
    """
    aus = list(aus)
    emotions = list(emotions)
    columns = [activation_column(au) for au in aus]
    require_columns(table, [*columns, rating, *emotions], "image table")
    if n_tests is None:
        n_tests = len(aus) * (2 + len(emotions))
    if n_tests < 1:
        raise FergiError(f"n_tests: must be at least 1, got {n_tests}")
    threshold = alpha / n_tests

    ratings = pd.to_numeric(table[rating], errors="coerce").to_numpy(dtype=float)
    rated = np.isfinite(ratings) & ~np.isin(ratings, np.asarray(missing_ratings, dtype=float))
    rows = []
    for au, column in zip(aus, columns, strict=True):
        values = table[column].to_numpy(dtype=float)
        ok = rated & np.isfinite(values)
        for test, target in (
            ("rating", ratings[ok]),
            ("extremity", np.abs(ratings[ok] - midpoint)),
        ):
            with warnings.catch_warnings():
                # A constant column (a tiny study) has no correlation: NaN, not a warning.
                warnings.simplefilter("ignore", stats.ConstantInputWarning)
                rho, p = stats.spearmanr(values[ok], target)
            rows.append((au, test, "rho", float(rho), float(p), int(ok.sum())))
        finite = np.isfinite(values)
        for emotion in emotions:
            flags = table[emotion].astype("boolean").fillna(False).to_numpy(dtype=bool)
            with_emotion = values[finite & flags]
            without = values[finite & ~flags]
            if len(with_emotion) == 0 or len(without) == 0:
                z, p = np.nan, np.nan
            else:
                z, p = stats.ranksums(with_emotion, without)
            rows.append((au, emotion, "z", float(z), float(p), int(finite.sum())))
    out = pd.DataFrame(rows, columns=list(STAT_COLUMNS[:-1]))
    out["significant"] = out["p"] < threshold
    out.attrs["threshold"] = threshold
    out.attrs["n_tests"] = n_tests
    return out


def significant_aus(results: pd.DataFrame, test: str) -> list[str]:
    """AUs significant for one test of :func:`reaction_statistics`, in AU order."""
    rows = results[(results["test"] == test) & results["significant"]]
    return rows["au"].tolist()
