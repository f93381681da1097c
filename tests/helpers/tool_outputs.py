"""Generators of AU tools' per-frame CSVs with their real headers (for import tests).

The headers follow each project's own code, not copied files:

* OpenFace 2.2 ``FeatureExtraction`` (``RecorderCSV::Open`` in
  TadasBaltrusaitis/OpenFace): ``frame, face_id, timestamp, confidence, success``, gaze
  (8) and 56 eye landmarks in 2-D and 3-D, ``pose_Tx..pose_Rz``, ``x_0..x_67,
  y_0..y_67``, ``X_0..Z_67``, ``p_scale, p_rx, p_ry, p_rz, p_tx, p_ty, p_0..p_33``,
  17 ``AUxx_r`` and 18 ``AUxx_c`` (sorted names), every name after the first preceded
  by ``", "`` (714 columns). ``-2Dfp -pose -aus`` and the like write subsets in the
  same order.
* py-feat ``Detector.detect`` (cosanlab/py-feat ``feat/detector.py``, 0.6 to 2.x):
  ``FaceRectX, FaceRectY, FaceRectWidth, FaceRectHeight, FaceScore``, ``x_0..x_67,
  y_0..y_67``, ``Pitch, Roll, Yaw, X, Y, Z``, 20 AUs ``AU01..AU43``, 7 emotions,
  ``Identity_1..Identity_512``, ``gaze_pitch, gaze_yaw, gaze_angle``, ``FrameHeight,
  FrameWidth``, ``input, frame``, then ``approx_time`` and ``Identity`` for videos.
* LibreFace ``save_facial_attributes_video`` (ihp-lab/LibreFace ``libreface/__init__.py``):
  ``frame_idx, frame_time_in_ms, pitch, yaw, roll``, ``lm_mp_<i>_x/_y/_z`` for the 478
  FaceMesh points, 12 BP4D detections ``au_1..au_24``, 12 DISFA intensities
  ``au_1_intensity..au_26_intensity``, ``facial_expression``, ``gaze_yaw, gaze_pitch``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

OPENFACE_AUS_R = ["AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12", "AU14",
                  "AU15", "AU17", "AU20", "AU23", "AU25", "AU26", "AU45"]
OPENFACE_AUS_C = sorted(OPENFACE_AUS_R + ["AU28"])
PYFEAT_AUS = ["AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU11", "AU12", "AU14",
              "AU15", "AU17", "AU20", "AU23", "AU24", "AU25", "AU26", "AU28", "AU43"]
LIBREFACE_DETECTION = [1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24]
LIBREFACE_INTENSITY = [1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26]
FERGI_TO_NUMBER = {"AU1": 1, "AU2": 2, "AU4": 4, "AU5": 5, "AU6": 6, "AU9": 9, "AU12": 12, "AU15": 15,
                   "AU17": 17, "AU20": 20, "AU25": 25, "AU26": 26}


def openface_columns(*, gaze=True, pose=True, landmarks_2d=True, landmarks_3d=True, params=True,
                     aus=True, face_id=True, aus_r=OPENFACE_AUS_R) -> list[str]:
    """OpenFace 2.2 FeatureExtraction's columns (stripped), for the given output flags."""
    cols = ["frame"] + (["face_id"] if face_id else []) + ["timestamp", "confidence", "success"]
    if gaze:
        cols += ["gaze_0_x", "gaze_0_y", "gaze_0_z", "gaze_1_x", "gaze_1_y", "gaze_1_z",
                 "gaze_angle_x", "gaze_angle_y"]
        for axis in ("x", "y", "X", "Y", "Z"):
            cols += [f"eye_lmk_{axis}_{i}" for i in range(56)]
    if pose:
        cols += ["pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz"]
    if landmarks_2d:
        cols += [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]
    if landmarks_3d:
        cols += [f"{a}_{i}" for a in ("X", "Y", "Z") for i in range(68)]
    if params:
        cols += ["p_scale", "p_rx", "p_ry", "p_rz", "p_tx", "p_ty"] + [f"p_{i}" for i in range(34)]
    if aus:
        cols += [f"{a}_r" for a in aus_r] + [f"{a}_c" for a in OPENFACE_AUS_C]
    return cols


