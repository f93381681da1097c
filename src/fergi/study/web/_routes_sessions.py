"""Participants' sessions: start, state (for resuming), consent, webcam check."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, Field
from sqlalchemy import func, select, update

from fergi.study._settings import StudySettings
from fergi.study.content import decode_snapshot, face_confidence, structured_limits
from fergi.study.store import (
    Participant,
    StudySession,
    hash_token,
    utcnow,
)
from fergi.study.web._deps import DB, MAX_DB_INT, CurrentSession, Settings, rate_limit, read_upload
from fergi.study.web._state import PARTICIPANT_ID, session_state

router = APIRouter(prefix="/api", tags=["sessions"])

def public_config(settings: StudySettings) -> dict[str, Any]:
    return {
        "n_images": settings.n_images,
        "baseline_s": settings.baseline_s,
        "present_s": settings.present_s,
        "issues": [{"key": k, "label": v} for k, v in settings.issues.items()],
        "emotions": list(settings.emotions),
        "consent_text": settings.consent_text,
        "consent_version": settings.consent_version,
        "example_prompt": settings.example_prompt,
        "prompt_attempts": settings.prompt_attempts,
        "chunk_ms": settings.chunk_ms,
        "max_chunk_bytes": settings.max_chunk_bytes,
        "require_face_check": settings.require_face_check,
        "allow_new_participants": settings.allow_new_participants,
        # the structured form checks these at Add (one source of truth: _prompting.py)
        "structured_limits": structured_limits(),
    }


def choose_session_type(db, participant: Participant) -> str:
    """Alternate structured and free-form sessions so both counts stay balanced (Supp. A.2)."""
    types = [s.session_type for s in participant.sessions]
    if types:
        n_structured, n_free = types.count("structured"), types.count("free")
        if n_structured != n_free:
            return "structured" if n_structured < n_free else "free"
        return "free" if types[-1] == "structured" else "structured"
    # A participant's first session: balance the first sessions across participants too.
    first = (
        select(StudySession.session_type, func.count())
        .where(StudySession.index == 1)
        .group_by(StudySession.session_type)
    )
    counts = dict(db.execute(first).all())
    return "free" if counts.get("structured", 0) > counts.get("free", 0) else "structured"


class StartRequest(BaseModel):
    participant_id: str | None = Field(default=None, max_length=64)
    invite: str | None = Field(default=None, max_length=128)


@router.get("/config")
def get_config(settings: Settings) -> dict[str, Any]:
    """Durations, option lists and texts the participant pages need."""
    return public_config(settings)


@router.post("/sessions", status_code=201, dependencies=[Depends(rate_limit)])
def start_session(body: StartRequest, request: Request, db: DB, settings: Settings) -> dict[str, Any]:
    """Start a session for a participant (typed ID or an admin's invitation link).

    A typed ID starts a session unless the ID has an invitation (then only its link
    does) or is unknown while ``allow_new_participants`` is off.
    """
    if body.invite:
        # Stored hashed: a leaked database holds no usable links.
        participant = db.scalar(select(Participant).where(Participant.invite_token == hash_token(body.invite)))
        if participant is None:
            raise HTTPException(404, "unknown invitation link: ask the study team for a new one")
        used = HTTPException(410, "this invitation link was already used: ask the study team for a new one")
        if participant.invite_reusable:
            participant.invite_used_at = participant.invite_used_at or utcnow()
        else:
            # Claimed in one statement, so two tabs racing with one link get one session.
            claimed = db.execute(
                update(Participant)
                .where(Participant.id == participant.id, Participant.invite_used_at.is_(None))
                .values(invite_used_at=utcnow())
            ).rowcount
            if not claimed:
                db.rollback()
                raise used
    else:
        pid = (body.participant_id or "").strip()
        if not PARTICIPANT_ID.match(pid):
            raise HTTPException(
                422, "participant ID: use 1-32 letters, digits, '-' or '_' (e.g. 001)"
            )
        participant = db.get(Participant, pid)
        if participant is not None and participant.invite_token is not None:
            # An invitation binds its ID: only the link (its secret) opens a session, so
            # nobody else can start one by typing the ID.
            raise HTTPException(
                403,
                f"participant ID {pid!r} was invited: please open the study with your "
                "invitation link (ask the study team if you do not have it)",
            )
        if participant is None:
            if not settings.allow_new_participants:
                raise HTTPException(403, f"participant ID {pid!r} is not registered for this study")
            participant = Participant(id=pid)
            db.add(participant)
            db.flush()
    token = secrets.token_urlsafe(32)
    index = 1 + (
        db.scalar(select(func.max(StudySession.index)).where(StudySession.participant_id == participant.id))
        or 0
    )
    sess = StudySession(
        participant_id=participant.id,
        index=index,
        token_hash=hash_token(token),
        session_type=choose_session_type(db, participant),
        n_images=settings.n_images,
        user_agent=request.headers.get("user-agent", "")[:500],
        generated_prompts=[],
    )
    db.add(sess)
    db.commit()
    db.refresh(sess)
    return {"session_id": sess.id, "token": token, "state": session_state(sess, settings)}


@router.get("/sessions/{session_id}")
def get_session(sess: CurrentSession, settings: Settings) -> dict[str, Any]:
    """The session's state: the page to show after a reload."""
    return session_state(sess, settings)


class ConsentRequest(BaseModel):
    agree: bool
    consent_version: str = Field(max_length=32)
    share_video: bool = False


@router.post("/sessions/{session_id}/consent")
def give_consent(body: ConsentRequest, sess: CurrentSession, db: DB, settings: Settings) -> dict[str, Any]:
    """Store consent with its time and text version; recording is refused before it."""
    if not body.agree:
        raise HTTPException(422, "consent: the study can only start after you agree")
    if body.consent_version != settings.consent_version:
        raise HTTPException(
            409,
            f"consent text version {body.consent_version!r} is outdated; "
            f"reload the page to read version {settings.consent_version!r}",
        )
    if sess.consent_at is None:
        sess.consent_at = utcnow()
        sess.consent_version = body.consent_version
    # The sharing choice may be changed until the session ends.
    sess.share_video = body.share_video
    db.commit()
    return session_state(sess, settings)


async def snapshot_body(
    request: Request, settings: Settings, session_id: Annotated[int, PathParam(ge=1, le=MAX_DB_INT)]
) -> bytes:
    """The snapshot's bytes, received before the route takes a database connection."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in {"image/jpeg", "image/png", "image/webp"}:
        raise HTTPException(415, f"webcam snapshot must be image/jpeg, image/png or image/webp, not {ctype or 'missing'}")
    return await read_upload(request, settings, session_id, settings.max_snapshot_bytes, "webcam snapshot")


@router.post("/sessions/{session_id}/webcam-check")
def webcam_check(
    data: Annotated[bytes, Depends(snapshot_body)], sess: CurrentSession, db: DB, settings: Settings
) -> dict[str, Any]:
    """Check one webcam snapshot (JPEG/PNG body) for a visible face; nothing is stored.

    A plain function: decoding and face detection run in the thread pool.
    """

    if sess.consent_at is None:
        raise HTTPException(409, "consent is needed before the webcam is used")
    try:
        image = decode_snapshot(data)
    except ValueError as exc:
        raise HTTPException(422, f"webcam snapshot: {exc}") from None
    confidence = face_confidence(image)
    face = confidence >= 0.7
    if face:
        sess.webcam_ok_at = sess.webcam_ok_at or utcnow()
        sess.face_confidence = confidence
        db.commit()
    elif not settings.require_face_check:
        sess.webcam_ok_at = sess.webcam_ok_at or utcnow()
        db.commit()
    message = (
        "Your face is clearly visible."
        if face
        else "No face found: sit in front of the camera, face it, and make sure your face is well lit."
    )
    return {
        "face": face,
        "confidence": round(confidence, 3),
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "message": message,
        "state": session_state(sess, settings),
    }


