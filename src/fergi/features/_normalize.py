"""Scale-free AU features: per-participant normalisation of activation values.

Different AU estimators (the authors' IR-50, fergi's landmark ``geometry`` estimator, a
retrained model) put the same movement on different scales, and one person's face moves
more than another's. A model with absolute parameters (AUcomb's ``k`` and threshold
``d``) is only valid on the scale it was fitted on. Two normalisations remove the scale:

``baseline_median`` (:func:`baseline_normalize`)
    Each participant's reaction activation of an AU is divided by the median of that AU's
    activation over the same participant's valid *baseline* clips (the study records a
    5 s baseline before every image, so the data is always there). Any per-participant,
    per-AU factor cancels exactly; nothing is learned from other people.
``quantile`` (:class:`QuantileNormalizer`)
    Each participant's per-frame AU values are mapped through their own empirical CDF
    onto a reference quantile function stored with the model (the 1-D Wasserstein
    barycentre of the training participants' quantile functions), before activation
    values are computed. Invariant to any increasing transform of an AU, per participant.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from fergi._errors import FergiError
from fergi._validation import require_columns
from fergi.features._activation import frame_validity
from fergi.schema import AU_NAMES, activation_column

logger = logging.getLogger(__name__)

NORMALIZATIONS = ("none", "baseline_median", "quantile")
"""The per-participant normalisations of activation values an annotation model may use."""


def baseline_levels(
    clips: pd.DataFrame,
    *,
    aus: Sequence[str] = AU_NAMES,
    statistic: str = "median",
) -> pd.DataFrame:
    """Per-participant level of each AU's activation over their valid baseline clips.

    Parameters
    ----------
    clips : pandas.DataFrame
        Output of :func:`fergi.features.compute_activation_values` with ``participant``,
        ``clip`` and ``clip_valid``.
    aus : sequence of str
    statistic : {"median", "mean"}

    Returns
    -------
    pandas.DataFrame
        Index: participant (str). Columns: ``n_baseline_clips`` and one activation
        column per AU. A median of 0 (a very still face, or an estimator that clips at
        0) is replaced by the mean of the same clips, which scales the same way; a level
        that is still 0 or missing is NaN.
    """
    if statistic not in ("median", "mean"):
        raise ValueError(f"statistic must be 'median' or 'mean', got {statistic!r}")
    columns = [activation_column(au) for au in aus]
    require_columns(clips, ["participant", "clip", "clip_valid", *columns], "clips")
    base = clips[(clips["clip"] == "baseline") & clips["clip_valid"].astype(bool)]
    base = base.assign(participant=base["participant"].astype(str))
    grouped = base.groupby("participant", observed=True)[columns]
    levels = grouped.median() if statistic == "median" else grouped.mean()
    if statistic == "median":
        means = grouped.mean()
        levels = levels.where(levels > 0, means)
    levels = levels.where(levels > 0)
    everyone = pd.Index(sorted(clips["participant"].astype(str).unique()), name="participant")
    levels = levels.reindex(everyone)
    counts = base.groupby("participant", observed=True).size().reindex(everyone, fill_value=0)
    levels.insert(0, "n_baseline_clips", counts.astype(int))
    return levels


def baseline_normalize(
    clips: pd.DataFrame,
    *,
    aus: Sequence[str] = AU_NAMES,
    statistic: str = "median",
    min_baseline_clips: int = 3,
) -> pd.DataFrame:
    """Divide every clip's activation values by the participant's baseline level.

    Parameters
    ----------
    clips : pandas.DataFrame
        Activation values of baseline and reaction clips
        (:func:`fergi.features.compute_activation_values`).
    aus : sequence of str
        AUs to normalise (others are left as they are).
    statistic : {"median", "mean"}
        Baseline level (see :func:`baseline_levels`).
    min_baseline_clips : int, default 3
        Participants with fewer valid baseline clips than this (or whose level of one of
        ``aus`` is 0: that AU never moved at rest) get NaN activation values: they need
        the model's fallback.

    Returns
    -------
    pandas.DataFrame
        A copy of ``clips`` in baseline units (1 = the participant's typical activation
        at rest). ``attrs["too_few_baselines"]`` lists the participants left without
        values, and ``attrs["baseline_clips"]`` maps participant to the clips used.
    """
    if min_baseline_clips < 1:
        raise ValueError(f"min_baseline_clips must be at least 1, got {min_baseline_clips}")
    levels = baseline_levels(clips, aus=aus, statistic=statistic)
    columns = [activation_column(au) for au in aus]
    enough = levels["n_baseline_clips"] >= min_baseline_clips
    usable = enough & levels[columns].notna().all(axis=1)
    out = clips.copy()
    who = out["participant"].astype(str)
    divisor = levels.loc[who, columns].to_numpy(dtype=float, copy=True)
    divisor[~usable.loc[who].to_numpy()] = np.nan
    out[columns] = out[columns].to_numpy(dtype=float) / divisor
    out.attrs = dict(clips.attrs)
    out.attrs["too_few_baselines"] = sorted(levels.index[~usable])
    # Of those, the ones with enough clips but an AU that never moved at rest.
    out.attrs["flat_baselines"] = sorted(levels.index[enough & ~usable])
    out.attrs["baseline_clips"] = {str(p): int(n) for p, n in levels["n_baseline_clips"].items()}
    return out


def _participant_codes(frames: pd.DataFrame):
    require_columns(frames, ["participant"], "frames")
    return pd.factorize(frames["participant"].astype(str), sort=True)


class QuantileNormalizer:
    """Map each participant's per-frame AU values onto a reference distribution.

    ``fit`` stores the reference quantile function of every AU: the mean, over training
    participants, of each participant's quantile function of valid frames (the 1-D
    Wasserstein barycentre, so no participant weighs more for having more frames).
    ``transform`` maps every frame ``x`` of participant ``p`` to ``Q_ref(F_p(x))``, with
    ``F_p`` the participant's own mid-rank empirical CDF over their valid frames. Any
    strictly increasing transform of an AU, per participant, gives the same output.

    Parameters
    ----------
    n_levels : int, default 201
        Number of quantile levels stored (evenly spaced from 0 to 1).
    aus : sequence of str
        AU columns to map.
    min_confidence, pitch_range, yaw_range
        Frame validity (:func:`fergi.features.frame_validity`): only valid frames define
        the distributions.

    Attributes
    ----------
    levels_ : ndarray of shape (n_levels,)
    reference_ : ndarray of shape (n_levels, n_aus)
    n_participants_ : int
    """

    def __init__(self, n_levels: int = 201, aus: Sequence[str] = AU_NAMES, *,
                 min_confidence: float = 0.9, pitch_range=(0.55, 0.85), yaw_range=(0.3, 0.7)):
        self.n_levels = n_levels
        self.aus = aus
        self.min_confidence = min_confidence
        self.pitch_range = pitch_range
        self.yaw_range = yaw_range

    def _valid(self, frames):
        return frame_validity(frames, min_confidence=self.min_confidence,
                              pitch_range=self.pitch_range, yaw_range=self.yaw_range).to_numpy()

    def participant_quantiles(self, frames: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Quantile function of every participant: ``(labels, array (P, n_levels, n_aus))``."""
        aus = list(self.aus)
        require_columns(frames, aus, "frames")
        codes, labels = _participant_codes(frames)
        valid = self._valid(frames)
        values = frames[aus].to_numpy(dtype=float)
        levels = np.linspace(0.0, 1.0, int(self.n_levels))
        out = np.full((len(labels), len(levels), len(aus)), np.nan)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(labels) + 1))
        for p in range(len(labels)):
            rows = order[bounds[p]:bounds[p + 1]]
            rows = rows[valid[rows]]
            if len(rows):
                out[p] = np.quantile(values[rows], levels, axis=0)
        return np.asarray(labels, dtype=object), out

    def fit(self, frames: pd.DataFrame, y=None, *, groups=None) -> QuantileNormalizer:
        """Reference quantile functions from the valid frames of ``frames``' participants."""
        labels, q = self.participant_quantiles(frames)
        return self._set_reference(q[~np.isnan(q).any(axis=(1, 2))], len(labels))

    def _set_reference(self, quantiles: np.ndarray, n_participants: int) -> QuantileNormalizer:
        if len(quantiles) == 0:
            raise FergiError("frames: no participant has a valid frame (quantile reference)")
        self.levels_ = np.linspace(0.0, 1.0, int(self.n_levels))
        self.reference_ = quantiles.mean(axis=0)
        self.n_participants_ = int(n_participants)
        return self

    def ranks(self, frames: pd.DataFrame) -> np.ndarray:
        """Mid-rank ECDF value in [0, 1] of every frame's AU values within its participant.

        Frames without a face (AU = -1) and invalid frames are placed in the
        distribution of their participant's valid frames too (their values are never
        used in activation values, which need all-valid windows).
        """
        aus = list(self.aus)
        require_columns(frames, aus, "frames")
        codes, labels = _participant_codes(frames)
        valid = self._valid(frames)
        values = frames[aus].to_numpy(dtype=float)
        u = np.full(values.shape, np.nan)
        for p in range(len(labels)):
            rows = np.flatnonzero(codes == p)
            ref = values[rows[valid[rows]]]
            if len(ref) == 0:
                continue
            ref = np.sort(ref, axis=0)
            for j in range(len(aus)):
                lo = np.searchsorted(ref[:, j], values[rows, j], side="left")
                hi = np.searchsorted(ref[:, j], values[rows, j], side="right")
                u[rows, j] = (lo + hi) / (2.0 * len(ref))
        return u

    def map_ranks(self, u: np.ndarray) -> np.ndarray:
        """``Q_ref(u)`` for ECDF values ``u`` of shape (N, n_aus)."""
        self._check_fitted()
        out = np.empty_like(u, dtype=float)
        for j in range(u.shape[1]):
            out[:, j] = np.interp(u[:, j], self.levels_, self.reference_[:, j])
        return out

    def transform(self, frames: pd.DataFrame) -> pd.DataFrame:
        """A copy of ``frames`` with the AU columns mapped onto the reference scale."""
        u = self.ranks(frames)
        out = frames.copy()
        mapped = self.map_ranks(np.nan_to_num(u, nan=0.0))
        mapped[np.isnan(u)] = np.nan
        out[list(self.aus)] = mapped
        return out

    def _check_fitted(self):
        if not hasattr(self, "reference_"):
            raise FergiError("QuantileNormalizer: not fitted yet (call fit or load a model file)")

    def to_dict(self) -> dict:
        self._check_fitted()
        return {"n_levels": int(self.n_levels), "aus": list(self.aus),
                "n_participants": self.n_participants_,
                "reference": {au: [float(v) for v in self.reference_[:, j]]
                              for j, au in enumerate(self.aus)}}

    @classmethod
    def from_dict(cls, data: dict) -> QuantileNormalizer:
        aus = list(data["aus"])
        ref = np.column_stack([np.asarray(data["reference"][au], dtype=float) for au in aus])
        if ref.shape[0] != int(data["n_levels"]) or not np.isfinite(ref).all():
            raise ValueError("quantile reference: wrong length or non-finite values")
        if np.any(np.diff(ref, axis=0) < -1e-9):
            raise ValueError("quantile reference: not increasing")
        model = cls(n_levels=int(data["n_levels"]), aus=tuple(aus))
        model.levels_ = np.linspace(0.0, 1.0, model.n_levels)
        model.reference_ = ref
        model.n_participants_ = int(data.get("n_participants", 0))
        return model
