"""The study's background work: the ``jobs`` table as a queue, the worker that runs the
jobs (image generation, each image's clips in real time, the session's processing), and
procrastinate for ``fergi worker`` processes on a PostgreSQL database.

Import rule: imports :mod:`fergi.study.store`, :mod:`~fergi.study.protocol`,
:mod:`~fergi.study.content`, :mod:`~fergi.study.processing` (by their public names)
and ``fergi.study._settings``; only :mod:`fergi.study.web` and the CLI import it. Build
a worker with :func:`create_worker`.
"""

from fergi.study.jobs._create import create_worker, open_database
from fergi.study.jobs._jobs import JOB_KINDS, enqueue, retry_job
from fergi.study.jobs._queue import (
    QueueDispatcher,
    is_postgres,
    libpq_url,
    prepare_database,
    queued_jobs,
    resolve_queue,
    run_workers,
    uses_queue,
)
from fergi.study.jobs._worker import Worker

__all__ = [
    "JOB_KINDS",
    "QueueDispatcher",
    "Worker",
    "create_worker",
    "enqueue",
    "is_postgres",
    "libpq_url",
    "open_database",
    "prepare_database",
    "queued_jobs",
    "resolve_queue",
    "retry_job",
    "run_workers",
    "uses_queue",
]
