"""The image table of a release-layout folder, for ``fergi fit`` and ``fergi annotate``."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from fergi._errors import FergiError
from fergi.datasets import feature_provenance, load_excluded_images, load_frames, load_images
from fergi.features import compute_activation_values, image_table, screen_participants
from fergi.preference._reaction_data import ReactionData

logger = logging.getLogger(__name__)


def load_table(path, *, screen: bool = False, need_rankings: bool = False, skip_single: bool = False):
    """Image table (one row per valid image, raw activation values) of a release-layout folder.

    The same loading and checks as :func:`load_reaction_data`, as one table.

    Returns
    -------
    table : DataFrame
    excluded : list of str
        Screened-out participants (empty unless ``screen``).
    """
    data, excluded = load_reaction_data(path, screen=screen, need_rankings=need_rankings,
                                        skip_single=skip_single, keep_frames=False)
    return image_table(data.images, data.clips, data.invalid), excluded


def load_reaction_data(path, *, screen: bool = False, need_rankings: bool = False,
                       skip_single: bool = False, keep_frames: bool = True,
                       max_seen_before_s: float | None = 0.5):
    """Reactions of a release-layout folder as :class:`~fergi.preference.ReactionData`.

    Loads the baseline and reaction clips (baseline clips normalise activation values and
    screen participants), the survey rows where ``preparation/`` has them, the invalid
    images and the features' provenance (``features_meta.json``, or the public release).

    Parameters
    ----------
    path : path-like
    screen : bool
        Also return the participants whose AU4 is unreliable at rest (Sec. 6.2.1).
    need_rankings : bool
        Require ``rank_score`` values (for fitting and evaluation).
    skip_single : bool
        Leave out, with a warning, participants with fewer than two valid images.
    keep_frames : bool
        Keep the per-frame table (the quantile normalisation needs it).
    max_seen_before_s : float or None
        Leave out, with a warning that counts them, reactions to an image the
        participant had seen before for longer than this (a replay after an interrupted
        presentation; ``study/clips.csv`` of a ``fergi export``). Default 0.5 s; None
        keeps them.

    Returns
    -------
    data : ReactionData
    excluded : list of str
        Screened-out participants (empty unless ``screen``).
    """
    root = Path(path)
    frames = load_frames(root)
    clips = compute_activation_values(frames)
    clips["participant"] = clips["participant"].astype(str)
    excluded: list[str] = []
    has_baselines = bool((clips["clip"] == "baseline").any())
    if screen:
        if has_baselines:
            excluded = list(screen_participants(clips))
        else:
            logger.warning("%s: no baseline clips, AU4 screening skipped", root)
    images_dir = root / "preparation" / "preprocessed_image_data"
    keys = ["participant", "session", "image"]
    reactions = clips.loc[clips["clip"] == "reaction", keys]
    invalid = load_excluded_images(root, max_seen_before_s)
    if images_dir.is_dir():
        images = load_images(root)
        if not need_rankings:
            merged = reactions.merge(images, on=keys, how="left", indicator=True)
            lonely = merged.pop("_merge") == "left_only"
            # Invalid (all-black) images are never labelled, surveyed or not.
            if invalid:
                lonely &= ~pd.MultiIndex.from_frame(merged[keys]).isin(list(invalid))
            if lonely.any():
                logger.warning("%s: %d reaction clip(s) have no row in %s; labelled all the same",
                               root, int(lonely.sum()), images_dir)
            images = merged
    elif need_rankings:
        raise FergiError(f"{images_dir}: missing (rankings are needed to fit a model)")
    else:
        images = reactions.reset_index(drop=True)
    table = image_table(images, clips, invalid)
    if table.empty:
        raise FergiError(f"{root}: no valid reaction clip (none passes the face-quality filters)")
    sizes = table["participant"].value_counts()
    single = sorted(sizes[sizes < 2].index)
    keep = sorted(set(clips["participant"]) - set(single))
    if single:
        if not skip_single:
            raise FergiError(
                f"{root}: participant(s) {', '.join(single)} have only one valid image (at least "
                "two are needed to form a pair); pass --skip-single to leave them out"
            )
        logger.warning("%s: left out participant(s) %s with only one valid image",
                       root, ", ".join(single))
        if not set(table["participant"]) - set(single):
            raise FergiError(f"{root}: no participant has two valid images; nothing to pair")
    if need_rankings:
        ranks = pd.to_numeric(table["rank_score"], errors="coerce") if "rank_score" in table else None
        if ranks is None or ranks.notna().sum() == 0:
            raise FergiError(f"{images_dir}: no rankings (rank_score is empty), nothing to fit on")
    data = ReactionData(clips=clips, images=images, invalid=invalid,
                        provenance=feature_provenance(root),
                        frames=frames if keep_frames else None, source=str(root))
    if single:
        data = data.subset(keep)
    return data, excluded
