"""From a session recording to per-frame features, activation values and labels.

:func:`process_session_media` runs the server's processing of one recording in
stages, each reported to a callback so the study's worker can show its status:

``assemble``     (only when given chunks) concatenate the MediaRecorder chunks
``standardize``  re-time the recording to a constant 30 fps
``clips``        cut each image's baseline and reaction clip by the event times
``features``     per-frame features of every clip (release format CSV), from the
                 recording decoded as the study's server decodes it
``activations``  AU activation value of every clip (paper eqs. 1-2)
``labels``       pairwise preference labels from the annotation model

A failing stage raises :class:`StageError` naming the stage; nothing is deleted, so
the inputs and every earlier stage's outputs stay for a retry.

"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fergi._errors import FergiError
from fergi.au import create_au_estimator, write_features
from fergi.datasets import FRAME_COLUMNS
from fergi.study.processing._analysis import _clip_tables, decode_image_clips
from fergi.study.processing._media import (
    assemble_chunks,
    clip_windows,
    cut_clips,
    standardize_video,
)
from fergi.study.processing._tables import (
    _activations_stage,
    _frames_table,
    _labels_stage,
    session_provenance,
)
from fergi.study.protocol import CLIP_KINDS, DEFAULT_CLIP_MIN_FRAME_SHARE

logger = logging.getLogger(__name__)

__all__ = ["STAGES", "SessionResult", "StageError", "Stages", "process_session_media"]

STAGES = ("assemble", "standardize", "clips", "features", "activations", "labels")

OnStage = Callable[[str, str], None]


class StageError(FergiError):
    """A processing stage failed; ``stage`` names it.

    The message is one line: ``stage 'features' failed: <what went wrong>``.
    """

    def __init__(self, stage: str, message: str):
        super().__init__(f"stage {stage!r} failed: {message}")
        self.stage = stage


@dataclass
class SessionResult:
    """What :func:`process_session_media` produced.

    Attributes
    ----------
    clips : dict
        ``{image_index: {"baseline": Path, "reaction": Path}}`` (mp4 clips at ``fps``).
    frames : dict
        ``{(image_index, "baseline"|"reaction"): DataFrame}`` with exactly the
        release's per-frame columns (``FRAME_COLUMNS``).
    activations : pandas.DataFrame
        One row per clip: participant, session, image, clip, n_frames,
        valid_frame_share, clip_valid, ``AU*_activation_value``.
    labels : pandas.DataFrame
        Pairwise labels between the session's valid images (participant, session,
        image_a, image_b, preferred, score_difference, confident).
    recording : Path
        The standardised recording.
    feature_files : dict
        ``{(image_index, clip): Path}`` of the per-frame CSV files
        (``{clip}_clip_{image}_features.csv``).
    """

    clips: dict[int, dict[str, Path]]
    frames: dict[tuple[int, str], Any]
    activations: Any
    labels: Any
    recording: Path | None = None
    feature_files: dict[tuple[int, str], Path] = field(default_factory=dict)


class Stages:
    """Run stages with status callbacks and uniform error reporting."""

    def __init__(self, on_stage: OnStage | None):
        self.on_stage = on_stage

    def _report(self, name: str, status: str) -> None:
        if self.on_stage is not None:
            self.on_stage(name, status)

    def run(self, name: str, function: Callable[[], Any]) -> Any:
        self._report(name, "running")
        try:
            result = function()
        except FergiError as exc:
            self._report(name, "failed")
            raise StageError(name, str(exc)) from exc
        except Exception as exc:  # a bug or an environment problem: still name the stage
            logger.exception("stage %r failed", name)
            self._report(name, "failed")
            raise StageError(name, f"{type(exc).__name__}: {exc}") from exc
        self._report(name, "done")
        return result


def _fresh(target: Path, *sources: Path) -> bool:
    """Whether ``target`` exists and is at least as new as every source (like make)."""
    if not target.is_file():
        return False
    mtime = target.stat().st_mtime_ns
    return all(source.is_file() and source.stat().st_mtime_ns <= mtime for source in sources)


def _existing_clips(events, out_dir: Path, recording: Path, baseline_s, reaction_s, fps):
    """The clips of an earlier run, when all of them are there and up to date."""

    clips: dict[int, dict[str, Path]] = {}
    for window in clip_windows(events, baseline_s=baseline_s, reaction_s=reaction_s, fps=fps):
        path = out_dir / f"{window.kind}_clip_{window.image_index}.mp4"
        if not _fresh(path, recording):
            return None
        clips.setdefault(window.image_index, {})[window.kind] = path
    return {image: pair for image, pair in clips.items() if len(pair) == 2} or None


def _features_stage(clips, out_dir: Path, *, recording: Path, windows, estimator, checkpoint, fps, resume):
    """Per-frame features of the clips, analysed as the server analyses them: the
    recording decoded once by :class:`fergi.video.SegmentDecoder` and each image's clips
    taken from its frames in memory (not from the clip videos, whose encoding is lossy),
    so that a recording gives the same features here and in the study's worker."""
    # deferred: pandas, and torch for a learned estimator
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    frames: dict[tuple[int, str], pd.DataFrame] = {}
    files: dict[tuple[int, str], Path] = {}
    todo = []
    for image, pair in sorted(clips.items()):
        kept = {}
        for clip in CLIP_KINDS:
            target = out_dir / f"{clip}_clip_{image}_features.csv"
            if resume and _fresh(target, Path(pair[clip])):
                table = pd.read_csv(target)
                if list(table.columns) == list(FRAME_COLUMNS):
                    kept[(image, clip)] = (table, target)
        if len(kept) == len(CLIP_KINDS):
            for key, (table, target) in kept.items():
                frames[key], files[key] = table, target
        else:
            todo.append(image)
    if todo:
        if isinstance(estimator, str):
            # one estimator for the session: a learned one loads its weights only once
            options = {} if checkpoint is None else {"checkpoint": checkpoint}
            estimator = create_au_estimator(estimator, **options)
        wanted = [w for w in windows if w.image_index in todo]
        with open(recording, "rb") as data:
            for image, pair in decode_image_clips(data, wanted, fps=fps, source=str(recording)):
                lost = [clip for clip, video in pair.items() if video is None]
                if lost:
                    raise FergiError(f"{lost[0]} clip of image {image}: not in the recording")
                # the image's own baseline clip is the neutral face for its reaction clip,
                # and for itself (features_meta.json says "baseline_clip" for the session)
                tables = _clip_tables(pair, estimator=estimator, fps=fps, source=str(recording), image=image)
                for clip, table in tables.items():
                    target = out_dir / f"{clip}_clip_{image}_features.csv"
                    # the release writes baseline clips with 2 decimals and reaction clips with 3
                    write_features(table, target, decimals=2 if clip == "baseline" else 3)
                    # continue from the file as saved (release rounding), so that activations
                    # are the same on a resumed run and when recomputed from an export
                    frames[(image, clip)], files[(image, clip)] = pd.read_csv(target), target
    return dict(sorted(frames.items())), dict(sorted(files.items()))


