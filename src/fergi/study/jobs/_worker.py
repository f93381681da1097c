"""Background work of the study app: image generation and session processing.

The ``jobs`` table is the queue. Background threads poll it, claim a job with an
atomic ``UPDATE ... WHERE status = 'queued'`` and record every stage's status in it,
so the admin sees progress, a crash leaves a visible trace, and a restart picks up
what was queued or interrupted. Processing only reads the uploaded chunks; its
outputs go to separate files, so a failed or retried job never loses a raw upload.

Job kinds: ``generate`` (the session's images), ``clips`` (real time: queued by an
``image_hidden`` event and by each chunk while a presented image is not analysed yet;
it analyses and stores every image whose video is on the server, see
:mod:`fergi.study.processing._realtime`) and ``process`` (queued by the ranking: any image left,
then the session's labels). Work is idempotent per image: an image's feature files and
clip rows are committed together, and a stored image is never analysed again.

With a PostgreSQL database the same job functions run in ``fergi worker`` processes
instead (:mod:`fergi.study.jobs._queue`): the server's :class:`Worker` then starts no
threads, and :meth:`Worker.wake` hands queued rows to procrastinate.
"""

from __future__ import annotations

import io
import logging
import secrets
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from fergi._errors import FergiError
from fergi.study import processing
from fergi.study._settings import StudySettings
from fergi.study.content import create_generator
from fergi.study.jobs._jobs import JOB_KINDS, enqueue
from fergi.study.processing import (
    LiveDecoders,
    StageError,
    Stages,
    activations_stage,
    frames_table,
    has_recording_fault,
    labels_stage,
    session_features_provenance,
    session_provenance,
)
from fergi.study.protocol import (
    abandon_segment,
    abandon_stale_segments,
    chosen_presentations,
    retention_blocker,
    segment_is_open,
    segment_last_activity,
    stale_images,
)
from fergi.study.store import (
    DEFAULT_MAX_SEEN_BEFORE_S,
    Clip,
    Image,
    Job,
    Label,
    MediaStore,
    Segment,
    StudySession,
    clean_temporary_files,
    utcnow,
)

logger = logging.getLogger(__name__)

class Worker:
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

    # ------------------------------------------------------------------ generation
    @property
    def generator(self):
        with self._generator_lock:
            if self._generator is None:
                self._generator = create_generator(
                    self.settings.generator, **dict(self.settings.generator_options)
                )
            return self._generator

    def _base_seed(self, sess: StudySession) -> int:
        if self.settings.seed is not None:
            return (self.settings.seed + 1000 * sess.id) % (2**31 - 1000)
        return secrets.randbelow(2**31 - 1000)

    def _generate(self, db: Session, job: Job) -> None:

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
            raise StageError("generate", f"the generator returned no image {missing[0]}")

    # ------------------------------------------------------------------ processing
    def _annotation_model(self):
        if self.settings.annotation_model is None:
            return None
        # deferred: the annotation model's module loads scikit-learn, only when configured
        from fergi.preference import load_model

        return load_model(self.settings.annotation_model)

    @property
    def estimator(self):
        """The AU estimator, created once (a learned one loads its weights only once)."""
        with self._estimator_lock:
            if self._estimator is None:
                # deferred: a learned estimator loads torch
                from fergi.au import create_au_estimator

                self._estimator = create_au_estimator(self.settings.estimator)
            return self._estimator

    def _clips(self, db: Session, job: Job) -> None:
        """Real time: cut, analyse and store every image of the session that is ready."""
        sess = db.get(StudySession, job.session_id)
        on_stage = self._stage(db, job)
        with self.live.lock(sess.id):
            db.refresh(sess)
            # through the room's name, so that a test can stand in for the video analysis
            status = processing.process_ready_clips(
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
        # deferred: pandas and the library's tables load slowly; the web app's start
        # (which builds this worker) does not need them
        import numpy as np
        import pandas as pd

        from fergi.datasets import write_features_meta

        sess = db.get(StudySession, job.session_id)
        on_stage = self._stage(db, job)
        job.stages = {}
        if sess.finished_at is not None:
            # The session is over: a segment still incomplete now can never complete (the
            # client completes each one before the ranking); its video is final as it is.
            for seg in sess.segments:
                abandon_segment(seg, "incomplete when the finished session was processed")
        db.commit()
        stages = Stages(on_stage)
        chosen = chosen_presentations(sess)
        if not chosen:
            raise StageError("clips", "no image has a complete presentation (baseline, shown, hidden) on record")
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
                        raise FergiError(f"segment {seg_index} has no uploaded video")
                    lost = self.store.missing_chunks(sess.id, seg_index, [c.seq for c in seg.chunks])
                    if lost:
                        raise FergiError(f"segment {seg_index}: chunk files missing in the media store: {lost[:3]}")
                    # streamed chunk by chunk (decrypted in memory), never assembled whole
                    stream = self.store.segment_stream(sess.id, seg_index, seg.chunks)
                    processing.check_segment(stream, f"segment {seg_index}")

            stages.run("assemble", assemble)
            status = stages.run(
                "clips",
                lambda: processing.process_ready_clips(
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
            act = activations_stage(frames, participant=sess.participant_id, session=sess.index)
            # The stored validity adds the frame-count rule to the face rule recomputed here.
            keys = zip(act["image"].astype(int), act["clip"].astype(str), strict=True)
            stored = np.array([stored_valid.get(k, True) for k in keys], dtype=bool)
            act["clip_valid"] = act["clip_valid"].astype(bool).to_numpy() & stored
            return act

        act = stages.run("activations", activations)
        labels = stages.run(
            "labels",
            lambda: labels_stage(
                act,
                model=self._annotation_model(),
                invalid_images=invalid,
                frames=frames_table(frames, participant=sess.participant_id, session=sess.index),
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
        # deferred: the scorers load torch and open_clip
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

