"""Per-frame features from other AU tools: OpenFace 2.x, py-feat and LibreFace outputs.

fergi's labels are scale-free (baseline-median normalisation cancels any per-participant,
per-AU factor), so the per-frame output of any reasonable AU estimator can drive
``fergi annotate``, ``fit``, ``reproduce`` and ``export-labels`` once it is turned into
the release's per-frame schema (``fergi.datasets.FRAME_COLUMNS``) with the paper's
frame-validity inputs computed the paper's way. This module does that turn.

Mapping (also the table of docs/extraction.md):

=================  ==============================  ==============================  ==============================
fergi column       OpenFace 2.x FeatureExtraction  py-feat ``Fex`` CSV (0.6+/2.x)  LibreFace CSV (video)
=================  ==============================  ==============================  ==============================
AU1 ... AU26       ``AU01_r`` ... ``AU26_r``        ``AU01`` ... ``AU26``           ``au_1_intensity`` ...
                   (intensity 0-5)                 (probability 0-1, or 0-5        ``au_26_intensity``
                                                   intensities where the file      (intensity 0-5)
                                                   holds them)
face confidence    ``confidence`` where            ``FaceScore`` (NaN: no face)    1 for a frame with a row (its
                   ``success`` is 1, else 0                                        FaceMesh found a face), 0 for
                                                                                   a frame it dropped
timestamp          ``timestamp``                   ``frame / fps`` (the file has   ``frame_time_in_ms`` (seconds,
                                                   only whole-second               despite its name)
                                                   ``approx_time``)
pitch/yaw ratios   68 points ``x_0..x_67,          68 points ``x_0..x_67,          478 FaceMesh points
                   y_0..y_67``                     y_0..y_67``                     ``lm_mp_<i>_x/_y`` times the
                                                                                   frame size
fallback           ``pose_Rx`` (pitch, radians,    ``Pitch`` (degrees, + = up),    ``pitch``, ``yaw`` (its
(no landmarks)     + = down), ``pose_Ry`` (yaw)    ``Yaw``                         solvePnP angles times 360)
several faces      ``face_id``: the largest        a row per face: the largest     one face per frame
                   landmark box                    ``FaceRect``
=================  ==============================  ==============================  ==============================

Pitch and yaw indicative ratios (paper, Supp. C) come from 68 landmarks with
:func:`fergi.face.pose_ratios_68` (the paper's landmark indices in the oriented face frame
of the authors' ``align_face``), and from FaceMesh points with
:func:`fergi.face.pose_ratios` (what the ``geometry`` estimator computes). A file without
landmarks falls back to the tool's head-pose angles through a rigid-head model, stated
in :func:`ratios_from_head_pose`, and the meta file says so (``pose_ratios:
head_pose_angles``).

Frames without a face are written as the release writes them: confidence 0, ratios and
AUs -1. An AU the tool does not estimate is NaN in every row (and named in a warning);
``fergi annotate`` refuses a model that reads it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from fergi._atomic import publish, temporary_beside
from fergi._errors import FergiError
from fergi.au._import_tools import (
    _READERS,
    AU_COLUMNS,
    AU_SCALES,
    FPS_TOLERANCE,
    PLAUSIBLE_FPS,
    SOURCES,
    TOOL_NAMES,
    _au_scale_key,
    _check_args,
    _fail,
)
from fergi.schema import AU_NAMES, FRAME_COLUMNS

logger = logging.getLogger(__name__)


def import_features(
    table: pd.DataFrame,
    source: str,
    *,
    fps: float | None = None,
    frame_size: tuple[float, float] | None = None,
    name: str = "table",
) -> pd.DataFrame:
    """Turn one AU tool's per-frame output into fergi's per-frame table.

    Parameters
    ----------
    table : pandas.DataFrame
        The tool's output for one clip, as read from its CSV
        (:func:`read_tool_output` strips OpenFace's header spaces).
    source : {"openface", "pyfeat", "libreface"}
        Which tool wrote it (see the module's mapping table).
    fps : float, optional
        The clip's frame rate. py-feat files need it (they hold no timestamps); for the
        others, the timestamps' frame rate must be within 10 % of it. Without it, the
        timestamps' frame rate must be a camera's (5-240 fps).
    frame_size : (width, height), optional
        The video's frame size in pixels: LibreFace's landmarks are fractions of it.
    name : str
        The file name used in error messages.

    Returns
    -------
    pandas.DataFrame
        Columns exactly :data:`fergi.datasets.FRAME_COLUMNS`, one row per frame (the
        largest face where there are several), ``frame`` numbered from 1. Frames without
        a face: confidence 0, ratios and AUs -1. ``attrs``: ``missing_aus`` (AUs the
        tool lacks, NaN), ``pose_ratios`` (``landmarks_68``, ``facemesh_478`` or
        ``head_pose_angles``) and ``au_scale`` (a key of :data:`AU_SCALES`).

    Raises
    ------
    fergi.FergiError
        One line naming ``name``, the row and the column: a missing column, a
        non-numeric value, timestamps that do not increase, a frame rate far from the
        clip's, or AU values outside the tool's documented range.
    """
    if source not in _READERS:
        raise FergiError(f"{name}: unknown source {source!r} (choose from {', '.join(SOURCES)})")
    if not isinstance(table, pd.DataFrame):
        raise FergiError(f"{name}: expected a table (pandas.DataFrame)")
    _check_args(len(table), fps, name)
    columns = {str(c).strip(): table[c].to_numpy() for c in table.columns}
    columns, attrs = _import_columns(columns, len(table), source, fps=fps, frame_size=frame_size, name=name)
    out = pd.DataFrame(columns, columns=list(FRAME_COLUMNS))
    out.attrs = attrs
    return out


def _import_columns(table: dict, n: int, source: str, *, fps, frame_size, name,
                    warn=True) -> tuple[dict[str, np.ndarray], dict]:
    """:func:`import_features` on ``{column: array}``: the output columns and attrs."""
    faces = _READERS[source](table, n, name, fps, frame_size)

    # AU values must lie in the tool's documented range (rows with a face only).
    scale_key = _au_scale_key(source, faces.aus, faces.face)
    (low, high), _ = AU_SCALES[scale_key]
    if source == "pyfeat":
        low, high = 0.0, 5.0  # probabilities or intensities: which one is decided above
    for au in AU_NAMES:
        values = faces.aus[au]
        bad = faces.face & np.isfinite(values) & ((values < low - 1e-9) | (values > high + 1e-9))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            column = AU_COLUMNS[source][au]
            raise _fail(name, int(faces.rows[i]), column,
                        f"{values[i]:g} outside {TOOL_NAMES[source]}'s documented range {low:g}-{high:g}")
    bad_frame = ~np.isfinite(faces.frame)
    if bad_frame.any():
        i = int(np.flatnonzero(bad_frame)[0])
        raise _fail(name, int(faces.rows[i]), faces.frame_column, "missing frame number")

    # Several faces in a frame (OpenFace face_id, py-feat rows per face): the largest.
    size = np.where(faces.face, faces.size, -1.0)
    order = np.lexsort((-np.nan_to_num(size, nan=0.0), faces.frame))
    frame_sorted = faces.frame[order]
    first = np.r_[True, frame_sorted[1:] != frame_sorted[:-1]]
    keep = np.sort(order[first])  # back to file order, one row per frame
    if len(keep) < len(order):
        logger.info("%s: %d frame(s) with several faces; kept the largest", name, len(order) - len(keep))

    frame = faces.frame[keep]
    rows = faces.rows[keep]
    time = faces.time[keep]
    face = faces.face[keep]
    column = faces.time_column
    if not np.isfinite(time).all():
        i = int(np.flatnonzero(~np.isfinite(time))[0])
        raise _fail(name, int(rows[i]), column, "missing timestamp")
    step = np.diff(time)
    back = np.flatnonzero(step <= 0)
    if len(back):
        i = int(back[0]) + 1
        raise _fail(name, int(rows[i]), column,
                    f"timestamp {time[i]:g} after {time[i - 1]:g}: timestamps must increase")
    back = np.flatnonzero(np.diff(frame) <= 0)
    if len(back):
        i = int(back[0]) + 1
        raise _fail(name, int(rows[i]), faces.frame_column,
                    f"frame {frame[i]:g} after {frame[i - 1]:g}: frames out of order")
    # Seconds per frame, from the timestamps and the frame counter (frames may be missing).
    if len(time) > 1:
        per_frame = step / np.diff(frame)
        measured = 1.0 / float(np.median(per_frame))
        if fps is not None:
            off = np.abs(per_frame * fps - 1.0) > FPS_TOLERANCE
            if abs(measured / fps - 1.0) > FPS_TOLERANCE or off.any():
                i = int(np.flatnonzero(off)[0]) + 1 if off.any() else 1
                raise _fail(name, int(rows[i]), column,
                            f"the timestamps give {1.0 / per_frame[i - 1]:.3g} fps here, far from the "
                            f"clip's {fps:g} fps")
        elif not PLAUSIBLE_FPS[0] <= measured <= PLAUSIBLE_FPS[1]:
            off = (1.0 / per_frame < PLAUSIBLE_FPS[0]) | (1.0 / per_frame > PLAUSIBLE_FPS[1])
            i = int(np.flatnonzero(off)[0]) + 1 if off.any() else 1
            raise _fail(name, int(rows[i]), column,
                        f"the timestamps give {measured:.3g} fps, far from any camera's "
                        f"({PLAUSIBLE_FPS[0]:g}-{PLAUSIBLE_FPS[1]:g} fps): are they in seconds?")

    # Frames a tool dropped (LibreFace writes no row where it finds no face) come back
    # as frames without a face, so the clip keeps its length and its moving windows.
    full = np.arange(frame[0], frame[-1] + 1)
    if len(full) != len(frame) and np.allclose(frame, np.round(frame)):
        where = np.searchsorted(full, frame)
        spf = float(np.median(step / np.diff(frame))) if len(frame) > 1 else 0.0
        n = len(full)
        ts = time[0] + (full - frame[0]) * spf
        ts[where] = time
        has = np.zeros(n, dtype=bool)
        has[where] = face
        idx = np.full(n, -1)
        idx[where] = keep
    else:
        n = len(frame)
        ts = time
        has = face
        idx = keep

    columns: dict[str, np.ndarray] = {"frame": np.arange(1, n + 1, dtype=np.int64), "timestamp": ts}
    sel = np.where(idx >= 0, idx, 0)
    conf = np.where(has, faces.confidence[sel], 0.0)
    columns["face_detection_confidence_score"] = np.clip(np.nan_to_num(conf, nan=0.0), 0.0, 1.0)
    for col, values in (("pitch_indicative_ratio", faces.pir), ("yaw_indicative_ratio", faces.yir)):
        v = values[sel]
        # A face whose landmarks give no ratio (degenerate frame) cannot be valid: -1.
        columns[col] = np.where(has, np.nan_to_num(v, nan=-1.0, posinf=-1.0, neginf=-1.0), -1.0)
    for au in AU_NAMES:
        columns[au] = np.full(n, np.nan) if au in faces.missing else np.where(has, faces.aus[au][sel], -1.0)
    if faces.missing and warn:
        logger.warning("%s: %s has no %s; left empty (NaN): models that read them are refused",
                       name, TOOL_NAMES[source], ", ".join(faces.missing))
    attrs = {"missing_aus": list(faces.missing), "pose_ratios": faces.pose, "au_scale": scale_key,
             "source": name}
    return columns, attrs


def _write_clip(table: dict[str, np.ndarray], path: Path) -> Path:
    """Write an imported per-frame table atomically, values rounded to 6 decimals.

    Six decimals keep the tools' own precision (OpenFace writes two) and put a ratio
    computed as 0.5499999999 on the paper's bound 0.55, where the tool's landmarks put it.
    Written by Arrow (the shortest text of each rounded number), with the release's
    header, so :func:`fergi.datasets.load_frames` reads the files on its fast path.
    """
    import io

    import pyarrow as pa
    import pyarrow.csv as pacsv

    data = {"frame": pa.array(np.asarray(table["frame"], dtype=np.int64))}
    for column in FRAME_COLUMNS[1:]:
        values = np.round(np.asarray(table[column], dtype=float), 6) + 0.0  # + 0.0: no "-0"
        data[column] = pa.array(values, from_pandas=True)  # NaN (an AU the tool lacks): empty
    buffer = io.BytesIO()
    buffer.write((",".join(FRAME_COLUMNS) + "\n").encode())
    pacsv.write_csv(pa.table(data), buffer, write_options=pacsv.WriteOptions(include_header=False))
    fd, tmp = temporary_beside(path, f".{path.name}.", ".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(buffer.getvalue())
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise FergiError(f"{path}: cannot write ({exc.strerror})") from None
    publish(tmp, path)
    return path
