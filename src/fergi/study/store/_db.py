"""Database of the study app: SQLAlchemy 2 models and engine set-up.

SQLite (the default, one file in WAL mode so the worker and requests do not block
each other) and PostgreSQL URLs both work: only portable column types are used.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)
from sqlalchemy.pool import QueuePool

from fergi._errors import FergiError


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def hash_token(token: str) -> str:
    """Tokens are stored hashed, so a leaked database does not open sessions."""
    return hashlib.sha256(token.encode()).hexdigest()


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Participant(Base):
    __tablename__ = "participants"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # sha256 of the invitation token (hash_token): the plain token is shown once, at creation.
    invite_token: Mapped[str | None] = mapped_column(String(64), unique=True, index=True)
    invite_reusable: Mapped[bool] = mapped_column(Boolean, default=False)
    invite_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    sessions: Mapped[list[StudySession]] = relationship(
        back_populates="participant", order_by="StudySession.index"
    )


class StudySession(Base):
    __tablename__ = "sessions"
    __table_args__ = (UniqueConstraint("participant_id", "index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[str] = mapped_column(ForeignKey("participants.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    session_type: Mapped[str] = mapped_column(String(16))  # "structured" | "free"
    n_images: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    user_agent: Mapped[str] = mapped_column(Text, default="")

    consent_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    consent_version: Mapped[str | None] = mapped_column(String(32))
    share_video: Mapped[bool] = mapped_column(Boolean, default=False)

    structured_input: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    prompt_attempts: Mapped[int] = mapped_column(Integer, default=0)
    generated_prompts: Mapped[list[Any]] = mapped_column(JSON, default=list)
    prompt: Mapped[str | None] = mapped_column(Text)
    prompt_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    generator: Mapped[str | None] = mapped_column(String(64))

    webcam_ok_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    face_confidence: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    participant: Mapped[Participant] = relationship(back_populates="sessions")
    images: Mapped[list[Image]] = relationship(order_by="Image.index", cascade="all")
    answers: Mapped[list[Answer]] = relationship(order_by="Answer.image_index", cascade="all")
    ranking: Mapped[Ranking | None] = relationship(cascade="all")
    events: Mapped[list[Event]] = relationship(order_by="Event.id", cascade="all")
    segments: Mapped[list[Segment]] = relationship(order_by="Segment.index", cascade="all")
    jobs: Mapped[list[Job]] = relationship(order_by="Job.id", cascade="all")
    clips: Mapped[list[Clip]] = relationship(cascade="all")
    labels: Mapped[list[Label]] = relationship(cascade="all")


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("session_id", "index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)  # 1-based, the release's image_index
    seed: Mapped[int] = mapped_column(Integer)
    invalid: Mapped[bool] = mapped_column(Boolean, default=False)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Answer(Base):
    __tablename__ = "answers"
    __table_args__ = (UniqueConstraint("session_id", "image_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), index=True)
    image_index: Mapped[int] = mapped_column(Integer)
    missing_elements: Mapped[str] = mapped_column(Text, default="")
    overall_rating: Mapped[int] = mapped_column(Integer)
    alignment_rating: Mapped[int] = mapped_column(Integer)
    fidelity_rating: Mapped[int] = mapped_column(Integer)
    issues: Mapped[list[Any]] = mapped_column(JSON, default=list)
    emotions: Mapped[list[Any]] = mapped_column(JSON, default=list)
    answered_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Ranking(Base):
    __tablename__ = "rankings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), unique=True)
    order: Mapped[list[Any]] = mapped_column(JSON)  # image indices, best first
    method: Mapped[str] = mapped_column(String(16), default="drag")
    ranked_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Segment(Base):
    """One MediaRecorder stream; a reload starts a new one (its own webm header)."""

    __tablename__ = "segments"
    __table_args__ = (UniqueConstraint("session_id", "index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    mime_type: Mapped[str] = mapped_column(String(64))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    n_chunks: Mapped[int] = mapped_column(Integer, default=0)
    n_bytes: Mapped[int] = mapped_column(Integer, default=0)
    complete: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # Set when the segment can never complete (its stream start was refused, no upload for
    # ``abandoned_segment_after_s``, or the session was processed without it complete).
    abandoned_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    abandon_reason: Mapped[str | None] = mapped_column(Text)

    chunks: Mapped[list[Chunk]] = relationship(order_by="Chunk.seq", cascade="all")


class Chunk(Base):
    __tablename__ = "chunks"
    __table_args__ = (UniqueConstraint("segment_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    segment_id: Mapped[int] = mapped_column(ForeignKey("segments.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), index=True)
    segment: Mapped[int] = mapped_column(Integer)
    image_index: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    video_time: Mapped[float] = mapped_column(Float)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # Why a presentation ended early ("camera", "hidden", "reload", "back", "network",
    # "recording", "left"): set on ``image_interrupted`` events only.
    reason: Mapped[str | None] = mapped_column(String(32))


class Job(Base):
    """A unit of background work; the table is the queue, so it survives restarts."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "generate" | "process"
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    stages: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class Clip(Base):
    __tablename__ = "clips"
    __table_args__ = (UniqueConstraint("session_id", "image_index", "clip"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), index=True)
    image_index: Mapped[int] = mapped_column(Integer)
    clip: Mapped[str] = mapped_column(String(16))  # "baseline" | "reaction"
    n_frames: Mapped[int] = mapped_column(Integer, default=0)
    valid_frame_share: Mapped[float | None] = mapped_column(Float)
    clip_valid: Mapped[bool | None] = mapped_column(Boolean)
    # Why the clip is invalid (frame count, face visibility); None when valid.
    invalid_reason: Mapped[str | None] = mapped_column(Text)
    # The frames its window should hold (duration x fps) and the segment it was cut from:
    # a replay of the image in a later segment replaces it.
    expected_frames: Mapped[int | None] = mapped_column(Integer)
    segment: Mapped[int | None] = mapped_column(Integer)
    # Which showing of the image the clip's presentation was (1: the first) and for how
    # many seconds the participant had seen the image before it (0.0 on a first showing).
    exposure: Mapped[int | None] = mapped_column(Integer)
    seen_before_s: Mapped[float | None] = mapped_column(Float)
    activations: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    video_file: Mapped[str | None] = mapped_column(String(255))  # relative to media dir
    features_file: Mapped[str | None] = mapped_column(String(255))


