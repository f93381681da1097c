"""The science the admin pages show, computed from what processing stored: clip validity
and its reasons, AU curves of a clip's per-frame table, the labelled pairs against the
participant's ranking, and their agreement with a binomial confidence interval.

Frame and clip validity use the rules of :mod:`fergi.features` itself, so the pictures
show what the labels were made from. ``fergi.features`` and scipy are imported where
used (pandas and scipy load slowly; the web app's start does not need them).
"""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import math
from typing import Any

from fergi.features import compute_activation_values, frame_validity
from fergi.study.processing._analysis import image_windows
from fergi.study.protocol import select_image_events

logger = logging.getLogger(__name__)

CI_LEVEL = 0.95
CI_METHOD = "wilson"


def _defaults(function) -> dict[str, Any]:
    return {
        name: p.default
        for name, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def validity_rules() -> dict[str, Any]:
    """The frame and clip validity thresholds processing applies (those of fergi.features)."""

    frame = _defaults(frame_validity)
    return {
        "min_confidence": frame["min_confidence"],
        "pitch_range": list(frame["pitch_range"]),
        "yaw_range": list(frame["yaw_range"]),
        "min_valid_share": _defaults(compute_activation_values)["min_valid_share"],
    }


def binomial_ci(k: int, n: int, level: float = CI_LEVEL, method: str = CI_METHOD) -> tuple[float, float] | None:
    """Confidence interval of a binomial proportion ``k / n`` (None when ``n`` is 0).

    Parameters
    ----------
    k, n : int
        Successes and trials.
    level : float, default 0.95
    method : {"wilson", "exact"}
        Wilson score interval (no continuity correction) or the exact
        Clopper-Pearson interval (the same values as
        ``scipy.stats.binomtest(k, n).proportion_ci(level, method)``, without its
        p-value, which costs milliseconds per call on a page that draws hundreds).

    Returns
    -------
    (float, float) or None
    """
    if n <= 0:
        return None
    if not 0 <= k <= n:
        raise ValueError(f"k must be between 0 and n, got k={k}, n={n}")
    alpha = 1.0 - level
    if method == "wilson":
        from statistics import NormalDist

        z = NormalDist().inv_cdf(1.0 - alpha / 2)
        p = k / n
        denominator = 1.0 + z * z / n
        centre = (p + z * z / (2 * n)) / denominator
        half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denominator
        return max(0.0, centre - half), min(1.0, centre + half)
    if method == "exact":
        from scipy.stats import beta

        low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
        high = 1.0 if k == n else float(beta.ppf(1.0 - alpha / 2, k + 1, n - k))
        return low, high
    raise ValueError(f"method must be 'wilson' or 'exact', got {method!r}")


def json_number(value: Any) -> float | None:
    """A JSON-safe float (NaN and infinities become None)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def clip_valid(clip) -> bool | None:
    """Whether a clip is valid: its ``invalid_reason`` (when the column exists) or ``clip_valid``."""
    if getattr(clip, "invalid_reason", None):
        return False
    return clip.clip_valid


def clip_reasons(clip, rules: dict[str, Any], expected_frames: int | None) -> list[str]:
    """Why a clip is invalid, or what is unusual about it, in words."""
    reasons = []
    stored = getattr(clip, "invalid_reason", None)
    if stored:
        reasons.append(str(stored))
    share = clip.valid_frame_share
    if clip.clip_valid is False and share is not None:
        reasons.append(
            f"{100 * share:.0f} % of frames valid (at least {100 * rules['min_valid_share']:.0f} % needed)"
        )
    if expected_frames and clip.n_frames < expected_frames and not stored:
        reasons.append(f"{clip.n_frames} of {expected_frames} expected frames")
    if not clip.features_file:
        reasons.append("no feature file")
    return reasons


def clip_windows_of(sess, settings) -> dict[int, Any]:
    """Each image's clip windows (where its clips start relative to the recording)."""
    try:
        return image_windows(
            list(sess.events), sess.n_images,
            baseline_s=settings.baseline_s, reaction_s=settings.present_s, fps=float(settings.fps),
        )
    except Exception as exc:  # malformed events: curves fall back to the nominal timing
        logger.warning("session %d: clip windows unavailable (%s)", sess.id, exc)
        return {}


def image_onsets(sess) -> dict[int, float]:
    """The video time of each image's onset (``image_shown``) in its chosen presentation."""
    out = {}
    for image, (_segment, events) in select_image_events(list(sess.events), sess.n_images).items():
        for ev in events:
            if ev["kind"] == "image_shown":
                out[image] = float(ev["video_time"])
    return out


def clip_curves(table, aus: list[str], start_s: float) -> dict[str, Any]:
    """Per-frame curves of one clip's feature table.

    Parameters
    ----------
    table : pandas.DataFrame
        The clip's per-frame features (release schema).
    aus : list of str
    start_s : float
        Time of the clip's first frame relative to the image onset (seconds; negative
        for a baseline clip).

    Returns
    -------
    dict
        ``t`` (seconds from the onset), ``valid`` (frame validity), ``invalid_why``
        (``"face"``: no confident face, ``"pose"``: head turned; None when valid),
        ``confidence`` and ``values`` (``{au: [...]}``, as stored, NaN as None; a frame
        without a face holds the release's placeholder -1, so plot only frames whose
        ``invalid_why`` is not ``"face"``).
    """
    import numpy as np

    valid = frame_validity(table).to_numpy()
    # Confidence alone (any pose): tells a missing face from a turned head.
    face = frame_validity(table, pitch_range=(-np.inf, np.inf), yaw_range=(-np.inf, np.inf)).to_numpy()
    stamps = table["timestamp"].to_numpy(dtype=float)
    t = start_s + stamps
    return {
        "t": [round(float(x), 4) for x in t],
        "valid": [bool(v) for v in valid],
        "invalid_why": [None if v else ("pose" if f else "face") for v, f in zip(valid, face, strict=True)],
        "confidence": [json_number(v) for v in table["face_detection_confidence_score"]],
        "values": {au: [json_number(v) for v in table[au]] if au in table.columns else None for au in aus},
    }


def session_pairs(sess) -> list[dict[str, Any]]:
    """The session's labelled pairs with the ranking's verdict on each.

    ``agrees`` is None when the label is undecided or the ranking does not order the
    two images; otherwise whether the label prefers the image the participant ranked
    higher.
    """
    order = [int(i) for i in (sess.ranking.order if sess.ranking is not None else [])]
    position = {image: rank for rank, image in enumerate(order, start=1)}
    out = []
    for lab in sorted(sess.labels, key=lambda lab: (lab.image_a, lab.image_b)):
        ra, rb = position.get(lab.image_a), position.get(lab.image_b)
        ranked = None if ra is None or rb is None or ra == rb else (lab.image_a if ra < rb else lab.image_b)
        agrees = None if lab.preferred is None or ranked is None else lab.preferred == ranked
        out.append(
            {
                "image_a": lab.image_a,
                "image_b": lab.image_b,
                "preferred": lab.preferred,
                "score_difference": json_number(lab.score_difference),
                "confident": bool(lab.confident),
                "rank_a": ra,
                "rank_b": rb,
                "ranking_prefers": ranked,
                "agrees": agrees,
            }
        )
    return out


def agreement(pairs: list[dict[str, Any]], *, confident_only: bool = True) -> dict[str, Any]:
    """How many labelled pairs agree with the ranking, with a binomial 95 % CI.

    Counts the pairs (confident ones only by default) whose label and ranking both
    order the two images.
    """
    judged = [p for p in pairs if p["agrees"] is not None and (p["confident"] or not confident_only)]
    return agreement_counts(sum(bool(p["agrees"]) for p in judged), len(judged))


def agreement_counts(k: int, n: int) -> dict[str, Any]:
    """``k`` of ``n`` pairs agree: the share and its binomial 95 % CI."""
    ci = binomial_ci(k, n)
    return {
        "n": n,
        "agree": k,
        "share": None if n == 0 else k / n,
        "ci_low": None if ci is None else ci[0],
        "ci_high": None if ci is None else ci[1],
        "level": CI_LEVEL,
        "method": CI_METHOD,
    }


def session_status(
    finished_at: dt.datetime | None, last: dt.datetime, now: dt.datetime, abandoned_after: dt.timedelta
) -> str:
    """``"finished"``, ``"abandoned"`` (not finished, nothing for ``abandoned_after``) or
    ``"in progress"``."""
    if finished_at is not None:
        return "finished"
    return "abandoned" if now - last > abandoned_after else "in progress"
