"""The session, segment and event rules of the study protocol.

Which presentation of an image counts (the latest complete one), which segments hold no
video, which images still need clips, when a segment is open or abandoned, and when a
session's raw video may be deleted. Pure functions over the rows of
:mod:`fergi.study.store` (read, or marked for the caller to commit): no database
session, no web framework, no threads.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from fergi.schema import CLIP_KINDS
from fergi.study.store import Segment, StudySession, utcnow

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

#: A clip with fewer frames than this share of its window (the recording ended or the
#: camera stopped during it) is invalid, and its image gets no label
#: (``StudySettings.clip_min_frame_share``'s default).
DEFAULT_CLIP_MIN_FRAME_SHARE = 0.8

#: The events that make one presentation of an image, in the order they happen.
EVENT_KINDS = ("baseline_start", "image_shown", "image_hidden")


def select_image_events(
    events: list[Any], n_images: int, skip_segments: Iterable[int] = ()
) -> dict[int, tuple[int, list[dict]]]:
    """For each image, the segment and events of its last complete presentation.

    A presentation is complete when ``baseline_start``, ``image_shown`` and
    ``image_hidden`` of the image are all on record in one segment. The client records
    a new segment for each image, and after a camera interruption or a reload it replays
    the image from its baseline in a new segment, so the latest segment with all three
    events wins: an interrupted earlier attempt is superseded.

    Parameters
    ----------
    events : list
        The session's events (rows or objects with ``segment``, ``image_index``,
        ``kind``, ``video_time``).
    n_images : int
    skip_segments : iterable of int
        Segments that hold no video and never will (see :func:`unusable_segments`).

    Returns
    -------
    dict
        ``{image: (segment, [event dicts in EVENT_KINDS order])}``.
    """
    skip = set(skip_segments)
    chosen: dict[int, tuple[int, list[dict]]] = {}
    for image in range(1, n_images + 1):
        by_segment: dict[int, dict[str, float]] = {}
        for ev in events:
            if ev.image_index == image and ev.segment not in skip:
                by_segment.setdefault(ev.segment, {}).setdefault(ev.kind, ev.video_time)
        complete = [s for s, kinds in by_segment.items() if all(k in kinds for k in EVENT_KINDS)]
        if complete:
            seg = max(complete)
            chosen[image] = (
                seg,
                [
                    {"image_index": image, "kind": k, "video_time": by_segment[seg][k]}
                    for k in EVENT_KINDS
                ],
            )
    return chosen


def unusable_segments(sess: StudySession) -> set[int]:
    """Segments that hold no video and never will: abandoned without an accepted chunk
    (a refused stream start). Their events do not count as a presentation."""
    return {seg.index for seg in sess.segments if seg.abandoned_at is not None and seg.n_chunks == 0}


def chosen_presentations(sess: StudySession) -> dict[int, tuple[int, list[dict]]]:
    """:func:`select_image_events` of a session, its unusable segments left out."""
    return select_image_events(list(sess.events), sess.n_images, unusable_segments(sess))


def stale_images(sess: StudySession) -> list[int]:
    """Images presented (completely) whose stored clips are missing or come from an
    earlier, superseded presentation."""
    stored: dict[int, set] = {}
    for c in sess.clips:
        if c.features_file:
            stored.setdefault(c.image_index, set()).add(c.segment)
    out = []
    for image, (segment, _) in sorted(chosen_presentations(sess).items()):
        have = stored.get(image)
        # rows stored before clips recorded their segment (None) stay valid
        if not have or not have <= {segment, None}:
            out.append(image)
    return out


def needs_clips(sess: StudySession) -> bool:
    """Whether an image of an unfinished session was presented but has no stored clips
    (or only clips of an attempt that a replay superseded)."""
    if sess.finished_at is not None:
        return False  # the ranking queued the session's processing, which does the rest
    return bool(stale_images(sess))


def segment_last_activity(seg: Segment) -> dt.datetime:
    """When the segment last received something (its start, or its newest chunk)."""
    times = [seg.started_at, *(c.received_at for c in seg.chunks if c.received_at is not None)]
    return max(t for t in times if t is not None)


def segment_is_open(seg: Segment, *, now: dt.datetime | None = None, abandoned_after_s: float | None = None) -> bool:
    """Whether more chunks may still arrive for a segment: not complete, not abandoned,
    and (with ``abandoned_after_s``) an upload within that many seconds."""
    if seg.complete or seg.abandoned_at is not None:
        return False
    if abandoned_after_s is None:
        return True
    now = now or utcnow()
    return (now - segment_last_activity(seg)).total_seconds() < abandoned_after_s


def abandon_segment(seg: Segment, reason: str) -> None:
    """Mark a segment as one that can never complete (the caller commits)."""
    if seg.abandoned_at is None and not seg.complete:
        seg.abandoned_at = utcnow()
        seg.abandon_reason = reason[:500]


def abandon_stale_segments(sess: StudySession, abandoned_after_s: float, *, now: dt.datetime | None = None) -> list[int]:
    """Abandon the incomplete segments of ``sess`` without an upload for ``abandoned_after_s``
    seconds (the caller commits); returns their indices."""
    now = now or utcnow()
    out = []
    for seg in sess.segments:
        if seg.complete or seg.abandoned_at is not None:
            continue
        if not segment_is_open(seg, now=now, abandoned_after_s=abandoned_after_s):
            abandon_segment(seg, f"no upload for {abandoned_after_s:g} s")
            out.append(seg.index)
    return out


def retention_blocker(
    sess: StudySession,
    *,
    processed: bool = False,
    abandoned_after_s: float | None = None,
    now: dt.datetime | None = None,
) -> str | None:
    """Why the raw video of a session may not be deleted yet; None when it may.

    Only a finished session loses its raw upload. A segment still open (incomplete, not
    abandoned, and with ``abandoned_after_s`` an upload within that time) holds it up,
    and so does an image without both clips, until the session is ``processed``: the
    final processing analyses everything the uploaded video holds, so after it no missing
    clip can appear any more, and a segment incomplete then is abandoned.
    """
    if sess.finished_at is None:
        return "session not finished"
    if not sess.segments:
        return "no recording"
    if processed:
        return None
    open_segments = [
        seg.index for seg in sess.segments if segment_is_open(seg, now=now, abandoned_after_s=abandoned_after_s)
    ]
    if open_segments:
        return f"segment {open_segments[0]} not complete"
    have = {(c.image_index, c.clip) for c in sess.clips if c.features_file}
    missing = [
        i for i in range(1, sess.n_images + 1) if not {(i, clip) for clip in CLIP_KINDS} <= have
    ]
    if missing:
        return f"image {missing[0]} has no clips"
    return None