class Label(Base):
    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), index=True)
    image_a: Mapped[int] = mapped_column(Integer)
    image_b: Mapped[int] = mapped_column(Integer)
    preferred: Mapped[int | None] = mapped_column(Integer)
    score_difference: Mapped[float] = mapped_column(Float)
    confident: Mapped[bool] = mapped_column(Boolean)


#: (arrival, deadline) of the request being served, in ``time.monotonic()`` seconds; None
#: outside requests (the worker). Its waits for a connection and for SQLite's write lock
#: end at the deadline, so that an overloaded server answers 503 within the pool timeout
#: of the request's arrival, not after each wait in turn (thread, connection, lock).
REQUEST_DEADLINE: ContextVar[tuple[float, float] | None] = ContextVar("fergi_request_deadline", default=None)
#: SQLite's busy_timeout (ms) outside requests.
SQLITE_BUSY_MS = 10_000


def request_time_left(default: float) -> float:
    """Seconds the current request may still wait (``default`` outside a request)."""
    span = REQUEST_DEADLINE.get()
    if span is None:
        return default
    return min(default, span[1] - time.monotonic())


class _DeadlinePool(QueuePool):
    """A QueuePool whose wait for a connection ends at the request's deadline."""

    @property
    def _timeout(self) -> float:
        return max(0.001, request_time_left(self._full_timeout))

    @_timeout.setter
    def _timeout(self, value: float) -> None:
        self._full_timeout = value

    def recreate(self) -> QueuePool:
        # The new pool gets the full timeout, not what a request happens to have left.
        token = REQUEST_DEADLINE.set(None)
        try:
            return super().recreate()
        finally:
            REQUEST_DEADLINE.reset(token)


