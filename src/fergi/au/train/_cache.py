"""The preprocessing cache: every labelled frame's 112x112 IR-50 input, once, on disk.

Layout of a cache folder::

    frames.csv    the frame table (fergi.au.train readers) the cache was built from
    faces.u8      (N, 112, 112, 3) uint8 memory-mapped array, row i = table row i
    status.npy    per row: -1 not yet processed, 0 no face, 1 face, 2 not in the video
    preprocessing.txt  "authors" or "fergi": how the faces were made (absent: "fergi",
                  a cache from before the choice existed)

Frames are processed per source (a video, or a trial's image folder); ``status.npy``
is rewritten atomically after each source, so an interrupted build resumes at the
first unfinished source. Training reads only ``faces.u8`` and never decodes video.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fergi._errors import FergiError
from fergi.face import (
    FACE_SIZE,
    PREPROCESSINGS,
    AuthorsPreprocessor,
    FaceAnalyzer,
    landmark_weights_path,
    preprocess_face,
)
from fergi.schema import AU_NAMES
from fergi.video import iter_frames

logger = logging.getLogger(__name__)

TODO, NO_FACE, FACE, MISSING = -1, 0, 1, 2
_KEY = ["dataset", "subject", "trial", "frame", "path", "index"]


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass
class FaceCache:
    """A built preprocessing cache (see :func:`build_cache`).

    Attributes
    ----------
    folder : pathlib.Path
    table : pandas.DataFrame
        The frame table with a ``status`` column (1: face cached).
    faces : numpy.memmap
        ``(N, 112, 112, 3)`` uint8, read-only.
    """

    folder: Path
    table: pd.DataFrame
    faces: np.ndarray
    preprocessing: str = "fergi"

    @classmethod
    def open(cls, folder) -> FaceCache:
        """Open a cache folder written by :func:`build_cache`."""
        folder = Path(folder)
        table_path = folder / "frames.csv"
        if not table_path.is_file() or not (folder / "status.npy").is_file():
            raise FergiError(f"{folder}: not a fergi AU cache (frames.csv/status.npy missing)")
        table = pd.read_csv(table_path, dtype={"subject": str, "trial": str})
        status = np.load(folder / "status.npy")
        if len(status) != len(table):
            raise FergiError(
                f"{folder / 'status.npy'}: {len(status)} rows, frames.csv has {len(table)}"
            )
        table["status"] = status
        faces = np.memmap(
            folder / "faces.u8",
            dtype=np.uint8,
            mode="r",
            shape=(len(table), FACE_SIZE, FACE_SIZE, 3),
        )
        return cls(folder, table, faces, _read_preprocessing(folder))

    @property
    def usable(self) -> np.ndarray:
        """Row numbers whose face is cached."""
        return np.flatnonzero(self.table["status"].to_numpy() == FACE)

    def labels(self, rows=None) -> np.ndarray:
        """``(n, 12)`` float intensities in ``AU_NAMES`` order."""
        values = self.table[list(AU_NAMES)].to_numpy(dtype=np.float32)
        return values if rows is None else values[np.asarray(rows)]

    def summary(self) -> dict:
        """Counts of frames by outcome."""
        s = self.table["status"].to_numpy()
        return {
            "frames": int(len(s)),
            "faces": int((s == FACE).sum()),
            "no_face": int((s == NO_FACE).sum()),
            "not_in_video": int((s == MISSING).sum()),
            "pending": int((s == TODO).sum()),
        }


def _units(table: pd.DataFrame) -> list[np.ndarray]:
    """Row numbers of each source: one video, or one trial's images."""
    is_video = table["index"].to_numpy() >= 0
    key = np.where(
        is_video, table["path"], table["dataset"] + "/" + table["subject"] + "/" + table["trial"]
    )
    return [
        np.asarray(rows) for _, rows in pd.Series(np.arange(len(table))).groupby(key, sort=False)
    ]


def _frames_of_unit(paths: list[str], indices: np.ndarray):
    """Yield ``(position, rgb or None)`` for each row of one unit."""
    if indices[0] < 0:
        from PIL import Image

        for pos, path in enumerate(paths):
            try:
                with Image.open(path) as im:
                    yield pos, np.asarray(im.convert("RGB"))
            except OSError as exc:
                raise FergiError(f"{path}: cannot read image ({exc})") from exc
        return
    wanted: dict[int, list[int]] = {}
    for pos, idx in enumerate(indices):
        wanted.setdefault(int(idx), []).append(pos)
    last = max(wanted)
    for k, (_, img) in enumerate(iter_frames(paths[0], fps=None)):
        for pos in wanted.pop(k, ()):
            yield pos, img
        if k >= last:
            break
    for positions in wanted.values():  # past the end of the video
        for pos in positions:
            yield pos, None


PREPROCESSING_FILE = "preprocessing.txt"


def _read_preprocessing(folder: Path) -> str:
    path = Path(folder) / PREPROCESSING_FILE
    # Caches written before the choice existed hold fergi's faces.
    return path.read_text().strip() if path.is_file() else "fergi"


