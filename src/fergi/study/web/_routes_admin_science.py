"""Admin API for the science of a study (token protected): AU curves, clip validity,
labelled pairs, and the study overview with the running agreement of the reaction
labels with the participants' own rankings.

Everything is read from what processing stored: the clip rows, the per-frame feature
CSV files (release schema) and the label rows. Frame and clip validity use the rules
of :mod:`fergi.features` itself, so the pictures show what the labels were made from.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi import Path as PathParam
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from fergi.schema import AU_NAMES
from fergi.study.processing import (
    agreement,
    agreement_counts,
    clip_curves,
    clip_reasons,
    clip_valid,
    clip_windows_of,
    image_onsets,
    json_number,
    session_pairs,
    session_status,
    validity_rules,
)
from fergi.study.store import (
    Answer,
    Chunk,
    Event,
    Participant,
    Ranking,
    Segment,
    StudySession,
    presentation_attempts,
    utcnow,
)
from fergi.study.web._deps import DB, MAX_DB_INT, Settings, Store, require_admin

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[Depends(require_admin)])

DbId = Annotated[int, PathParam(ge=1, le=MAX_DB_INT)]

DEFAULT_AUS = ("AU4", "AU12")
#: A session not finished and without any activity for this long is abandoned (the
#: settings' ``abandoned_session_after_min`` is what the routes use).
DEFAULT_ABANDONED_AFTER_MIN = 15.0


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat() + "Z"


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
    windows = clip_windows_of(sess, settings)
    onsets = image_onsets(sess)
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
                "valid_frame_share": json_number(clip.valid_frame_share),
                "clip_valid": clip_valid(clip),
                "invalid_reason": getattr(clip, "invalid_reason", None),
                "exposure": clip.exposure,
                "seen_before_s": json_number(clip.seen_before_s),
                "reasons": clip_reasons(clip, rules, expected),
                "activations": {
                    au: json_number((clip.activations or {}).get(f"{au}_activation_value")) for au in AU_NAMES
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
