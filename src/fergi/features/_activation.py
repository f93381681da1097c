"""Frame validity, clip validity and AU activation values (paper Sec. 5, Supp. C).

The rules are those of the published computation (stated in the release's
README and checked by recomputation against its ``preprocessed_*_data``):

* a frame is valid when ``face_detection_confidence_score >= 0.9``,
  ``0.55 <= pitch_indicative_ratio <= 0.85`` and ``0.3 <= yaw_indicative_ratio <= 0.7``;
* a clip is valid when at least 80 % of its frames are valid;
* with ``w = round(round(1 / mean(diff(timestamp))) * 0.1)`` frames (3 at 30 fps), a
  trailing moving mean of width ``w`` runs over the clip's frames; only windows
  whose ``w`` frames are all valid are kept; the activation value is the maximum
  over the kept windows minus the first kept window.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from fergi._errors import FergiError
from fergi._validation import require_columns
from fergi.schema import AU_NAMES, CLIP_MIN_VALID_SHARE, activation_column

CLIP_KEYS: tuple[str, ...] = ("participant", "session", "image", "clip")

_POSE_COLUMNS = ("face_detection_confidence_score", "pitch_indicative_ratio", "yaw_indicative_ratio")


def frame_validity(
    frames: pd.DataFrame,
    *,
    min_confidence: float = 0.9,
    pitch_range: tuple[float, float] = (0.55, 0.85),
    yaw_range: tuple[float, float] = (0.3, 0.7),
) -> pd.Series:
    """Whether each frame is usable: a confident, frontal face (Supp. C).

    Parameters
    ----------
    frames : pandas.DataFrame
        Per-frame table with ``face_detection_confidence_score``,
        ``pitch_indicative_ratio`` and ``yaw_indicative_ratio``.
    min_confidence : float, default 0.9
        Lowest face detection confidence score kept (inclusive).
    pitch_range, yaw_range : (float, float)
        Inclusive bounds of the pitch and yaw indicative ratios.

    Returns
    -------
    pandas.Series of bool
    """
    require_columns(frames, _POSE_COLUMNS, "frames")
    conf = frames["face_detection_confidence_score"].to_numpy(dtype=float)
    pir = frames["pitch_indicative_ratio"].to_numpy(dtype=float)
    yir = frames["yaw_indicative_ratio"].to_numpy(dtype=float)
    valid = (
        (conf >= min_confidence)
        & (pir >= pitch_range[0])
        & (pir <= pitch_range[1])
        & (yir >= yaw_range[0])
        & (yir <= yaw_range[1])
    )
    return pd.Series(valid, index=frames.index, name="frame_valid")


def window_length(timestamps: np.ndarray, window_seconds: float = 0.1) -> int:
    """Moving-window width in frames for a clip: ``round(round(fps) * window_seconds)``.

    The frame rate is ``1 / mean(diff(timestamps))``, rounded to an integer first as
    in the published code; the result is at least 1 frame.
    """
    timestamps = np.asarray(timestamps, dtype=float)
    if len(timestamps) < 2:
        return 1
    step = (timestamps[-1] - timestamps[0]) / (len(timestamps) - 1)
    if not np.isfinite(step) or step <= 0:
        return 1
    return max(1, int(np.round(np.round(1.0 / step) * window_seconds)))


def compute_activation_values(
    frames: pd.DataFrame,
    *,
    aus: Sequence[str] = AU_NAMES,
    min_confidence: float = 0.9,
    pitch_range: tuple[float, float] = (0.55, 0.85),
    yaw_range: tuple[float, float] = (0.3, 0.7),
    min_valid_share: float = CLIP_MIN_VALID_SHARE,
    window_seconds: float = 0.1,
) -> pd.DataFrame:
    """AU activation value of every clip (paper eqs. 1-2).

    Parameters
    ----------
    frames : pandas.DataFrame
        Per-frame table: the output of :func:`fergi.datasets.load_frames`, or the
        frames of one video (``fergi extract`` output) without key columns.
        Rows are taken in ``frame`` order within each clip.
    aus : sequence of str
        AU columns to summarise.
    min_confidence, pitch_range, yaw_range
        Frame validity thresholds, see :func:`frame_validity`.
    min_valid_share : float, default 0.8
        A clip is valid when at least this share of its frames is valid
        (:data:`fergi.schema.CLIP_MIN_VALID_SHARE`).
    window_seconds : float, default 0.1
        Width of the moving mean, converted to frames per clip.

    Returns
    -------
    pandas.DataFrame
        One row per clip: the key columns present in ``frames``
        (``participant, session, image, clip``), ``n_frames``, ``valid_frame_share``,
        ``clip_valid`` and ``<AU>_activation_value`` for each AU (NaN when no window
        is fully valid). Activation values are computed for invalid clips too;
        ``clip_valid`` says whether to use them.
    """
    aus = list(aus)
    require_columns(frames, ["timestamp", *aus], "frames")
    keys = [k for k in CLIP_KEYS if k in frames.columns]
    n = len(frames)
    if n == 0:
        raise FergiError(f"{frames.attrs.get('source', 'frames')}: no frames")

    valid = frame_validity(
        frames, min_confidence=min_confidence, pitch_range=pitch_range, yaw_range=yaw_range
    ).to_numpy()
    if keys:
        codes = frames.groupby(keys, sort=False, observed=True).ngroup().to_numpy()
        # ngroup(sort=False) numbers clips by first appearance, so codes only go
        # down when a clip's rows are interleaved with another's.
        if np.any(np.diff(codes) < 0):
            order = np.argsort(codes, kind="stable")
            frames = frames.iloc[order]
            valid = valid[order]
            codes = codes[order]
    else:
        codes = np.zeros(n, dtype=np.int64)
    if "frame" in frames.columns:
        # The moving window runs in frame order, whatever order the rows came in.
        frame_no = frames["frame"].to_numpy()
        same_clip = codes[1:] == codes[:-1]
        if np.any(same_clip & (frame_no[1:] < frame_no[:-1])):
            order = np.lexsort((frame_no, codes))
            frames = frames.iloc[order]
            valid = valid[order]
            codes = codes[order]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    lengths = np.diff(np.r_[starts, n])
    n_clips = len(starts)
    clip_of_row = np.repeat(np.arange(n_clips), lengths)
    position = np.arange(n) - np.repeat(starts, lengths)

    timestamps = frames["timestamp"].to_numpy(dtype=float)
    first_t = timestamps[starts]
    last_t = timestamps[starts + lengths - 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.where(lengths > 1, (last_t - first_t) / np.maximum(lengths - 1, 1), np.nan)
        fps = np.round(1.0 / step)
    widths = np.where(np.isfinite(fps) & (fps > 0), np.round(fps * window_seconds), 1)
    widths = np.maximum(widths, 1).astype(np.int64)

    values = frames[aus].to_numpy(dtype=float)
    result = np.full((n_clips, len(aus)), np.nan)
    for w in np.unique(widths):
        # Window ending at row r covers rows r-w+1 .. r of the same clip.
        window_sum = values.copy()
        all_valid = valid.copy()
        for lag in range(1, w):
            window_sum[lag:] += values[:-lag]
            window_sum[:lag] = np.nan
            all_valid[lag:] &= valid[:-lag]
            all_valid[:lag] = False
        keep = all_valid & (position >= w - 1) & (widths[clip_of_row] == w)
        rows = np.flatnonzero(keep)
        if len(rows) == 0:
            continue
        means = window_sum[rows] / w
        clip_ids = clip_of_row[rows]
        boundaries = np.flatnonzero(np.r_[True, clip_ids[1:] != clip_ids[:-1]])
        first = means[boundaries]
        maxima = np.maximum.reduceat(means, boundaries, axis=0)
        result[clip_ids[boundaries]] = maxima - first

    share = np.add.reduceat(valid.astype(np.int64), starts) / lengths
    out = frames.iloc[starts][keys].reset_index(drop=True) if keys else pd.DataFrame(index=range(1))
    out["n_frames"] = lengths
    out["valid_frame_share"] = share
    out["clip_valid"] = share >= min_valid_share
    for j, au in enumerate(aus):
        out[activation_column(au)] = result[:, j]
    return out


def screen_participants(
    clips: pd.DataFrame,
    *,
    au: str = "AU4",
    quantile: float = 0.8,
    threshold: float = 0.5,
) -> list[str]:
    """Participants whose AU is unreliable at rest (paper Sec. 6.2.1).

    On the valid baseline clips (no image on screen), a participant is excluded
    when the ``quantile`` (linear interpolation) of their ``au`` activation values
    is at least ``threshold``: a face that "activates" AU4 while nothing happens
    (bangs over the brows, an unstable camera) cannot signal displeasure.

    Parameters
    ----------
    clips : pandas.DataFrame
        Output of :func:`compute_activation_values` with a ``clip`` column
        (baseline clips are used) and ``participant``.
    au : str, default "AU4"
    quantile : float, default 0.8
    threshold : float, default 0.5

    Returns
    -------
    list of str
        Excluded participant IDs, sorted.
    """
    column = activation_column(au)
    require_columns(clips, ["participant", "clip", "clip_valid", column], "clips")
    baseline = clips[(clips["clip"] == "baseline") & clips["clip_valid"]]
    levels = baseline.groupby("participant", observed=True)[column].quantile(quantile)
    return sorted(str(p) for p in levels.index[levels >= threshold])


def image_table(
    images: pd.DataFrame,
    clips: pd.DataFrame,
    invalid_images: Iterable[tuple[str, int, int]] = (),
) -> pd.DataFrame:
    """The per-image table used by statistics and preference annotation.

    One row per valid image: its reaction clip is valid and it is not an
    invalid (all-black) image. Columns: the image table's columns followed by
    the reaction activation values.

    Parameters
    ----------
    images : pandas.DataFrame
        Output of :func:`fergi.datasets.load_images`.
    clips : pandas.DataFrame
        Output of :func:`compute_activation_values`.
    invalid_images : iterable of (participant, session, image)
        Images to drop (:func:`fergi.datasets.load_invalid_images`).

    Returns
    -------
    pandas.DataFrame
    """
    keys = ["participant", "session", "image"]
    require_columns(clips, [*keys, "clip", "clip_valid"], "clips")
    require_columns(images, keys, "images")
    reaction = clips[(clips["clip"] == "reaction") & clips["clip_valid"]]
    activation = [c for c in reaction.columns if c.endswith("_activation_value")]
    reaction = reaction[[*keys, *activation]].copy()
    reaction["participant"] = reaction["participant"].astype(str)
    invalid = set(invalid_images)
    if invalid:
        index = pd.MultiIndex.from_frame(reaction[keys])
        reaction = reaction[~index.isin(list(invalid))]
    table = images.assign(participant=images["participant"].astype(str)).merge(
        reaction, on=keys, how="inner", validate="one_to_one"
    )
    return table.sort_values(keys, ignore_index=True)
