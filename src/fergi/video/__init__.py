"""Video input and output: decoding (PyAV), 30 fps standardisation, writing.

``read_video`` decodes a whole file into a :class:`VideoFrames`; ``iter_frames``
streams long recordings. Both time frames by the stream's presentation timestamps, so
variable-frame-rate browser recordings (MediaRecorder webm, no duration metadata) are
standardised correctly: for each ``1 / fps`` tick, the latest frame shown at or before
the tick.
"""

from fergi.video._io import (
    VIDEO_SUFFIXES,
    VideoFrames,
    find_videos,
    iter_frames,
    read_video,
    write_video,
)

__all__ = [
    "VIDEO_SUFFIXES",
    "VideoFrames",
    "find_videos",
    "iter_frames",
    "read_video",
    "write_video",
]
