"""Background work of the study app: image generation and session processing.

The ``jobs`` table is the queue. Background threads poll it, claim a job with an
atomic ``UPDATE ... WHERE status = 'queued'`` and record every stage's status in it,
so the admin sees progress, a crash leaves a visible trace, and a restart picks up
what was queued or interrupted. Processing only reads the uploaded chunks; its
outputs go to separate files, so a failed or retried job never loses a raw upload.

Job kinds: ``generate`` (the session's images), ``clips`` (real time: queued by an
``image_hidden`` event and by each chunk while a presented image is not analysed yet;
it analyses and stores every image whose video is on the server, see
:func:`fergi.study.processing.process_ready_clips`) and ``process`` (queued by the
ranking: any image left, then the session's labels). Work is idempotent per image: an image's feature files and
clip rows are committed together, and a stored image is never analysed again. The
job bodies are in ``_generate`` and ``_process``; this module is the loop around them.

With a PostgreSQL database the same job functions run in ``fergi worker`` processes
instead (:mod:`fergi.study.jobs._queue`): the server's :class:`Worker` then starts no
threads, and :meth:`Worker.wake` hands queued rows to procrastinate.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from fergi.study._settings import StudySettings
from fergi.study.jobs._generate import GenerateJobs
from fergi.study.jobs._jobs import JOB_KINDS, enqueue
from fergi.study.jobs._process import ProcessJobs
from fergi.study.processing import LiveDecoders
from fergi.study.protocol import (
    abandon_stale_segments,
    retention_blocker,
    segment_is_open,
    segment_last_activity,
    stale_images,
)
from fergi.study.store import (
    Job,
    MediaStore,
    Segment,
    StudySession,
    clean_temporary_files,
    utcnow,
)

logger = logging.getLogger(__name__)

class Worker(GenerateJobs, ProcessJobs):
    """Polls the job table in background threads (one per job kind).

    Parameters
    ----------
    factory : sessionmaker
        Database sessions.
    settings : StudySettings
    store : MediaStore
    dispatcher : fergi.study.jobs._queue.QueueDispatcher, optional
        Jobs go to ``fergi worker`` processes through PostgreSQL: no threads are started
        and :meth:`wake` defers the queued rows.
    """

    def __init__(
        self, factory: sessionmaker[Session], settings: StudySettings, store: MediaStore, dispatcher=None
    ):
        self.factory = factory
        self.settings = settings
        self.store = store
        self.dispatcher = dispatcher
        self._generator = None
        self._generator_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = {kind: threading.Event() for kind in JOB_KINDS}
        self._threads: list[threading.Thread] = []
        self.live = LiveDecoders()
        self._estimator = None
        # not the generator's lock: loading a diffusion model must not hold up analysis
        self._estimator_lock = threading.Lock()
        self._last_sweep = time.monotonic()
        self._sweep_every_s = min(300.0, settings.abandoned_segment_after_s / 4)

    # ------------------------------------------------------------------ lifecycle
    def recover(self) -> int:
        """Requeue jobs a previous process left running (it crashed or was stopped)."""
        with self.factory() as db:
            jobs = db.scalars(select(Job).where(Job.status == "running")).all()
            for job in jobs:
                if job.attempts >= self.settings.max_job_attempts:
                    job.status = "failed"
                    job.error = (job.error or "") + "interrupted too often (server restarts)"
                else:
                    job.status = "queued"
            db.commit()
            if jobs:
                logger.info("requeued %d job(s) interrupted by a restart", len(jobs))
        # A killed process leaves the temporary files of its atomic writes behind.
        try:
            if not self.store.is_remote:  # object stores commit whole objects: nothing half-written
                clean_temporary_files(self.store.root)
        except OSError as exc:
            logger.warning("%s: temporary files not cleaned (%s)", self.store.root, exc)
        self.sweep_segments()
        return len(jobs)

    def sweep_segments(self) -> int:
        """Abandon the incomplete segments without an upload for ``abandoned_segment_after_s``;
        with ``retention=delete_after_features``, delete the raw video that such segments
        held up. Run at start-up and then periodically by the process thread.

        A finished, processed session loses its raw video at once. An unfinished one (the
        participant left) loses it once it has been idle for ``abandoned_segment_after_s``
        and a clips job has analysed, after that, everything its video holds (the sweep
        queues one when needed; the abandoned segments count as complete then).

        Returns
        -------
        int
            Segments abandoned.
        """
        self._last_sweep = time.monotonic()
        after = self.settings.abandoned_segment_after_s
        retention = self.settings.retention == "delete_after_features"
        abandoned = 0
        with self.factory() as db:
            ids = set(db.scalars(
                select(Segment.session_id).where(
                    Segment.complete.is_(False), Segment.abandoned_at.is_(None)
                ).distinct()
            ).all())
            if retention:
                ids |= set(db.scalars(
                    select(Segment.session_id)
                    .join(StudySession, StudySession.id == Segment.session_id)
                    .where(StudySession.finished_at.is_(None))
                    .distinct()
                ).all())
            for session_id in sorted(ids):
                sess = db.get(StudySession, session_id)
                stale = abandon_stale_segments(sess, after)
                if stale:
                    abandoned += len(stale)
                    db.commit()
                    logger.info("session %d: segment(s) %s abandoned (no upload for %g s)", sess.id, stale, after)
                if not retention:
                    continue
                if sess.finished_at is None:
                    self._retire_idle_session(db, sess, after)
                elif stale and any(j.kind == "process" and j.status == "done" for j in sess.jobs):
                    if retention_blocker(sess, processed=True) is None:
                        self._delete_raw_video(db, sess)
                        logger.info("session %d: raw video deleted (retention)", sess.id)
        return abandoned

    def _retire_idle_session(self, db: Session, sess: StudySession, after: float) -> None:
        """Retention of an unfinished session idle for ``after`` seconds (see sweep_segments)."""
        if not (self.store.session_dir(sess.id) / "segments").is_dir() or not sess.segments:
            return
        if any(segment_is_open(seg, abandoned_after_s=after) for seg in sess.segments):
            return
        times = [segment_last_activity(seg) for seg in sess.segments]
        times += [e.received_at for e in sess.events if e.received_at is not None]
        last = max(times)
        if (utcnow() - last).total_seconds() < after:
            return
        if stale_images(sess):
            # analysed since its segments closed (abandoned ones count as complete then)?
            closed = max([last, *(seg.abandoned_at for seg in sess.segments if seg.abandoned_at is not None)])
            jobs = [j for j in sess.jobs if j.kind == "clips"]
            latest = jobs[-1] if jobs else None
            analysed = (
                latest is not None and latest.status == "done"
                and latest.finished_at is not None and latest.finished_at >= closed
            )
            if not analysed:
                if latest is None or latest.status not in ("queued", "running", "failed"):
                    enqueue(db, sess.id, "clips", revive=True)
                    db.commit()
                    self.wake("clips")
                return
        self._delete_raw_video(db, sess)
        logger.info("session %d: unfinished and idle for %g s: raw video deleted (retention)", sess.id, after)

    def start(self) -> None:
        if self.dispatcher is not None:
            # Rows marked running belong to workers elsewhere: never requeued from here.
            self.dispatcher.start()
            return
        self.recover()
        self._stop.clear()
        # Load the generator (a diffusion model takes a while) before the first prompt arrives.
        warm = threading.Thread(target=self._warm_up, name="fergi-warm-up", daemon=True)
        warm.start()
        self._threads.append(warm)
        for kind in JOB_KINDS:
            thread = threading.Thread(target=self._loop, args=(kind,), name=f"fergi-{kind}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _warm_up(self) -> None:
        try:
            generator = self.generator
            load = getattr(generator, "load", None)
            if callable(load):
                load()
        except Exception as exc:  # reported again, per job, when generation runs
            logger.warning("image generator %r could not be loaded: %s", self.settings.generator, exc)

    def stop(self, timeout: float = 10.0) -> None:
        if self.dispatcher is not None:
            self.dispatcher.close()
        self._stop.set()
        for event in self._wake.values():
            event.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def wake(self, kind: str | None = None) -> None:
        if self.dispatcher is not None:
            try:
                self.dispatcher.dispatch(kind)
            except Exception:  # the row stays queued; a worker's sweep defers it
                logger.exception("queued %s jobs could not be handed to the workers", kind or "all")
            return
        for k in [kind] if kind else JOB_KINDS:
            self._wake[k].set()

    def _loop(self, kind: str) -> None:
        while not self._stop.is_set():
            try:
                ran = self.run_next(kind)
            except Exception:  # a broken database must not kill the thread
                logger.exception("worker %s: polling failed", kind)
                ran = False
            if kind == "process" and not ran and time.monotonic() - self._last_sweep > self._sweep_every_s:
                try:
                    self.sweep_segments()
                except Exception:
                    logger.exception("worker: segment sweep failed")
            if not ran:
                self._wake[kind].wait(self.settings.worker_poll_s)
                self._wake[kind].clear()

    # ------------------------------------------------------------------ jobs
    def _claim(self, db: Session, kind: str) -> Job | None:
        candidates = db.scalars(
            select(Job.id).where(Job.kind == kind, Job.status == "queued").order_by(Job.id).limit(5)
        ).all()
        for job_id in candidates:
            claimed = db.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "queued")
                .values(status="running", started_at=utcnow(), attempts=Job.attempts + 1)
            )
            db.commit()
            if claimed.rowcount == 1:
                return db.get(Job, job_id)
        return None

    def run_next(self, kind: str) -> bool:
        """Run one queued job of ``kind``; False when there was none."""
        with self.factory() as db:
            job = self._claim(db, kind)
            if job is None:
                return False
            self._run(db, job)
            return True

    def run_job(self, job_id: int) -> bool:
        """Run one job by id (the procrastinate task of ``fergi worker``).

        A queued row is claimed; a row already ``running`` was left by a worker that died
        (the task's lock lets no other run it now) and is run again, or failed after
        ``max_job_attempts`` tries. A finished or failed row is left alone (a duplicate
        delivery). Returns whether the job ran.
        """
        with self.factory() as db:
            claimed = db.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "queued")
                .values(status="running", started_at=utcnow(), attempts=Job.attempts + 1)
            )
            db.commit()
            if claimed.rowcount != 1:
                job = db.get(Job, job_id)
                if job is None or job.status != "running":
                    return False
                if job.attempts >= self.settings.max_job_attempts:
                    job.status = "failed"
                    job.error = (job.error or "") + "interrupted too often (workers stopped while running it)"
                    job.finished_at = utcnow()
                    db.commit()
                    return False
                logger.warning("job %d (%s, session %d) is run again: its worker stopped", job.id, job.kind,
                               job.session_id)
                job.attempts += 1
                job.started_at = utcnow()
                db.commit()
            job = db.get(Job, job_id)
            self._run(db, job)
            return True

    def run_pending(self, kind: str | None = None) -> int:
        """Run queued jobs in the calling thread until none is left (tests, CLI)."""
        count = 0
        for k in [kind] if kind else JOB_KINDS:
            while self.run_next(k):
                count += 1
        return count

    def _run(self, db: Session, job: Job) -> None:
        logger.info("job %d (%s, session %d) started", job.id, job.kind, job.session_id)
        try:
            if job.kind == "generate":
                self._generate(db, job)
            elif job.kind == "clips":
                self._clips(db, job)
            else:
                self._process(db, job)
        except Exception as exc:
            db.rollback()
            job = db.get(Job, job.id)
            message = f"{type(exc).__name__}: {exc}"
            logger.warning("job %d (%s, session %d) failed: %s", job.id, job.kind, job.session_id, message)
            logger.debug("%s", traceback.format_exc())
            stages = dict(job.stages or {})
            for name, status in stages.items():
                if status == "running":
                    stages[name] = "failed"
            job.stages = stages
            job.status = "failed"
            job.error = message[:2000]
            job.finished_at = utcnow()
            db.commit()
            return
        job.status = "done"
        job.error = None
        job.finished_at = utcnow()
        db.commit()
        logger.info("job %d (%s, session %d) done", job.id, job.kind, job.session_id)

    def _stage(self, db: Session, job: Job) -> Callable[[str, str], None]:
        def on_stage(name: str, status: str) -> None:
            job.stages = {**(job.stages or {}), name: status}
            db.commit()

        return on_stage


