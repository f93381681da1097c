"""The image table of a release-layout folder, for ``fergi fit`` and ``fergi annotate``."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from fergi._errors import FergiError

logger = logging.getLogger(__name__)


def load_table(path, *, screen: bool = False, need_rankings: bool = False):
    """Image table (one row per valid image) of a folder in the release layout.

    Parameters
    ----------
    path : path-like
        Folder with ``data/<participant>/session_<s>/{baseline,reaction}_clip_<i>_features.csv``
        and, optionally, ``preparation/preprocessed_image_data/<participant>.csv`` (rankings,
        ratings, scores) and ``preparation/invalid_images.json``.
    screen : bool
        Also return the participants whose AU4 is unreliable at rest (needs baseline clips).
    need_rankings : bool
        Require ``rank_score`` values (for fitting).

    Returns
    -------
    table : DataFrame
    excluded : list of str
        Screened-out participants (empty unless ``screen``).
    """
    from fergi.datasets import load_frames, load_images, load_invalid_images
    from fergi.features import compute_activation_values, image_table, screen_participants

    root = Path(path)
    kinds = ("baseline", "reaction") if screen else ("reaction",)
    clips = compute_activation_values(load_frames(root, clips=kinds))
    excluded: list[str] = []
    if screen:
        if (clips["clip"] == "baseline").any():
            excluded = list(screen_participants(clips))
        else:
            logger.warning("%s: no baseline clips, AU4 screening skipped", root)
    images_dir = root / "preparation" / "preprocessed_image_data"
    if images_dir.is_dir():
        images = load_images(root)
    elif need_rankings:
        raise FergiError(f"{images_dir}: missing (rankings are needed to fit a model)")
    else:
        # Reactions only: every reaction clip is an image to annotate.
        images = clips.loc[clips["clip"] == "reaction", ["participant", "session", "image"]]
    table = image_table(images, clips, load_invalid_images(root))
    if table.empty:
        raise FergiError(f"{root}: no valid reaction clip (none passes the face-quality filters)")
    if need_rankings:
        ranks = pd.to_numeric(table.get("rank_score"), errors="coerce") if "rank_score" in table else None
        if ranks is None or ranks.notna().sum() == 0:
            raise FergiError(f"{images_dir}: no rankings (rank_score is empty), nothing to fit on")
    return table, excluded
