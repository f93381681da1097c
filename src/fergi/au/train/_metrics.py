"""AU intensity metrics as AU papers report them: ICC(3,1), Pearson r, MAE."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fergi.schema import AU_NAMES


def icc31(y_true, y_pred) -> float:
    """ICC(3,1) (Shrout and Fleiss): two-way mixed, consistency, single rater.

    The frames are the targets and the annotation and the prediction the two raters:
    ``(MS_rows - MS_error) / (MS_rows + MS_error)``. NaN when the frames do not vary
    at all (both raters constant).
    """
    y = np.column_stack([np.asarray(y_true, float), np.asarray(y_pred, float)])
    n, k = y.shape
    if n < 2:
        return float("nan")
    grand = y.mean()
    ss_rows = k * ((y.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((y.mean(axis=0) - grand) ** 2).sum()
    ss_err = ((y - grand) ** 2).sum() - ss_rows - ss_cols
    ms_rows = ss_rows / (n - 1)
    ms_err = ss_err / ((n - 1) * (k - 1))
    denom = ms_rows + (k - 1) * ms_err
    return float((ms_rows - ms_err) / denom) if denom > 0 else float("nan")


def au_metrics(y_true: np.ndarray, y_pred: np.ndarray, au_names=AU_NAMES) -> pd.DataFrame:
    """Per-AU ICC(3,1), Pearson r and MAE (0-5 scale), with their mean.

    Parameters
    ----------
    y_true, y_pred : numpy.ndarray
        ``(N, n_au)`` annotated and predicted intensities. Predictions are clipped to
        0-5 for the MAE, as a user of the 0-5 scale would read them.
    au_names : sequence of str

    Returns
    -------
    pandas.DataFrame
        Index ``au_names`` and ``mean`` (over AUs whose value is defined), columns
        ``icc``, ``pearson``, ``mae``, ``n`` and ``active`` (frames with intensity > 0).
        An AU that never varies in ``y_true`` has NaN ICC and r.
    """
    y_true = np.asarray(y_true, float)
    y_pred = np.asarray(y_pred, float)
    rows = []
    for i, name in enumerate(au_names):
        t, p = y_true[:, i], y_pred[:, i]
        ok = np.isfinite(t) & np.isfinite(p)
        t, p = t[ok], p[ok]
        varies = len(t) > 1 and np.ptp(t) > 0
        r = float(np.corrcoef(t, p)[0, 1]) if varies and np.ptp(p) > 0 else float("nan")
        rows.append(
            {
                "au": name,
                "icc": icc31(t, p) if varies else float("nan"),
                "pearson": r,
                "mae": float(np.abs(t - np.clip(p, 0, 5)).mean()) if len(t) else float("nan"),
                "n": int(len(t)),
                "active": int((t > 0).sum()),
            }
        )
    table = pd.DataFrame(rows).set_index("au")
    mean = table[["icc", "pearson", "mae"]].mean(skipna=True)
    table.loc["mean"] = [
        mean["icc"],
        mean["pearson"],
        mean["mae"],
        int(table["n"].max()),
        int(table["active"].sum()),
    ]
    table[["n", "active"]] = table[["n", "active"]].astype(int)
    return table


def format_metrics(table: pd.DataFrame) -> str:
    """The metrics table as aligned text (2 decimals; ``-`` where undefined)."""
    lines = [f"{'AU':<6}{'ICC(3,1)':>10}{'r':>8}{'MAE':>8}{'active':>9}"]
    for name, row in table.iterrows():

        def f(v):
            return "-" if not np.isfinite(v) else f"{v:.2f}"

        lines.append(
            f"{name:<6}{f(row['icc']):>10}{f(row['pearson']):>8}{f(row['mae']):>8}{int(row['active']):>9}"
        )
    return "\n".join(lines)
