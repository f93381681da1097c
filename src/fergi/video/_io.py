"""Decoding, frame-rate standardisation and writing of videos with PyAV."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fergi._errors import FergiError
from fergi.video._ticks import FrameTimes, TickClock, av_reason, open_container, upright_rgb

logger = logging.getLogger(__name__)

#: File suffixes that :func:`fergi.video.find_videos` treats as videos.
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".m4v", ".y4m")

@dataclass
class VideoFrames:
    """Decoded frames of one video.

    Attributes
    ----------
    frames : numpy.ndarray
        ``(N, H, W, 3)`` uint8 RGB frames.
    timestamps : numpy.ndarray
        ``(N,)`` float seconds from the start of the video (from the stream's
        presentation times; on a standardised grid ``k / fps``).
    fps : float or None
        The constant frame rate of ``frames``, or None for native (possibly
        variable) frame times.
    source : str
        Where the frames came from (a path or a description).
    """

    frames: np.ndarray
    timestamps: np.ndarray
    fps: float | None
    source: str

    def __len__(self) -> int:
        return len(self.frames)


def _open(path: Path):
    if not path.exists():
        raise FergiError(f"{path}: no such file")
    if path.is_dir():
        raise FergiError(f"{path}: is a folder, not a video file")
    if path.stat().st_size == 0:
        raise FergiError(f"{path}: empty file, not a video")
    return open_container(str(path), path)


def _native_frames(path: Path) -> Iterator[tuple[float, np.ndarray]]:
    """Yield ``(seconds, rgb)`` for each decoded frame, in presentation order."""
    import av

    container = _open(path)
    try:
        stream = container.streams.video[0]
        # Frame threading keeps decoding well below the per-frame cost of face analysis.
        stream.thread_type = "AUTO"
        time_base = stream.time_base
        times = FrameTimes()
        rate = float(stream.average_rate or stream.guessed_rate or 30.0)
        n = 0
        try:
            for frame in container.decode(stream):
                if frame.pts is not None and time_base is not None:
                    t = float(frame.pts * time_base)
                elif frame.time is not None:
                    t = float(frame.time)
                else:
                    # No timestamp at all (raw streams): fall back to the nominal rate.
                    t = (times.last + 1.0 / rate) if n else 0.0
                t = times.place(t)
                if t is None:
                    # Duplicate or out-of-order presentation time: the earlier frame wins.
                    continue
                n += 1
                yield t, upright_rgb(frame)
        except av.error.FFmpegError as exc:
            raise FergiError(
                f"{path}: corrupt video data after {n} frames ({av_reason(exc)})"
            ) from exc
        if n == 0:
            raise FergiError(f"{path}: contains no decodable video frames")
    finally:
        container.close()


def iter_frames(
    path: str | os.PathLike,
    *,
    fps: float | None = 30.0,
    start: float | None = None,
    end: float | None = None,
) -> Iterator[tuple[float, np.ndarray]]:
    """Stream ``(timestamp, rgb_frame)`` pairs of a video without holding it in memory.

    Parameters
    ----------
    path : str or path-like
        Any container/codec FFmpeg reads (mp4, webm, mov, avi, y4m; H.264, VP8/9,
        HEVC, ...). Browser MediaRecorder webm without duration metadata works:
        frames are timed by their presentation timestamps. Frames are turned upright
        by the file's display matrix (portrait phone videos).
    fps : float or None, default 30.0
        Standardise to this constant rate: for each tick ``k / fps`` the latest frame
        shown at or before the tick is emitted (the FERGI study's 30 fps
        standardisation). None yields the native, possibly variable-rate frames.
    start, end : float, optional
        Time range in seconds (``start <= t < end``); timestamps restart at 0 at
        ``start``.

    Yields
    ------
    timestamp : float
        Seconds from ``start`` (or from the first frame).
    frame : numpy.ndarray
        ``(H, W, 3)`` uint8 RGB.

    Raises
    ------
    fergi.FergiError
        The file is missing, empty, not a video, corrupt, or has no frames.
    """
    path = Path(path)
    t0 = float(start or 0.0)
    t1 = math.inf if end is None else float(end)
    if t1 <= t0:
        raise FergiError(f"{path}: empty time range start={start} end={end}")
    frames = _native_frames(path)
    if fps is None:
        for t, img in frames:
            if t >= t1:
                break
            if t >= t0 - 1e-9:
                yield t - t0, img
        return
    if fps <= 0:
        raise FergiError(f"--fps must be positive, got {fps}")
    clock = TickClock(fps, start=t0, end=t1)
    prev: np.ndarray | None = None
    last_t = 0.0
    for t, img in frames:
        # Every tick before this frame's time shows the previous frame.
        for k in clock.before(t):
            # Ticks before the first frame (start < 0) repeat the first frame.
            yield k * clock.step, (prev if prev is not None else img)
        if clock.exhausted:
            frames.close()
            return
        prev, last_t = img, t
    if prev is None:
        return
    # The last frame covers the ticks up to its own time (duration is unknown for
    # MediaRecorder files, so nothing is invented after it).
    for k in clock.through(last_t):
        yield k * clock.step, prev


def read_video(
    path: str | os.PathLike,
    *,
    fps: float | None = 30.0,
    start: float | None = None,
    end: float | None = None,
) -> VideoFrames:
    """Decode a video into memory, standardised to a constant frame rate by default.

    Parameters
    ----------
    path : str or path-like
        The video file.
    fps : float or None, default 30.0
        Constant output rate (latest earlier frame for each ``1 / fps`` tick), or None
        for the native frames and their stream timestamps.
    start, end : float, optional
        Time range in seconds; timestamps restart at 0 at ``start``.

    Returns
    -------
    VideoFrames

    Raises
    ------
    fergi.FergiError
        The file is missing, empty, not a video, corrupt, or the range has no frames.

    Notes
    -----
    A file cut short (a recording whose writer crashed) yields the frames before the
    cut, as a player would show them; an unreadable container (e.g. an mp4 whose index
    is missing) raises. Memory grows with the video (640x480: 0.9 MB a frame); use
    :func:`iter_frames` for long recordings.
    """
    times: list[float] = []
    images: list[np.ndarray] = []
    for t, img in iter_frames(path, fps=fps, start=start, end=end):
        times.append(t)
        images.append(img)
    if not images:
        raise FergiError(f"{path}: no video frames in the requested time range")
    return VideoFrames(
        frames=np.stack(images),
        timestamps=np.asarray(times, dtype=float),
        fps=None if fps is None else float(fps),
        source=str(path),
    )


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray] | np.ndarray,
    fps: float = 30.0,
    *,
    timestamps: Iterable[float] | None = None,
) -> Path:
    """Write RGB frames to a video file chosen by the suffix.

    ``.mp4``/``.mov``/``.mkv``: H.264 at near-lossless quality (crf 12); ``.webm``: VP9
    at high quality; ``.avi``: MJPEG; ``.y4m``: raw YUV 4:2:0 (the format Chromium's
    ``--use-file-for-fake-video-capture`` reads). Odd sizes are cropped by one pixel
    because 4:2:0 needs even dimensions.

    Parameters
    ----------
    path : str or path-like
        Output file; its suffix chooses the format.
    frames : iterable of numpy.ndarray
        ``(H, W, 3)`` uint8 RGB frames, all of one size.
    fps : float, default 30.0
        Frame rate (the time base for ``timestamps``).
    timestamps : iterable of float, optional
        Presentation time of each frame in seconds, for variable-frame-rate files
        (webm/mp4/mkv). Default: ``i / fps``.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    from fractions import Fraction

    import av

    path = Path(path)
    suffix = path.suffix.lower()
    rate = Fraction(fps).limit_denominator(1001)
    if suffix == ".y4m":
        fmt, codec, options, pix = "yuv4mpegpipe", "rawvideo", {}, "yuv420p"
    elif suffix == ".webm":
        fmt, codec, pix = "webm", "libvpx-vp9", "yuv420p"
        options = {"crf": "15", "b": "0", "deadline": "realtime", "cpu-used": "8"}
    elif suffix in (".mp4", ".mov", ".mkv", ".m4v"):
        fmt, codec, pix = None, "libx264", "yuv420p"
        options = {"crf": "12", "preset": "veryfast"}
    elif suffix == ".avi":
        fmt, codec, options, pix = None, "mjpeg", {}, "yuvj420p"
    else:
        raise FergiError(f"{path}: unknown video suffix {suffix!r} (use .mp4, .webm, .avi, .y4m)")
    ts = None if timestamps is None else [float(t) for t in timestamps]
    if ts is not None and suffix in (".y4m", ".avi"):
        raise FergiError(f"{path}: {suffix} cannot store variable frame times")
    path.parent.mkdir(parents=True, exist_ok=True)
    container = av.open(str(path), mode="w", format=fmt)
    try:
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.pix_fmt = pix
        if ts is not None:
            # Millisecond clock, as in browser recordings.
            stream.codec_context.time_base = Fraction(1, 1000)
        n = 0
        for i, img in enumerate(frames):
            img = np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
            h, w = img.shape[:2]
            img = img[: h - h % 2, : w - w % 2]
            if n == 0:
                stream.width, stream.height = img.shape[1], img.shape[0]
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if ts is not None:
                frame.pts = round(ts[i] * 1000)
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
            n += 1
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
    return path


def find_videos(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """List video files given as files or folders (searched recursively, sorted).

    Raises
    ------
    fergi.FergiError
        An input path does not exist.
    """
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found.extend(
                sorted(
                    q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in VIDEO_SUFFIXES
                )
            )
        elif p.is_file():
            found.append(p)
        else:
            raise FergiError(f"{p}: no such file or folder")
    seen: set[Path] = set()
    unique = []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique
