"""Per-frame features from other AU tools: OpenFace 2.x, py-feat and LibreFace outputs.

fergi's labels are scale-free (baseline-median normalisation cancels any per-participant,
per-AU factor), so the per-frame output of any reasonable AU estimator can drive
``fergi annotate``, ``fit``, ``reproduce`` and ``export-labels`` once it is turned into
the release's per-frame schema (``fergi.datasets.FRAME_COLUMNS``) with the paper's
frame-validity inputs computed the paper's way. This module does that turn.

Mapping (also the README's table):

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

import csv
import logging
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fergi import __version__
from fergi._atomic import publish, temporary_beside
from fergi._errors import FergiError
from fergi.datasets import (
    META_NAME,
    FeatureProvenance,
    read_features_meta,
    sha256_file,
    write_features_meta,
)
from fergi.face import pose_ratios, pose_ratios_68
from fergi.schema import AU_NAMES, FRAME_COLUMNS

logger = logging.getLogger(__name__)

SOURCES: tuple[str, ...] = ("openface", "pyfeat", "libreface")
"""Tools whose per-frame output :func:`import_features` reads."""

_AU_NUMBERS = {au: int(au[2:]) for au in AU_NAMES}

TOOL_NAMES = {"openface": "OpenFace", "pyfeat": "py-feat", "libreface": "LibreFace"}

#: AU column of each fergi AU, per tool.
AU_COLUMNS: dict[str, dict[str, str]] = {
    "openface": {au: f"AU{n:02d}_r" for au, n in _AU_NUMBERS.items()},
    "pyfeat": {au: f"AU{n:02d}" for au, n in _AU_NUMBERS.items()},
    # LibreFace writes its DISFA intensities as au_<n>_intensity; its au_<n> columns are
    # BP4D occurrence detections (0/1) of another AU set and are not used.
    "libreface": {au: f"au_{n}_intensity" for au, n in _AU_NUMBERS.items()},
}

#: Documented AU range of each tool's output, and what the values are.
AU_SCALES = {
    "openface": ((0.0, 5.0), "OpenFace AU intensity (AUxx_r), 0-5"),
    "pyfeat-probability": ((0.0, 1.0), "py-feat AU probability, 0-1"),
    "pyfeat-intensity": ((0.0, 5.0), "py-feat AU intensity, 0-5"),
    "libreface": ((0.0, 5.0), "LibreFace AU intensity (DISFA), 0-5"),
}

# Frame rates a camera records at; a clip's timestamps outside this say "not seconds".
PLAUSIBLE_FPS = (5.0, 240.0)
#: Largest relative difference between the timestamps' frame rate and the clip's.
FPS_TOLERANCE = 0.1

# Head-pose fallback (a rigid head seen by a distant camera):
#: Frontal pitch ratio (the release's median over frames with a face is 0.69).
FRONTAL_PIR = 0.70
#: Depth of the nostrils in front of the eyes, in units of the eye distance.
NOSTRIL_DEPTH = 0.30
#: Sine of the angle of each eye centre on a cylindrical head (eyes half-way to the edges).
EYE_SINE = 0.5

# Text columns of the tools' CSVs (py-feat's input file, time and identity label;
# LibreFace's expression label); every other column is a number.
_TEXT_COLUMNS = frozenset({"input", "approx_time", "Identity", "facial_expression"})

_N68 = 68
_N_MESH = 478


def ratios_from_head_pose(pitch_up_deg, yaw_deg) -> tuple[np.ndarray, np.ndarray]:
    """Pitch and yaw indicative ratios of a rigid head turned by the given angles.

    Used only where a tool's file has no landmarks. The head is a cylinder whose eye
    centres sit half-way between its axis and its edges (``sin a = 0.5``), so
    ``YIR = 0.5 + cos(a) tan(yaw)``; the nostrils lie ``0.70`` eye distances below the
    eyes and ``0.30`` in front of them, so ``PIR = 0.70 cos(pitch) - 0.30 sin(pitch)``
    with pitch positive when the head tilts up. A frontal head gives ``(0.70, 0.5)``;
    the paper's valid ranges (0.55-0.85, 0.3-0.7) then keep about ``|yaw| <= 13`` degrees
    and ``pitch <= 21`` degrees up (a head tilted down keeps PIR below 0.77).

    Parameters
    ----------
    pitch_up_deg, yaw_deg : array-like
        Degrees; the sign of yaw does not matter.

    Returns
    -------
    pir, yir : numpy.ndarray
    """
    pitch = np.deg2rad(np.asarray(pitch_up_deg, dtype=float))
    yaw = np.deg2rad(np.asarray(yaw_deg, dtype=float))
    pir = FRONTAL_PIR * np.cos(pitch) - NOSTRIL_DEPTH * np.sin(pitch)
    with np.errstate(invalid="ignore"):
        yir = 0.5 + np.sqrt(1 - EYE_SINE**2) * np.tan(yaw)
        yir = np.where(np.abs(yaw) < np.pi / 2, yir, np.nan)
    return pir, yir


# ----------------------------------------------------------------------------- reading
def read_tool_output(path: str | os.PathLike) -> pd.DataFrame:
    """Read one tool's CSV with its header names stripped (OpenFace writes ``", "``).

    Raises
    ------
    fergi.FergiError
        Missing, empty or malformed file (one line, naming it).
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    path = Path(path)
    try:
        # Arrow parses " 0.98" as a number, so OpenFace's ", " needs no special care.
        table = pacsv.read_csv(path, read_options=pacsv.ReadOptions(use_threads=False)).to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError):
        table = None  # the slow path below says what is wrong
    if table is not None:
        table.columns = [str(c).strip() for c in table.columns]
        return table
    try:
        table = pd.read_csv(path, skipinitialspace=True, low_memory=False)
    except FileNotFoundError:
        raise FergiError(f"{path}: no such file") from None
    except pd.errors.EmptyDataError:
        raise FergiError(f"{path}: empty file") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise FergiError(f"{path}: malformed CSV ({reason})") from None
    except OSError as exc:
        raise FergiError(f"{path}: cannot read ({exc.strerror})") from None
    table.columns = [str(c).strip() for c in table.columns]
    return table


