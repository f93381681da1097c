"""The study's database and worker, built from the settings (what ``fergi serve``'s app
and ``fergi worker`` share)."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from fergi.study._settings import StudySettings
from fergi.study.jobs._queue import QueueDispatcher, is_postgres, schema_lock, uses_queue
from fergi.study.jobs._worker import Worker
from fergi.study.store import MediaStore, make_engine, make_sessionmaker, store_from_settings


def open_database(settings: StudySettings, **pool) -> Engine:
    """The engine of the study database, its tables created if missing.

    With PostgreSQL the tables are created under an advisory lock, so that a server and
    workers starting at once do not race; ``pool`` goes to :func:`fergi.study.make_engine`.
    """
    url = settings.resolved_db_url
    if is_postgres(url):
        with schema_lock(url):
            return make_engine(url, **pool)
    return make_engine(url, **pool)


def create_worker(
    settings: StudySettings,
    factory: sessionmaker[Session] | None = None,
    store: MediaStore | None = None,
    *,
    dispatch: bool | None = None,
) -> Worker:
    """The study's job runner for ``settings``.

    Parameters
    ----------
    settings : StudySettings
    factory : sessionmaker, optional
        Database sessions (default: a new engine on ``settings``' database, see
        :func:`open_database`).
    store : MediaStore, optional
        The media (default: ``settings``' media store).
    dispatch : bool, optional
        Hand the queued jobs to ``fergi worker`` processes through procrastinate instead
        of running them in threads here (default: what ``settings.queue`` says, see
        :func:`fergi.study.jobs.uses_queue`). ``fergi worker`` itself runs them: False.

    Returns
    -------
    Worker
        Not started: :meth:`Worker.start` runs its threads (the app's lifespan does).
    """
    if factory is None:
        factory = make_sessionmaker(open_database(settings))
    if store is None:
        store = store_from_settings(settings)
    if dispatch is None:
        dispatch = uses_queue(settings)
    dispatcher = QueueDispatcher(factory, settings.resolved_db_url) if dispatch else None
    return Worker(factory, settings, store, dispatcher=dispatcher)
