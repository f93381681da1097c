"""A study's reactions for annotation models: per-clip activation values with the image table."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from fergi._errors import FergiError
from fergi.datasets import (
    AU_NAMES,
    UNKNOWN_PROVENANCE,
    FeatureProvenance,
)
from fergi.features import (
    compute_activation_values,
)
from fergi.preference._pairs import KEY_COLUMNS


@dataclass
class ReactionData:
    """Reactions of a study in memory: what annotation and evaluation read.

    Attributes
    ----------
    clips : DataFrame
        Raw activation values of every baseline and reaction clip
        (:func:`fergi.features.compute_activation_values`).
    images : DataFrame
        One row per image: ``participant, session, image`` and whatever survey columns
        exist (``rank_score``, the six scores, ratings); may hold NaN.
    invalid : set of (participant, session, image)
        Images to leave out (all-black safety-checker outputs).
    provenance : FeatureProvenance
        Which AU estimator made the features.
    frames : DataFrame, optional
        The per-frame table (needed by the ``quantile`` normalisation).
    source : str
        Where the data came from (for messages).
    """

    clips: pd.DataFrame
    images: pd.DataFrame
    invalid: set = field(default_factory=set)
    provenance: FeatureProvenance = UNKNOWN_PROVENANCE
    frames: pd.DataFrame | None = None
    source: str = "reactions"

    @property
    def participants(self) -> list[str]:
        return sorted(self.images["participant"].astype(str).unique())

    def with_transformed_aus(self, transform, *, seed: int = 0) -> ReactionData:
        """The same reactions with every participant's per-frame AU values transformed.

        For robustness checks: does a model's labelling survive another AU scale?

        Parameters
        ----------
        transform : callable
            ``transform(values, rng) -> values`` gets the ``(n_frames, 12)`` AU values of
            one participant (``-1`` marks frames without a face) and a NumPy generator.
        seed : int
            Seed of the generator, drawn from participant by participant in sorted order.

        Returns
        -------
        ReactionData
            With activation values recomputed and provenance ``unknown``.
        """
        if self.frames is None:
            raise FergiError(f"{self.source}: no per-frame features to transform")
        rng = np.random.default_rng(seed)
        frames = self.frames.copy()
        who = frames["participant"].astype(str).to_numpy()
        columns = list(AU_NAMES)
        values = frames[columns].to_numpy(dtype=float, copy=True)
        for p in np.unique(who):
            rows = who == p
            values[rows] = transform(values[rows], rng)
        frames[columns] = values
        return reaction_data_from_frames(frames, self.images, invalid=self.invalid,
                                         source=f"{self.source} (transformed AUs)")

    def subset(self, participants) -> ReactionData:
        """The same data restricted to ``participants``."""
        keep = {str(p) for p in participants}

        def pick(df):
            return None if df is None else df[df["participant"].astype(str).isin(keep)]

        return replace(self, clips=pick(self.clips), images=pick(self.images),
                       frames=pick(self.frames),
                       invalid={k for k in self.invalid if str(k[0]) in keep})


def reaction_data_from_frames(frames: pd.DataFrame, images: pd.DataFrame | None = None, *,
                              invalid=(), provenance: FeatureProvenance = UNKNOWN_PROVENANCE,
                              keep_frames: bool = True, source: str = "reactions") -> ReactionData:
    """Build :class:`ReactionData` from a per-frame table (``fergi.datasets.load_frames``).

    Without ``images``, every reaction clip is an image (no survey answers).
    """
    clips = compute_activation_values(frames)
    clips = clips.assign(participant=clips["participant"].astype(str))
    if images is None:
        images = clips.loc[clips["clip"] == "reaction", list(KEY_COLUMNS)].reset_index(drop=True)
    return ReactionData(clips=clips, images=images, invalid=set(invalid), provenance=provenance,
                        frames=frames if keep_frames else None, source=source)