def _fail(name, row, column, problem) -> FergiError:
    where = "header" if row is None else f"row {row}"
    return FergiError(f"{name}: {where}, column '{column}': {problem}")


def _numeric(table: dict, column: str, name: str, rows: np.ndarray) -> np.ndarray:
    """A column as floats; a non-numeric cell is an error naming its row."""
    values = table[column]
    if values.dtype.kind in "fiub":
        return values.astype(float, copy=False)
    series = pd.Series(values)
    parsed = pd.to_numeric(series, errors="coerce")
    bad = parsed.isna() & series.notna() & (series.astype(str).str.strip() != "")
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise _fail(name, int(rows[i]), column, f"non-numeric value {values[i]!r}")
    return parsed.to_numpy(dtype=float)


def _numeric_block(table: dict, columns: list[str], name: str, rows: np.ndarray) -> np.ndarray:
    """Several columns as an ``(n, k)`` float array."""
    return np.column_stack([_numeric(table, c, name, rows) for c in columns])


def _require(table: dict, columns, name: str, why: str = "") -> None:
    for column in columns:
        if column not in table:
            raise _fail(name, None, column, "missing" + (f" ({why})" if why else ""))


@dataclass
class _Faces:
    """One row per detected face (or frameless row) of a tool's table, before selection."""

    frame: np.ndarray  # the tool's frame number
    rows: np.ndarray  # 1-based data row of the file
    time: np.ndarray  # seconds (NaN where the tool gives none)
    face: np.ndarray  # bool: a face was found
    confidence: np.ndarray
    size: np.ndarray  # face area (px^2) to keep the largest face per frame
    aus: dict[str, np.ndarray]
    pir: np.ndarray
    yir: np.ndarray
    pose: str
    missing: list[str] = field(default_factory=list)
    time_column: str = "timestamp"
    frame_column: str = "frame"


