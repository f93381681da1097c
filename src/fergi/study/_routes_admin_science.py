"""Admin API for the science of a study (token protected): AU curves, clip validity,
labelled pairs, and the study overview with the running agreement of the reaction
labels with the participants' own rankings.

Everything is read from what processing stored: the clip rows, the per-frame feature
CSV files (release schema) and the label rows. Frame and clip validity use the rules
of :mod:`fergi.features` itself, so the pictures show what the labels were made from.
"""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi import Path as PathParam
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from fergi.datasets import AU_NAMES
from fergi.study._db import (
    Answer,
    Chunk,
    Event,
    Participant,
    Ranking,
    Segment,
    StudySession,
    utcnow,
)
from fergi.study._deps import DB, MAX_DB_INT, Settings, Store, require_admin
from fergi.study._presentations import presentation_attempts

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[Depends(require_admin)])

DbId = Annotated[int, PathParam(ge=1, le=MAX_DB_INT)]

DEFAULT_AUS = ("AU4", "AU12")
#: A session not finished and without any activity for this long is abandoned (the
#: settings' ``abandoned_session_after_min`` is what the routes use).
DEFAULT_ABANDONED_AFTER_MIN = 15.0
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
    from fergi.features import compute_activation_values, frame_validity

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


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat() + "Z"


def _num(value: Any) -> float | None:
    """A JSON-safe float (NaN and infinities become None)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def parse_aus(aus: str | None) -> list[str]:
    """``"AU4,AU12"`` (or ``"all"``) as a list of the release's AU names; 422 otherwise."""
    if aus is None or not aus.strip():
        return list(DEFAULT_AUS)
    if aus.strip().lower() == "all":
        return list(AU_NAMES)
    names = [a.strip().upper() for a in aus.split(",") if a.strip()]
    unknown = [a for a in names if a not in AU_NAMES]
    if unknown:
        raise HTTPException(422, f"aus: unknown action unit {unknown[0]!r} (choose from {', '.join(AU_NAMES)})")
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------- clips
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


def _windows(sess, settings) -> dict[int, Any]:
    """Each image's clip windows (where its clips start relative to the recording)."""
    from fergi.study._realtime import image_windows

    try:
        return image_windows(
            list(sess.events), sess.n_images,
            baseline_s=settings.baseline_s, reaction_s=settings.present_s, fps=float(settings.fps),
        )
    except Exception as exc:  # malformed events: curves fall back to the nominal timing
        logger.warning("session %d: clip windows unavailable (%s)", sess.id, exc)
        return {}