def pyfeat_columns(*, video=True) -> list[str]:
    cols = ["FaceRectX", "FaceRectY", "FaceRectWidth", "FaceRectHeight", "FaceScore"]
    cols += [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]
    cols += ["Pitch", "Roll", "Yaw", "X", "Y", "Z"] + PYFEAT_AUS
    cols += ["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"]
    cols += [f"Identity_{i + 1}" for i in range(512)]
    cols += ["gaze_pitch", "gaze_yaw", "gaze_angle", "FrameHeight", "FrameWidth", "input", "frame"]
    if video:
        cols += ["approx_time", "Identity"]
    return cols


def libreface_columns() -> list[str]:
    cols = ["frame_idx", "frame_time_in_ms", "pitch", "yaw", "roll"]
    cols += [f"lm_mp_{i}_{a}" for i in range(478) for a in ("x", "y", "z")]
    cols += [f"au_{n}" for n in LIBREFACE_DETECTION]
    cols += [f"au_{n}_intensity" for n in LIBREFACE_INTENSITY]
    cols += ["facial_expression", "gaze_yaw", "gaze_pitch"]
    return cols


def frontal_68(pir: float = 0.6, yir: float = 0.5, *, scale: float = 1.0, offset=(0.0, 0.0)) -> np.ndarray:
    """68 landmarks of an upright face with the given pitch and yaw indicative ratios.

    Eye centres at (25, 40) and (75, 40), mouth corners at (35, 85) and (65, 85) (so
    the oriented face frame is the image's); the nostrils lie ``50 * pir`` below the eye
    line and the face edges ``50 * yir`` left of the left eye and ``50 * (1 - yir)``
    right of the right eye, so :func:`fergi.face.pose_ratios_68` gives ``(pir, yir)``.
    """
    lm = np.zeros((68, 2))
    # Points the ratios do not read: spread over the face so its box is a face's.
    lm[:, 0] = np.round(np.linspace(10, 90, 68))
    lm[:, 1] = np.round(np.linspace(20, 110, 68))
    lm[36:42] = [25.0, 40.0]
    lm[42:48] = [75.0, 40.0]
    lm[48] = [35.0, 85.0]
    lm[54] = [65.0, 85.0]
    lm[31:36] = [50.0, 40.0 + 50.0 * pir]
    lm[0] = [25.0 - 50.0 * yir, 40.0]
    lm[16] = [75.0 + 50.0 * (1.0 - yir), 40.0]
    return lm * scale + np.asarray(offset)


def _fill(columns, n, rng) -> pd.DataFrame:
    return pd.DataFrame(rng.uniform(0, 1, size=(n, len(columns))).round(3), columns=columns)


def openface_table(aus: dict[str, np.ndarray], *, pir=None, yir=None, confidence=None, success=None,
                   timestamps=None, fps=30.0, columns=None, seed=0) -> pd.DataFrame:
    """An OpenFace 2.2 table: AUs by fergi name (0-5), ratios made by the 68 landmarks."""
    n = len(next(iter(aus.values())))
    rng = np.random.default_rng(seed)
    columns = columns or openface_columns()
    table = _fill(columns, n, rng)
    table["frame"] = np.arange(1, n + 1)
    if "face_id" in table:
        table["face_id"] = 0
    table["timestamp"] = np.arange(n) / fps if timestamps is None else timestamps
    table["confidence"] = 0.98 if confidence is None else confidence
    table["success"] = 1 if success is None else success
    pir = np.full(n, 0.65) if pir is None else np.broadcast_to(pir, (n,))
    yir = np.full(n, 0.5) if yir is None else np.broadcast_to(yir, (n,))
    if "x_0" in table:
        lm = np.stack([frontal_68(p, y, scale=2.0, offset=(200, 100)) for p, y in zip(pir, yir, strict=True)])
        for i in range(68):
            table[f"x_{i}"] = lm[:, i, 0]
            table[f"y_{i}"] = lm[:, i, 1]
    for au, values in aus.items():
        column = f"AU{FERGI_TO_NUMBER[au]:02d}_r"
        if column in table:
            table[column] = values
    return table


