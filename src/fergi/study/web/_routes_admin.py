"""Admin API (token protected): participants, invitation links, sessions, processing, media."""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from sqlalchemy import select

from fergi._errors import FergiError
from fergi.study.jobs import enqueue, retry_job
from fergi.study.processing import clip_video
from fergi.study.protocol import stale_images
from fergi.study.store import Job, Participant, StudySession, hash_token, presentation_attempts
from fergi.study.web._deps import DB, MAX_DB_INT, Settings, Store, require_admin
from fergi.study.web._responses import file_response
from fergi.study.web._state import PARTICIPANT_ID, session_state

# Ids beyond the databases' INTEGER overflow the driver: refused as 422 before any query.
DbId = Annotated[int, PathParam(ge=1, le=MAX_DB_INT)]
ImageIndex = Annotated[int, PathParam(ge=1, le=MAX_DB_INT)]

router = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[Depends(require_admin)])


def base_url(request: Request, settings) -> str:
    # url_for keeps a mount prefix (the app embedded under /study) that base_url loses.
    return (settings.public_url or str(request.url_for("index"))).rstrip("/")


def job_info(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "stages": dict(job.stages or {}),
        "error": job.error,
        "attempts": job.attempts,
        "created_at": job.created_at.isoformat() + "Z",
        "finished_at": None if job.finished_at is None else job.finished_at.isoformat() + "Z",
    }


def session_summary(sess: StudySession, settings) -> dict[str, Any]:
    state = session_state(sess, settings)
    return {
        "id": sess.id,
        "participant_id": sess.participant_id,
        "session_index": sess.index,
        "session_type": sess.session_type,
        "step": state["step"],
        "created_at": sess.created_at.isoformat() + "Z",
        "finished_at": None if sess.finished_at is None else sess.finished_at.isoformat() + "Z",
        "consent_at": None if sess.consent_at is None else sess.consent_at.isoformat() + "Z",
        "consent_version": sess.consent_version,
        "share_video": sess.share_video,
        "prompt": sess.prompt,
        "n_answers": len(sess.answers),
        "n_segments": len(sess.segments),
        "n_chunks": sum(s.n_chunks for s in sess.segments),
        "n_bytes": sum(s.n_bytes for s in sess.segments),
        "n_clips": len(sess.clips),
        "n_invalid_clips": sum(c.clip_valid is False for c in sess.clips),
        "n_abandoned_segments": sum(s.abandoned_at is not None for s in sess.segments),
        "n_labels": len(sess.labels),
        "jobs": [job_info(j) for j in sess.jobs],
    }


class ParticipantRequest(BaseModel):
    participant_id: str | None = Field(default=None, max_length=32)
    note: str = Field(default="", max_length=500)
    # False: the link opens one session (a participant's next session needs a new link).
    reusable: bool = False


def _invite_status(p: Participant) -> str | None:
    if p.invite_token is None:
        return None
    if p.invite_used_at is not None and not p.invite_reusable:
        return "used"
    return "active"


@router.get("/participants")
def list_participants(request: Request, db: DB, settings: Settings) -> list[dict[str, Any]]:
    out = []
    for p in db.scalars(select(Participant).order_by(Participant.id)).all():
        types = [s.session_type for s in p.sessions]
        out.append(
            {
                "participant_id": p.id,
                "note": p.note,
                "created_at": p.created_at.isoformat() + "Z",
                "n_sessions": len(p.sessions),
                "n_finished": sum(s.finished_at is not None for s in p.sessions),
                "n_structured": types.count("structured"),
                "n_free": types.count("free"),
                # Invitation tokens are stored hashed: the link is shown once, when created.
                "link": None,
                "invite": _invite_status(p),
                "invite_reusable": p.invite_reusable,
                "invite_used_at": None if p.invite_used_at is None else p.invite_used_at.isoformat() + "Z",
            }
        )
    return out


@router.post("/participants", status_code=201)
def create_participant(body: ParticipantRequest, request: Request, db: DB, settings: Settings) -> dict[str, Any]:
    """Register a participant with an invitation link (a random ID when none is given).

    The link binds the ID: once it has an invitation, typing the ID on the start page
    is refused, only the link opens a session.
    """
    pid = (body.participant_id or "").strip()
    if not pid:
        # Random, not sequential: an ID says nothing about the others (40 bits).
        taken = set(db.scalars(select(Participant.id)).all())
        pid = next(p for p in (f"p{secrets.token_hex(5)}" for _ in range(100)) if p not in taken)
    if not PARTICIPANT_ID.match(pid):
        raise HTTPException(422, "participant_id: use 1-32 letters, digits, '-' or '_'")
    participant = db.get(Participant, pid)
    if participant is None:
        participant = Participant(id=pid, note=body.note)
        db.add(participant)
    # A new link each time (only its hash is kept, so an earlier one cannot be shown
    # again); it replaces the participant's previous link.
    token = secrets.token_urlsafe(24)
    participant.invite_token = hash_token(token)
    participant.invite_reusable = body.reusable
    participant.invite_used_at = None
    db.commit()
    return {
        "participant_id": pid,
        "link": f"{base_url(request, settings)}/?invite={token}",
        "invite_reusable": body.reusable,
    }


@router.get("/sessions")
def list_sessions(db: DB, settings: Settings, participant_id: str | None = None) -> list[dict[str, Any]]:
    query = select(StudySession).order_by(StudySession.id.desc())
    if participant_id:
        query = query.where(StudySession.participant_id == participant_id)
    return [session_summary(s, settings) for s in db.scalars(query).all()]


def _session(db, session_id: int) -> StudySession:
    sess = db.get(StudySession, session_id)
    if sess is None:
        raise HTTPException(404, f"no session {session_id}")
    return sess