def _sqlite_busy_until_deadline(dbapi_connection, _record, _proxy) -> None:
    # The write lock is waited for until the request's deadline at most (10 s outside requests).
    ms = int(1000 * max(0.0, request_time_left(SQLITE_BUSY_MS / 1000)))
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={ms}")
    cursor.close()


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the worker write while requests read; busy_timeout rides out short locks.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    cursor.close()


def make_engine(url: str, *, pool_size: int | None = None, pool_timeout: float | None = None) -> Engine:
    """Create the engine for ``url`` and the tables if they are missing.

    Parameters
    ----------
    url : str
        SQLAlchemy URL, e.g. ``sqlite:///study.sqlite3`` or
        ``postgresql+psycopg://user:pw@host/db``.
    pool_size : int, optional
        Connections kept (and at most opened) by this process; SQLAlchemy's default
        (5 + 10 overflow) when omitted.
    pool_timeout : float, optional
        Seconds a caller waits for a free connection before ``sqlalchemy.exc.TimeoutError``.

    Returns
    -------
    sqlalchemy.engine.Engine
    """
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError with a long message
        raise FergiError(f"--db {url!r}: not a database URL ({exc})") from None
    kwargs: dict[str, Any] = {"future": True}
    if parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        database = parsed.database
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            file_db = True
        else:
            file_db = False
    else:
        kwargs["pool_pre_ping"] = True
        file_db = True
    if file_db:  # an in-memory SQLite database has a single shared connection, no queue
        if pool_size is not None:
            # A fixed size: overflow connections would only be opened under overload.
            kwargs["pool_size"], kwargs["max_overflow"] = pool_size, 0
            kwargs["poolclass"] = _DeadlinePool
        if pool_timeout is not None:
            kwargs["pool_timeout"] = pool_timeout
    try:
        engine = create_engine(parsed, **kwargs)
    except ModuleNotFoundError as exc:
        raise FergiError(
            f"--db {parsed.render_as_string(hide_password=True)}: driver {exc.name!r} is not "
            "installed (pip install 'fergi[postgres]' for PostgreSQL)"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        if file_db:
            event.listen(engine, "checkout", _sqlite_busy_until_deadline)
    try:
        Base.metadata.create_all(engine)
        _upgrade(engine)
    except Exception as exc:
        raise FergiError(
            f"--db {parsed.render_as_string(hide_password=True)}: cannot open the database ({exc.__class__.__name__}: {str(exc).splitlines()[0]})"
        ) from None
    return engine


def _upgrade(engine: Engine) -> None:
    """Bring a database made by an earlier version up to date: add the columns it lacks
    (all of them nullable or defaulted) and hash invitation tokens stored in plain text."""
    from sqlalchemy import inspect, text

    with engine.begin() as conn:
        inspector = inspect(conn)
        for table in Base.metadata.sorted_tables:
            have = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in have:
                    continue
                kind = column.type.compile(dialect=engine.dialect)
                default = ""
                if column.default is not None and isinstance(column.default.arg, bool):
                    default = " DEFAULT " + ("TRUE" if column.default.arg else "FALSE")
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}{default}'))
        # Plain tokens (token_urlsafe(24), 32 characters) never look like a 64-digit hash.
        rows = conn.execute(
            text("SELECT id, invite_token FROM participants WHERE invite_token IS NOT NULL")
        ).all()
        for pid, token in rows:
            if len(token) != 64:
                # such links were reusable before: they stay so
                conn.execute(
                    text("UPDATE participants SET invite_token = :h, invite_reusable = TRUE WHERE id = :id"),
                    {"h": hash_token(token), "id": pid},
                )


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def redacted_url(url: str) -> str:
    """A database URL with its password masked, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)


def sqlite_file(url: str) -> Path | None:
    """The database file of an SQLite URL or a bare path; None for a server database, an
    in-memory one, or a URL that does not parse (:func:`make_engine` reports it)."""
    if "://" not in url:
        return Path(url).expanduser().resolve()
    try:
        parsed = make_url(url)
    except Exception:
        return None
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    return Path(database).expanduser().resolve()