def _process_unit(
    folder: str, n_rows: int, rows: np.ndarray, paths: list[str], indices: np.ndarray, progress=None,
    preprocessing: str = "fergi", landmarks: str | None = None,
):
    """Preprocess one unit's frames into the memmap; returns their status codes."""
    if preprocessing == "authors":
        key = f"authors:{landmarks}"
        if key not in _ANALYZER:
            _ANALYZER[key] = AuthorsPreprocessor(landmarks)
        authors = _ANALYZER[key]
    else:
        analyzer = _ANALYZER.setdefault("a", FaceAnalyzer())
    faces = np.memmap(
        Path(folder) / "faces.u8",
        dtype=np.uint8,
        mode="r+",
        shape=(n_rows, FACE_SIZE, FACE_SIZE, 3),
    )
    status = np.full(len(rows), NO_FACE, dtype=np.int8)
    for pos, img in _frames_of_unit(paths, indices):
        if img is None:
            status[pos] = MISSING
        elif preprocessing == "authors":
            # The authors' exact face (uint8, what their training read from disk).
            result = authors.process(img)
            if result.face is not None:
                faces[rows[pos]] = result.face
                status[pos] = FACE
        else:
            obs = analyzer.process(img)
            if obs.box is not None:
                face = preprocess_face(img, obs.box, obs.landmarks)
                faces[rows[pos]] = np.clip(np.rint(face * 255.0), 0, 255).astype(np.uint8)
                status[pos] = FACE
        if progress is not None:
            progress(1)
    faces.flush()
    del faces
    return status


_ANALYZER: dict = {}


def build_cache(
    table: pd.DataFrame, folder, *, workers: int = 1, progress: bool = True,
    preprocessing: str = "authors", landmarks=None,
) -> FaceCache:
    """Preprocess every frame of a frame table into a cache folder (resumable).

    Each frame goes through the ``ir50`` preprocessing used at inference and is stored
    as uint8: by default the FERGI authors' own pipeline
    (:class:`fergi.face.AuthorsPreprocessor`, what their ``preprocess_datasets.py``
    applied to DISFA/DISFA+), so that fergi-trained and authors-trained models see the
    same input; with ``preprocessing="fergi"``, ``fergi.face.FaceAnalyzer`` (largest
    BlazeFace face and FaceMesh landmarks) then ``fergi.face.preprocess_face``.
    Frames without a face, or past the end of their video, are counted, left out of
    training, and reported in the log.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`fergi.au.train.read_datasets`.
    folder : str or path-like
        Cache folder; an existing cache of the same table is resumed.
    workers : int, default 1
        Processes (each with its own MediaPipe graph).
    progress : bool, default True
        Progress bar on stderr.
    preprocessing : {"authors", "fergi"}, default "authors"
    landmarks : str or path-like, optional
        MobileFaceNet weights of the ``authors`` preprocessing (default: fergi's model
        folder, :func:`fergi.face.models_dir`).

    Returns
    -------
    FaceCache

    Raises
    ------
    fergi.FergiError
        The folder holds a cache of other frames or of the other preprocessing, or
        the landmark weights are missing.
    """
    from tqdm.auto import tqdm

    if preprocessing not in PREPROCESSINGS:
        raise FergiError(
            f"--preprocessing {preprocessing!r}: unknown (choose from {', '.join(PREPROCESSINGS)})"
        )
    if preprocessing == "authors":
        landmarks = str(landmark_weights_path(landmarks).resolve())
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = table.reset_index(drop=True)
    n = len(table)
    if n == 0:
        raise FergiError(f"{folder}: no labelled frames to cache")
    table_path, status_path = folder / "frames.csv", folder / "status.npy"
    if table_path.is_file() and status_path.is_file():
        old = pd.read_csv(table_path, dtype={"subject": str, "trial": str})
        same = len(old) == n and old[_KEY].astype(str).equals(table[_KEY].astype(str))
        if not same:
            raise FergiError(
                f"{folder}: cache of other frames (delete it or choose another --cache folder)"
            )
        status = np.load(status_path)
        made_with = _read_preprocessing(folder)
        if made_with != preprocessing and (status != TODO).any():
            raise FergiError(
                f"{folder}: cache of faces made with preprocessing {made_with!r}, not "
                f"{preprocessing!r} (delete it or choose another --cache folder)"
            )
    else:
        status = np.full(n, TODO, dtype=np.int8)
    (folder / PREPROCESSING_FILE).write_text(preprocessing + "\n")
    # Labels may be corrected between runs: always store the current ones.
    tmp = table_path.with_name("frames.csv.tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, table_path)
    faces_path = folder / "faces.u8"
    size = n * FACE_SIZE * FACE_SIZE * 3
    if not faces_path.exists() or faces_path.stat().st_size != size:
        with open(faces_path, "ab") as fh:
            fh.truncate(size)
    _atomic_save_npy(status_path, status)

    units = [u for u in _units(table) if (status[u] == TODO).any()]
    todo = int(sum(len(u) for u in units))
    if todo:
        logger.info("caching %d frames of %d sources in %s", todo, len(units), folder)
    paths = table["path"].astype(str).to_numpy()
    indices = table["index"].to_numpy()
    bar = tqdm(
        total=todo,
        desc="preprocessing",
        unit="frame",
        file=sys.stderr,
        disable=not progress or not todo,
    )
    try:
        if workers <= 1:
            for rows in units:
                status[rows] = _process_unit(
                    str(folder), n, rows, list(paths[rows]), indices[rows], bar.update,
                    preprocessing, landmarks,
                )
                _atomic_save_npy(status_path, status)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(
                max_workers=workers, mp_context=mp.get_context("spawn")
            ) as pool:
                futures = {
                    pool.submit(
                        _process_unit, str(folder), n, rows, list(paths[rows]), indices[rows],
                        None, preprocessing, landmarks,
                    ): rows
                    for rows in units
                }
                for fut in as_completed(futures):
                    rows = futures[fut]
                    status[rows] = fut.result()
                    _atomic_save_npy(status_path, status)
                    bar.update(len(rows))
    finally:
        bar.close()
    cache = FaceCache.open(folder)
    s = cache.summary()
    if s["no_face"] or s["not_in_video"]:
        logger.warning(
            "%s: %d of %d frames left out (%d without a face, %d past the end of their video)",
            folder,
            s["no_face"] + s["not_in_video"],
            s["frames"],
            s["no_face"],
            s["not_in_video"],
        )
    return cache
