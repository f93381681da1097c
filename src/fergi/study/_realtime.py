"""Real-time processing of a study session: decode once, cut clips in memory, analyse each
image while the participant answers its survey.

The browser uploads its recording as consecutive byte pieces of one MediaRecorder webm
stream. :class:`SegmentDecoder` demuxes the chunks stored so far, decodes every video
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

import io
import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fergi._errors import FergiError

logger = logging.getLogger(__name__)

__all__ = ["SegmentDecoder", "clip_video", "extract_recording_features", "process_ready_clips"]

CLIP_KINDS = ("baseline", "reaction")

# Same tolerance as fergi.video: webm times are milliseconds, ticks are 1/30 s.
_TICK_EPS = 2e-3


def _read_chunks(chunk_paths: Iterable[Path]) -> bytes:
    parts = []
    for index, path in enumerate(chunk_paths):
        path = Path(path)
        if not path.is_file():
            raise FergiError(f"{path}: recording chunk {index} does not exist")
        parts.append(path.read_bytes())
    if not parts:
        raise FergiError("no recording chunks")
    return b"".join(parts)


def _reason(exc: BaseException) -> str:
    from fergi.video._io import _reason as reason

    return reason(exc).replace(": '<none>'", "")


class SegmentDecoder:
    """Decode one recording segment incrementally, standardised to ``fps``.

    Parameters
    ----------
    fps : float
        The constant frame rate (30 in the study).
    source : str
        Names the segment in errors.

    Notes
    -----
    Call :meth:`advance` with the bytes of the stream uploaded so far (the stored
    chunks, concatenated) as often as new chunks arrive. Frames are collected only for
    the windows registered with :meth:`want`; every other frame is decoded (a video
    decoder needs them all) but never converted to RGB.
    """

    def __init__(self, fps: float = 30.0, source: str = "recording"):
        self.fps = float(fps)
        self.source = source
        self.n_fed = 0  # video packets given to the decoder so far
        self.n_frames = 0  # native frames decoded
        self.k = 0  # next tick to emit
        self.finished = False
        self._ctx = None
        self._time_base = None
        self._first: float | None = None
        self._last_t = -math.inf
        self._prev = None  # (av.VideoFrame, cached rgb or None)
        self._windows: dict[Any, tuple[int, int]] = {}
        # per window: a (n, H, W, 3) array filled in tick order, and how much is filled
        self._frames: dict[Any, list] = {}
        # per window: [native frame of the last tick, ticks it has lasted, the longest run]
        self._runs: dict[Any, list] = {}

    # ------------------------------------------------------------------ windows
    def can_serve(self, first: int) -> bool:
        """Whether frames from tick ``first`` on are still to come."""
        return first >= self.k

    def want(self, key: Any, first: int, n: int) -> None:
        """Collect ticks ``first <= k < first + n`` under ``key``."""
        if key in self._windows:
            return
        if not self.can_serve(first):
            raise ValueError(f"tick {first} was already decoded (now at {self.k})")
        self._windows[key] = (first, n)
        self._frames[key] = [None, 0]
        self._runs[key] = [None, 0, 0]

    def done(self, key: Any) -> bool:
        first, n = self._windows[key]
        return self.finished or self._frames[key][1] >= n

    def longest_still(self, key: Any) -> int:
        """The most consecutive ticks of a window that show one camera frame (a camera
        that froze, or delivered no frames for a while); call before :meth:`pop`."""
        return self._runs[key][2]

    def pop(self, key: Any) -> np.ndarray | None:
        """The frames of a finished window (None when the recording holds none of it)."""
        self._windows.pop(key)
        self._runs.pop(key, None)
        frames, filled = self._frames.pop(key)
        return frames[:filled] if filled else None

    @property
    def until(self) -> int:
        """The tick after the last registered window (how far decoding must go)."""
        return max((first + n for first, n in self._windows.values()), default=0)

    # ------------------------------------------------------------------ decoding
    def _rgb(self) -> np.ndarray:
        from fergi.video._io import _upright

        frame, rgb = self._prev
        if rgb is None:
            rgb = _upright(frame)
            self._prev = (frame, rgb)
        return rgb

    def _emit_tick(self) -> None:
        k = self.k
        for key, (first, n) in self._windows.items():
            if first <= k < first + n:
                slot = self._frames[key]
                rgb = self._rgb()
                if slot[0] is None:
                    # one array per clip, filled in place: no list of frames to stack
                    slot[0] = np.empty((n, *rgb.shape), dtype=rgb.dtype)
                elif slot[0].shape[1:] != rgb.shape:
                    raise FergiError(
                        f"{self.source}: the frame size changes from "
                        f"{slot[0].shape[2]}x{slot[0].shape[1]} to {rgb.shape[1]}x{rgb.shape[0]} "
                        f"within a clip ({k / self.fps:.2f} s)"
                    )
                slot[0][slot[1]] = rgb
                slot[1] += 1
                # the tick shows the newest native frame so far (number n_frames - 1)
                run = self._runs[key]
                if run[0] == self.n_frames - 1:
                    run[1] += 1
                else:
                    run[0], run[1] = self.n_frames - 1, 1
                run[2] = max(run[2], run[1])
        self.k += 1

    def _on_frame(self, frame) -> None:
        if frame.pts is not None and self._time_base is not None:
            t = float(frame.pts * self._time_base)
        else:
            t = self.n_frames / self.fps
        if self._first is None:
            self._first = t
        t -= self._first
        if t <= self._last_t:
            return  # a duplicate presentation time: the earlier frame wins (as in fergi.video)
        step = 1.0 / self.fps
        if self._prev is None:
            self._prev = (frame, None)
        # every tick before this frame's time shows the previous frame
        while self.k * step + _TICK_EPS < t:
            self._emit_tick()
        self._prev = (frame, None)
        self._last_t = t
        self.n_frames += 1

    def _open(self, data):
        import av

        # bytes, or a seekable file (a store's ChunkStream: never the whole video in memory)
        source = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
        source.seek(0)
        try:
            container = av.open(source, mode="r")
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise FergiError(f"{self.source}: not a readable video ({_reason(exc)})") from None
        if not container.streams.video:
            container.close()
            raise FergiError(f"{self.source}: contains no video stream")
        return container

    def advance(self, data, *, final: bool = False, until: int | None = None) -> None:
        """Decode the packets of ``data`` not decoded yet, up to tick ``until``.

        Parameters
        ----------
        data : bytes or seekable binary file
            The segment's stream as uploaded so far (a prefix of the final stream).
        final : bool
            The stream is complete: its last packet is decoded too, and the last frame
            covers the ticks up to its own time (as :func:`fergi.video.iter_frames`).
        until : int, optional
            Stop once this tick is emitted (default: the end of the registered windows),
            so frames nobody asked for yet are not decoded ahead of need.

        Raises
        ------
        fergi.FergiError
            The stream cannot be read or a complete packet does not decode.
        """
        import av

        if self.finished:
            return
        until = self.until if until is None else until
        if self.k >= until:
            return
        container = self._open(data)
        try:
            stream = container.streams.video[0]
            if self._ctx is None:
                self._ctx = av.CodecContext.create(stream.codec_context.name, "r")
                if stream.codec_context.extradata:
                    self._ctx.extradata = stream.codec_context.extradata
                # Frame threading keeps decoding well below the cost of face analysis.
                self._ctx.thread_type = "AUTO"
                self._time_base = stream.time_base
            index = 0
            held = None  # the newest packet: complete only once a later one exists
            stopped = False
            try:
                for packet in container.demux(stream):
                    if packet.size == 0:
                        continue
                    index += 1
                    if index <= self.n_fed:
                        continue
                    if held is not None:
                        self._feed(held)
                        if self.k >= until:
                            held = None
                            stopped = True
                            break
                    held = packet
            except av.error.FFmpegError as exc:
                # a cut at the end of an unfinished upload; the packets before it are whole
                logger.debug("%s: demuxing stopped after %d packets (%s)", self.source, index, _reason(exc))
            if final and not stopped:
                if held is not None:
                    self._feed(held)
                self._flush()
        finally:
            container.close()

    def _feed(self, packet) -> None:
        import av

        try:
            frames = self._ctx.decode(packet)
        except av.error.FFmpegError as exc:
            raise FergiError(
                f"{self.source}: corrupt video data after {self.n_frames} frames ({_reason(exc)})"
            ) from None
        self.n_fed += 1
        for frame in frames:
            self._on_frame(frame)

    def _flush(self) -> None:
        import av

        try:
            frames = self._ctx.decode(None)
        except av.error.FFmpegError as exc:
            raise FergiError(
                f"{self.source}: corrupt video data after {self.n_frames} frames ({_reason(exc)})"
            ) from None
        for frame in frames:
            self._on_frame(frame)
        if self._prev is not None:
            step = 1.0 / self.fps
            # duration is unknown for MediaRecorder files, so nothing is invented after it
            while self.k * step <= self._last_t + _TICK_EPS:
                self._emit_tick()
        self.finished = True
        if self.n_frames == 0:
            raise FergiError(f"{self.source}: contains no decodable video frames")


# --------------------------------------------------------------------------- analysis


_local = threading.local()


def _analyzer():
    # One face analyser per thread: the worker analyses in its clips and process threads
    # at once, and a MediaPipe graph must not be shared between threads.
    if getattr(_local, "analyzer", None) is None:
        from fergi.face import FaceAnalyzer

        _local.analyzer = FaceAnalyzer()
    return _local.analyzer


def _analyse_clip(frames: np.ndarray, baseline: Any, *, estimator, fps: float, source: str):
    """Per-frame features of one clip's decoded frames (``baseline``: its image's baseline)."""
    from fergi.au import extract_features
    from fergi.video import VideoFrames

    video = VideoFrames(
        frames=frames, timestamps=np.arange(len(frames)) / fps, fps=fps, source=source
    )
    if baseline is None:
        baseline = video  # a baseline clip is its own neutral reference
    table = extract_features(video, estimator=estimator, baseline=baseline, analyzer=_analyzer())
    return table, video


def _clip_tables(pair: Mapping[str, np.ndarray], *, estimator, fps: float, source: str, image: int):
    """Both clips of an image, analysed: ``{clip: DataFrame}`` (release CSV rounding applied)."""
    out = {}
    baseline_video = None
    for clip in CLIP_KINDS:
        try:
            table, video = _analyse_clip(
                pair[clip],
                baseline_video,
                estimator=estimator,
                fps=fps,
                source=f"{source}: {clip} clip of image {image}",
            )
        except FergiError as exc:
            raise FergiError(f"{clip} clip of image {image}: {exc}") from exc
        if clip == "baseline":
            baseline_video = video
        out[clip] = table
    return out


def _rounded(table, clip: str):
    """The table as its release CSV file reads back (baseline 2 decimals, reaction 3)."""
    import pandas as pd

    from fergi.au import format_features_csv

    return pd.read_csv(io.StringIO(format_features_csv(table, decimals=2 if clip == "baseline" else 3)))


@dataclass
class ImageWindows:
    """The two clip windows of one image in one segment."""

    image: int
    segment: int
    windows: dict[str, Any] = field(default_factory=dict)  # clip -> ClipWindow


def image_windows(
    events: list[Any], n_images: int, *, baseline_s, reaction_s, fps, skip_segments: Iterable[int] = ()
) -> dict[int, ImageWindows]:
    """The clip windows of every image whose presentation is complete (latest segment wins;
    ``skip_segments``: segments without video, see :func:`fergi.study._worker.unusable_segments`)."""
    from fergi.study._media import clip_windows
    from fergi.study._worker import select_image_events

    out = {}
    for image, (segment, evs) in select_image_events(events, n_images, skip_segments).items():
        windows = clip_windows(evs, baseline_s=baseline_s, reaction_s=reaction_s, fps=fps)
        if len(windows) == 2:
            out[image] = ImageWindows(image, segment, {w.kind: w for w in windows})
    return out


def extract_recording_features(
    chunk_paths: Iterable[str | Path],
    events: Iterable[Mapping[str, Any]],
    *,
    estimator="geometry",
    baseline_s: float = 5.0,
    reaction_s: float = 5.0,
    fps: float = 30,
) -> dict[tuple[int, str], Any]:
    """Per-frame features of every clip of one whole recording segment, in one pass.

    The same decoding and analysis as the real-time worker, run once at the end; the
    worker's results equal these frame for frame.

    Parameters
    ----------
    chunk_paths : iterable of path
        The segment's chunks in order (or one webm file).
    events : iterable of dict
        ``{"image_index", "kind", "video_time"}`` of this segment.
    estimator : str or estimator
    baseline_s, reaction_s, fps : float

    Returns
    -------
    dict
        ``{(image, "baseline"|"reaction"): DataFrame}`` (release CSV rounding).
    """
    from fergi.au import create_au_estimator
    from fergi.study._media import clip_windows

    events = list(events)
    if isinstance(estimator, str):
        estimator = create_au_estimator(estimator)
    data = _read_chunks([Path(p) for p in chunk_paths])
    decoder = SegmentDecoder(fps, "recording")
    windows = clip_windows(events, baseline_s=baseline_s, reaction_s=reaction_s, fps=fps)
    for w in windows:
        decoder.want((w.image_index, w.kind), w.first, w.n)
    decoder.advance(data, final=True)
    decoded = {key: decoder.pop(key) for key in list(decoder._windows)}
    out = {}
    for image in sorted({w.image_index for w in windows}):
        pair = {c: decoded.get((image, c)) for c in CLIP_KINDS}
        if any(v is None for v in pair.values()):
            continue
        tables = _clip_tables(pair, estimator=estimator, fps=fps, source="recording", image=image)
        for clip, table in tables.items():
            out[(image, clip)] = _rounded(table, clip)
    return out


# --------------------------------------------------------------------------- the worker's side


def check_segment(chunks, source: str) -> None:
    """Raise a one-line :class:`~fergi.FergiError` when a segment's stored chunks are
    missing or do not open as a video (the ``assemble`` stage).

    ``chunks``: the chunk files in order, or a seekable stream of the whole segment
    (:meth:`fergi.study._storage.MediaStore.segment_stream`, read chunk by chunk).
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
    decoder._open(data).close()
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
            w in decoder._windows or decoder.can_serve(first) for w, first, _ in windows
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
    from fergi.study._presentations import exposures_by_segment
    from fergi.study._worker import unusable_segments

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
                    min_frame_share=float(getattr(settings, "clip_min_frame_share", 0.8)),
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
    min_frame_share: float = 0.8,
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
    from fergi.features import frame_validity

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
    segment: int | None = None, expected: Mapping[str, int] | None = None, min_frame_share: float = 0.8,
    still_s: Mapping[str, float] | None = None, max_still_s: float = 1.0,
    exposure: tuple[int, float] | None = None,
) -> None:
    """Analyse both clips of an image and store their files and rows in one commit."""
    import pandas as pd
    from sqlalchemy import delete

    from fergi.au import write_features
    from fergi.features import compute_activation_values
    from fergi.study._db import Clip
    from fergi.study._pipeline import _frames_table

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
    from fergi.study._media import clip_windows
    from fergi.study._worker import select_image_events
    from fergi.video import write_video

    row = next((c for c in sess.clips if c.image_index == image and c.clip == clip), None)
    if row is None:
        return None
    if row.video_file:
        path = store.resolve(row.video_file)
        if path.is_file():
            return path
    from fergi.study._worker import unusable_segments

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
