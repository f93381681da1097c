"""Webcam recording: segments, sequence-numbered chunks and event timestamps.

A segment is one MediaRecorder stream. Chunks are uploaded in order while recording;
a chunk sent twice (a retry after a dropped response) is accepted once and answered
200 again, anything else out of order is refused, so the stored chunks of a segment
always concatenate to a playable prefix of the stream.

The client's contract
---------------------
* **One segment per image.** For each image: ``POST recording/segments``, start a new
  MediaRecorder (its own WebM header), post ``baseline_start``, ``image_shown`` and
  ``image_hidden`` of that image with the new segment's index and video times, stop the
  recorder, upload the remaining chunks and ``POST recording/{segment}/complete``.
  Nothing is recorded during surveys, the prompt or the ranking. Complete (or give up)
  every segment before ``PUT ranking``: a segment still incomplete when the finished
  session is processed is abandoned, and later chunks of it are refused.
* **Replaying an image.** When the camera stops (track ``ended``/``mute``, no frames)
  or the server refuses the stream (below), stop that recorder, re-acquire the camera,
  start a NEW segment and replay the image from its baseline, posting its three events
  again in the new segment (video times from that segment's own first frame). The server
  uses, per image, the last segment that holds all three events; clips already stored
  from an earlier attempt are replaced. Do not post ``image_hidden`` for an interrupted
  attempt: an image with all three events counts as presented (the session state then
  says ``survey`` after a reload). Post ``image_interrupted`` with its ``reason`` and
  the video time the image was blanked instead: the replay is then stored as exposure 2
  with the seconds seen before (see :func:`fergi.study.store.presentation_attempts`). A replay in the same segment is not possible (a
  repeated event of a segment is taken as a retry and the first one is kept).
* **Validity is the server's.** A clip with fewer than ``clip_min_frame_share`` of its
  frames, or without a new camera frame for over ``clip_max_still_s``, is stored as
  invalid with a reason (admin API ``clips[].invalid_reason``) and left out of the
  labels and the export; a replay is what makes such an image valid again.
* **Refusals the client acts on.** Such an error body carries a ``code`` beside
  ``detail``: ``{"detail": "...", "code": "..."}``.

  - ``415 bad_stream_start``: chunk 0 does not begin with a WebM header (an EBML header
    element that parses, DocType ``webm``, then the Segment). The
    segment is abandoned at once; open a new segment (new recorder) and replay the image.
  - ``409 segment_abandoned``: the segment was abandoned (a refused stream start, no
    upload for ``abandoned_segment_after_s``, or the session was processed); chunks,
    events and ``complete`` of it are refused. Open a new segment and replay the image.

  Other 409s (``chunk ... out of order``) are answered as before: ``GET
  recording/{segment}`` says ``next_seq`` (and ``abandoned``, ``abandon_reason``). An
  abandoned segment never blocks finishing or processing the session, and its video is
  deleted by retention.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from sqlalchemy.exc import IntegrityError

from fergi.study.protocol import EVENT_KINDS
from fergi.study.store import (
    Event,
    Segment,
    hash_token,
    request_time_left,
)
from fergi.study.web._chunks import (
    RecordingRefused,
    _queue_clips,
    _segment,
    segment_info,
    store_chunk,
    store_next_chunk,
)
from fergi.study.web._deps import (
    DB,
    MAX_DB_INT,
    SESSION_HEADER,
    CurrentSession,
    Settings,
    Store,
    _known_tokens,
    _known_tokens_of,
    get_study_session,
    read_upload,
)
from fergi.study.web._middleware import receive_body
from fergi.study.web._responses import is_storage_full, overloaded_response, storage_full_response


class _CodedRoute(APIRoute):
    """Routes that answer a :class:`RecordingRefused` with its ``code`` in the body."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route_handler(request: Request):
            try:
                return await handler(request)
            except RecordingRefused as exc:
                return JSONResponse({"detail": exc.detail, "code": exc.code}, status_code=exc.status_code)

        return route_handler


router = APIRouter(prefix="/api/sessions/{session_id}", tags=["recording"], route_class=_CodedRoute)


#: Chunks stored at once. More threads only queue on SQLite's write lock and the GIL;
#: a chunk waiting for one waits on the event loop, holding nothing.
CHUNK_THREADS = 8


def _mime(value: str) -> str:
    return value.split(";")[0].strip().lower()


