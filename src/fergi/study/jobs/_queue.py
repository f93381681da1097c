"""Durable distributed processing of study jobs through PostgreSQL (procrastinate).

With a PostgreSQL database, ``fergi serve`` runs no jobs: every job it queues in the
``jobs`` table (which stays the record the admin page shows: status, stages, errors)
is also deferred as a procrastinate job, and any number of ``fergi worker`` processes,
on any machines, take them. The job functions are the same as the in-process worker's
(:class:`fergi.study.jobs._worker.Worker`); only the dispatch differs.

Guarantees:

* a job never runs twice at once: every procrastinate job of a session carries the
  lock ``fergi:session:<id>`` (so its jobs, of every kind, run one after another, as
  the in-process worker's per-session lock has them: a clips job and the session's
  processing never analyse the same image at once), and a row is claimed with an
  atomic ``UPDATE`` on its status;
* at most one procrastinate job waits per row (queueing lock ``fergi-job:<id>``);
  a duplicate that slips through finds the row done and does nothing;
* a job of a killed worker is picked up again: workers send heartbeats, and each
  worker periodically retries the ``doing`` jobs of workers whose heartbeat is older
  than the stalled timeout (:meth:`procrastinate.manager.JobManager.get_stalled_jobs`);
  the retried job finds its row ``running`` (under the lock, only a dead worker can
  have left it so) and runs it again, failing it after ``max_job_attempts`` tries;
* errors outside the job function (a lost database connection) are retried by
  procrastinate up to ``max_job_attempts`` times; a failing job is recorded as failed
  in its row, as with the in-process worker, and waits for the admin's retry.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from fergi._errors import FergiError
from fergi.study.store import Job, make_engine

logger = logging.getLogger(__name__)

TASK_NAME = "fergi.study.run_job"
QUEUE = "fergi-study"
#: pg_advisory_lock key held while tables and the procrastinate schema are created, so
#: that a server and workers starting at the same moment do not race.
SCHEMA_LOCK_KEY = 0x6665726769  # "fergi"


def is_postgres(url: str) -> bool:
    """Whether a SQLAlchemy URL names a PostgreSQL database."""
    try:
        return make_url(url).get_backend_name() == "postgresql"
    except Exception:
        return False


def uses_queue(settings) -> bool:
    """Whether the app hands its jobs to procrastinate (else: threads in-process).

    ``queue="procrastinate"`` (what ``fergi serve`` picks for a PostgreSQL database
    unless told otherwise, see :func:`resolve_queue`); ``"auto"`` and ``"threads"``
    keep the in-process worker, as an embedded app always had.
    """
    if getattr(settings, "queue", "auto") != "procrastinate":
        return False
    if not is_postgres(settings.resolved_db_url):
        raise FergiError("--queue procrastinate needs a PostgreSQL --db (postgresql+psycopg://...)")
    return True


def resolve_queue(settings) -> str:
    """``fergi serve``'s choice for ``queue="auto"``: procrastinate with a PostgreSQL
    database and the worker on, threads otherwise (SQLite, the zero-config default)."""
    if settings.queue != "auto":
        return settings.queue
    return "procrastinate" if is_postgres(settings.resolved_db_url) and settings.worker else "threads"


def libpq_url(url: str) -> str:
    """The libpq connection string of a SQLAlchemy PostgreSQL URL."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def _import_procrastinate():
    # deferred: procrastinate is an optional dependency (fergi[distributed])
    try:
        import procrastinate
    except ImportError:
        raise FergiError(
            "processing through PostgreSQL needs procrastinate: pip install 'fergi[distributed]'"
        ) from None
    return procrastinate


@contextmanager
def schema_lock(url: str) -> Iterator[object]:
    """Hold a PostgreSQL advisory lock (one process at a time creates tables)."""
    import psycopg

    try:
        conn = psycopg.connect(libpq_url(url), autocommit=True)
    except psycopg.Error as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        raise FergiError(f"--db {shown}: cannot connect ({str(exc).strip().splitlines()[0]})") from None
    try:
        conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK_KEY,))
        try:
            yield conn
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK_KEY,))
    finally:
        conn.close()


def prepare_database(url: str):
    """Create the study's tables and procrastinate's schema if missing; return the engine.

    Idempotent, and safe when several processes start at once (advisory lock).
    """
    procrastinate = _import_procrastinate()
    with schema_lock(url) as conn:
        engine = make_engine(url)
        if conn.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()[0] is None:
            logger.info("applying procrastinate's schema")
            conn.execute(procrastinate.schema.SchemaManager.get_schema())
    return engine


def _locks(job_id: int, session_id: int, kind: str) -> dict[str, str]:
    # kind is in the row, which the task reads; the lock is the session's
    return {"lock": f"fergi:session:{session_id}", "queueing_lock": f"fergi-job:{job_id}"}