@router.get("/sessions/{session_id}")
def session_detail(session_id: DbId, db: DB, settings: Settings, store: Store) -> dict[str, Any]:
    sess = _session(db, session_id)
    # Clip videos are encoded on demand from the raw upload, while it is kept.
    raw = (store.session_dir(sess.id) / "segments").is_dir()
    superseded = set(stale_images(sess))
    return {
        **session_summary(sess, settings),
        "structured_input": sess.structured_input,
        "generated_prompts": list(sess.generated_prompts or []),
        "images": [
            {"index": i.index, "seed": i.seed, "invalid": i.invalid, "meta": i.meta} for i in sess.images
        ],
        "answers": [
            {
                "image_index": a.image_index,
                "missing_elements": a.missing_elements,
                "overall_rating": a.overall_rating,
                "alignment_rating": a.alignment_rating,
                "fidelity_rating": a.fidelity_rating,
                "issues": a.issues,
                "emotions": a.emotions,
                "answered_at": a.answered_at.isoformat() + "Z",
            }
            for a in sess.answers
        ],
        "ranking": None if sess.ranking is None else {"order": sess.ranking.order, "method": sess.ranking.method},
        "events": [
            {"segment": e.segment, "image_index": e.image_index, "kind": e.kind, "video_time": e.video_time,
             "reason": e.reason}
            for e in sess.events
        ],
        # every showing of every image, with why it ended and the seconds it was visible
        "presentations": [
            a.as_dict()
            for a in presentation_attempts(sess, present_s=settings.present_s, chunk_s=settings.chunk_ms / 1000)
        ],
        "segments": [
            {
                "segment": s.index, "mime_type": s.mime_type, "n_chunks": s.n_chunks, "n_bytes": s.n_bytes,
                "complete": s.complete,
                "started_at": s.started_at.isoformat() + "Z",
                "abandoned": s.abandoned_at is not None,
                "abandoned_at": None if s.abandoned_at is None else s.abandoned_at.isoformat() + "Z",
                "abandon_reason": s.abandon_reason,
            }
            for s in sess.segments
        ],
        "clips": [
            {
                "image_index": c.image_index,
                "clip": c.clip,
                "n_frames": c.n_frames,
                "valid_frame_share": c.valid_frame_share,
                "clip_valid": c.clip_valid,
                "activations": c.activations,
                "has_video": c.video_file is not None or raw,
                # why the clip is left out of activations, labels and the export (None: valid)
                "invalid_reason": c.invalid_reason,
                "expected_frames": c.expected_frames,
                "segment": c.segment,
                "exposure": c.exposure,
                "seen_before_s": c.seen_before_s,
                # a later presentation of the image (a replay) is not analysed yet
                "superseded": c.image_index in superseded,
            }
            for c in sorted(sess.clips, key=lambda c: (c.image_index, c.clip))
        ],
        "labels": [
            {
                "image_a": lab.image_a,
                "image_b": lab.image_b,
                "preferred": lab.preferred,
                "score_difference": lab.score_difference,
                "confident": lab.confident,
            }
            for lab in sess.labels
        ],
    }


@router.post("/jobs/{job_id}/retry")
def retry(job_id: DbId, request: Request, db: DB) -> dict[str, Any]:
    job = db.get(Job, job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    if job.status in ("queued", "running"):
        raise HTTPException(409, f"job {job_id} is {job.status}")
    retry_job(db, job)
    db.commit()
    worker = getattr(request.app.state, "worker", None)
    if worker is not None:
        worker.wake(job.kind)
    return job_info(job)


@router.post("/sessions/{session_id}/process", status_code=202)
def process(session_id: DbId, request: Request, db: DB) -> dict[str, Any]:
    """Queue (again) the processing of a finished session: the images not analysed yet,
    then the labels (images already analysed in real time are kept)."""
    sess = _session(db, session_id)
    if sess.finished_at is None:
        # Its recording may still be growing; processing (and retention) waits for the end.
        raise HTTPException(409, f"session {session_id} is not finished yet")
    if not sess.segments:
        raise HTTPException(409, f"session {session_id} has no recording")
    job = enqueue(db, sess.id, "process")
    db.commit()
    worker = getattr(request.app.state, "worker", None)
    if worker is not None:
        worker.wake("process")
    return job_info(job)


@router.get("/sessions/{session_id}/images/{index}")
def admin_image(session_id: DbId, index: ImageIndex, db: DB, store: Store) -> FileResponse:
    sess = _session(db, session_id)
    if not any(i.index == index for i in sess.images):
        raise HTTPException(404, f"session {session_id} has no image {index}")
    return file_response(store.image_path(sess.id, index), media_type="image/png")


@router.get("/sessions/{session_id}/clips/{index}/{clip}")
def admin_clip(
    session_id: DbId,
    index: ImageIndex,
    clip: Literal["baseline", "reaction"],
    db: DB,
    store: Store,
    settings: Settings,
) -> FileResponse:
    """A cut face-video clip (biometric data: admin only, never cached by the browser).

    Encoded from the raw upload on the first request and kept for the next ones.
    """

    sess = _session(db, session_id)
    try:
        path = clip_video(db, sess, store, index, clip, fps=settings.fps)
    except FergiError as exc:
        raise HTTPException(422, f"session {session_id}: {exc}") from None
    if path is None:
        raise HTTPException(404, f"session {session_id} has no stored {clip} clip of image {index}")
    media = {".mp4": "video/mp4", ".webm": "video/webm"}.get(path.suffix, "application/octet-stream")
    return file_response(path, media_type=media, headers={"Cache-Control": "private, no-store"})
