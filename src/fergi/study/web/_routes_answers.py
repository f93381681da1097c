"""Generated images for the participant, the annotation survey (Fig. S6) and the ranking (Fig. S7)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import IntegrityError

from fergi.study.jobs import enqueue
from fergi.study.store import Answer, Ranking, utcnow
from fergi.study.web._deps import DB, MAX_DB_INT, CurrentSession, Settings, Store
from fergi.study.web._responses import file_response
from fergi.study.web._state import session_state

router = APIRouter(prefix="/api/sessions/{session_id}", tags=["answers"])


@router.get("/images/{index}")
def get_image(sess: CurrentSession, store: Store, index: int = PathParam(ge=1, le=MAX_DB_INT)) -> FileResponse:
    """One generated image of this session (PNG)."""
    if index > sess.n_images:
        raise HTTPException(404, f"this session has {sess.n_images} images, not {index}")
    if not any(img.index == index for img in sess.images):
        raise HTTPException(404, f"image {index} is still being generated")
    path = store.image_path(sess.id, index)
    return file_response(path, media_type="image/png", headers={"Cache-Control": "private, no-store"})


class AnswerRequest(BaseModel):
    missing_elements: str = Field(default="", max_length=2000)
    overall_rating: int = Field(ge=1, le=7)
    alignment_rating: int = Field(ge=1, le=7)
    fidelity_rating: int = Field(ge=1, le=7)
    issues: list[str] = Field(default_factory=list, max_length=50)
    emotions: list[str] = Field(default_factory=list, max_length=50)


def _same_answer(a: Answer, body: AnswerRequest) -> bool:
    return (
        a.missing_elements == body.missing_elements.strip()
        and (a.overall_rating, a.alignment_rating, a.fidelity_rating)
        == (body.overall_rating, body.alignment_rating, body.fidelity_rating)
        and sorted(a.issues) == sorted(set(body.issues))
        and sorted(a.emotions) == sorted(set(body.emotions))
    )


@router.put("/images/{index}/answer")
def put_answer(
    body: AnswerRequest,
    sess: CurrentSession,
    db: DB,
    settings: Settings,
    index: int = PathParam(ge=1, le=MAX_DB_INT),
) -> dict[str, Any]:
    """Store the survey of image ``index``, after its presentation has been recorded."""
    if index > sess.n_images:
        raise HTTPException(422, f"this session has {sess.n_images} images, not {index}")
    unknown = sorted(set(body.issues) - set(settings.issues))
    if unknown:
        raise HTTPException(422, f"unknown issue(s) {unknown}; options are {list(settings.issues)}")
    unknown = sorted(set(body.emotions) - set(settings.emotions))
    if unknown:
        raise HTTPException(422, f"unknown emotion(s) {unknown}; options are {list(settings.emotions)}")
    existing = next((a for a in sess.answers if a.image_index == index), None)
    if existing is not None:
        if _same_answer(existing, body):
            return session_state(sess, settings)
        raise HTTPException(409, f"image {index} is already annotated")
    if not any(e.kind == "image_hidden" and e.image_index == index for e in sess.events):
        raise HTTPException(409, f"image {index} has not been presented yet")
    answered = {a.image_index for a in sess.answers}
    expected = next(i for i in range(1, sess.n_images + 1) if i not in answered)
    if index != expected:
        raise HTTPException(409, f"image {index} is out of order: annotate image {expected} first")
    db.add(
        Answer(
            session_id=sess.id,
            image_index=index,
            missing_elements=body.missing_elements.strip(),
            overall_rating=body.overall_rating,
            alignment_rating=body.alignment_rating,
            fidelity_rating=body.fidelity_rating,
            issues=sorted(set(body.issues)),
            emotions=sorted(set(body.emotions)),
        )
    )
    try:
        db.commit()
    except IntegrityError:  # the same answer raced in twice (a retry); the first one won
        db.rollback()
        db.refresh(sess)
        existing = next((a for a in sess.answers if a.image_index == index), None)
        if existing is not None and _same_answer(existing, body):
            return session_state(sess, settings)
        raise HTTPException(409, f"image {index} is already annotated") from None
    db.refresh(sess)
    return session_state(sess, settings)


class RankingRequest(BaseModel):
    order: list[int] = Field(description="image indices, best first", max_length=50)
    # how the participant ordered the images: "tap" = tap one, tap its place;
    # "untouched" = the order they were shown in was kept
    method: Literal["drag", "keyboard", "tap", "mixed", "untouched"] = "drag"


@router.put("/ranking")
def put_ranking(body: RankingRequest, sess: CurrentSession, db: DB, settings: Settings) -> dict[str, Any]:
    """Store the ranking (best first), finish the session and queue its processing."""
    if sorted(body.order) != list(range(1, sess.n_images + 1)):
        raise HTTPException(
            422, f"order must list each image 1..{sess.n_images} exactly once, got {body.order}"
        )
    if sess.ranking is not None:
        if list(sess.ranking.order) == body.order:
            return session_state(sess, settings)
        raise HTTPException(409, "this session is already ranked")
    if len(sess.answers) < sess.n_images:
        raise HTTPException(409, f"annotate all {sess.n_images} images before ranking them")
    try:
        db.add(Ranking(session_id=sess.id, order=list(body.order), method=body.method))
        sess.finished_at = utcnow()
        enqueue(db, sess.id, "process")  # its query autoflushes: the race can surface here
        db.commit()
    except IntegrityError:  # the same ranking raced in twice (a retry); the first one won
        db.rollback()
        db.refresh(sess)
        if sess.ranking is not None and list(sess.ranking.order) == body.order:
            return session_state(sess, settings)
        raise HTTPException(409, "this session is already ranked") from None
    db.refresh(sess)
    return session_state(sess, settings)
