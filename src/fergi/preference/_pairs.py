"""Within-session image pairs and the counting rules of the published evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fergi._errors import FergiError
from fergi._validation import require_columns

KEY_COLUMNS = ("participant", "session", "image")


@dataclass(frozen=True)
class PairIndex:
    """Pairs as positions into an image table (``a`` before ``b`` in (participant, session, image) order).

    ``sign`` is +1 when image ``a`` ranks higher, -1 when ``b`` does, and 0 for unranked pairs.
    ``group`` is the integer code of the pair's group (participant by default) and
    ``group_labels`` the labels behind the codes.
    """

    a: np.ndarray
    b: np.ndarray
    sign: np.ndarray
    group: np.ndarray
    group_labels: np.ndarray

    def __len__(self) -> int:
        return len(self.a)

    def subset(self, mask: np.ndarray) -> PairIndex:
        return PairIndex(self.a[mask], self.b[mask], self.sign[mask], self.group[mask], self.group_labels)


def _group_labels(table: pd.DataFrame, groups) -> tuple[np.ndarray, np.ndarray]:
    labels = table["participant"] if groups is None else pd.Series(np.asarray(groups), index=table.index)
    if len(labels) != len(table):
        raise FergiError(f"groups: {len(labels)} labels for {len(table)} images")
    codes, uniques = pd.factorize(labels.astype(str), sort=True)
    return codes.astype(np.int64), np.asarray(uniques, dtype=object)


def pair_index(table: pd.DataFrame, *, ranks=None, groups=None, ranked: bool = True) -> PairIndex:
    """Every within-session pair of rows of ``table`` as a :class:`PairIndex`.

    Parameters
    ----------
    table : DataFrame
        Needs ``participant``, ``session`` and ``image``.
    ranks : array-like, optional
        Rank scores (higher is better); default ``table["rank_score"]`` when ``ranked``.
    groups : array-like, optional
        Group label of every row (default: the participant); a pair belongs to the group of
        its images.
    ranked : bool
        Keep only pairs of different, known rank (the published rule). With ``False`` every
        within-session pair is kept and ``sign`` is 0 where the ranks are unknown.
    """
    require_columns(table, KEY_COLUMNS)
    n = len(table)
    participant = pd.factorize(table["participant"].astype(str), sort=True)[0]
    session = pd.factorize(table["session"], sort=True)[0]
    image = table["image"].to_numpy()
    order = np.lexsort((image, session, participant))
    p_sorted, s_sorted = participant[order], session[order]
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = (np.diff(p_sorted) != 0) | (np.diff(s_sorted) != 0)
    gid = np.cumsum(new_group) - 1
    starts = np.flatnonzero(new_group)
    sizes = np.diff(np.r_[starts, n])
    pos = np.arange(n)
    remaining = (starts[gid] + sizes[gid]) - pos - 1 if n else pos
    first = np.repeat(pos, remaining)
    offset = np.arange(len(first)) - np.repeat(np.cumsum(remaining) - remaining, remaining)
    a, b = order[first], order[first + 1 + offset]

    if ranks is None and (ranked or "rank_score" in table.columns):
        ranks = table["rank_score"] if "rank_score" in table.columns else None
    if ranks is not None:
        r = pd.to_numeric(pd.Series(np.asarray(ranks)), errors="coerce").to_numpy(dtype=float)
        if len(r) != n:
            raise FergiError(f"ranks: {len(r)} values for {len(table)} images")
        sign = np.sign(r[a] - r[b])
        sign = np.where(np.isnan(sign), 0.0, sign).astype(np.int8)
    else:
        sign = np.zeros(len(a), dtype=np.int8)
    if ranked:
        if ranks is None:
            raise FergiError("image table: no rank_score column (rankings are needed to fit or evaluate)")
        keep = sign != 0
        a, b, sign = a[keep], b[keep], sign[keep]
    codes, labels = _group_labels(table, groups)
    return PairIndex(a, b, sign, codes[a], labels)


def make_pairs(table: pd.DataFrame) -> pd.DataFrame:
    """Every within-session pair of images with different rank (paper Sec. 6.2.4).

    Parameters
    ----------
    table : DataFrame
        One row per valid image with ``participant``, ``session``, ``image`` and ``rank_score``
        (higher is better), e.g. :func:`fergi.features.image_table`.

    Returns
    -------
    DataFrame
        ``participant, session, image_a, image_b, rank_score_a, rank_score_b, preferred`` where
        ``preferred`` is the image that ranks higher; ``image_a < image_b``.
    """
    require_columns(table, (*KEY_COLUMNS, "rank_score"))
    pairs = pair_index(table)
    ranks = table["rank_score"].to_numpy(dtype=float)
    image = table["image"].to_numpy()
    return pd.DataFrame(
        {
            "participant": table["participant"].to_numpy()[pairs.a],
            "session": table["session"].to_numpy()[pairs.a],
            "image_a": image[pairs.a],
            "image_b": image[pairs.b],
            "rank_score_a": ranks[pairs.a],
            "rank_score_b": ranks[pairs.b],
            "preferred": np.where(pairs.sign > 0, image[pairs.a], image[pairs.b]),
        }
    )


def correct_mask(diff: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """Correct predictions: the score difference has the strict sign of the rank difference.

    A zero difference counts as wrong, as in the published code (``rank_diff * diff > 0``).
    """
    return diff * sign > 0


def count(diff: np.ndarray, sign: np.ndarray, group: np.ndarray | None = None, n_groups: int = 1):
    """Number of correct and incorrect predictions (per group when ``group`` is given)."""
    ok = correct_mask(diff, sign)
    if group is None:
        n_ok = int(ok.sum())
        return n_ok, int(ok.size - n_ok)
    n_ok = np.bincount(group, weights=ok, minlength=n_groups).astype(np.int64)
    n_all = np.bincount(group, minlength=n_groups).astype(np.int64)
    return n_ok, n_all - n_ok