class SegmentRequest(BaseModel):
    mime_type: str = Field(max_length=100)
    width: int | None = Field(default=None, ge=1, le=8192)
    height: int | None = Field(default=None, ge=1, le=8192)


@router.post("/recording/segments", status_code=201)
def start_segment(body: SegmentRequest, sess: CurrentSession, db: DB, settings: Settings) -> dict[str, Any]:
    """Announce a new MediaRecorder stream (the first one, or after a reload)."""
    if sess.consent_at is None:
        raise HTTPException(409, "recording is refused before consent")
    if sess.webcam_ok_at is None:
        raise HTTPException(409, "the webcam check has not passed yet")
    if sess.finished_at is not None:
        raise HTTPException(409, "this session is finished")
    if _mime(body.mime_type) != "video/webm":
        raise HTTPException(415, f"recording must be video/webm (VP9), not {body.mime_type!r}")
    if len(sess.segments) >= settings.max_segments_per_session:
        raise HTTPException(
            413, f"this session already has {len(sess.segments)} recording segments; "
            f"the limit is {settings.max_segments_per_session}"
        )
    seg = Segment(
        session_id=sess.id,
        index=len(sess.segments),
        mime_type=body.mime_type,
        width=body.width,
        height=body.height,
    )
    db.add(seg)
    try:
        db.commit()
    except IntegrityError:  # two tabs raced for the same index
        db.rollback()
        raise HTTPException(409, "another recording segment was started at the same moment; retry") from None
    return segment_info(seg)


SegmentIndex = Annotated[int, PathParam(ge=0, le=MAX_DB_INT)]


@router.get("/recording/{segment}")
def get_segment(segment: SegmentIndex, sess: CurrentSession, db: DB) -> dict[str, Any]:
    """What the server has of a segment: resume uploading at ``next_seq``."""
    return segment_info(_segment(db, sess, segment, abandoned_ok=True))


async def chunk_body(
    request: Request,
    settings: Settings,
    session_id: Annotated[int, PathParam(ge=1, le=MAX_DB_INT)],
    seq: Annotated[int, PathParam(ge=0, le=1_000_000)],
) -> bytes:
    """The chunk's bytes, received before the route takes a database connection."""
    ctype = request.headers.get("content-type", "")
    if _mime(ctype) != "video/webm":
        raise HTTPException(415, f"chunk {seq}: Content-Type must be video/webm, not {ctype or 'missing'!r}")
    data = await read_upload(request, settings, session_id, settings.max_chunk_bytes, f"chunk {seq}")
    if not data:
        raise HTTPException(422, f"chunk {seq} is empty")
    return data


@router.put("/recording/{segment}/chunks/{seq}")
async def put_chunk(
    # First: the body is read before anything takes a database connection.
    data: Annotated[bytes, Depends(chunk_body)],
    request: Request,
    settings: Settings,
    store: Store,
    session_id: Annotated[int, PathParam(ge=1, le=MAX_DB_INT)],
    segment: int = PathParam(ge=0, le=MAX_DB_INT),
    seq: int = PathParam(ge=0, le=1_000_000),
) -> dict[str, Any]:
    """Store chunk ``seq`` of a segment (body: the raw webm bytes, Content-Type video/webm).

    The database work and the file's fsync run in one trip to the thread pool (the
    route runs every second for every participant), never on the event loop; the
    connection is held only during that trip.
    """
    return await _run_admitted(
        request.app.state, settings,
        _put_chunk_in_thread, data, request, settings, store, session_id, segment, seq,
    )


async def _run_admitted(state, settings, func, *args):
    """Run a chunk's storage ``func(*args)`` in the chunk threads, admitted by the deadline.

    Returns ``func``'s result, or the ``503`` response when no chunk thread frees up
    before the request's deadline (the pool timeout from its arrival).
    """
    limiters = getattr(state, "chunk_limiters", None)
    if limiters is None:
        # Created lazily: an anyio limiter belongs to the event loop that serves the app.
        # One admits chunks (the wait ends at the request's deadline), the other runs the
        # admitted ones without a second wait in the default thread pool.
        limiters = state.chunk_limiters = (
            anyio.CapacityLimiter(CHUNK_THREADS), anyio.CapacityLimiter(CHUNK_THREADS)
        )
    admission, threads = limiters
    try:
        with anyio.fail_after(max(0.0, request_time_left(settings.db_pool_timeout))):
            await admission.acquire()
    except TimeoutError:
        return overloaded_response()
    try:
        return await anyio.to_thread.run_sync(func, *args, limiter=threads)
    finally:
        admission.release()


