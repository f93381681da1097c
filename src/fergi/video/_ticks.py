"""The 30 fps standardisation rule, one copy for files (:func:`fergi.video.iter_frames`)
and streams (:class:`fergi.video.SegmentDecoder`), and the frame helpers both decoders use.

Frame times count from the first frame, a duplicate time dropped (:class:`FrameTimes`).
Tick ``k`` sits at ``start + k / fps`` and shows the latest native frame at or before it;
the last frame covers the ticks up to its own time (a MediaRecorder file has no duration,
so nothing is invented after it).
"""

from __future__ import annotations

import math
import re

import numpy as np

from fergi._errors import FergiError

# Tolerance when comparing frame times with 1/fps ticks: container time bases are
# milliseconds (webm) or 1/90000 s, so a frame stamped 0.033 belongs to tick 1/30.
TICK_EPS = 2e-3


class FrameTimes:
    """Native frame times, from the first frame on.

    A frame stamped at or before the previous frame's time (a duplicate or out-of-order
    presentation time) is dropped: the earlier frame wins. ``last`` is the time of the
    newest frame kept (``-inf`` before the first).
    """

    def __init__(self) -> None:
        self.first: float | None = None
        self.last = -math.inf

    def place(self, t: float) -> float | None:
        """The time of a frame stamped ``t``, relative to the first frame; None: drop it."""
        if self.first is None:
            self.first = t
        t -= self.first
        if t <= self.last:
            return None
        self.last = t
        return t


class TickClock:
    """Which ``1 / fps`` ticks a native frame stands for.

    Parameters
    ----------
    fps : float
        The constant rate.
    start, end : float
        Ticks lie in ``start <= t < end`` (seconds of the native timeline).

    Notes
    -----
    Feed the native frames' times in order: :meth:`before` gives the ticks shown by the
    frame before a new one, :meth:`through` the ticks the last frame covers at the end.
    ``k`` is the next tick.
    """

    def __init__(self, fps: float, start: float = 0.0, end: float = math.inf):
        self.step = 1.0 / float(fps)
        self.start = float(start)
        self.end = float(end)
        self.k = 0

    def _time(self, k: int) -> float:
        return self.start + k * self.step

    @property
    def exhausted(self) -> bool:
        """Whether the next tick lies at or after ``end``."""
        return not self._time(self.k) < self.end

    def before(self, t: float) -> range:
        """The ticks before a native frame at ``t`` (they show the previous frame); ``k``
        moves past them."""
        first = k = self.k
        while self._time(k) < self.end and self._time(k) + TICK_EPS < t:
            k += 1
        self.k = k
        return range(first, k)

    def through(self, last_t: float) -> range:
        """The ticks the last native frame (at ``last_t``) covers; ``k`` moves past them."""
        first = k = self.k
        while self._time(k) < self.end and self._time(k) <= last_t + TICK_EPS:
            k += 1
        self.k = k
        return range(first, k)


def av_reason(exc: BaseException) -> str:
    """One short line of a PyAV/FFmpeg error, without the path and errno it repeats."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # PyAV messages repeat the path and an errno; the caller already names the file.
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text)
    return text.split(": '")[0][:160]


def open_container(source, name):
    """Open a video with PyAV: ``source`` is a path string or a seekable file.

    Raises :class:`~fergi.FergiError` naming ``name`` when it is not a readable video
    or holds no video stream.
    """
    import av

    try:
        container = av.open(source, mode="r")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise FergiError(f"{name}: not a readable video ({av_reason(exc)})") from None
    if not container.streams.video:
        container.close()
        raise FergiError(f"{name}: contains no video stream")
    return container


def upright_rgb(frame) -> np.ndarray:
    """RGB array of a decoded frame, turned as a player would show it.

    Phones record portrait video as landscape frames plus a display matrix; PyAV
    reports its angle (counter-clockwise degrees) as ``frame.rotation``.
    """
    img = frame.to_ndarray(format="rgb24")
    angle = getattr(frame, "rotation", 0) or 0
    k = round(angle / 90)
    if k % 4 and abs(angle - 90 * k) < 1:
        img = np.ascontiguousarray(np.rot90(img, k=k))
    return img