def write_openface_csv(table: pd.DataFrame, path: Path) -> Path:
    """Write as OpenFace does: ``", "`` between names and values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [", ".join(table.columns)]
    values = table.astype(object).to_numpy()
    lines += [", ".join(repr(v) if isinstance(v, float) else str(v) for v in row) for row in values]
    path.write_text("\n".join(lines) + "\n")
    return path


def pyfeat_table(aus: dict[str, np.ndarray], *, pir=None, yir=None, score=None, fps=30.0, seed=0,
                 input_name="reaction_clip_1.mp4") -> pd.DataFrame:
    """A py-feat 2.x video Fex table (AUs are probabilities 0-1), one face per frame."""
    n = len(next(iter(aus.values())))
    rng = np.random.default_rng(seed)
    table = _fill(pyfeat_columns(), n, rng)
    table["frame"] = np.arange(n)
    table["approx_time"] = [f"{int(t // 60):02d}:{int(t % 60):02d}" for t in np.arange(n) / fps]
    table["input"] = input_name
    table["Identity"] = "Person_0"
    table["FaceScore"] = 0.999 if score is None else score
    pir = np.full(n, 0.65) if pir is None else np.broadcast_to(pir, (n,))
    yir = np.full(n, 0.5) if yir is None else np.broadcast_to(yir, (n,))
    lm = np.stack([frontal_68(p, y, scale=2.0, offset=(200, 100)) for p, y in zip(pir, yir, strict=True)])
    for i in range(68):
        table[f"x_{i}"] = lm[:, i, 0]
        table[f"y_{i}"] = lm[:, i, 1]
    table["FaceRectX"], table["FaceRectY"] = 190.0, 120.0
    table["FaceRectWidth"], table["FaceRectHeight"] = 180.0, 200.0
    for au, values in aus.items():
        column = f"AU{FERGI_TO_NUMBER[au]:02d}"
        table[column] = values
    return table


def libreface_table(aus: dict[str, np.ndarray], landmarks: np.ndarray, *, frame_size=(640, 480),
                    fps=30.0, frames=None, seed=0) -> pd.DataFrame:
    """A LibreFace video table; ``landmarks`` (n, 478, 2) in pixels are stored as fractions."""
    n = len(next(iter(aus.values())))
    rng = np.random.default_rng(seed)
    table = _fill(libreface_columns(), n, rng)
    frames = np.arange(n) if frames is None else np.asarray(frames)
    table["frame_idx"] = frames
    table["frame_time_in_ms"] = frames / fps  # LibreFace stores i / fps (seconds) here
    width, height = frame_size
    xs = landmarks[:, :, 0] / width
    ys = landmarks[:, :, 1] / height
    lm = {}
    for i in range(478):
        lm[f"lm_mp_{i}_x"] = xs[:, i]
        lm[f"lm_mp_{i}_y"] = ys[:, i]
    table = table.assign(**lm)
    table["facial_expression"] = "Neutral"
    for au, values in aus.items():
        table[f"au_{FERGI_TO_NUMBER[au]}_intensity"] = values
    return table


def release_as_openface(frames: pd.DataFrame, root: Path, *, seed: int = 0) -> pd.DataFrame:
    """Write every clip of a release-layout frame table as an OpenFace 2.2 CSV.

    The files are those of ``FeatureExtraction -2Dfp -aus`` (columns ``frame, face_id,
    timestamp, confidence, success``, the 68 landmarks, 17 ``AUxx_r`` and 18 ``AUxx_c``)
    under ``root/<participant>/session_<s>/<kind>_clip_<i>.csv``, headers with OpenFace's
    ``", "`` and values with ``","``.

    * Each AU of each participant is ``f * (x - lo)``: ``lo`` is the participant's lowest
      value of that AU (OpenFace intensities are 0-5, the release's IR-50 values go
      below 0; a constant offset cancels in activation values, which are differences)
      and ``f`` a random factor with two decimals that keeps the values within 0-5.
      Values keep five decimals, so nothing is lost to rounding.
    * The 68 landmarks are :func:`frontal_68` scaled by 2 (eye centres 100 px apart, as
      a webcam sees a face): they give the release's pitch and yaw ratios, which have
      three decimals, exactly at OpenFace's one decimal.
    * ``confidence`` is the release's score; frames without a face have ``success`` 0.

    Returns
    -------
    DataFrame
        The factor and offset of every (participant, AU).
    """
    import io

    import pyarrow as pa
    import pyarrow.csv as pacsv


    rng = np.random.default_rng(seed)
    columns = openface_columns(gaze=False, pose=False, landmarks_3d=False, params=False)
    header = (", ".join(columns) + "\n").encode()
    of_for = {f"AU{n:02d}_r": au for au, n in FERGI_TO_NUMBER.items()}
    keys = ["participant", "session", "image", "clip"]
    factors = []
    template = frontal_68(0.0, 0.0, scale=2.0, offset=(200.0, 100.0))
    for participant, part in frames.groupby("participant", observed=True, sort=True):
        n = len(part)
        face = part["face_detection_confidence_score"].to_numpy() > 0
        data = {"frame": part["frame"].to_numpy(), "face_id": np.zeros(n, dtype=np.int64),
                "timestamp": part["timestamp"].to_numpy(),
                "confidence": part["face_detection_confidence_score"].to_numpy(),
                "success": face.astype(np.int64)}
        pir = part["pitch_indicative_ratio"].to_numpy()
        yir = part["yaw_indicative_ratio"].to_numpy()
        for i in range(68):
            data[f"x_{i}"] = np.where(face, template[i, 0], 0.0)
        for i in range(68):
            data[f"y_{i}"] = np.where(face, template[i, 1], 0.0)
        # The points the ratios read (see frontal_68), at OpenFace's one decimal.
        nostril_y = np.round((40.0 + 50.0 * pir) * 2.0 + 100.0, 1)
        for i in range(31, 36):
            data[f"y_{i}"] = np.where(face, nostril_y, 0.0)
        data["x_0"] = np.where(face, np.round((25.0 - 50.0 * yir) * 2.0 + 200.0, 1), 0.0)
        data["x_16"] = np.where(face, np.round((75.0 + 50.0 * (1.0 - yir)) * 2.0 + 200.0, 1), 0.0)
        for column in columns[5 + 136:]:
            au = of_for.get(column)
            if au is None:
                data[column] = np.zeros(n, dtype=np.int64)
                continue
            x = part[au].to_numpy()
            lo, hi = x[face].min(), x[face].max()
            f = np.floor(rng.uniform(0.3, 1.0) * min(3.0, 5.0 / max(hi - lo, 1e-9)) * 100) / 100
            data[column] = np.where(face, np.round(f * (x - lo), 5), 0.0)
            factors.append((str(participant), au, f, lo))
        buffer = io.BytesIO()
        pacsv.write_csv(pa.table(data), buffer, write_options=pacsv.WriteOptions(include_header=False))
        body = buffer.getvalue()
        ends = np.flatnonzero(np.frombuffer(body, dtype=np.uint8) == ord("\n")) + 1
        codes = part.groupby(keys, observed=True, sort=False).ngroup().to_numpy()
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        bounds = np.r_[0, ends][np.r_[starts, n]]
        session, image = part["session"].to_numpy(), part["image"].to_numpy()
        kind = part["clip"].astype(str).to_numpy()
        for j, row in enumerate(starts):
            path = root / str(participant) / f"session_{session[row]}" / f"{kind[row]}_clip_{image[row]}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(header + body[bounds[j]:bounds[j + 1]])
    return pd.DataFrame(factors, columns=["participant", "au", "factor", "offset"])