def _put_chunk_in_thread(data, request, settings, store, session_id, segment, seq) -> dict[str, Any]:
    token = request.headers.get(SESSION_HEADER, "")
    if _known_tokens(request).get(hash_token(token)) == session_id:
        # The token was checked against the database when this upload began (read_upload)
        # and a session's token never changes: only its rate limit is left to count.
        request.app.state.rate_limiter.hit(token, settings.rate_limit_per_minute)
        stored = store_next_chunk(request, settings, store, session_id, segment, seq, data)
        if stored is not None:
            return stored
    with request.app.state.sessionmaker() as db:
        sess = get_study_session(request, db, settings, session_id)
        return store_chunk(request, sess, db, settings, store, segment, seq, data)


class CompleteRequest(BaseModel):
    n_chunks: int = Field(ge=0, le=MAX_DB_INT)


@router.post("/recording/{segment}/complete")
def complete_segment(
    segment: SegmentIndex, body: CompleteRequest, request: Request, sess: CurrentSession, db: DB
) -> dict[str, Any]:
    """Mark a segment as fully uploaded (the recorder stopped and every chunk arrived)."""
    seg = _segment(db, sess, segment)
    if body.n_chunks != seg.n_chunks:
        raise HTTPException(
            409,
            f"segment {segment}: the server has {seg.n_chunks} of {body.n_chunks} chunks; "
            f"upload chunk {seg.n_chunks} next",
        )
    if seg.n_chunks == 0:
        raise HTTPException(409, f"segment {segment} has no chunks")
    seg.complete = True
    db.commit()
    # the stream's last packet is whole now: the last image's clips can be finished
    _queue_clips(request, db, sess)
    return segment_info(seg)


class EventRequest(BaseModel):
    segment: int = Field(ge=0, le=MAX_DB_INT)
    image_index: int = Field(ge=1, le=MAX_DB_INT)
    kind: Literal["baseline_start", "image_shown", "image_hidden", "image_interrupted"]
    video_time: float = Field(ge=0, le=24 * 3600)
    # image_interrupted only: why the presentation ended early
    reason: Literal["camera", "hidden", "reload", "back", "network", "recording", "left"] | None = None


# A page being left breaks its uploads: a "recording" or "network" end reported for the
# same showing as a leave is the leave's symptom, whichever request reached us first.
_LEFT = ("left", "reload", "back")
_SYMPTOMS = ("recording", "network")


def _names_the_end_better(stored: str | None, new: str | None) -> bool:
    """Whether ``new`` says better than ``stored`` why one showing ended: the page, back
    again, names how it was left ("left" → "reload"/"back"), and a leave names the cause of
    a recording or network failure reported in the same moment."""
    if new not in _LEFT or new == stored:
        return False
    return stored == "left" or stored in _SYMPTOMS


@router.post("/events")
def post_event(body: EventRequest, request: Request, sess: CurrentSession, db: DB) -> dict[str, Any]:
    """Record when the baseline started / the image appeared / disappeared, in seconds of
    video time (zero = capture time of the segment's first recorded frame).

    ``image_interrupted`` (with a ``reason``) ends a presentation early: the image was
    blanked at ``video_time`` and will be shown again in a new segment. An attempt that
    ended so never counts as presented; the replay is stored as a later exposure.
    """
    if body.image_index > sess.n_images:
        raise HTTPException(422, f"image_index {body.image_index}: this session has {sess.n_images} images")
    interrupted = body.kind == "image_interrupted"
    if interrupted != (body.reason is not None):
        raise HTTPException(422, "reason: give it with image_interrupted events, and only with them")
    _segment(db, sess, body.segment, abandoned_ok=interrupted)
    mine = [e for e in sess.events if (e.segment, e.image_index) == (body.segment, body.image_index)]
    same = [e for e in mine if e.kind == body.kind]
    if same:  # retried request: keep the first measurement
        if interrupted and _names_the_end_better(same[0].reason, body.reason):
            same[0].reason = body.reason
            db.commit()
        return {"id": same[0].id, "duplicate": True}
    if body.kind in ("image_hidden", "image_interrupted"):
        other = "image_interrupted" if body.kind == "image_hidden" else "image_hidden"
        if any(e.kind == other for e in mine):
            raise HTTPException(
                409, f"image {body.image_index} of segment {body.segment} already has {other}"
            )
    if body.kind != "baseline_start":
        earlier = "image_shown" if interrupted else EVENT_KINDS[EVENT_KINDS.index(body.kind) - 1]
        prior = [e for e in mine if e.kind == earlier]
        if not prior:
            raise HTTPException(409, f"event {body.kind} of image {body.image_index} before {earlier}")
        if body.video_time < prior[-1].video_time:
            raise HTTPException(
                422, f"event {body.kind} at {body.video_time:.3f} s is earlier than {earlier}"
            )
    ev = Event(
        session_id=sess.id,
        segment=body.segment,
        image_index=body.image_index,
        kind=body.kind,
        video_time=body.video_time,
        reason=body.reason,
    )
    db.add(ev)
    db.commit()
    if body.kind == "image_hidden":
        _queue_clips(request, db, sess, new_image=True)
    return {"id": ev.id, "duplicate": False}


