"""The AU tools' outputs read: columns, ranges, one reader per tool, the head-pose fallback.

The mapping they implement is the table in :mod:`fergi.au._import`'s docstring.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fergi._errors import FergiError
from fergi.face import pose_ratios, pose_ratios_68
from fergi.schema import AU_NAMES

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