def process_session_media(
    recording_path: str | os.PathLike | Sequence[str | os.PathLike],
    events: Iterable[Mapping[str, Any] | Any],
    work_dir: str | os.PathLike,
    *,
    estimator: str = "geometry",
    model: Any = None,
    fps: float = 30,
    on_stage: OnStage | None = None,
    baseline_s: float = 5.0,
    reaction_s: float = 5.0,
    checkpoint: str | os.PathLike | None = None,
    participant: str = "000",
    session: int = 1,
    invalid_images: Iterable[int] = (),
    resume: bool = False,
    min_frame_share: float = DEFAULT_CLIP_MIN_FRAME_SHARE,
) -> SessionResult:
    """Process one session recording into clips, features, activations and labels.

    Parameters
    ----------
    recording_path : path or sequence of paths
        The recording (webm from the browser, or any video), or the chunks of one
        MediaRecorder stream in order (then an ``assemble`` stage runs first).
    events : iterable of dict
        ``{"image_index", "kind": "baseline_start"|"image_shown"|"image_hidden",
        "video_time"}`` with times in seconds from video time zero (the first frame).
    work_dir : path
        Where outputs go: ``recording.webm`` (assembled), ``recording_30fps.mp4``,
        ``clips/``, ``features/``. Created if needed.
    estimator : str
        AU estimator for :func:`fergi.au.extract_features` (``"geometry"``).
    model : object, optional
        The annotation model for :func:`fergi.preference.annotate_pairs` (None: the
        shipped default).
    fps : float
        Standard frame rate (30).
    on_stage : callable, optional
        ``on_stage(stage, status)`` with status ``"running"``, ``"done"`` or
        ``"failed"``, for every stage of :data:`STAGES` that runs.
    baseline_s, reaction_s : float
        Clip durations (5 s each in the paper); use the study's durations.
    checkpoint : path, optional
        Weights for a learned AU estimator.
    participant, session : str, int
        Key columns of the activation and label tables.
    invalid_images : iterable of int
        Images to leave out of the labels (all-black safety-checker outputs).
    resume : bool
        Reuse the outputs of an earlier run in ``work_dir`` that are at least as new
        as their inputs (like make), so a retry after a failed stage only redoes
        what is needed. Stages that reuse outputs still report running/done.
    min_frame_share : float
        A clip with fewer frames than this share of its window (``baseline_s`` or
        ``reaction_s`` times ``fps``: the recording ended or the camera stopped during
        it) is invalid (``clip_valid`` false), and its image gets no label.

    Returns
    -------
    SessionResult

    Raises
    ------
    StageError
        A stage failed (a :class:`~fergi.FergiError`, message ``stage 'X' failed:
        ...``). Inputs and earlier outputs are kept.
    """

    work = Path(work_dir)
    stages = Stages(on_stage)
    events = list(events)
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StageError("standardize", f"{work}: cannot create the work folder ({exc})") from exc

    if isinstance(recording_path, str | os.PathLike):
        recording = Path(recording_path)
    else:
        chunks = [Path(p) for p in recording_path]
        assembled = work / "recording.webm"
        recording = stages.run(
            "assemble",
            lambda: (
                assembled
                if resume and _fresh(assembled, *chunks)
                else assemble_chunks(chunks, assembled)
            ),
        )

    standardized_path = work / "recording_30fps.mp4"
    standardized = stages.run(
        "standardize",
        lambda: (
            standardized_path
            if resume and _fresh(standardized_path, recording)
            else standardize_video(recording, standardized_path, fps=fps)
        ),
    )

    def clips_stage():
        if resume:
            kept = _existing_clips(
                events, work / "clips", standardized, baseline_s, reaction_s, fps
            )
            if kept:
                return kept
        return cut_clips(
            standardized,
            events,
            work / "clips",
            baseline_s=baseline_s,
            reaction_s=reaction_s,
            fps=fps,
        )

    clips = stages.run("clips", clips_stage)
    frames, files = stages.run(
        "features",
        lambda: _features_stage(
            clips,
            work / "features",
            recording=recording,
            windows=clip_windows(events, baseline_s=baseline_s, reaction_s=reaction_s, fps=fps),
            estimator=estimator,
            checkpoint=checkpoint,
            fps=fps,
            resume=resume,
        ),
    )
    expected = {"baseline": round(baseline_s * fps), "reaction": round(reaction_s * fps)}

    def activations_stage():
        act = _activations_stage(frames, participant=participant, session=session)
        short = act["n_frames"].to_numpy() < min_frame_share * act["clip"].map(expected).to_numpy()
        act["clip_valid"] = act["clip_valid"].astype(bool).to_numpy() & ~short
        for image, clip, n in act.loc[short, ["image", "clip", "n_frames"]].itertuples(index=False):
            logger.warning("%s clip of image %d: %d of %d frames, invalid", clip, image, n, expected[clip])
        return act, {int(i) for i in act.loc[short, "image"]}

    activations, short_images = stages.run("activations", activations_stage)
    labels = stages.run(
        "labels",
        lambda: _labels_stage(
            activations,
            model=model,
            invalid_images=sorted(set(invalid_images) | short_images),
            frames=_frames_table(frames, participant=participant, session=session),
            provenance=session_provenance(estimator, checkpoint),
        ),
    )
    return SessionResult(
        clips=clips,
        frames=frames,
        activations=activations,
        labels=labels,
        recording=standardized,
        feature_files=files,
    )
