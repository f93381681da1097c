"""Real-time processing of a study session: decode once, cut clips in memory, analyse each
image while the participant answers its survey.

The browser uploads its recording as consecutive byte pieces of one MediaRecorder webm
stream. :class:`fergi.video.SegmentDecoder` demuxes the chunks stored so far, decodes every video
packet exactly once (its decoder state lives on between calls in the worker process)
and standardises the frames to a constant rate on the fly, with the same rule as
:func:`fergi.video.iter_frames`: tick ``k / fps`` shows the latest frame at or before
it. A tick is only final once a later frame has been decoded, and the last packet of
an unfinished stream may be cut mid-way, so it is held back until a later one (or the
end of the segment) proves it complete. The result is therefore, frame for frame,
what a decoding of the whole recording at the end gives.

:func:`process_ready_clips` runs what is ready of a session: every image whose
presentation is on record (``image_hidden``) and whose clips the uploaded video
covers gets its baseline and reaction clip cut in memory, analysed
(:func:`fergi.au.extract_features` on the decoded frames, the reaction clip against
its own image's baseline clip) and its feature files and activation values stored,
one image per database commit. Stored images are skipped, so a job that is repeated,
retried or restarted after a crash resumes from the last finished image. No clip is
encoded to a video file here: :func:`clip_video` writes one on demand (admin
playback, the sharing export) and keeps it.

"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fergi._errors import FergiError
from fergi.au import write_features
from fergi.features import compute_activation_values, frame_validity
from fergi.study.processing._analysis import (
    ImageWindows,
    _clip_tables,
    _read_chunks,
    image_windows,
)
from fergi.study.processing._media import clip_windows
from fergi.study.processing._tables import _frames_table
from fergi.study.protocol import (
    CLIP_KINDS,
    DEFAULT_CLIP_MIN_FRAME_SHARE,
    select_image_events,
    unusable_segments,
)
from fergi.study.store import Clip, exposures_by_segment
from fergi.video import SegmentDecoder, write_video

logger = logging.getLogger(__name__)

__all__ = ["LiveDecoders", "check_segment", "clip_video", "process_ready_clips"]


# --------------------------------------------------------------------------- the worker's side


def check_segment(chunks, source: str) -> None:
    """Raise a one-line :class:`~fergi.FergiError` when a segment's stored chunks are
    missing or do not open as a video (the ``assemble`` stage).

    ``chunks``: the chunk files in order, or a seekable stream of the whole segment
    (:meth:`fergi.study.store._storage.MediaStore.segment_stream`, read chunk by chunk).
    """
    if hasattr(chunks, "read"):
        data, n = chunks, len(getattr(chunks, "_loaders", ())) or 1
    else:
        paths = [Path(p) for p in chunks]
        lost = [p.name for p in paths if not p.is_file()]
        if lost:
            raise FergiError(f"{source}: chunk files missing on disk: {lost[:3]}")
        data, n = _read_chunks(paths), len(paths)
    decoder = SegmentDecoder(source=f"{source} (assembled from {n} chunks)")
    decoder.check_opens(data)
    decoder.want("first", 0, 1)
    decoder.advance(data, final=True)
    if decoder.pop("first") is None:
        raise FergiError(f"{source}: contains no decodable video frames")


class LiveDecoders:
    """The decoders of the sessions in progress, kept between jobs of one worker process.

    Lost on a restart: the next job then decodes the segment again from its start
    (every image already stored is skipped, so nothing is analysed twice).
    """

    #: Decoders kept at most (the least recently used goes first): an abandoned session
    #: must not hold its frames for ever.
    MAX_DECODERS = 16

    def __init__(self):
        from collections import OrderedDict

        self._decoders: OrderedDict[tuple[int, int], SegmentDecoder] = OrderedDict()
        self._locks: dict[int, threading.Lock] = {}
        self._guard = threading.Lock()

    def lock(self, session_id: int) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(session_id, threading.Lock())

    def get(self, session_id: int, segment: int, windows, fps: float) -> SegmentDecoder:
        """The segment's decoder, new when the kept one is past a window's start."""
        key = (session_id, segment)
        decoder = self._decoders.get(key)
        fresh = decoder is None or decoder.fps != fps or decoder.finished or not all(
            decoder.wants(w) or decoder.can_serve(first) for w, first, _ in windows
        )
        with self._guard:
            if fresh:
                decoder = SegmentDecoder(fps, f"session {session_id} segment {segment}")
                self._decoders[key] = decoder
            self._decoders.move_to_end(key)
            while len(self._decoders) > self.MAX_DECODERS:
                self._decoders.popitem(last=False)
        return decoder

    def drop(self, session_id: int) -> None:
        with self._guard:
            for key in [k for k in self._decoders if k[0] == session_id]:
                del self._decoders[key]


OnImage = Callable[[int, str], None]


def process_ready_clips(
    db,
    sess,
    store,
    settings,
    live: LiveDecoders,
    *,
    estimator,
    final: bool,
    on_image: OnImage | None = None,
) -> dict[int, str]:
    """Cut, analyse and store the clips of every image of ``sess`` that is ready.

    Parameters
    ----------
    db : sqlalchemy.orm.Session
    sess : StudySession
    store : MediaStore
    settings : StudySettings
    live : LiveDecoders
    estimator : AU estimator
    final : bool
        The recording is over (the session is ranked): decode to the end of each
        segment, and keep a clip the recording ends during (shorter, with a warning).
    on_image : callable, optional
        ``on_image(image, status)``: ``"running"``, ``"done"`` (clips analysed and
        stored), ``"queued"`` (waiting for the video that covers them), ``"skipped"``
        (the recording ended before them) or ``"failed"``. The admin page shows them
        as the job's stages ``image <i>``, coloured like job states.

    Returns
    -------
    dict
        ``{image: status}`` of every image with a complete presentation.

    Raises
    ------
    fergi.FergiError
        Unreadable video, missing chunk files or a failed analysis (one line, naming the
        image). Everything stored before stays.
    """

    report = on_image or (lambda image, status: None)
    fps = float(settings.fps)
    exposures = exposures_by_segment(
        sess, present_s=float(settings.present_s), chunk_s=float(getattr(settings, "chunk_ms", 1000)) / 1000
    )
    windows = image_windows(
        list(sess.events), sess.n_images,
        baseline_s=settings.baseline_s, reaction_s=settings.present_s, fps=fps,
        skip_segments=unusable_segments(sess),
    )
    # (image, clip) -> the segment it was cut from; a replay in a later segment redoes it
    stored = {(c.image_index, c.clip): c.segment for c in sess.clips if c.features_file}
    status: dict[int, str] = {}
    todo: dict[int, list[ImageWindows]] = {}
    for image, iw in sorted(windows.items()):
        # rows stored before clips recorded their segment (None) stay
        if all((image, c) in stored and stored[(image, c)] in (iw.segment, None) for c in CLIP_KINDS):
            status[image] = "done"
        else:
            todo.setdefault(iw.segment, []).append(iw)
    segments = {seg.index: seg for seg in sess.segments}
    for seg_index, items in sorted(todo.items()):
        seg = segments.get(seg_index)
        if seg is None or seg.n_chunks == 0:
            for iw in items:
                status[iw.image] = "queued"
                report(iw.image, status[iw.image])
            continue
        wanted = [((iw.image, c), w.first, w.n) for iw in items for c, w in iw.windows.items()]
        decoder = live.get(sess.id, seg_index, wanted, fps)
        for key, first, n in wanted:
            decoder.want(key, first, n)
        lost = store.missing_chunks(sess.id, seg_index, [c.seq for c in seg.chunks])
        if lost:
            raise FergiError(f"segment {seg_index}: chunk files missing on disk: {lost[:3]}")
        # An abandoned segment never grows again: what it holds is final.
        seg_final = final or seg.complete or seg.abandoned_at is not None
        decoder.advance(store.segment_stream(sess.id, seg_index, seg.chunks), final=seg_final)
        for iw in items:
            keys = [(iw.image, clip) for clip in CLIP_KINDS]
            if not all(decoder.done(key) for key in keys):
                status[iw.image] = "queued"
                report(iw.image, status[iw.image])
                continue
            still = {clip: decoder.longest_still((iw.image, clip)) / fps for clip in CLIP_KINDS}
            pair = {clip: decoder.pop((iw.image, clip)) for clip in CLIP_KINDS}
            if any(frames is None for frames in pair.values()):
                logger.warning("session %d: image %d is left out (its clips are not in the recording)", sess.id, iw.image)
                status[iw.image] = "skipped"
                report(iw.image, status[iw.image])
                continue
            for clip, frames in pair.items():
                if len(frames) < iw.windows[clip].n:
                    logger.warning(
                        "session %d: the recording ends %.2f s into the %s clip of image %d",
                        sess.id, len(frames) / fps, clip, iw.image,
                    )
            report(iw.image, "running")
            try:
                _store_image(
                    db, sess, store, iw.image, pair, estimator=estimator, fps=fps,
                    segment=iw.segment,
                    expected={clip: w.n for clip, w in iw.windows.items()},
                    min_frame_share=float(getattr(settings, "clip_min_frame_share", DEFAULT_CLIP_MIN_FRAME_SHARE)),
                    still_s=still,
                    max_still_s=float(getattr(settings, "clip_max_still_s", 1.0)),
                    exposure=exposures.get((iw.image, iw.segment)),
                )
            except Exception:
                db.rollback()
                report(iw.image, "failed")
                raise
            status[iw.image] = "done"
            report(iw.image, "done")
    return status


def clip_validity(
    frames,
    *,
    expected: int | None,
    min_frame_share: float = DEFAULT_CLIP_MIN_FRAME_SHARE,
    min_valid_share: float = 0.8,
    still_s: float | None = None,
    max_still_s: float = 1.0,
) -> tuple[bool, str | None]:
    """Whether a clip is usable, and why not.

    A clip is invalid when it holds fewer than ``min_frame_share`` of the ``expected``
    frames of its window (the camera stopped: the recording has no frames for the rest
    of it), when the camera delivered no new frame for more than ``max_still_s`` seconds
    within it (``still_s``: it froze, and the constant-rate grid repeats one frame), or
    when fewer than ``min_valid_share`` of its frames show a confident, frontal face
    (the release's rule, :func:`fergi.features.frame_validity`).

    Parameters
    ----------
    frames : pandas.DataFrame
        The clip's per-frame features (release columns).
    expected : int or None
        Frames of the clip's window (duration x fps); None skips the frame-count rule.
    min_frame_share, min_valid_share : float
    still_s : float, optional
        The longest time within the clip that one camera frame was shown.
    max_still_s : float

    Returns
    -------
    (bool, str or None)
        Validity and a one-line reason (None when valid), e.g.
        ``"9 of 150 frames (6 %): the camera stopped?"`` or ``"no face in 70 % of frames"``.
    """

    n = len(frames)
    if expected and n < min_frame_share * expected:
        return False, (
            f"{n} of {expected} frames ({100 * n / expected:.0f} %): the camera stopped? "
            f"(at least {100 * min_frame_share:.0f} % needed)"
        )
    if n == 0:
        return False, "no frames"
    if still_s is not None and still_s > max_still_s:
        return False, f"no new camera frame for {still_s:.1f} s: the camera froze? (at most {max_still_s:g} s)"
    valid = frame_validity(frames).to_numpy()
    share = float(valid.mean())
    if share >= min_valid_share:
        return True, None
    no_face = float((frames["face_detection_confidence_score"].to_numpy(dtype=float) < 0.9).mean())
    if no_face >= (1 - share) / 2:
        what = f"no face in {100 * no_face:.0f} % of frames"
    else:
        what = f"face turned away or unclear in {100 * (1 - share):.0f} % of frames"
    return False, f"{what} (a usable face in {100 * min_valid_share:.0f} % needed)"


def is_short_clip(clip, min_frame_share: float) -> bool:
    """Whether a stored clip row fails the frame-count rule (the camera stopped)."""
    return bool(clip.expected_frames) and clip.n_frames < min_frame_share * clip.expected_frames


def has_recording_fault(clip, min_frame_share: float, min_valid_share: float = 0.8) -> bool:
    """Whether a stored clip row is invalid for a reason its per-frame features cannot
    show: too few frames (the camera stopped), or stored invalid although enough of its
    frames show a face (the camera froze). Such a clip's image gets no label and is
    listed as invalid in an export."""
    if is_short_clip(clip, min_frame_share):
        return True
    share = clip.valid_frame_share
    return clip.clip_valid is False and share is not None and share >= min_valid_share


def _store_image(
    db, sess, store, image: int, pair, *, estimator, fps: float,
    segment: int | None = None, expected: Mapping[str, int] | None = None, min_frame_share: float = DEFAULT_CLIP_MIN_FRAME_SHARE,
    still_s: Mapping[str, float] | None = None, max_still_s: float = 1.0,
    exposure: tuple[int, float] | None = None,
) -> None:
    """Analyse both clips of an image and store their files and rows in one commit."""
    import pandas as pd
    from sqlalchemy import delete

    tables = _clip_tables(pair, estimator=estimator, fps=fps, source=f"session {sess.id}", image=image)
    folder = store.features_dir(sess.id)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for clip, table in tables.items():
        path = folder / f"{clip}_clip_{image}_features.csv"
        # (on object storage: written to a scratch file, uploaded when the block ends)
        with store.output(path) as local:
            write_features(table, local, decimals=2 if clip == "baseline" else 3)
            # continue from the file as saved (release rounding), as a recomputation from
            # an export would
            frames = pd.read_csv(local)
        act = compute_activation_values(
            _frames_table({(image, clip): frames}, participant=sess.participant_id, session=sess.index)
        )
        row = act.iloc[0].to_dict()
        n_expected = (expected or {}).get(clip)
        valid, reason = clip_validity(
            frames, expected=n_expected, min_frame_share=min_frame_share,
            still_s=(still_s or {}).get(clip), max_still_s=max_still_s,
        )
        if reason is not None:
            logger.warning("session %d: %s clip of image %d is invalid: %s", sess.id, clip, image, reason)
        rows.append(
            Clip(
                session_id=sess.id,
                image_index=image,
                clip=clip,
                n_frames=len(frames),
                valid_frame_share=_float(row.get("valid_frame_share")),
                clip_valid=valid,
                invalid_reason=reason,
                expected_frames=n_expected,
                segment=segment,
                exposure=None if exposure is None else exposure[0],
                seen_before_s=None if exposure is None else round(exposure[1], 3),
                activations={k: _float(v) for k, v in row.items() if k.endswith("_activation_value")},
                video_file=None,
                features_file=store.relative(path),
            )
        )
    # Files first, then the rows in one commit: a crash in between only redoes this image.
    db.execute(delete(Clip).where(Clip.session_id == sess.id, Clip.image_index == image))
    db.add_all(rows)
    db.commit()
    db.refresh(sess)


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if out != out else out


# --------------------------------------------------------------------------- clip videos on demand


def clip_video(db, sess, store, image: int, clip: str, *, fps: float = 30):
    """The video file of one clip, encoded from the raw upload on first use and kept.

    Only the sharing export and the admin's playback ask for one, so a session whose
    participant did not share video has its clips encoded only if an admin watches.

    Parameters
    ----------
    db : sqlalchemy.orm.Session
    sess : StudySession
    store : MediaStore
    image : int
    clip : {"baseline", "reaction"}
    fps : float
        The study's frame rate.

    Returns
    -------
    pathlib.Path or RemotePath or None
        None when the clip was not analysed, or its raw video is gone (retention).
    """

    row = next((c for c in sess.clips if c.image_index == image and c.clip == clip), None)
    if row is None:
        return None
    if row.video_file:
        path = store.resolve(row.video_file)
        if path.is_file():
            return path

    events = list(sess.events)
    if row.segment is not None:
        # the presentation the clip was analysed from (a replay may not be analysed yet)
        events = [e for e in events if e.segment == row.segment]
    chosen = select_image_events(events, sess.n_images, unusable_segments(sess)).get(image)
    seg = next((s for s in sess.segments if chosen is not None and s.index == chosen[0]), None)
    if seg is None or seg.n_chunks == 0 or not row.n_frames:
        return None
    if store.missing_chunks(sess.id, seg.index, [c.seq for c in seg.chunks]):
        return None
    # the clip's own length, as analysed (durations are the study's, or shorter at the end)
    seconds = row.n_frames / fps
    window = next(
        w for w in clip_windows(chosen[1], baseline_s=seconds, reaction_s=seconds, fps=fps)
        if w.kind == clip
    )
    decoder = SegmentDecoder(fps, f"session {sess.id} segment {seg.index}")
    decoder.want(clip, window.first, row.n_frames)
    decoder.advance(store.segment_stream(sess.id, seg.index, seg.chunks), final=True)
    frames = decoder.pop(clip)
    if frames is None:
        return None
    target = store.clips_dir(sess.id) / f"{clip}_clip_{image}.mp4"
    with store.output(target) as local:
        partial = local.with_name(f".{local.stem}.partial.mp4")
        try:
            write_video(partial, frames, fps=fps)
            partial.replace(local)
        finally:
            partial.unlink(missing_ok=True)
    row.video_file = store.relative(target)
    db.commit()
    return target