def _landmark_columns(n: int, fmt_x: str, fmt_y: str) -> tuple[list[str], list[str]]:
    return [fmt_x.format(i) for i in range(n)], [fmt_y.format(i) for i in range(n)]


def _box_area(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return (np.nanmax(xs, axis=1) - np.nanmin(xs, axis=1)) * (np.nanmax(ys, axis=1) - np.nanmin(ys, axis=1))


def _aus(table, source, name, rows, face) -> tuple[dict[str, np.ndarray], list[str]]:
    columns = AU_COLUMNS[source]
    present = {au: c for au, c in columns.items() if c in table}
    if not present:
        raise _fail(name, None, columns["AU1"], f"missing (no {TOOL_NAMES[source]} AU column at all)")
    out, missing = {}, []
    for au in AU_NAMES:
        if au not in present:
            missing.append(au)
            out[au] = np.full(len(rows), np.nan)
            continue
        values = _numeric(table, present[au], name, rows)
        lost = face & ~np.isfinite(values)
        if lost.any():
            i = int(np.flatnonzero(lost)[0])
            raise _fail(name, int(rows[i]), present[au], "no value in a row with a face")
        out[au] = values
    return out, missing


def _openface(table, n, name, fps, frame_size) -> _Faces:
    _require(table, ("frame", "timestamp", "confidence", "success"), name)
    rows = np.arange(1, n + 1)
    frame = _numeric(table, "frame", name, rows)
    time = _numeric(table, "timestamp", name, rows)
    success = _numeric(table, "success", name, rows)
    confidence = _numeric(table, "confidence", name, rows)
    face = success > 0
    aus, missing = _aus(table, "openface", name, rows, face)
    landmarks = _landmarks_68(table, name, rows, "OpenFace's 68 landmarks")
    if landmarks is not None:
        xs, ys, pir, yir = landmarks
        size, pose = _box_area(xs, ys), "landmarks_68"
    elif "pose_Rx" in table or "pose_Ry" in table:
        _require(table, ("pose_Rx", "pose_Ry"), name, "head-pose fallback")
        # OpenFace's camera frame has y down, so a positive pose_Rx turns the face down.
        pitch_up = -np.rad2deg(_numeric(table, "pose_Rx", name, rows))
        pir, yir = ratios_from_head_pose(pitch_up, np.rad2deg(_numeric(table, "pose_Ry", name, rows)))
        size, pose = np.ones(n), "head_pose_angles"
    else:
        raise _fail(name, None, "x_0", "missing (neither 68 landmarks nor pose_Rx/pose_Ry)")
    return _Faces(frame, rows, time, face, confidence, size, aus, pir, yir, pose, missing)


def _approx_seconds(values: np.ndarray) -> np.ndarray:
    """py-feat's ``approx_time`` ("MM:SS", whole seconds) in seconds."""
    # Arrow may already have read "00:05" as a time of day ("00:00:05"): take the last
    # two or three fields as (hours,) minutes and seconds.
    text = pd.Series(values).astype(str).str.strip()
    parts = text.str.extract(r"^(?:(\d+):)?(\d+):(\d+(?:\.\d*)?)$").astype(float)
    return parts[0].fillna(0.0).to_numpy() * 3600 + parts[1].to_numpy() * 60 + parts[2].to_numpy()


def _pyfeat(table, n, name, fps, frame_size) -> _Faces:
    _require(table, ("frame", "FaceScore", "FaceRectWidth", "FaceRectHeight"), name)
    rows = np.arange(1, n + 1)
    frame = _numeric(table, "frame", name, rows)
    score = _numeric(table, "FaceScore", name, rows)
    face = np.isfinite(score) & (score > 0)
    if fps is None:
        raise _fail(name, None, "frame", "py-feat files record no timestamps (approx_time is whole "
                    "seconds): give the clip's frame rate (--fps or an fps column in the mapping file)")
    time = frame / float(fps)
    if "approx_time" in table:
        approx = _approx_seconds(table["approx_time"])
        # approx_time truncates frame / fps to whole seconds: more than a second off
        # means the clip's frame rate is not the one given.
        off = np.isfinite(approx) & (np.abs(time - approx) > 1.0 + 1.0 / fps)
        if off.any():
            i = int(np.flatnonzero(off)[0])
            raise _fail(name, int(rows[i]), "approx_time",
                        f"{table['approx_time'][i]} but frame {int(frame[i])} at {fps:g} fps "
                        f"is {time[i]:.2f} s: the frame rate is far from the clip's")
    aus, missing = _aus(table, "pyfeat", name, rows, face)
    width = _numeric(table, "FaceRectWidth", name, rows)
    height = _numeric(table, "FaceRectHeight", name, rows)
    size = np.nan_to_num(width * height, nan=0.0)
    landmarks = _landmarks_68(table, name, rows, "py-feat's 68 landmarks")
    if landmarks is not None:
        _, _, pir, yir = landmarks
        pose = "landmarks_68"
    else:
        _require(table, ("Pitch", "Yaw"), name, "head-pose fallback: no x_0..x_67 landmarks")
        pir, yir = ratios_from_head_pose(_numeric(table, "Pitch", name, rows),
                                         _numeric(table, "Yaw", name, rows))
        pose = "head_pose_angles"
    return _Faces(frame, rows, time, face, np.where(face, score, 0.0), size, aus, pir, yir, pose, missing,
                  time_column="frame")


def _libreface(table, n, name, fps, frame_size) -> _Faces:
    _require(table, ("frame_idx", "frame_time_in_ms"), name)
    rows = np.arange(1, n + 1)
    frame = _numeric(table, "frame_idx", name, rows)
    # LibreFace's video loop stores i / fps (seconds) in frame_time_in_ms.
    time = _numeric(table, "frame_time_in_ms", name, rows)
    face = np.ones(n, dtype=bool)
    aus, missing = _aus(table, "libreface", name, rows, face)
    xs_cols, ys_cols = _landmark_columns(_N_MESH, "lm_mp_{}_x", "lm_mp_{}_y")
    if xs_cols[0] in table:
        if frame_size is None:
            raise _fail(name, None, "lm_mp_0_x", "LibreFace landmarks are fractions of the frame: "
                        "give the video's frame size (--frame-size WIDTHxHEIGHT or width/height "
                        "columns in the mapping file)")
        _require(table, xs_cols + ys_cols, name, "LibreFace's 478 FaceMesh landmarks")
        width, height = frame_size
        xs = _numeric_block(table, xs_cols, name, rows) * float(width)
        ys = _numeric_block(table, ys_cols, name, rows) * float(height)
        pir, yir = pose_ratios(np.stack([xs, ys], axis=2))
        size, pose = _box_area(xs, ys), "facemesh_478"
    else:
        _require(table, ("pitch", "yaw"), name, "head-pose fallback: no lm_mp_<i> landmarks")
        # LibreFace multiplies OpenCV's RQDecomp3x3 angles (degrees) by 360.
        pitch = _numeric(table, "pitch", name, rows) / 360.0
        yaw = _numeric(table, "yaw", name, rows) / 360.0
        pir, yir = ratios_from_head_pose(pitch, yaw)
        size, pose = np.ones(n), "head_pose_angles"
    return _Faces(frame, rows, time, face, face.astype(float), size, aus, pir, yir, pose, missing,
                  time_column="frame_time_in_ms", frame_column="frame_idx")


def _landmarks_68(table: pd.DataFrame, name: str, rows: np.ndarray, what: str):
    """``(xs, ys, pir, yir)`` from the ``x_0…x_67, y_0…y_67`` columns, or None without them.

    OpenFace and py-feat name their 68 landmarks alike; a file with some of the
    columns but not all is refused, naming ``what``.
    """
    xs_cols, ys_cols = _landmark_columns(_N68, "x_{}", "y_{}")
    if not any(c in table for c in xs_cols + ys_cols):
        return None
    _require(table, xs_cols + ys_cols, name, what)
    xs = _numeric_block(table, xs_cols, name, rows)
    ys = _numeric_block(table, ys_cols, name, rows)
    pir, yir = pose_ratios_68(np.stack([xs, ys], axis=2))
    return xs, ys, pir, yir


def _check_args(n: int, fps, name: str) -> None:
    if n == 0:
        raise FergiError(f"{name}: no rows (header only)")
    if fps is not None and not (np.isfinite(fps) and fps > 0):
        raise FergiError(f"{name}: fps must be a positive number, got {fps!r}")


def _read_columns(path: Path) -> tuple[dict, int]:
    """A tool's CSV as ``{stripped name: numpy array}`` (Arrow, without pandas when it can)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    read = pacsv.ReadOptions(use_threads=False)
    try:
        with open(path, encoding="utf-8") as handle:
            header = next(csv.reader([handle.readline()]))
        # Every column a number but the tools' few text columns: typed reading is 2-3
        # times faster than Arrow's type inference over ~200 columns.
        types = {c: pa.float64() for c in header if c.strip() not in _TEXT_COLUMNS}
        table = pacsv.read_csv(path, read_options=read, convert_options=pacsv.ConvertOptions(column_types=types))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError, StopIteration):
        try:
            table = pacsv.read_csv(path, read_options=read)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError):
            frame = read_tool_output(path)  # names the problem
            return {c: frame[c].to_numpy() for c in frame.columns}, len(frame)
    columns = {}
    for field_, column in zip(table.schema, table.columns, strict=True):
        name = field_.name.strip()
        if pa.types.is_floating(field_.type) or pa.types.is_integer(field_.type):
            columns[name] = column.to_numpy().astype(float) if column.null_count else column.to_numpy()
        else:
            columns[name] = np.asarray(column.to_pylist(), dtype=object)
    return columns, table.num_rows


_READERS = {"openface": _openface, "pyfeat": _pyfeat, "libreface": _libreface}


def _au_scale_key(source: str, aus: dict[str, np.ndarray], face: np.ndarray) -> str:
    if source != "pyfeat":
        return source
    values = np.column_stack([v[face] for v in aus.values()]) if face.any() else np.zeros((0, 1))
    # py-feat's AU models give probabilities; a file with values above 1 holds intensities.
    return "pyfeat-intensity" if np.nanmax(values, initial=0.0) > 1.0 else "pyfeat-probability"


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


# ----------------------------------------------------------------------------- folders
_CLIP_NAME = re.compile(r"^(baseline|reaction)_clip_(\d+)(?:_features)?\.csv$", re.IGNORECASE)
_SESSION = re.compile(r"^session_(\d+)$")
_MAPPING_COLUMNS = ("file", "participant", "session", "image", "clip")


@dataclass
class ImportSummary:
    """What :func:`import_feature_folder` wrote."""

    out: Path
    written: list[Path]
    failed: list[tuple[str, str]]
    missing_aus: list[str]
    pose_ratios: list[str]
    au_scale: str
    meta: Path | None = None


@dataclass
class _Job:
    path: Path
    participant: str
    session: int
    image: int
    clip: str
    fps: float | None = None
    frame_size: tuple[float, float] | None = None

    @property
    def target(self) -> str:
        return f"data/{self.participant}/session_{self.session}/{self.clip}_clip_{self.image}_features.csv"


def _jobs_from_folder(src: Path) -> list[_Job]:
    jobs = []
    for path in sorted(src.rglob("*.csv")):
        m = _CLIP_NAME.match(path.name)
        if not m:
            continue
        s = _SESSION.match(path.parent.name)
        if not s or path.parent.parent == path.parent:
            raise FergiError(f"{path}: not in a <participant>/session_<s>/ folder (use --mapping)")
        jobs.append(_Job(path, path.parent.parent.name, int(s.group(1)), int(m.group(2)), m.group(1).lower()))
    if not jobs:
        raise FergiError(f"{src}: no baseline_clip_<i>.csv or reaction_clip_<i>.csv files in "
                         "<participant>/session_<s>/ folders (use --mapping for other names)")
    return jobs


def _jobs_from_mapping(src: Path, mapping: Path) -> list[_Job]:
    try:
        table = pd.read_csv(mapping, dtype={"participant": str}, skipinitialspace=True)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise FergiError(f"{mapping}: cannot read the mapping file ({exc.__class__.__name__})") from None
    table.columns = [str(c).strip() for c in table.columns]
    for column in _MAPPING_COLUMNS:
        if column not in table.columns:
            raise FergiError(f"{mapping}: header, column '{column}': missing (a mapping file has "
                             f"{', '.join(_MAPPING_COLUMNS)}; fps, width, height optional)")
    jobs = []
    for i, row in enumerate(table.itertuples(index=False), start=1):
        clip = str(row.clip).strip().lower()
        if clip not in ("baseline", "reaction"):
            raise FergiError(f"{mapping}: row {i}, column 'clip': {row.clip!r} (baseline or reaction)")
        try:
            session, image = int(row.session), int(row.image)
        except (TypeError, ValueError):
            raise FergiError(f"{mapping}: row {i}, column 'session'/'image': not an integer") from None
        path = Path(str(row.file))
        path = path if path.is_absolute() else src / path
        fps = getattr(row, "fps", None)
        fps = None if fps is None or pd.isna(fps) else float(fps)
        size = None
        if hasattr(row, "width") and hasattr(row, "height") and pd.notna(row.width) and pd.notna(row.height):
            size = (float(row.width), float(row.height))
        jobs.append(_Job(path, str(row.participant).strip(), session, image, clip, fps, size))
    targets = pd.Series([j.target for j in jobs])
    if targets.duplicated().any():
        raise FergiError(f"{mapping}: row {int(np.flatnonzero(targets.duplicated())[0]) + 1}: "
                         f"a second file for {targets[targets.duplicated()].iloc[0]}")
    return jobs


def import_feature_folder(
    src: str | os.PathLike,
    source: str,
    out: str | os.PathLike,
    *,
    mapping: str | os.PathLike | None = None,
    fps: float | None = None,
    frame_size: tuple[float, float] | None = None,
    estimator_version: str | None = None,
    overwrite: bool = False,
    progress=None,
) -> ImportSummary:
    """Import a folder of one tool's outputs into the release layout, with ``features_meta.json``.

    Parameters
    ----------
    src : path-like
        A folder of the tool's CSVs named after the clips
        (``<participant>/session_<s>/baseline_clip_<i>.csv`` and ``reaction_clip_<i>.csv``,
        optionally under ``data/``), or the folder that ``mapping`` paths are relative to.
        A ``preparation/`` folder in it (survey answers, rankings) is copied to ``out``.
    source : {"openface", "pyfeat", "libreface"}
    out : path-like
        Output folder: ``data/<participant>/session_<s>/<kind>_clip_<i>_features.csv``
        and ``features_meta.json``.
    mapping : path-like, optional
        CSV with columns ``file, participant, session, image, clip`` (and optionally
        ``fps``, ``width``, ``height`` per file) for outputs named otherwise.
    fps, frame_size
        Defaults for every file (see :func:`import_features`).
    estimator_version : str, optional
        The tool's version, recorded in the meta file (none of the three writes it into
        its CSV).
    overwrite : bool
        Replace existing feature files of ``out``; without it, an ``out`` whose
        ``features_meta.json`` names another estimator is refused.
    progress : callable, optional
        ``progress(n_done, n_total)`` after each file.

    Returns
    -------
    ImportSummary
        Files written, files that failed (path, one-line reason) and what the meta
        file records. A bad file is reported and skipped; the others are written.

    Raises
    ------
    fergi.FergiError
        Nothing to import, a bad mapping file, or every file failed.
    """
    if source not in SOURCES:
        raise FergiError(f"--from {source!r}: unknown tool (choose from {', '.join(SOURCES)})")
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if not src.exists():
        raise FergiError(f"{src}: no such file or folder")
    if src.is_file():
        if mapping is None:
            raise FergiError(f"{src}: a single file needs --mapping (which clip is it?)")
    jobs = _jobs_from_mapping(src if src.is_dir() else src.parent, Path(mapping)) if mapping else _jobs_from_folder(src)
    meta_path = out / META_NAME
    if meta_path.exists() and not overwrite:
        old = read_features_meta(meta_path)
        if old.estimator != source:
            raise FergiError(f"{meta_path}: {out} holds features of {old.describe()}; import into "
                             "another --out, or pass --overwrite")

    def one(job: _Job):
        try:
            columns, n = _read_columns(job.path)
            job_fps = job.fps if job.fps is not None else fps
            _check_args(n, job_fps, str(job.path))
            table, attrs = _import_columns(columns, n, source, fps=job_fps, frame_size=job.frame_size or frame_size,
                                           name=str(job.path), warn=False)
            _write_clip(table, out / job.target)
            return attrs, sha256_file(job.path)
        except FergiError as exc:
            return None, str(exc)

    written, failed, sources = [], [], {}
    missing: set[str] = set()
    poses: set[str] = set()
    scales: set[str] = set()
    base = src if src.is_dir() else src.parent
    # Threads: Arrow parses and hashing reads without the GIL; files stay independent.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for n_done, (job, (attrs, result)) in enumerate(zip(jobs, pool.map(one, jobs), strict=True), start=1):
            if attrs is None:
                logger.error("%s", result)
                failed.append((str(job.path), result))
            else:
                written.append(out / job.target)
                missing.update(attrs["missing_aus"])
                poses.add(attrs["pose_ratios"])
                scales.add(attrs["au_scale"])
                try:
                    rel = job.path.relative_to(base).as_posix()
                except ValueError:
                    rel = str(job.path)
                sources[job.target] = {"file": rel, "sha256": result}
            if progress is not None:
                progress(n_done, len(jobs))
    if missing:
        lacking = ", ".join(au for au in AU_NAMES if au in missing)
        logger.warning("%s: %s has no %s in %d file(s); left empty (NaN): models that read them are "
                       "refused", src, TOOL_NAMES[source], lacking, len(written))
    if not written:
        first = failed[0][1] if failed else "nothing to import"
        raise FergiError(f"{src}: no file imported ({len(failed)} failed; first: {first})")

    # py-feat: one file with values above 1 means the folder holds intensities.
    scale_key = "pyfeat-intensity" if "pyfeat-intensity" in scales else sorted(scales)[0]
    pose = next(iter(poses)) if len(poses) == 1 else "mixed: " + ", ".join(sorted(poses))
    provenance = FeatureProvenance(
        estimator=source,
        estimator_version=estimator_version,
        neutral_reference="absolute",
        fergi_version=__version__,
        au_scale=AU_SCALES[scale_key][1],
        normalization_required="baseline_median",
        pose_ratios=pose,
        missing_aus=tuple(au for au in AU_NAMES if au in missing),
    )
    previous = {}
    if meta_path.exists() and not overwrite:
        try:
            import json

            previous = json.loads(meta_path.read_text()).get("sources") or {}
        except (OSError, ValueError):
            previous = {}
    meta = write_features_meta(out, provenance, extra={"sources": {**previous, **sources}})
    prep = (src if src.is_dir() else src.parent) / "preparation"
    if prep.is_dir() and prep.resolve() != (out / "preparation").resolve():
        shutil.copytree(prep, out / "preparation", dirs_exist_ok=True)
    return ImportSummary(out, written, failed, sorted(missing, key=AU_NAMES.index), sorted(poses),
                         AU_SCALES[scale_key][1], meta)
