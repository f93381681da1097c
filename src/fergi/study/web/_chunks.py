"""Storing a segment's chunks: in order, idempotent, durable before they count, the stream
start checked to be WebM, and the clips queued when a presented image waits for video.
What the recording router and its fast path (:class:`ChunkFastPath`) share; not a router.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from fergi.study.jobs import enqueue
from fergi.study.protocol import abandon_segment, needs_clips
from fergi.study.store import (
    Chunk,
    Clip,
    Event,
    Segment,
    StudySession,
)


class RecordingRefused(HTTPException):
    """A refusal the client acts on: answered ``{"detail": ..., "code": ...}``."""

    def __init__(self, status_code: int, detail: str, code: str):
        super().__init__(status_code, detail)
        self.code = code


WEBM_MAGIC = b"\x1a\x45\xdf\xa3"


_SEGMENT_ID = b"\x18\x53\x80\x67"


_DOCTYPE_ID = b"\x42\x82"


_VOID_ID = b"\xec"


def _vint(data: bytes, pos: int, *, keep_marker: bool) -> tuple[int, int] | None:
    """An EBML variable-length integer at ``pos``: (value, end), or None if malformed.

    Element ids keep their length marker (``keep_marker``), sizes drop it.
    """
    if pos >= len(data) or data[pos] == 0:
        return None
    length = 8 - data[pos].bit_length() + 1
    if pos + length > len(data):
        return None
    value = int.from_bytes(data[pos : pos + length], "big")
    if not keep_marker:
        value &= (1 << (7 * length)) - 1
    return value, pos + length


def webm_header_problem(data: bytes) -> str | None:
    """Why ``data`` does not start a WebM stream, or None when it does.

    A WebM stream starts with an EBML header element whose children parse (ids and
    sizes inside the header) and name the DocType ``webm``, followed by the Segment.
    The magic bytes alone are not enough: anything can follow them.
    """
    if not data.startswith(WEBM_MAGIC):
        return "no EBML header"
    size = _vint(data, len(WEBM_MAGIC), keep_marker=False)
    if size is None:
        return "the EBML header's size is malformed"
    length, pos = size
    end = pos + length
    if end > len(data) or length > 4096:
        return "the EBML header is truncated"
    doctype = None
    while pos < end:
        element = _vint(data, pos, keep_marker=True)
        if element is None or element[1] - pos > 4:
            return "the EBML header holds a malformed element id"
        id_end = element[1]
        child = _vint(data, id_end, keep_marker=False)
        if child is None or child[1] + child[0] > end:
            return "the EBML header holds a malformed element"
        if data[pos:id_end] == _DOCTYPE_ID:
            doctype = data[child[1] : child[1] + child[0]].rstrip(b"\0")
        pos = child[1] + child[0]
    if doctype != b"webm":
        return "the EBML header's DocType is not webm" if doctype is not None else "the EBML header has no DocType"
    while data[end : end + 1] == _VOID_ID:  # padding may sit between the header and the Segment
        void = _vint(data, end + 1, keep_marker=False)
        if void is None:
            return "malformed padding after the EBML header"
        end = void[1] + void[0]
    if data[end : end + len(_SEGMENT_ID)] != _SEGMENT_ID:
        return "no Segment follows the EBML header"
    return None


def _queue_clips(request: Request, db, sess: StudySession, *, new_image: bool = False) -> None:
    """Real-time processing: an image presented and not yet analysed may now be covered."""
    # The one-query check covers every chunk; a replay (an image whose stored clips a
    # later presentation supersedes) shows up only with its image_hidden event.
    if not _clips_wanted(db, sess.id):
        if not new_image:
            return
        db.refresh(sess)  # the event just committed is not in the loaded relationships
        if not needs_clips(sess):
            return
    job = enqueue(db, sess.id, "clips", revive=new_image)
    db.commit()
    if job.status != "queued":
        return
    worker = getattr(request.app.state, "worker", None)
    if worker is not None:
        worker.wake("clips")


def _clips_wanted(db, session_id: int) -> bool:
    """``needs_clips`` of the session as stored now, in one query (it runs for every chunk):
    an unfinished session with an image presented whose clips are not stored yet."""
    stored = select(Clip.id).where(
        Clip.session_id == session_id, Clip.image_index == Event.image_index, Clip.features_file.is_not(None)
    )
    query = (
        select(Event.id)
        .join(StudySession, StudySession.id == Event.session_id)
        .where(
            Event.session_id == session_id,
            Event.kind == "image_hidden",
            StudySession.finished_at.is_(None),
            ~stored.exists(),
        )
        .limit(1)
    )
    return db.scalar(query) is not None


def _segment(db, sess: StudySession, segment: int, *, abandoned_ok: bool = False) -> Segment:
    """The segment; an abandoned one is refused (``segment_abandoned``) unless ``abandoned_ok``."""
    seg = db.scalar(select(Segment).where(Segment.session_id == sess.id, Segment.index == segment))
    if seg is None:
        raise HTTPException(404, f"recording segment {segment} was not started for this session")
    if seg.abandoned_at is not None and not abandoned_ok:
        raise RecordingRefused(
            409,
            f"segment {segment} was abandoned ({seg.abandon_reason}); start a new segment "
            "and replay the image from its baseline",
            "segment_abandoned",
        )
    return seg


def segment_info(seg: Segment) -> dict[str, Any]:
    return {
        "segment": seg.index,
        "mime_type": seg.mime_type,
        "n_chunks": seg.n_chunks,
        "n_bytes": seg.n_bytes,
        "next_seq": seg.n_chunks,
        "complete": seg.complete,
        "abandoned": seg.abandoned_at is not None,
        "abandon_reason": seg.abandon_reason,
    }


def _chunk_statements():
    """The statements of :func:`store_next_chunk`, built once: building a statement
    costs more CPU than running it, and the route runs for every chunk."""
    from sqlalchemy import bindparam, exists, update

    seg, other = Segment.__table__, Segment.__table__.alias("other")
    session_bytes = (
        select(func.coalesce(func.sum(other.c.n_bytes), 0))
        .where(other.c.session_id == bindparam("session_id"))
        .scalar_subquery()
    )
    # _clips_wanted's query, asked in the same round trip
    clip, event, study = Clip.__table__, Event.__table__, StudySession.__table__
    stored = (
        select(clip.c.id)
        .where(
            clip.c.session_id == bindparam("session_id"),
            clip.c.image_index == event.c.image_index,
            clip.c.features_file.is_not(None),
        )
    )
    wanted = exists(
        select(event.c.id)
        .join(study, study.c.id == event.c.session_id)
        .where(
            event.c.session_id == bindparam("session_id"),
            event.c.kind == "image_hidden",
            study.c.finished_at.is_(None),
            ~stored.exists(),
        )
    )
    state = select(
        seg.c.id, seg.c.n_chunks, seg.c.n_bytes, seg.c.complete, seg.c.abandoned_at, seg.c.mime_type,
        session_bytes.label("session_bytes"), wanted.label("clips_wanted"),
    ).where(seg.c.session_id == bindparam("session_id"), seg.c.index == bindparam("segment"))
    insert = Chunk.__table__.insert()
    # Only if nothing moved since the state was read (another request of the same chunk).
    advance = (
        update(seg)
        .where(
            seg.c.id == bindparam("segment_id"),
            seg.c.n_chunks == bindparam("seq"),
            seg.c.complete.is_(False),
            seg.c.abandoned_at.is_(None),
        )
        .values(n_chunks=bindparam("seq") + 1, n_bytes=seg.c.n_bytes + bindparam("size"))
    )
    return state, insert, advance


_CHUNK_STATEMENTS = None


def store_next_chunk(request, settings, store, session_id, segment, seq, data) -> dict[str, Any] | None:
    """Store the next chunk of a segment in two database round trips (one read, one
    write), or None when it is anything else (a retry, out of order, over a limit, a
    stream start, a race): :func:`store_chunk` then decides, with every check.

    The guarantee is :func:`store_chunk`'s: the bytes are fsynced before the row is
    committed, and renamed into place (the folder fsynced) before the answer.
    """
    import hashlib

    global _CHUNK_STATEMENTS
    if seq == 0:
        return None  # the stream start is checked by store_chunk
    if _CHUNK_STATEMENTS is None:
        _CHUNK_STATEMENTS = _chunk_statements()
    state_stmt, insert_stmt, advance_stmt = _CHUNK_STATEMENTS
    engine = request.app.state.engine
    with engine.connect() as conn:
        row = conn.execute(state_stmt, {"session_id": session_id, "segment": segment}).first()
        conn.rollback()  # the read transaction ends before the file is written
        if (
            row is None
            or row.complete
            or row.abandoned_at is not None
            or seq != row.n_chunks
            or row.n_bytes + len(data) > settings.max_recording_bytes
            or row.session_bytes + len(data) > settings.max_session_recording_bytes
        ):
            return None
        digest = hashlib.sha256(data).hexdigest()
        staged = store.stage_chunk(session_id, segment, seq, data, digest)
        try:
            conn.execute(insert_stmt, {"segment_id": row.id, "seq": seq, "size": len(data), "sha256": digest})
            moved = conn.execute(advance_stmt, {"segment_id": row.id, "seq": seq, "size": len(data)}).rowcount
            if moved != 1:
                conn.rollback()
                return None
            conn.commit()
        except IntegrityError:  # the same chunk raced in: store_chunk sorts it out
            conn.rollback()
            return None
    store.commit_chunk(staged, session_id, segment, seq)
    if row.clips_wanted:
        with request.app.state.sessionmaker() as db:
            sess = db.get(StudySession, session_id)
            if sess is not None:
                _queue_clips(request, db, sess)
    return {
        "seq": seq,
        "duplicate": False,
        "segment": segment,
        "mime_type": row.mime_type,
        "n_chunks": seq + 1,
        "n_bytes": row.n_bytes + len(data),
        "next_seq": seq + 1,
        "complete": False,
        "abandoned": False,
        "abandon_reason": None,
    }


def store_chunk(
    request: Request,
    sess: StudySession,
    db,
    settings,
    store,
    segment: int,
    seq: int,
    data: bytes,
) -> dict[str, Any]:
    """Store chunk ``seq`` of a segment of ``sess``: idempotent, in order, durable first."""
    import hashlib

    seg = _segment(db, sess, segment)
    digest = hashlib.sha256(data).hexdigest()
    # Only a chunk before the next expected one can be a retry (a race is the IntegrityError below).
    existing = db.scalar(select(Chunk).where(Chunk.segment_id == seg.id, Chunk.seq == seq)) if seq < seg.n_chunks else None
    if existing is not None:
        if existing.sha256 == digest:
            # a retry after a lost response: finish the commit the first request began
            store.finish_commit(sess.id, segment, seq, digest)
            return {"seq": seq, "duplicate": True, **segment_info(seg)}
        raise HTTPException(409, f"chunk {seq} was already received with different content")
    if seg.complete:
        raise HTTPException(409, f"segment {segment} is complete; no more chunks are accepted")
    if seq != seg.n_chunks:
        raise HTTPException(
            409, f"chunk {seq} is out of order: the server expects chunk {seg.n_chunks} next"
        )
    problem = webm_header_problem(data) if seq == 0 else None
    if problem is not None:
        # Nothing can follow a stream without its header: abandon the segment, so that it
        # blocks nothing, and tell the client to open a new one.
        abandon_segment(seg, f"chunk 0 is not a WebM stream ({problem})")
        db.commit()
        raise RecordingRefused(
            415,
            f"chunk 0 is not a WebM stream ({problem}); segment abandoned: start a new "
            "segment (new recorder) and replay the image from its baseline",
            "bad_stream_start",
        )
    if seg.n_bytes + len(data) > settings.max_recording_bytes:
        raise HTTPException(
            413, f"recording exceeds the limit of {settings.max_recording_bytes} bytes per segment"
        )
    session_bytes = db.scalar(select(func.coalesce(func.sum(Segment.n_bytes), 0)).where(Segment.session_id == sess.id))
    if session_bytes + len(data) > settings.max_session_recording_bytes:
        raise HTTPException(
            413,
            f"recording exceeds the limit of {settings.max_session_recording_bytes} bytes per session",
        )
    # The bytes are durable (under a temporary name) before the database says the chunk
    # exists, and get their final name only once its row is committed: an accepted
    # chunk is never lost, and a racing request's bytes never replace the winner's.
    staged = store.stage_chunk(sess.id, segment, seq, data, digest)
    db.add(Chunk(segment_id=seg.id, seq=seq, size=len(data), sha256=digest))
    seg.n_chunks = seq + 1
    seg.n_bytes += len(data)
    try:
        db.commit()
    except IntegrityError:  # the same chunk raced in twice; the first one won
        db.rollback()
        if db.scalar(select(Chunk.sha256).where(Chunk.segment_id == seg.id, Chunk.seq == seq)) != digest:
            store.discard(staged)  # (same bytes: same staged name, the winner commits it)
        db.refresh(seg)
        return {"seq": seq, "duplicate": True, **segment_info(seg)}
    store.commit_chunk(staged, sess.id, segment, seq)
    _queue_clips(request, db, sess)
    return {"seq": seq, "duplicate": False, **segment_info(seg)}
