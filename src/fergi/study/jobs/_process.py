"""The ``clips`` and ``process`` jobs: each image's clips in real time, then after the
ranking the images left, the session's labels, the scores and the retention (a part of
:class:`fergi.study.Worker`)."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fergi._errors import FergiError
from fergi.au import create_au_estimator
from fergi.datasets import write_features_meta
from fergi.preference import load_model
from fergi.scorers import create_scorer
from fergi.study import processing
from fergi.study.processing import (
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
    chosen_presentations,
    retention_blocker,
    stale_images,
)
from fergi.study.store import (
    DEFAULT_MAX_SEEN_BEFORE_S,
    Clip,
    Job,
    Label,
    Segment,
    StudySession,
)

logger = logging.getLogger(__name__)


class ProcessJobs:
    """The ``clips`` and ``process`` jobs of :class:`~fergi.study.Worker` (a mixin: it uses
    the worker's ``settings``, ``store``, ``live`` and ``_stage``)."""

    # ------------------------------------------------------------------ processing
    def _annotation_model(self):
        if self.settings.annotation_model is None:
            return None

        return load_model(self.settings.annotation_model)

    @property
    def estimator(self):
        """The AU estimator, created once (a learned one loads its weights only once)."""
        with self._estimator_lock:
            if self._estimator is None:
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
