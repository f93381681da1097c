"""Recording media of a study session: assemble, standardise, cut clips (paper Sec. 3.2).

The browser records one MediaRecorder stream (VP9 webm) per page load and uploads it
in chunks. The server

1. concatenates the chunks of one stream byte by byte (:func:`assemble_chunks`);
   MediaRecorder chunks are consecutive pieces of one webm file, so the
   concatenation is a valid file even when the last chunk ends mid-cluster;
2. standardises the recording to a constant 30 fps (:func:`standardize_video`): for
   each 1/30 s tick, the latest frame at or before it. MediaRecorder webm has no
   duration metadata and a variable frame rate, so frames are counted and timed by
   decoding;
3. cuts each image's baseline and reaction clip by the event timestamps, measured
   from video time zero (the first frame) (:func:`cut_clips`).

Decoding and encoding go through :mod:`fergi.video`; clips are H.264 mp4 at
near-lossless quality, readable by :func:`fergi.video.read_video`. Every output is
written under a temporary name and renamed when complete, so a failure never leaves
a truncated file that looks finished, and inputs are never modified.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fergi._errors import FergiError
from fergi.study.protocol import CLIP_KINDS, EVENT_KINDS
from fergi.video import iter_frames, write_video

logger = logging.getLogger(__name__)

__all__ = [
    "CLIP_KINDS",
    "EVENT_KINDS",
    "ClipWindow",
    "assemble_chunks",
    "clip_windows",
    "cut_clips",
    "standardize_video",
]

_WEBM_MAGIC = b"\x1a\x45\xdf\xa3"  # EBML header: every webm file starts with it
# An event a little before video time zero is clock jitter between the page's
# clock and the first frame's capture time; more than this is a broken recording.
_NEGATIVE_TOLERANCE_S = 0.5


def _partial(path: Path) -> Path:
    # keep the suffix: fergi.video.write_video picks the format from it
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def _check_decodable(path: Path, what: str) -> None:
    """Decode the first frame, so a broken file fails here and not in a later stage."""

    try:
        frames = iter_frames(path, fps=None)
        next(frames)
        frames.close()
    except StopIteration:
        raise FergiError(f"{what}: contains no decodable video frames") from None
    except FergiError as exc:
        message = str(exc).removeprefix(f"{path}: ")
        raise FergiError(f"{what}: {message}") from None


# --------------------------------------------------------------------------- assemble


def assemble_chunks(chunk_paths: Sequence[str | os.PathLike], out_path: str | os.PathLike) -> Path:
    """Concatenate the uploaded chunks of ONE MediaRecorder stream into a webm file.

    Parameters
    ----------
    chunk_paths : sequence of path
        The chunks in recording order (sequence number 0 first: only the first
        chunk carries the webm header).
    out_path : path
        The assembled recording (replaced atomically; the chunks are kept).

    Returns
    -------
    pathlib.Path
        ``out_path``.

    Raises
    ------
    fergi.FergiError
        No chunks, a missing or empty chunk, a first chunk without a webm header, or
        a result that does not decode.
    """
    paths = [Path(p) for p in chunk_paths]
    out = Path(out_path)
    if not paths:
        raise FergiError(f"{out}: no recording chunks to assemble")
    for index, path in enumerate(paths):
        if not path.is_file():
            raise FergiError(f"{path}: recording chunk {index} does not exist")
        if path.stat().st_size == 0:
            raise FergiError(f"{path}: recording chunk {index} is empty")
    with paths[0].open("rb") as first:
        if first.read(4) != _WEBM_MAGIC:
            raise FergiError(
                f"{paths[0]}: the first recording chunk does not start with a WebM header "
                "(chunks must be one MediaRecorder stream, in order, from its first chunk)"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial(out)
    try:
        with partial.open("wb") as sink:
            for path in paths:
                with path.open("rb") as source:
                    while block := source.read(1 << 20):
                        sink.write(block)
            sink.flush()
            os.fsync(sink.fileno())
        _check_decodable(partial, f"{out} (assembled from {len(paths)} chunks)")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    logger.info("assembled %d chunks into %s (%d bytes)", len(paths), out, out.stat().st_size)
    return out


# --------------------------------------------------------------------------- standardise


def standardize_video(
    in_path: str | os.PathLike, out_path: str | os.PathLike, fps: float = 30
) -> Path:
    """Re-time a (variable frame rate) recording to a constant frame rate.

    For each tick ``k / fps`` from the first frame (video time zero) to the last,
    the latest frame at or before the tick is written; frames are timed by their
    presentation timestamps, so recordings without duration metadata work.

    Parameters
    ----------
    in_path : path
        The recording (webm, mp4, ...).
    out_path : path
        The standardised video; its suffix picks the format (``.mp4``: H.264 crf 12,
        ``.webm``: VP9, see :func:`fergi.video.write_video`).
    fps : float
        The constant frame rate (30, as in the paper).

    Returns
    -------
    pathlib.Path
        ``out_path``.

    Raises
    ------
    fergi.FergiError
        Missing, empty, corrupt or frameless input.
    """

    source, out = Path(in_path), Path(out_path)
    if fps is None or not fps > 0:
        raise FergiError(f"{source}: fps must be positive, got {fps!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial(out)
    counter = _Counter(iter_frames(source, fps=fps))
    try:
        write_video(partial, counter, fps=fps)
        if counter.n == 0:
            raise FergiError(f"{source}: contains no decodable video frames")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    logger.info("standardised %s to %s: %d frames at %g fps", source, out, counter.n, fps)
    return out


class _Counter:
    """Pass the frames of ``(t, frame)`` pairs through, counting them."""

    def __init__(self, pairs: Iterable[tuple[float, np.ndarray]]):
        self.pairs = pairs
        self.n = 0

    def __iter__(self):
        for _, frame in self.pairs:
            self.n += 1
            yield frame


# --------------------------------------------------------------------------- clips


@dataclass(frozen=True)
class ClipWindow:
    """The frames of one clip on the standardised grid: ``first <= k < first + n``."""

    image_index: int
    kind: str  # "baseline" or "reaction"
    start_s: float
    first: int
    n: int


def _field(event: Any, name: str) -> Any:
    if isinstance(event, Mapping):
        return event.get(name)
    return getattr(event, name, None)


def clip_windows(
    events: Iterable[Mapping[str, Any] | Any],
    *,
    baseline_s: float = 5.0,
    reaction_s: float = 5.0,
    fps: float = 30,
) -> list[ClipWindow]:
    """The baseline and reaction clip of each image, as frame ranges at ``fps``.

    Baseline clip: ``[baseline_start, baseline_start + baseline_s)``; reaction clip:
    ``[image_shown, image_shown + reaction_s)``; a clip starting at ``t`` seconds
    begins with tick ``floor(t * fps)``, the latest tick at or before ``t``.

    Parameters
    ----------
    events : iterable of dict (or objects with these attributes)
        ``{"image_index": int, "kind": "baseline_start" | "image_shown" |
        "image_hidden", "video_time": seconds from video time zero}``. When an event
        repeats (a resumed page), the last one counts.
    baseline_s, reaction_s : float
    fps : float

    Returns
    -------
    list of ClipWindow
        Sorted by start; images without both a ``baseline_start`` and an
        ``image_shown`` event are left out with a warning.

    Raises
    ------
    fergi.FergiError
        A malformed event (unknown kind, missing or non-numeric fields, a time far
        before video time zero) or non-positive durations.
    """
    for name, value in (("baseline_s", baseline_s), ("reaction_s", reaction_s), ("fps", fps)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise FergiError(f"clip cutting: {name} must be a positive number, got {value!r}")
    times: dict[int, dict[str, float]] = {}
    for number, event in enumerate(events, start=1):
        kind = _field(event, "kind")
        image = _field(event, "image_index")
        time = _field(event, "video_time")
        where = f"event {number} ({kind!r} of image {image!r})"
        if kind not in EVENT_KINDS:
            raise FergiError(f"{where}: unknown kind (expected one of {', '.join(EVENT_KINDS)})")
        if isinstance(image, bool) or not isinstance(image, int | np.integer):
            raise FergiError(f"{where}: image_index must be an integer")
        if isinstance(time, bool) or not isinstance(time, int | float | np.number):
            raise FergiError(f"{where}: video_time must be a number of seconds, got {time!r}")
        time = float(time)
        if not math.isfinite(time) or time < -_NEGATIVE_TOLERANCE_S:
            raise FergiError(
                f"{where}: video_time {time} s is before the recording started (video time zero)"
            )
        slot = times.setdefault(int(image), {})
        if kind in slot:
            logger.warning("%s repeats; using the last one (%.3f s)", where, time)
        slot[kind] = max(time, 0.0)
    windows = []
    n_baseline = round(baseline_s * fps)
    n_reaction = round(reaction_s * fps)
    for image in sorted(times):
        slot = times[image]
        missing = [k for k in ("baseline_start", "image_shown") if k not in slot]
        if missing:
            logger.warning(
                "image %d has no %s event; its clips are skipped", image, " or ".join(missing)
            )
            continue
        for kind, start, n in (
            ("baseline", slot["baseline_start"], n_baseline),
            ("reaction", slot["image_shown"], n_reaction),
        ):
            first = math.floor(start * fps + 1e-6)
            windows.append(ClipWindow(image, kind, start, first, n))
    windows.sort(key=lambda w: (w.first, w.kind != "baseline"))
    return windows


class _ClipSink:
    """Encode one clip in a thread fed frame by frame, so memory stays bounded."""

    def __init__(self, path: Path, fps: float):
        self.path = path
        self.partial = _partial(path)
        self.fps = fps
        self.n = 0
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._run, name=f"clip {path.name}", daemon=True)
        self._thread.start()

    def _frames(self):
        while (frame := self._queue.get()) is not None:
            yield frame

    def _run(self) -> None:

        try:
            write_video(self.partial, self._frames(), fps=self.fps)
        except BaseException as exc:  # reported to the caller by close()
            self.error = exc
            while self._queue.get() is not None:  # unblock the producer
                pass

    def put(self, frame: np.ndarray) -> None:
        self._queue.put(frame)
        self.n += 1

    def close(self, keep: bool) -> None:
        self._queue.put(None)
        self._thread.join()
        try:
            if self.error is not None:
                raise FergiError(f"{self.path}: cannot write clip ({self.error})") from self.error
            if keep:
                os.replace(self.partial, self.path)
        finally:
            self.partial.unlink(missing_ok=True)


def cut_clips(
    recording: str | os.PathLike,
    events: Iterable[Mapping[str, Any] | Any],
    out_dir: str | os.PathLike,
    *,
    baseline_s: float = 5.0,
    reaction_s: float = 5.0,
    fps: float = 30,
) -> dict[int, dict[str, Path]]:
    """Cut each image's baseline and reaction clip out of a session recording.

    The recording is decoded once, on the ``fps`` grid from its first frame (a
    recording already standardised by :func:`standardize_video` passes through
    unchanged; a raw variable-rate one is standardised on the fly). Each clip is
    written to ``out_dir/{baseline,reaction}_clip_<image>.mp4``, named like the
    public release's feature files.

    Parameters
    ----------
    recording : path
        The session recording.
    events : iterable of dict
        See :func:`clip_windows`.
    out_dir : path
        Where to write the clips (created; existing clips are replaced only when
        the new one is complete).
    baseline_s, reaction_s : float
        Clip durations in seconds (5 and 5 in the paper).
    fps : float
        Frame rate of the clips.

    Returns
    -------
    dict
        ``{image_index: {"baseline": path, "reaction": path}}`` for every image with
        both clips. A clip the recording ends during is kept shorter (with a
        warning); an image whose clips start after the recording ended is left out
        (with a warning).

    Raises
    ------
    fergi.FergiError
        Malformed events, an unreadable recording, or no clip at all in it.
    """

    source, out = Path(recording), Path(out_dir)
    windows = clip_windows(events, baseline_s=baseline_s, reaction_s=reaction_s, fps=fps)
    if not windows:
        raise FergiError(f"{source}: no image has both a baseline_start and an image_shown event")
    out.mkdir(parents=True, exist_ok=True)
    end = max(w.first + w.n for w in windows)
    pending = list(windows)  # sorted by first frame
    active: list[tuple[ClipWindow, _ClipSink]] = []
    finished: dict[tuple[int, str], tuple[int, Path]] = {}
    k = -1
    frames = iter_frames(source, fps=fps)
    try:
        for k, (_, frame) in enumerate(frames):
            if k >= end:
                break
            while pending and pending[0].first <= k:
                window = pending.pop(0)
                path = out / f"{window.kind}_clip_{window.image_index}.mp4"
                active.append((window, _ClipSink(path, fps)))
            for _, sink in active:
                sink.put(frame)
            for window, sink in [a for a in active if a[0].first + a[0].n <= k + 1]:
                active.remove((window, sink))
                sink.close(keep=True)
                finished[(window.image_index, window.kind)] = (sink.n, sink.path)
        # the recording ended: clips still open are shorter than asked
        for window, sink in active:
            sink.close(keep=sink.n > 0)
            logger.warning(
                "%s: the recording ends %.2f s into the %s clip of image %d (%d of %d frames)",
                source,
                sink.n / fps,
                window.kind,
                window.image_index,
                sink.n,
                window.n,
            )
            finished[(window.image_index, window.kind)] = (sink.n, sink.path)
        active = []
    finally:
        frames.close()
        for _, sink in active:  # an error interrupted the pass: drop unfinished clips
            try:
                sink.close(keep=False)
            except FergiError:
                pass
    for window in pending:
        logger.warning(
            "%s: the recording (%.2f s) ends before the %s clip of image %d starts (%.2f s)",
            source,
            (k + 1) / fps,
            window.kind,
            window.image_index,
            window.start_s,
        )
    clips: dict[int, dict[str, Path]] = {}
    for image in sorted({w.image_index for w in windows}):
        pair = {kind: finished.get((image, kind)) for kind in CLIP_KINDS}
        if all(item is not None and item[0] > 0 for item in pair.values()):
            clips[image] = {kind: item[1] for kind, item in pair.items()}
        else:
            logger.warning(
                "%s: image %d is left out (its clips are not in the recording)", source, image
            )
    if not clips:
        raise FergiError(
            f"{source}: the recording ({(k + 1) / fps:.2f} s) holds no complete image "
            "(baseline and reaction clip)"
        )
    return clips