def queued_jobs(factory: sessionmaker[Session], kind: str | None = None) -> list[tuple[int, int, str]]:
    """``(job id, session id, kind)`` of the queued rows that have no waiting
    procrastinate job yet (one query: every chunk upload asks)."""
    from sqlalchemy import String, cast, column, exists, literal, literal_column, table

    waiting = table("procrastinate_jobs", column("status"), column("queueing_lock"))
    pending = exists().where(
        waiting.c.status == literal_column("'todo'"),  # an enum: an untyped literal
        waiting.c.queueing_lock == literal("fergi-job:") + cast(Job.id, String),
    )
    with factory() as db:
        query = select(Job.id, Job.session_id, Job.kind).where(Job.status == "queued", ~pending).order_by(Job.id)
        if kind:
            query = query.where(Job.kind == kind)
        return [tuple(row) for row in db.execute(query).all()]


class QueueDispatcher:
    """The server's side: defers a procrastinate job for each queued row.

    Parameters
    ----------
    factory : sessionmaker
        Database sessions of the study database.
    db_url : str
        Its SQLAlchemy URL (PostgreSQL).
    """

    def __init__(self, factory: sessionmaker[Session], db_url: str) -> None:
        procrastinate = _import_procrastinate()
        self.factory = factory
        self.db_url = db_url
        self.app = procrastinate.App(
            connector=procrastinate.SyncPsycopgConnector(conninfo=libpq_url(db_url))
        )
        self._open = False

    def start(self) -> None:
        prepare_database(self.db_url).dispose()
        self.app.open()
        self._open = True
        # rows queued while no server ran (or by a server in threads mode)
        self.dispatch()

    def close(self) -> None:
        if self._open:
            self.app.close()
            self._open = False

    def dispatch(self, kind: str | None = None) -> int:
        """Defer every queued row of ``kind`` (all kinds: None); returns how many were new."""
        if not self._open:
            return 0
        from procrastinate.exceptions import AlreadyEnqueued

        count = 0
        for job_id, session_id, job_kind in queued_jobs(self.factory, kind):
            try:
                self.app.configure_task(TASK_NAME, queue=QUEUE, **_locks(job_id, session_id, job_kind)).defer(
                    job_id=job_id
                )
                count += 1
            except AlreadyEnqueued:
                pass  # its procrastinate job is waiting already
        return count


def run_workers(
    worker,
    *,
    concurrency: int = 1,
    heartbeat_s: float = 10.0,
    stalled_s: float = 30.0,
    sweep_s: float = 10.0,
    name: str | None = None,
) -> None:
    """Run procrastinate workers executing the study's jobs until stopped (SIGINT/SIGTERM).

    Parameters
    ----------
    worker : fergi.study.jobs._worker.Worker
        The job functions (its threads are not started).
    concurrency : int
        Jobs run at once in this process.
    heartbeat_s : float
        How often this process tells the database it is alive.
    stalled_s : float
        A worker silent for this long is taken as dead: its running jobs are retried.
    sweep_s : float
        How often stalled jobs and queued rows without a procrastinate job are looked for.
    name : str, optional
        The worker's name in procrastinate's tables (default host:pid).
    """
    procrastinate = _import_procrastinate()
    from procrastinate.exceptions import AlreadyEnqueued

    settings = worker.settings
    url = settings.resolved_db_url
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=libpq_url(url)))

    @app.task(
        name=TASK_NAME,
        queue=QUEUE,
        retry=procrastinate.RetryStrategy(max_attempts=max(0, settings.max_job_attempts - 1), wait=1),
    )
    def run_job(job_id: int) -> None:
        worker.run_job(int(job_id))

    async def maintain() -> None:
        while True:
            await asyncio.sleep(sweep_s)
            try:
                for job in await app.job_manager.get_stalled_jobs(
                    queue=QUEUE, task_name=TASK_NAME, seconds_since_heartbeat=stalled_s
                ):
                    try:
                        await app.job_manager.retry_job(job)
                        logger.warning("job %s of a silent worker is retried (%s)", job.id, job.task_kwargs)
                    except Exception as exc:  # another worker retried it first
                        logger.debug("stalled job %s not retried: %s", job.id, exc)
                for job_id, session_id, kind in await asyncio.to_thread(queued_jobs, worker.factory):
                    try:
                        await app.configure_task(TASK_NAME, queue=QUEUE, **_locks(job_id, session_id, kind)).defer_async(
                            job_id=job_id
                        )
                        logger.info("job %d had no queue entry; deferred", job_id)
                    except AlreadyEnqueued:
                        pass
            except asyncio.CancelledError:
                raise
            except Exception:  # the database went away for a moment: try again next round
                logger.exception("queue maintenance failed")

    async def main() -> None:
        async with app.open_async():
            task = asyncio.create_task(maintain())
            try:
                await app.run_worker_async(
                    queues=[QUEUE],
                    name=name or f"{socket.gethostname()}:{os.getpid()}",
                    concurrency=concurrency,
                    update_heartbeat_interval=heartbeat_s,
                    stalled_worker_timeout=stalled_s,
                    delete_jobs="never",
                )
            finally:
                task.cancel()

    asyncio.run(main())
