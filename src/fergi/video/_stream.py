"""Incremental decoding of a growing recording (the study's upload, chunk by chunk),
standardised to a constant frame rate by the same rule as :func:`fergi.video.iter_frames`.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np

from fergi._errors import FergiError
from fergi.video._ticks import FrameTimes, TickClock, av_reason, open_container, upright_rgb

logger = logging.getLogger(__name__)


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
        self._clock = TickClock(self.fps)  # its k: the next tick to emit
        self.finished = False
        self._ctx = None
        self._time_base = None
        self._times = FrameTimes()
        self._prev = None  # (av.VideoFrame, cached rgb or None)
        self._windows: dict[Any, tuple[int, int]] = {}
        # per window: a (n, H, W, 3) array filled in tick order, and how much is filled
        self._frames: dict[Any, list] = {}
        # per window: [native frame of the last tick, ticks it has lasted, the longest run]
        self._runs: dict[Any, list] = {}

    @property
    def k(self) -> int:
        """The next tick to emit."""
        return self._clock.k

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

    def wants(self, key: Any) -> bool:
        """Whether a window is registered under ``key`` (and not popped yet)."""
        return key in self._windows

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
        frame, rgb = self._prev
        if rgb is None:
            rgb = upright_rgb(frame)
            self._prev = (frame, rgb)
        return rgb

    def _emit_tick(self, k: int) -> None:
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

    def _on_frame(self, frame) -> None:
        if frame.pts is not None and self._time_base is not None:
            t = float(frame.pts * self._time_base)
        else:
            t = self.n_frames / self.fps
        t = self._times.place(t)
        if t is None:
            return  # a duplicate presentation time: the earlier frame wins (as in fergi.video)
        if self._prev is None:
            self._prev = (frame, None)
        # every tick before this frame's time shows the previous frame
        for k in self._clock.before(t):
            self._emit_tick(k)
        self._prev = (frame, None)
        self.n_frames += 1

    def _open(self, data):
        # bytes, or a seekable file (a store's ChunkStream: never the whole video in memory)
        source = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
        source.seek(0)
        return open_container(source, self.source)

    def check_opens(self, data) -> None:
        """Raise :class:`~fergi.FergiError` (one line naming ``source``) when ``data``
        does not open as a video with a video stream."""
        self._open(data).close()

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
                logger.debug("%s: demuxing stopped after %d packets (%s)", self.source, index, av_reason(exc))
            if final and not stopped:
                if held is not None:
                    self._feed(held)
                self._flush()
        finally:
            container.close()

    def _decode(self, packet):
        """The frames of ``packet`` (None flushes the decoder)."""
        import av

        try:
            return self._ctx.decode(packet)
        except av.error.FFmpegError as exc:
            raise FergiError(
                f"{self.source}: corrupt video data after {self.n_frames} frames ({av_reason(exc)})"
            ) from None

    def _feed(self, packet) -> None:
        frames = self._decode(packet)
        self.n_fed += 1
        for frame in frames:
            self._on_frame(frame)

    def _flush(self) -> None:
        for frame in self._decode(None):
            self._on_frame(frame)
        if self._prev is not None:
            # duration is unknown for MediaRecorder files, so nothing is invented after it
            for k in self._clock.through(self._times.last):
                self._emit_tick(k)
        self.finished = True
        if self.n_frames == 0:
            raise FergiError(f"{self.source}: contains no decodable video frames")

