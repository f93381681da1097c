"""The study's store: its tables (SQLAlchemy models, engine) and its files (the media
store, local or on object storage).

Import rule: the bottom room. It imports only the shared core (``fergi._errors``); every
other room, ``fergi.study._settings`` and ``fergi.study._export`` may import it, by the
names below (settings reach it as plain objects, never by import).
"""

from fergi.study.store._db import (
    REQUEST_DEADLINE,
    SQLITE_BUSY_MS,
    Answer,
    Base,
    Chunk,
    Clip,
    Event,
    Image,
    Job,
    Label,
    Participant,
    Ranking,
    Segment,
    StudySession,
    hash_token,
    make_engine,
    make_sessionmaker,
    redacted_url,
    request_time_left,
    sqlite_file,
    utcnow,
)
from fergi.study.store._files import ChunkStream, RemotePath, StorePath, is_url, write_atomic
from fergi.study.store._keys import KEY_CHECK_NAME, check_media_key
from fergi.study.store._presentations import (
    DEFAULT_MAX_SEEN_BEFORE_S,
    INTERRUPT_REASONS,
    PresentationAttempt,
    exposures_by_segment,
    presentation_attempts,
)
from fergi.study.store._storage import MediaStore, open_store, store_from_settings
from fergi.study.store._temporary import clean_temporary_files

__all__ = [
    "DEFAULT_MAX_SEEN_BEFORE_S",
    "INTERRUPT_REASONS",
    "KEY_CHECK_NAME",
    "REQUEST_DEADLINE",
    "SQLITE_BUSY_MS",
    "Answer",
    "Base",
    "Chunk",
    "ChunkStream",
    "Clip",
    "Event",
    "Image",
    "Job",
    "Label",
    "MediaStore",
    "Participant",
    "PresentationAttempt",
    "Ranking",
    "RemotePath",
    "Segment",
    "StorePath",
    "StudySession",
    "check_media_key",
    "clean_temporary_files",
    "exposures_by_segment",
    "hash_token",
    "is_url",
    "make_engine",
    "make_sessionmaker",
    "open_store",
    "presentation_attempts",
    "redacted_url",
    "request_time_left",
    "sqlite_file",
    "store_from_settings",
    "utcnow",
    "write_atomic",
]
