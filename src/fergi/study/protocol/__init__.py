"""The study protocol's rules: which presentation of an image counts, which segments
hold no video, which images still need clips, when a segment is open or abandoned, and
when a session's raw video may go.

Import rule: imports :mod:`fergi.study.store` (the rows it reads) and the shared core
(``fergi.schema``); no web framework, no threads, no database session. Every room above
(content, processing, jobs, web) may import it, by the names below.
"""

from fergi.study.protocol._rules import (
    CLIP_KINDS,
    DEFAULT_CLIP_MIN_FRAME_SHARE,
    EVENT_KINDS,
    abandon_segment,
    abandon_stale_segments,
    chosen_presentations,
    needs_clips,
    retention_blocker,
    segment_is_open,
    segment_last_activity,
    select_image_events,
    stale_images,
    unusable_segments,
)

__all__ = [
    "CLIP_KINDS",
    "DEFAULT_CLIP_MIN_FRAME_SHARE",
    "EVENT_KINDS",
    "abandon_segment",
    "abandon_stale_segments",
    "chosen_presentations",
    "needs_clips",
    "retention_blocker",
    "segment_is_open",
    "segment_last_activity",
    "select_image_events",
    "stale_images",
    "unusable_segments",
]