def _onsets(sess) -> dict[int, float]:
    """The video time of each image's onset (``image_shown``) in its chosen presentation."""
    from fergi.study._worker import select_image_events

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

    from fergi.features import frame_validity

    valid = frame_validity(table).to_numpy()
    # Confidence alone (any pose): tells a missing face from a turned head.
    face = frame_validity(table, pitch_range=(-np.inf, np.inf), yaw_range=(-np.inf, np.inf)).to_numpy()
    stamps = table["timestamp"].to_numpy(dtype=float)
    t = start_s + stamps
    return {
        "t": [round(float(x), 4) for x in t],
        "valid": [bool(v) for v in valid],
        "invalid_why": [None if v else ("pose" if f else "face") for v, f in zip(valid, face, strict=True)],
        "confidence": [_num(v) for v in table["face_detection_confidence_score"]],
        "values": {au: [_num(v) for v in table[au]] if au in table.columns else None for au in aus},
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
                "score_difference": _num(lab.score_difference),
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


@router.get("/sessions/{session_id}/science")
def session_science(
    session_id: DbId,
    db: DB,
    settings: Settings,
    store: Store,
    aus: Annotated[str | None, Query(max_length=200, description="comma-separated AUs, or 'all'")] = None,
) -> dict[str, Any]:
    """AU curves of every image (baseline and reaction, onset at 0 s), frame and clip
    validity, activation values and the labelled pairs of one session."""
    import pandas as pd

    names = parse_aus(aus)
    sess = db.get(StudySession, session_id)
    if sess is None:
        raise HTTPException(404, f"no session {session_id}")
    rules = validity_rules()
    fps = float(settings.fps)
    windows = _windows(sess, settings)
    onsets = _onsets(sess)
    nominal = {"baseline": settings.baseline_s, "reaction": settings.present_s}
    clips = {(c.image_index, c.clip): c for c in sess.clips}
    answers = {a.image_index: a for a in sess.answers}
    order = [int(i) for i in (sess.ranking.order if sess.ranking is not None else [])]
    attempts: dict[int, list[dict[str, Any]]] = {}
    for attempt in presentation_attempts(sess, present_s=settings.present_s, chunk_s=settings.chunk_ms / 1000):
        attempts.setdefault(attempt.image, []).append(attempt.as_dict())
    images_out = []
    for image in sess.images:
        entry: dict[str, Any] = {
            "index": image.index,
            "invalid_image": bool(image.invalid),
            "rank": order.index(image.index) + 1 if image.index in order else None,
            "overall_rating": None if image.index not in answers else answers[image.index].overall_rating,
            # every showing of the image (a replay after an interruption is a second look)
            "presentations": attempts.get(image.index, []),
            "clips": {},
        }
        iw = windows.get(image.index)
        for kind in ("baseline", "reaction"):
            clip = clips.get((image.index, kind))
            window = None if iw is None else iw.windows.get(kind)
            expected = window.n if window is not None else round(nominal[kind] * fps)
            if window is not None and image.index in onsets:
                # The clip's first frame on the recording's 30 fps grid, relative to the onset.
                start = window.first / fps - onsets[image.index]
            else:
                start = -nominal["baseline"] if kind == "baseline" else 0.0
            if clip is None:
                entry["clips"][kind] = None
                continue
            info: dict[str, Any] = {
                "n_frames": clip.n_frames,
                "expected_frames": expected,
                "valid_frame_share": _num(clip.valid_frame_share),
                "clip_valid": clip_valid(clip),
                "invalid_reason": getattr(clip, "invalid_reason", None),
                "exposure": clip.exposure,
                "seen_before_s": _num(clip.seen_before_s),
                "reasons": clip_reasons(clip, rules, expected),
                "activations": {
                    au: _num((clip.activations or {}).get(f"{au}_activation_value")) for au in AU_NAMES
                },
                "start_s": round(start, 4),
                "curves": None,
            }
            if clip.features_file:
                try:
                    with store.open_read(store.resolve(clip.features_file)) as handle:
                        table = pd.read_csv(handle)
                    info["curves"] = clip_curves(table, names, start)
                except (OSError, ValueError, KeyError) as exc:
                    info["reasons"].append(f"feature file unreadable ({type(exc).__name__})")
            entry["clips"][kind] = info
        images_out.append(entry)
    pairs = session_pairs(sess)
    return {
        "session_id": sess.id,
        "participant_id": sess.participant_id,
        "session_index": sess.index,
        "fps": fps,
        "baseline_s": settings.baseline_s,
        "present_s": settings.present_s,
        "aus": names,
        "available_aus": list(AU_NAMES),
        "rules": rules,
        "ranking": order or None,
        "ranked_at": None if sess.ranking is None else _iso(sess.ranking.ranked_at),
        "images": images_out,
        "pairs": pairs,
        "agreement": agreement(pairs),
        "agreement_all_decided": agreement(pairs, confident_only=False),
    }


# --------------------------------------------------------------------------- overview
def last_activity(db) -> dict[int, dt.datetime]:
    """The latest thing each session did: its own steps, answers, ranking, events,
    segments and chunks (one aggregate query each, no rows loaded)."""
    latest: dict[int, dt.datetime] = {}

    def merge(rows) -> None:
        for session_id, *times in rows:
            for when in times:
                if when is not None and (session_id not in latest or when > latest[session_id]):
                    latest[session_id] = when

    merge(
        db.execute(
            select(
                StudySession.id,
                StudySession.created_at,
                StudySession.consent_at,
                StudySession.prompt_at,
                StudySession.webcam_ok_at,
                StudySession.finished_at,
            )
        )
    )
    merge(db.execute(select(Ranking.session_id, Ranking.ranked_at)))

    merge(db.execute(select(Answer.session_id, func.max(Answer.answered_at)).group_by(Answer.session_id)))
    merge(db.execute(select(Event.session_id, func.max(Event.received_at)).group_by(Event.session_id)))
    merge(db.execute(select(Segment.session_id, func.max(Segment.started_at)).group_by(Segment.session_id)))
    merge(
        db.execute(
            select(Segment.session_id, func.max(Chunk.received_at))
            .join(Chunk, Chunk.segment_id == Segment.id)
            .group_by(Segment.session_id)
        )
    )
    return latest


def session_status(
    finished_at: dt.datetime | None, last: dt.datetime, now: dt.datetime, abandoned_after: dt.timedelta
) -> str:
    """``"finished"``, ``"abandoned"`` (not finished, nothing for ``abandoned_after``) or
    ``"in progress"``."""
    if finished_at is not None:
        return "finished"
    return "abandoned" if now - last > abandoned_after else "in progress"


AbandonedAfter = Annotated[
    float | None, Query(gt=0, le=60 * 24 * 365, description="minutes (default FERGI_ABANDONED_SESSION_AFTER_MIN)")
]


@router.get("/activity")
def activity(db: DB, settings: Settings, abandoned_after_min: AbandonedAfter = None) -> dict[str, Any]:
    """Each session's status (finished, abandoned, in progress) and last activity: the
    sessions list's light companion of :func:`overview` (aggregate queries only)."""
    if abandoned_after_min is None:
        abandoned_after_min = settings.abandoned_session_after_min
    now = utcnow()
    after = dt.timedelta(minutes=abandoned_after_min)
    latest = last_activity(db)
    rows = db.execute(select(StudySession.id, StudySession.created_at, StudySession.finished_at)).all()
    return {
        "generated_at": _iso(now),
        "abandoned_after_min": abandoned_after_min,
        "sessions": {
            str(sid): {
                "status": session_status(finished, latest.get(sid, created), now, after),
                "last_activity_at": _iso(latest.get(sid, created)),
            }
            for sid, created, finished in rows
        },
    }


@router.get("/overview")
def overview(
    db: DB,
    settings: Settings,
    abandoned_after_min: AbandonedAfter = None,
) -> dict[str, Any]:
    """The study so far: participants, sessions (started, finished, abandoned) with
    their times, the share of valid clips, and the running agreement of the confident
    reaction labels with the participants' rankings (with its binomial 95 % CI)."""
    if abandoned_after_min is None:
        abandoned_after_min = settings.abandoned_session_after_min
    now = utcnow()
    after = dt.timedelta(minutes=abandoned_after_min)
    n_participants = db.scalar(select(func.count()).select_from(Participant)) or 0
    sessions = db.scalars(
        select(StudySession)
        .options(
            selectinload(StudySession.clips),
            selectinload(StudySession.labels),
            selectinload(StudySession.ranking),
        )
        .order_by(StudySession.id)
    ).all()
    latest = last_activity(db)
    rows = []
    counts = {"finished": 0, "abandoned": 0, "in progress": 0}
    clip_counts = {kind: {"n": 0, "valid": 0} for kind in ("baseline", "reaction")}
    pairs_by_session = {}
    for sess in sessions:
        last = latest.get(sess.id, sess.created_at)
        status = session_status(sess.finished_at, last, now, after)
        counts[status] += 1
        clips = [c for c in sess.clips if c.features_file]
        for c in clips:
            if c.clip in clip_counts:
                clip_counts[c.clip]["n"] += 1
                clip_counts[c.clip]["valid"] += bool(clip_valid(c))
        reaction = [c for c in clips if c.clip == "reaction"]
        pairs = session_pairs(sess)
        pairs_by_session[sess.id] = pairs
        judged = [p for p in pairs if p["confident"] and p["agrees"] is not None]
        rows.append(
            {
                "id": sess.id,
                "participant_id": sess.participant_id,
                "session_index": sess.index,
                "session_type": sess.session_type,
                "status": status,
                "created_at": _iso(sess.created_at),
                "finished_at": _iso(sess.finished_at),
                "last_activity_at": _iso(last),
                "n_reaction_clips": len(reaction),
                "n_reaction_valid": sum(bool(clip_valid(c)) for c in reaction),
                "n_pairs": len(pairs),
                "n_confident": sum(p["confident"] for p in pairs),
                "agree": sum(bool(p["agrees"]) for p in judged),
                "n_judged": len(judged),
            }
        )
    # The running agreement, session by session in the order they were finished.
    rows_by_id = {row["id"]: row for row in rows}
    running = []
    k = n = 0
    done = sorted((s for s in sessions if s.finished_at is not None), key=lambda s: (s.finished_at, s.id))
    for sess in done:
        row = rows_by_id[sess.id]
        k, n = k + row["agree"], n + row["n_judged"]
        running.append({"session_id": sess.id, "finished_at": _iso(sess.finished_at), **agreement_counts(k, n)})
    everything = [p for pairs in pairs_by_session.values() for p in pairs]
    created = [s.created_at for s in sessions]
    finished = [s.finished_at for s in sessions if s.finished_at is not None]
    return {
        "generated_at": _iso(now),
        "abandoned_after_min": abandoned_after_min,
        "participants": {
            "n": n_participants,
            "n_with_sessions": len({s.participant_id for s in sessions}),
            "n_with_finished": len({s.participant_id for s in sessions if s.finished_at is not None}),
        },
        "sessions": {
            "n_started": len(sessions),
            "n_finished": counts["finished"],
            "n_abandoned": counts["abandoned"],
            "n_in_progress": counts["in progress"],
            "first_started_at": _iso(min(created)) if created else None,
            "last_started_at": _iso(max(created)) if created else None,
            "last_finished_at": _iso(max(finished)) if finished else None,
        },
        "clips": {
            kind: {**c, "share": None if c["n"] == 0 else c["valid"] / c["n"]} for kind, c in clip_counts.items()
        },
        "pairs": {"n": len(everything), "n_confident": sum(p["confident"] for p in everything)},
        "agreement": agreement(everything),
        "agreement_all_decided": agreement(everything, confident_only=False),
        "running_agreement": running,
        "session_rows": rows,
    }
