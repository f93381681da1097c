"""Clip analysis, one path for the server and the library: a recording decoded once by
:class:`fergi.video.SegmentDecoder` (standardised to the clip rate as it is decoded), each
image's baseline and reaction clip taken from the decoded frames in memory and analysed
(:func:`fergi.au.extract_features`, the reaction clip against its own image's baseline
clip), and the per-frame tables rounded as the release's CSV files store them.

The real-time worker (:mod:`fergi.study.processing._realtime`) feeds the decoder chunk by
chunk; :func:`extract_recording_features` and :func:`fergi.study.process_session_media`
feed it a whole recording. Same decoder, same frames, same tables.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fergi._errors import FergiError
from fergi.au import create_au_estimator, extract_features, format_features_csv
from fergi.face import FaceAnalyzer
from fergi.study.processing._media import ClipWindow, clip_windows
from fergi.study.protocol import CLIP_KINDS, select_image_events
from fergi.video import SegmentDecoder, VideoFrames


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


# --------------------------------------------------------------------------- analysis


_local = threading.local()


def _analyzer():
    # One face analyser per thread: the worker analyses in its clips and process threads
    # at once, and a MediaPipe graph must not be shared between threads.
    if getattr(_local, "analyzer", None) is None:
        _local.analyzer = FaceAnalyzer()
    return _local.analyzer


def _analyse_clip(frames: np.ndarray, baseline: Any, *, estimator, fps: float, source: str):
    """Per-frame features of one clip's decoded frames (``baseline``: its image's baseline)."""

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
    ``skip_segments``: segments without video, see :func:`fergi.study.protocol.unusable_segments`)."""

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

    events = list(events)
    if isinstance(estimator, str):
        estimator = create_au_estimator(estimator)
    data = _read_chunks([Path(p) for p in chunk_paths])
    windows = clip_windows(events, baseline_s=baseline_s, reaction_s=reaction_s, fps=fps)
    out = {}
    for image, pair in decode_image_clips(data, windows, fps=fps, source="recording"):
        if any(v is None for v in pair.values()):
            continue
        for clip, table in analyse_image(pair, estimator=estimator, fps=fps, source="recording", image=image).items():
            out[(image, clip)] = table
    return dict(sorted(out.items()))


def decode_image_clips(
    data, windows: Iterable[ClipWindow], *, fps: float, source: str
) -> Iterator[tuple[int, dict[str, np.ndarray | None]]]:
    """Decode a whole recording once and hand over each image's clips as soon as they are
    decoded (only one image's frames are held at a time, plus what later windows
    overlap).

    Parameters
    ----------
    data : bytes or seekable binary file
        The recording (a webm stream as the browser uploads it, or any video).
    windows : iterable of ClipWindow
        From :func:`fergi.study.clip_windows`.
    fps : float
    source : str
        Names the recording in errors.

    Yields
    ------
    image : int
    pair : dict
        ``{"baseline": frames, "reaction": frames}``, each ``(n, H, W, 3)`` uint8 or
        None when the recording holds none of the window; shorter than the window when
        the recording ends during it.
    """
    decoder = SegmentDecoder(fps, source)
    by_image: dict[int, dict[str, ClipWindow]] = {}
    for w in windows:
        decoder.want((w.image_index, w.kind), w.first, w.n)
        by_image.setdefault(w.image_index, {})[w.kind] = w
    ends = {image: max(w.first + w.n for w in kinds.values()) for image, kinds in by_image.items()}
    for image in sorted(by_image, key=lambda i: (ends[i], i)):
        keys = [(image, kind) for kind in by_image[image]]
        if not all(decoder.done(key) for key in keys):
            decoder.advance(data, final=True, until=ends[image])
        yield image, {kind: decoder.pop((image, kind)) if kind in by_image[image] else None for kind in CLIP_KINDS}


def analyse_image(pair: Mapping[str, np.ndarray], *, estimator, fps: float, source: str, image: int):
    """Both clips of an image, analysed and rounded as their release CSV files read back:
    ``{clip: DataFrame}``."""
    tables = _clip_tables(pair, estimator=estimator, fps=fps, source=source, image=image)
    return {clip: _rounded(table, clip) for clip, table in tables.items()}
