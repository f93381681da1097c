"""Presentation attempts: every time an image was on screen, and for how long.

A reaction is only spontaneous on the first look. When a presentation is interrupted
(the camera stops, the tab is hidden, the page is reloaded or left) the client shows the
image again in a new segment; that replay is the participant's second exposure. Each
attempt is derived from the session's events, one per segment that holds the image's
``image_shown``:

* it ends with ``image_hidden`` (``end_reason`` "completed") or with
  ``image_interrupted`` (its ``reason``: "camera", "hidden", "reload", "back",
  "network", "recording", "left"); an attempt without either has no end on record
  (the page was closed, or the attempt is still running);
* ``visible_s`` is the time between ``image_shown`` and that end, in video time; with
  no end on record it is estimated from the video the segment holds (at most the
  presentation time), so that an unknown exposure is never counted as none;
* ``exposure`` numbers the attempts of an image from 1, and ``seen_before_s`` sums the
  ``visible_s`` of its earlier attempts.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

#: Reasons a client may give for an interrupted presentation.
INTERRUPT_REASONS = ("camera", "hidden", "reload", "back", "network", "recording", "left")

#: Reactions to an image seen before for longer than this (seconds) are left out of
#: labels, annotation, fitting and reproduction by default.
DEFAULT_MAX_SEEN_BEFORE_S = 0.5


@dataclass(frozen=True)
class PresentationAttempt:
    """One showing of one image (see the module docstring)."""

    image: int
    exposure: int
    segment: int
    shown_at: dt.datetime | None
    shown_video_s: float
    ended_at: dt.datetime | None
    end_video_s: float | None
    end_reason: str | None
    visible_s: float
    visible_estimated: bool
    seen_before_s: float

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("shown_at", "ended_at"):
            value = out[key]
            out[key] = None if value is None else value.isoformat() + "Z"
        out["visible_s"] = round(self.visible_s, 3)
        out["seen_before_s"] = round(self.seen_before_s, 3)
        return out


def presentation_attempts(sess, *, present_s: float, chunk_s: float) -> list[PresentationAttempt]:
    """Every presentation attempt of a session, by image then exposure.

    Parameters
    ----------
    sess : StudySession
        With its ``events`` and ``segments``.
    present_s : float
        Seconds an image is shown (caps an estimated ``visible_s``).
    chunk_s : float
        Seconds of video per uploaded chunk (estimates the video a segment holds).

    Returns
    -------
    list of PresentationAttempt
    """
    n_chunks = {seg.index: seg.n_chunks for seg in sess.segments}
    by_key: dict[tuple[int, int], dict[str, Any]] = {}
    for ev in sess.events:
        # the first of each kind counts (a repeated event is a retried request)
        by_key.setdefault((ev.image_index, ev.segment), {}).setdefault(ev.kind, ev)
    attempts: list[PresentationAttempt] = []
    for image in sorted({image for image, _ in by_key}):
        seen = 0.0
        exposure = 0
        for segment in sorted(s for i, s in by_key if i == image):
            kinds = by_key[(image, segment)]
            shown = kinds.get("image_shown")
            if shown is None:
                continue  # stopped during the baseline: the image was never on screen
            exposure += 1
            end = kinds.get("image_hidden")
            reason = "completed" if end is not None else None
            if end is None and "image_interrupted" in kinds:
                end = kinds["image_interrupted"]
                reason = end.reason or "unknown"
            if end is not None:
                visible = max(0.0, float(end.video_time) - float(shown.video_time))
                estimated = False
            else:
                recorded = n_chunks.get(segment, 0) * chunk_s
                visible = min(present_s, max(0.0, recorded - float(shown.video_time)))
                estimated = True
            attempts.append(
                PresentationAttempt(
                    image=image,
                    exposure=exposure,
                    segment=segment,
                    shown_at=shown.received_at,
                    shown_video_s=float(shown.video_time),
                    ended_at=None if end is None else end.received_at,
                    end_video_s=None if end is None else float(end.video_time),
                    end_reason=reason,
                    visible_s=visible,
                    visible_estimated=estimated,
                    seen_before_s=seen,
                )
            )
            seen += visible
    return attempts


def exposures_by_segment(sess, *, present_s: float, chunk_s: float) -> dict[tuple[int, int], tuple[int, float]]:
    """``{(image, segment): (exposure, seen_before_s)}`` of every attempt of a session."""
    return {
        (a.image, a.segment): (a.exposure, a.seen_before_s)
        for a in presentation_attempts(sess, present_s=present_s, chunk_s=chunk_s)
    }
