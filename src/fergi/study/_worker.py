"""Background work of the study app: image generation and session processing.

The ``jobs`` table is the queue. Background threads poll it, claim a job with an
atomic ``UPDATE ... WHERE status = 'queued'`` and record every stage's status in it,
so the admin sees progress, a crash leaves a visible trace, and a restart picks up
what was queued or interrupted. Processing only reads the uploaded chunks; its
outputs go to separate files, so a failed or retried job never loses a raw upload.

Job kinds: ``generate`` (the session's images), ``clips`` (real time: queued by an
``image_hidden`` event and by each chunk while a presented image is not analysed yet;
it analyses and stores every image whose video is on the server, see
:mod:`fergi.study._realtime`) and ``process`` (queued by the ranking: any image left,
then the session's labels). Work is idempotent per image: an image's feature files and
clip rows are committed together, and a stored image is never analysed again.

With a PostgreSQL database the same job functions run in ``fergi worker`` processes
instead (:mod:`fergi.study._queue`): the server's :class:`Worker` then starts no
threads, and :meth:`Worker.wake` hands queued rows to procrastinate.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import secrets
import stat
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from fergi.study._db import Clip, Image, Job, Label, Segment, StudySession, utcnow
from fergi.study._settings import StudySettings
from fergi.study._storage import MediaStore

logger = logging.getLogger(__name__)

JOB_KINDS = ("generate", "clips", "process")
EVENT_KINDS = ("baseline_start", "image_shown", "image_hidden")


def enqueue(db: Session, session_id: int, kind: str, *, revive: bool = True) -> Job:
    """Queue a job (the caller commits); an already queued/running job of the kind is reused.

    A ``clips`` job is different: new video may have arrived after a running one read
    the chunks, so a running one gets a queued successor, and a finished one is queued
    again (one row per session, its stages the images' status). A failed one is queued
    again only with ``revive`` (a new image was presented), not for every new chunk, so
    a broken recording is not decoded again each second.
    """
    if kind not in JOB_KINDS:
        raise ValueError(f"unknown job kind {kind!r}")
    if kind == "clips":
        jobs = db.scalars(
            select(Job).where(Job.session_id == session_id, Job.kind == kind).order_by(Job.id.desc())
        ).all()
        queued = next((j for j in jobs if j.status == "queued"), None)
        if queued is not None:
            return queued
        if jobs and jobs[0].status == "failed" and not revive:
            return jobs[0]
        if jobs and jobs[0].status != "running":
            job = jobs[0]
            job.status, job.error, job.finished_at, job.attempts = "queued", None, None, 0
            return job
        job = Job(session_id=session_id, kind=kind, status="queued", stages=dict(jobs[0].stages) if jobs else {})
        db.add(job)
        return job
    job = db.scalar(
        select(Job).where(
            Job.session_id == session_id, Job.kind == kind, Job.status.in_(("queued", "running"))
        )
    )
    if job is None:
        job = Job(session_id=session_id, kind=kind, status="queued", stages={})
        db.add(job)
    return job


def retry_job(db: Session, job: Job) -> Job:
    """Put a failed (or finished) job back in the queue (the caller commits)."""
    job.status = "queued"
    job.error = None
    job.stages = {}
    job.finished_at = None
    return job


def select_image_events(
    events: list[Any], n_images: int, skip_segments: Iterable[int] = ()
) -> dict[int, tuple[int, list[dict]]]:
    """For each image, the segment and events of its last complete presentation.

    A presentation is complete when ``baseline_start``, ``image_shown`` and
    ``image_hidden`` of the image are all on record in one segment. The client records
    a new segment for each image, and after a camera interruption or a reload it replays
    the image from its baseline in a new segment, so the latest segment with all three
    events wins: an interrupted earlier attempt is superseded.

    Parameters
    ----------
    events : list
        The session's events (rows or objects with ``segment``, ``image_index``,
        ``kind``, ``video_time``).
    n_images : int
    skip_segments : iterable of int
        Segments that hold no video and never will (see :func:`unusable_segments`).

    Returns
    -------
    dict
        ``{image: (segment, [event dicts in EVENT_KINDS order])}``.
    """
    skip = set(skip_segments)
    chosen: dict[int, tuple[int, list[dict]]] = {}
    for image in range(1, n_images + 1):
        by_segment: dict[int, dict[str, float]] = {}
        for ev in events:
            if ev.image_index == image and ev.segment not in skip:
                by_segment.setdefault(ev.segment, {}).setdefault(ev.kind, ev.video_time)
        complete = [s for s, kinds in by_segment.items() if all(k in kinds for k in EVENT_KINDS)]
        if complete:
            seg = max(complete)
            chosen[image] = (
                seg,
                [
                    {"image_index": image, "kind": k, "video_time": by_segment[seg][k]}
                    for k in EVENT_KINDS
                ],
            )
    return chosen


def unusable_segments(sess: StudySession) -> set[int]:
    """Segments that hold no video and never will: abandoned without an accepted chunk
    (a refused stream start). Their events do not count as a presentation."""
    return {seg.index for seg in sess.segments if seg.abandoned_at is not None and seg.n_chunks == 0}


def chosen_presentations(sess: StudySession) -> dict[int, tuple[int, list[dict]]]:
    """:func:`select_image_events` of a session, its unusable segments left out."""
    return select_image_events(list(sess.events), sess.n_images, unusable_segments(sess))


def stale_images(sess: StudySession) -> list[int]:
    """Images presented (completely) whose stored clips are missing or come from an
    earlier, superseded presentation."""
    stored: dict[int, set] = {}
    for c in sess.clips:
        if c.features_file:
            stored.setdefault(c.image_index, set()).add(c.segment)
    out = []
    for image, (segment, _) in sorted(chosen_presentations(sess).items()):
        have = stored.get(image)
        # rows stored before clips recorded their segment (None) stay valid
        if not have or not have <= {segment, None}:
            out.append(image)
    return out


def needs_clips(sess: StudySession) -> bool:
    """Whether an image of an unfinished session was presented but has no stored clips
    (or only clips of an attempt that a replay superseded)."""
    if sess.finished_at is not None:
        return False  # the ranking queued the session's processing, which does the rest
    return bool(stale_images(sess))


def segment_last_activity(seg: Segment) -> dt.datetime:
    """When the segment last received something (its start, or its newest chunk)."""
    times = [seg.started_at, *(c.received_at for c in seg.chunks if c.received_at is not None)]
    return max(t for t in times if t is not None)


def segment_is_open(seg: Segment, *, now: dt.datetime | None = None, abandoned_after_s: float | None = None) -> bool:
    """Whether more chunks may still arrive for a segment: not complete, not abandoned,
    and (with ``abandoned_after_s``) an upload within that many seconds."""
    if seg.complete or seg.abandoned_at is not None:
        return False
    if abandoned_after_s is None:
        return True
    now = now or utcnow()
    return (now - segment_last_activity(seg)).total_seconds() < abandoned_after_s


def abandon_segment(seg: Segment, reason: str) -> None:
    """Mark a segment as one that can never complete (the caller commits)."""
    if seg.abandoned_at is None and not seg.complete:
        seg.abandoned_at = utcnow()
        seg.abandon_reason = reason[:500]


def abandon_stale_segments(sess: StudySession, abandoned_after_s: float, *, now: dt.datetime | None = None) -> list[int]:
    """Abandon the incomplete segments of ``sess`` without an upload for ``abandoned_after_s``
    seconds (the caller commits); returns their indices."""
    now = now or utcnow()
    out = []
    for seg in sess.segments:
        if seg.complete or seg.abandoned_at is not None:
            continue
        if not segment_is_open(seg, now=now, abandoned_after_s=abandoned_after_s):
            abandon_segment(seg, f"no upload for {abandoned_after_s:g} s")
            out.append(seg.index)
    return out


def retention_blocker(
    sess: StudySession,
    *,
    processed: bool = False,
    abandoned_after_s: float | None = None,
    now: dt.datetime | None = None,
) -> str | None:
    """Why the raw video of a session may not be deleted yet; None when it may.

    Only a finished session loses its raw upload. A segment still open (incomplete, not
    abandoned, and with ``abandoned_after_s`` an upload within that time) holds it up,
    and so does an image without both clips, until the session is ``processed``: the
    final processing analyses everything the uploaded video holds, so after it no missing
    clip can appear any more, and a segment incomplete then is abandoned.
    """
    if sess.finished_at is None:
        return "session not finished"
    if not sess.segments:
        return "no recording"
    if processed:
        return None
    open_segments = [
        seg.index for seg in sess.segments if segment_is_open(seg, now=now, abandoned_after_s=abandoned_after_s)
    ]
    if open_segments:
        return f"segment {open_segments[0]} not complete"
    have = {(c.image_index, c.clip) for c in sess.clips if c.features_file}
    missing = [
        i for i in range(1, sess.n_images + 1) if not {(i, "baseline"), (i, "reaction")} <= have
    ]
    if missing:
        return f"image {missing[0]} has no clips"
    return None


#: Temporary names of the atomic writes in the media folder (write_atomic, write_features,
#: clip videos, features meta files): never a finished file.
_TEMPORARY_NAME = re.compile(r"^\.(tmp-.*|.*\.partial(\.[^.]+)?|.*\.tmp|features_meta-.*\.json)$")


def clean_temporary_files(root: Path, *, older_than_s: float = 60.0) -> int:
    """Delete the temporary files a killed process left in the media folder.

    Only files named like the atomic writes' temporary files, older than
    ``older_than_s`` (a write in progress in another process is younger), directly
    inside ``root`` or its subfolders; symbolic links are not followed.

    Returns
    -------
    int
        The number of files deleted.
    """
    root = Path(root)
    if not root.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    removed = 0
    for folder, _dirs, files in os.walk(root, followlinks=False):
        for name in files:
            if not _TEMPORARY_NAME.match(name):
                continue
            path = Path(folder) / name
            try:
                info = path.lstat()
                if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except OSError as exc:  # gone meanwhile, or not ours to delete
                logger.debug("%s: not removed (%s)", path, exc)
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted write in %s", removed, root)
    return removed


class Worker:
    """Polls the job table in background threads (one per job kind).

    Parameters
    ----------
    factory : sessionmaker
        Database sessions.
    settings : StudySettings
    store : MediaStore
    dispatcher : fergi.study._queue.QueueDispatcher, optional
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
        from fergi.study._realtime import LiveDecoders

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
        from fergi.study._db import Segment as SegmentRow

        self._last_sweep = time.monotonic()
        after = self.settings.abandoned_segment_after_s
        retention = self.settings.retention == "delete_after_features"
        abandoned = 0
        with self.factory() as db:
            ids = set(db.scalars(
                select(SegmentRow.session_id).where(
                    SegmentRow.complete.is_(False), SegmentRow.abandoned_at.is_(None)
                ).distinct()
            ).all())
            if retention:
                ids |= set(db.scalars(
                    select(SegmentRow.session_id)
                    .join(StudySession, StudySession.id == SegmentRow.session_id)
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

    # ------------------------------------------------------------------ generation
    @property
    def generator(self):
        with self._generator_lock:
            if self._generator is None:
                from fergi.study._generators import create_generator

                self._generator = create_generator(
                    self.settings.generator, **dict(self.settings.generator_options)
                )
            return self._generator

    def _base_seed(self, sess: StudySession) -> int:
        if self.settings.seed is not None:
            return (self.settings.seed + 1000 * sess.id) % (2**31 - 1000)
        return secrets.randbelow(2**31 - 1000)

    def _generate(self, db: Session, job: Job) -> None:
        import io

        sess = db.get(StudySession, job.session_id)
        on_stage = self._stage(db, job)
        done = {img.index for img in sess.images}
        # A retried job reuses its base seed, so the images it already stored stay consistent.
        base = int((job.stages or {}).get("base_seed") or self._base_seed(sess))
        on_stage("base_seed", base)
        for index in range(1, sess.n_images + 1):
            if index not in done:
                on_stage(f"image_{index}", "queued")

        def store(position: int, result) -> None:
            index = position + 1
            if index in done:
                return
            buffer = io.BytesIO()
            result.image.convert("RGB").save(buffer, format="PNG")
            self.store.write_bytes(self.store.image_path(sess.id, index), buffer.getvalue())
            meta = {k: v for k, v in dict(result.meta or {}).items() if _jsonable(v)}
            db.add(
                Image(
                    session_id=sess.id,
                    index=index,
                    seed=int(result.seed),
                    invalid=bool(result.invalid),
                    meta=meta,
                )
            )
            done.add(index)
            on_stage(f"image_{index}", "invalid" if result.invalid else "done")

        if len(done) < sess.n_images:
            self.generator.generate(sess.prompt, sess.n_images, seed=base, on_image=store)
        missing = sorted(set(range(1, sess.n_images + 1)) - done)
        if missing:
            raise RuntimeError(f"the generator returned no image {missing[0]}")

    # ------------------------------------------------------------------ processing
    def _annotation_model(self):
        if self.settings.annotation_model is None:
            return None
        from fergi.preference import load_model

        return load_model(self.settings.annotation_model)

    @property
    def estimator(self):
        """The AU estimator, created once (a learned one loads its weights only once)."""
        with self._estimator_lock:
            if self._estimator is None:
                from fergi.au import create_au_estimator

                self._estimator = create_au_estimator(self.settings.estimator)
            return self._estimator

    def _clips(self, db: Session, job: Job) -> None:
        """Real time: cut, analyse and store every image of the session that is ready."""
        from fergi.study import _realtime

        sess = db.get(StudySession, job.session_id)
        on_stage = self._stage(db, job)
        with self.live.lock(sess.id):
            db.refresh(sess)
            status = _realtime.process_ready_clips(
                db, sess, self.store, self.settings, self.live,
                estimator=self.estimator,
                final=False,
                on_image=lambda image, state: on_stage(f"image {image}", state),
            )
        logger.info("session %d: clips %s", sess.id, status)
        # every image's status, also those stored by an earlier job
        job.stages = {f"image {image}": state for image, state in sorted(status.items())}
        # A finished clips job is superseded by this one (its stages are the images' status
        # now): one row per session on the admin page, failures kept until retried.
        for old in db.scalars(
            select(Job).where(
                Job.session_id == sess.id, Job.kind == "clips", Job.id < job.id, Job.status == "done"
            )
        ):
            db.delete(old)
        db.commit()

    def _process(self, db: Session, job: Job) -> None:
        """After the ranking: the images not stored yet, then the session's labels."""
        import numpy as np
        import pandas as pd

        from fergi.study import _realtime
        from fergi.study._pipeline import (
            _activations_stage,
            _frames_table,
            _labels_stage,
            _Stages,
            session_provenance,
        )
        from fergi.study._realtime import has_recording_fault

        sess = db.get(StudySession, job.session_id)
        on_stage = self._stage(db, job)
        job.stages = {}
        if sess.finished_at is not None:
            # The session is over: a segment still incomplete now can never complete (the
            # client completes each one before the ranking); its video is final as it is.
            for seg in sess.segments:
                abandon_segment(seg, "incomplete when the finished session was processed")
        db.commit()
        stages = _Stages(on_stage)
        chosen = chosen_presentations(sess)
        if not chosen:
            raise RuntimeError("no image has a complete presentation (baseline, shown, hidden) on record")
        missing = sorted(set(range(1, sess.n_images + 1)) - set(chosen))
        if missing:
            logger.warning("session %d: images %s have no complete presentation", sess.id, missing)
        invalid = sorted(img.index for img in sess.images if img.invalid)
        with self.live.lock(sess.id):
            db.refresh(sess)
            todo = set(stale_images(sess))
            segments = {seg.index: seg for seg in sess.segments}

            def assemble() -> None:
                for seg_index in sorted({seg for image, (seg, _) in chosen.items() if image in todo}):
                    seg: Segment | None = segments.get(seg_index)
                    if seg is None or seg.n_chunks == 0:
                        raise RuntimeError(f"segment {seg_index} has no uploaded video")
                    lost = self.store.missing_chunks(sess.id, seg_index, [c.seq for c in seg.chunks])
                    if lost:
                        raise RuntimeError(f"segment {seg_index}: chunk files missing in the media store: {lost[:3]}")
                    # streamed chunk by chunk (decrypted in memory), never assembled whole
                    stream = self.store.segment_stream(sess.id, seg_index, seg.chunks)
                    _realtime.check_segment(stream, f"segment {seg_index}")

            stages.run("assemble", assemble)
            status = stages.run(
                "clips",
                lambda: _realtime.process_ready_clips(
                    db, sess, self.store, self.settings, self.live,
                    estimator=self.estimator,
                    final=True,
                    on_image=lambda image, state: on_stage(f"image {image}", state),
                ),
            )
            self.live.drop(sess.id)
        for image, state in sorted(status.items()):
            on_stage(f"image {image}", state)
        db.refresh(sess)
        # Left out of the labels: an image with a clip the camera stopped or froze in (a
        # reaction then lacks its neutral reference too) and clips of a presentation
        # that a replay superseded but whose own video holds no clip.
        min_share = self.settings.clip_min_frame_share
        unusable = {c.image_index for c in sess.clips if c.features_file and has_recording_fault(c, min_share)}
        unusable |= set(stale_images(sess)) & {c.image_index for c in sess.clips}
        # A replay seen before for long is a second look, not a spontaneous reaction.
        from fergi.study._presentations import DEFAULT_MAX_SEEN_BEFORE_S

        seen = {c.image_index for c in sess.clips
                if c.clip == "reaction" and (c.seen_before_s or 0.0) > DEFAULT_MAX_SEEN_BEFORE_S}
        if seen:
            logger.info("session %d: images %s left out (seen before, replayed)", sess.id, sorted(seen))
        unusable |= seen
        if unusable:
            logger.info("session %d: images %s left out (invalid clips)", sess.id, sorted(unusable))
        invalid = sorted(set(invalid) | unusable)
        frames = {}
        stored_valid = {}
        for clip in sess.clips:
            if clip.features_file:
                with self.store.open_read(self.store.resolve(clip.features_file)) as handle:
                    frames[(clip.image_index, clip.clip)] = pd.read_csv(handle)
                stored_valid[(clip.image_index, clip.clip)] = clip.clip_valid is not False

        def activations():
            act = _activations_stage(frames, participant=sess.participant_id, session=sess.index)
            # The stored validity adds the frame-count rule to the face rule recomputed here.
            keys = zip(act["image"].astype(int), act["clip"].astype(str), strict=True)
            stored = np.array([stored_valid.get(k, True) for k in keys], dtype=bool)
            act["clip_valid"] = act["clip_valid"].astype(bool).to_numpy() & stored
            return act

        act = stages.run("activations", activations)
        labels = stages.run(
            "labels",
            lambda: _labels_stage(
                act,
                model=self._annotation_model(),
                invalid_images=invalid,
                frames=_frames_table(frames, participant=sess.participant_id, session=sess.index),
                provenance=session_provenance(self.settings.estimator),
            ),
        )
        on_stage("store", "running")
        for old in list(sess.labels):
            db.delete(old)
        db.flush()
        for rec in labels.to_dict("records"):
            a, b = int(rec["image_a"]), int(rec["image_b"])
            if a in invalid or b in invalid:
                continue
            db.add(
                Label(
                    session_id=sess.id,
                    image_a=a,
                    image_b=b,
                    preferred=_preferred(rec.get("preferred"), a, b),
                    score_difference=float(rec.get("score_difference", 0.0)),
                    confident=bool(rec.get("confident", False)),
                )
            )
        from fergi.datasets import write_features_meta
        from fergi.study._export import session_features_provenance

        # Beside the files, so that the session's features say which AU scale they are on.
        with self.store.output_dir(self.store.features_dir(sess.id)) as features_dir:
            write_features_meta(features_dir, session_features_provenance(self.settings.estimator))
        db.commit()
        on_stage("store", "done")
        self.store.remove_tree(self.store.work_dir(sess.id))
        self._score_images(db, sess, on_stage)
        if self.settings.retention == "delete_after_features":
            # Re-read: chunks or a new segment may have arrived while this job ran.
            db.expire_all()
            sess = db.get(StudySession, job.session_id)
            reason = retention_blocker(sess, processed=True)
            if reason is None:
                self._delete_raw_video(db, sess)
                on_stage("retention", "raw video deleted")
            else:
                logger.info("session %d: raw video kept (%s)", sess.id, reason)
                on_stage("retention", f"raw video kept: {reason}")

    def _score_images(self, db: Session, sess: StudySession, on_stage) -> None:
        """The ``score`` stage: baseline scores of the session's images (``fergi score``).

        With ``settings.scorers`` set, each scorer (loaded once per worker) scores the
        session's images against its prompt; the values go to ``Image.meta["scores"]``
        under the release's column names, which ``fergi export`` writes. A missing
        weight file or an unreadable image marks the stage skipped and never fails the
        job: its features are already stored, and ``fergi score`` on the export can
        still add the scores.
        """
        names = [n for n in self.settings.scorers.split(",") if n]
        if not names:
            return

        on_stage("score", "running")
        db.commit()
        images = [img for img in sess.images if self.store.image_path(sess.id, img.index).is_file()]
        stored = [self.store.image_path(sess.id, img.index) for img in images]
        with self.store.local_copies(stored) as paths:
            self._score_with(db, sess, names, images, paths, on_stage)

    def _score_with(self, db, sess, names, images, paths, on_stage) -> None:
        from fergi import FergiError
        from fergi.scorers import create_scorer

        loaded = self.__dict__.setdefault("_loaded_scorers", {})
        weights = self.settings.scorer_weights
        try:
            for name in names:
                if name not in loaded:
                    options = {"weights": weights[name]} if weights.get(name) else {}
                    if name == "aesthetic" and weights.get("clip"):
                        options["backbone"] = weights["clip"]
                    loaded[name] = create_scorer(name, **options)
                scorer = loaded[name]
                for img, value in zip(images, scorer.score(paths, sess.prompt or ""), strict=True):
                    meta = dict(img.meta or {})
                    meta["scores"] = {**meta.get("scores", {}), scorer.spec.column: float(value)}
                    img.meta = meta
        except FergiError as exc:
            db.rollback()
            logger.warning("session %d: scores skipped: %s", sess.id, exc)
            on_stage("score", f"skipped: {exc}"[:500])
            db.commit()
            return
        on_stage("score", "done")
        db.commit()

    def _delete_raw_video(self, db: Session, sess: StudySession) -> None:
        """Retention: features are extracted, so the face video itself goes.

        Segment by segment, the ones on record: a segment a returning participant starts
        at this moment keeps its chunks (the folder goes only once it is empty).
        """
        with self.live.lock(sess.id):  # not while a clips job of the session decodes them
            self.live.drop(sess.id)
            for seg in sess.segments:
                self.store.remove_tree(self.store.segment_dir(sess.id, seg.index))
            if not self.store.is_remote:  # object stores have no empty folders to remove
                try:
                    (self.store.session_dir(sess.id) / "segments").rmdir()
                except OSError:  # not empty (a new segment), or already gone
                    pass
            self.store.remove_tree(self.store.clips_dir(sess.id))
        for clip in db.scalars(select(Clip).where(Clip.session_id == sess.id)):
            clip.video_file = None
        db.commit()


def _jsonable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | type(None) | list | dict)


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if out != out else out


def _preferred(value: Any, a: int, b: int) -> int | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    if value in ("a", "image_a"):
        return a
    if value in ("b", "image_b"):
        return b
    try:
        return int(value)
    except (TypeError, ValueError):
        return None

