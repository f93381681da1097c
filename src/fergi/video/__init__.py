"""Video input and output: decoding (PyAV), 30 fps standardisation, writing.

``read_video`` decodes a whole file into a :class:`VideoFrames`; ``iter_frames``
streams long recordings. Both time frames by the stream's presentation timestamps, so
variable-frame-rate browser recordings (MediaRecorder webm, no duration metadata) are
standardised correctly: for each ``1 / fps`` tick, the latest frame shown at or before
the tick. :class:`SegmentDecoder` decodes a recording that is still growing (an upload,
chunk by chunk) by the same rule.
"""

from fergi.video._io import (
    VIDEO_SUFFIXES,
    VideoFrames,
    find_videos,
    iter_frames,
    read_video,
    write_video,
)
from fergi.video._stream import SegmentDecoder
from fergi.video._ticks import TICK_EPS, TickClock, av_reason, upright_rgb

__all__ = [
    "TICK_EPS",
    "VIDEO_SUFFIXES",
    "SegmentDecoder",
    "TickClock",
    "VideoFrames",
    "av_reason",
    "find_videos",
    "iter_frames",
    "read_video",
    "upright_rgb",
    "write_video",
]