_CHUNK_PATH = re.compile(r"/api/sessions/(\d{1,10})/recording/(\d{1,10})/chunks/(\d{1,7})$")


class ChunkFastPath:
    """ASGI middleware: the next chunk of a segment, stored without FastAPI's routing,
    dependency solving and middleware (a third of the server's CPU per chunk).

    Every participant sends one chunk a second, and almost all of them are the plain case:
    a known session token, ``video/webm`` with a Content-Length within the limit, the
    next sequence number of an open segment. Only that case is served here, by the
    same :func:`store_next_chunk` (same durability, same admission with the request's
    deadline); anything else (a first chunk, a retry, an unknown token, settings
    overridden, any refusal) goes on to the route, :func:`put_chunk`, with its body.
    """

    def __init__(self, app, study) -> None:
        self.app = app
        self.study = study  # the FastAPI app: its state and dependency overrides

    async def __call__(self, scope, receive, send) -> None:
        match = (
            _CHUNK_PATH.search(scope["path"])
            if scope["type"] == "http" and scope["method"] == "PUT" and not self.study.dependency_overrides
            else None
        )
        if match is None:
            await self.app(scope, receive, send)
            return
        session_id, segment, seq = (int(g) for g in match.groups())
        settings = self.study.state.settings
        headers = dict(scope["headers"])
        token = headers.get(b"x-session-token", b"").decode("latin-1")
        length = headers.get(b"content-length", b"")
        known = _known_tokens_of(self.study.state).get(hash_token(token)) if token else None
        if (
            seq == 0
            or scope.get("query_string")  # the route's checks (control characters) apply
            or session_id > MAX_DB_INT
            or segment > MAX_DB_INT
            or known != session_id
            or _mime(headers.get(b"content-type", b"").decode("latin-1")) != "video/webm"
            or not length.isdigit()
            or not 0 < int(length) <= settings.max_chunk_bytes
        ):
            await self.app(scope, receive, send)
            return
        body = await receive_body(receive)
        if body is None:
            return
        data = bytes(body)
        request = Request(scope, receive)
        try:
            response = await self._store(request, settings, session_id, segment, seq, data)
        except HTTPException as exc:
            response = JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        except Exception as exc:
            from sqlalchemy import exc as sa_exc

            locked = isinstance(exc, sa_exc.OperationalError) and "database is locked" in str(exc.orig)
            if isinstance(exc, sa_exc.TimeoutError) or locked:
                response = overloaded_response()
            elif is_storage_full(exc):
                response = storage_full_response(request, exc)
            else:
                raise
        if response is None:  # not the plain case after all: the route decides, with every check
            sent = False

            async def replay():
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": data, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
            return
        await response(scope, receive, send)

    async def _store(self, request, settings, session_id, segment, seq, data):
        state = self.study.state
        token = request.headers[SESSION_HEADER]
        state.rate_limiter.hit(token, settings.rate_limit_per_minute)
        stored = await _run_admitted(
            state, settings, store_next_chunk, request, settings, state.store, session_id, segment, seq, data
        )
        if isinstance(stored, JSONResponse):  # the 503 of a chunk not admitted in time
            return stored
        return None if stored is None else JSONResponse(stored)
