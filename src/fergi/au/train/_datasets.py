"""Readers of the DISFA and DISFA+ datasets as distributed, into one frame table.

Both readers return the same tidy table, one row per labelled frame:

``dataset``
    ``"disfa"`` or ``"disfa_plus"``.
``subject``
    Subject folder name, e.g. ``SN001``.
``trial``
    DISFA: the camera (``left`` / ``right``); DISFA+: the trial folder name.
``frame``
    1-based frame number (DISFA: as in the label files; DISFA+: position of the
    image in the label file).
``path``
    The video (DISFA) or image (DISFA+) file.
``index``
    0-based frame index in the decoded video; -1 for an image.
``AU1`` ... ``AU26``
    The 12 annotated intensities (0-5) in ``AU_NAMES`` order.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from fergi._errors import FergiError
from fergi.schema import AU_NAMES

logger = logging.getLogger(__name__)

#: AU numbers annotated in DISFA and DISFA+ (the FERGI 12).
DISFA_AUS = tuple(int(name[2:]) for name in AU_NAMES)
TABLE_COLUMNS = ("dataset", "subject", "trial", "frame", "path", "index", *AU_NAMES)

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_DISFA_LINE = re.compile(rf"^\s*({_NUMBER})\s*[,;\s]\s*({_NUMBER})\s*$")
_PLUS_LINE = re.compile(rf"^\s*(\S+\.(?:jpe?g|png|bmp))\s+({_NUMBER})\s*$", re.IGNORECASE)


def _child(folder: Path, pattern: str) -> Path | None:
    """The entry of ``folder`` whose name fully matches ``pattern``, ignoring case."""
    if not folder.is_dir():
        return None
    rx = re.compile(pattern, re.IGNORECASE)
    hits = sorted(p for p in folder.iterdir() if rx.fullmatch(p.name))
    return hits[0] if hits else None


def _read_lines(path: Path) -> list[str]:
    try:
        # newline=None turns CRLF and CR into "\n".
        with open(path, encoding="utf-8", errors="replace", newline=None) as fh:
            return fh.read().split("\n")
    except OSError as exc:
        raise FergiError(f"{path}: cannot read label file ({exc.strerror})") from exc


def _check_intensity(path: Path, lineno: int, value: float) -> float:
    if not np.isfinite(value) or value < 0 or value > 5:
        raise FergiError(f"{path}:{lineno}: intensity {value:g} outside 0-5")
    return value


def _parse_rows(path: Path, pattern: re.Pattern, key) -> dict:
    """``{key: intensity}`` of a label file; header lines before the data are skipped."""
    rows: dict = {}
    started = False
    for lineno, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        m = pattern.match(line)
        if m is None:
            if started:
                raise FergiError(f"{path}:{lineno}: cannot parse label line {line.strip()!r}")
            continue  # header
        started = True
        k = key(m.group(1), path, lineno)
        if k in rows:
            raise FergiError(f"{path}:{lineno}: {m.group(1)} labelled twice")
        rows[k] = (_check_intensity(path, lineno, float(m.group(2))), lineno)
    if not rows:
        raise FergiError(f"{path}: no label lines")
    return rows


def _disfa_frame(text: str, path: Path, lineno: int) -> int:
    value = float(text)
    if value != int(value) or value < 1:
        raise FergiError(f"{path}:{lineno}: frame number {text} is not a positive integer")
    return int(value)


def _subjects(folder: Path, wanted) -> list[str]:
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if wanted is None:
        if not found:
            raise FergiError(f"{folder}: no subject folders")
        return found
    by_upper = {name.upper(): name for name in found}
    out = []
    for s in wanted:
        if str(s).upper() not in by_upper:
            raise FergiError(f"{folder / str(s)}: subject folder not found")
        out.append(by_upper[str(s).upper()])
    return out


class DisfaReader:
    """The DISFA dataset: left and right camera videos with per-frame AU labels.

    Layout (folder and file names in any case; ``Video_LeftCamera`` and
    ``Videos_RightCamera`` spellings are accepted as well)::

        DIR/Videos_LeftCamera/LeftVideoSN001_comp.avi
        DIR/Video_RightCamera/RightVideoSN001_Comp.avi
        DIR/ActionUnit_Labels/SN001/SN001_au1.txt      one "frame,intensity" per line

    Parameters
    ----------
    root : str or path-like
        The DISFA folder.
    subjects : list of str, optional
        Subjects to read (default: every folder under ``ActionUnit_Labels``).
    cameras : tuple of str, default ("left", "right")
        Cameras whose videos are used; a camera folder that does not exist is an
        error when named explicitly, and skipped (with a warning) by default only if
        the other one exists.
    """

    name = "disfa"

    def __init__(self, root, *, subjects=None, cameras=("left", "right")):
        self.root = Path(root)
        self.subjects = subjects
        self.cameras = tuple(cameras)

    def _camera_folders(self) -> dict[str, Path]:
        folders = {}
        for cam in self.cameras:
            folder = _child(self.root, rf"videos?_{cam}_?camera")
            if folder is None:
                logger.warning("%s: no %s camera folder (Videos_%sCamera)", self.root, cam, cam)
                continue
            folders[cam] = folder
        if not folders:
            raise FergiError(
                f"{self.root}: no camera folder (expected Videos_LeftCamera or Video_RightCamera)"
            )
        return folders

    def frames(self) -> pd.DataFrame:
        """The frame table of every labelled frame (see the module docstring).

        Raises
        ------
        fergi.FergiError
            A missing folder, video or label file, a malformed label line, an
            intensity outside 0-5, or a frame without a label in some AU file.
        """
        if not self.root.is_dir():
            raise FergiError(f"{self.root}: DISFA folder not found")
        labels_dir = _child(self.root, r"actionunit_labels")
        if labels_dir is None:
            raise FergiError(f"{self.root / 'ActionUnit_Labels'}: label folder not found")
        cams = self._camera_folders()
        parts = []
        for subject in _subjects(labels_dir, self.subjects):
            labels = self._labels(labels_dir / subject, subject)
            for cam, folder in cams.items():
                video = _child(folder, rf"{cam}video{re.escape(subject)}_comp\.avi")
                if video is None:
                    raise FergiError(
                        f"{folder / f'{cam.capitalize()}Video{subject}_comp.avi'}: video not found"
                    )
                part = labels.copy()
                part.insert(0, "index", part["frame"] - 1)
                part.insert(0, "path", str(video))
                part.insert(0, "trial", cam)
                part.insert(0, "subject", subject)
                part.insert(0, "dataset", self.name)
                parts.append(part)
        return pd.concat(parts, ignore_index=True)[list(TABLE_COLUMNS)]

    def _labels(self, folder: Path, subject: str) -> pd.DataFrame:
        per_au = {}
        for au in DISFA_AUS:
            path = _child(folder, rf"{re.escape(subject)}_au{au}\.txt")
            if path is None:
                raise FergiError(f"{folder / f'{subject}_au{au}.txt'}: label file not found")
            per_au[au] = (path, _parse_rows(path, _DISFA_LINE, _disfa_frame))
        frames = sorted(set().union(*(rows for _, rows in per_au.values())))
        for path, rows in per_au.values():
            # Frames are numbered as in the video: a gap means an unlabelled frame.
            expected = range(1, frames[-1] + 1)
            if len(rows) != len(expected):
                gap = next(f for f in expected if f not in rows)
                after = rows.get(gap - 1, (None, 0))[1]
                where = f"{path}:{after + 1}" if after else str(path)
                raise FergiError(f"{where}: frame {gap} has no label")
        table = pd.DataFrame({"frame": np.asarray(frames, dtype=np.int64)})
        for au, (_, rows) in per_au.items():
            table[f"AU{au}"] = [rows[f][0] for f in frames]
        return table


class DisfaPlusReader:
    """The DISFA+ dataset: per-trial image folders with per-image AU labels.

    Layout (names in any case)::

        DIR/Images/SN001/<trial>/000.jpg
        DIR/Labels/SN001/<trial>/AU1.txt     two header lines, then "000.jpg   3" rows

    Parameters
    ----------
    root : str or path-like
        The DISFA+ folder.
    subjects : list of str, optional
        Subjects to read (default: every folder under ``Labels``).
    """

    name = "disfa_plus"

    def __init__(self, root, *, subjects=None):
        self.root = Path(root)
        self.subjects = subjects

    def frames(self) -> pd.DataFrame:
        """The frame table of every labelled image (see the module docstring).

        Raises
        ------
        fergi.FergiError
            A missing folder, image or label file, a malformed label line, an
            intensity outside 0-5, or an image without a label in some AU file.
        """
        if not self.root.is_dir():
            raise FergiError(f"{self.root}: DISFA+ folder not found")
        labels_dir = _child(self.root, "labels")
        images_dir = _child(self.root, "images")
        if labels_dir is None:
            raise FergiError(f"{self.root / 'Labels'}: label folder not found")
        if images_dir is None:
            raise FergiError(f"{self.root / 'Images'}: image folder not found")
        parts = []
        for subject in _subjects(labels_dir, self.subjects):
            subject_images = _child(images_dir, re.escape(subject))
            if subject_images is None:
                raise FergiError(f"{images_dir / subject}: subject folder not found")
            trials = sorted(p.name for p in (labels_dir / subject).iterdir() if p.is_dir())
            if not trials:
                raise FergiError(f"{labels_dir / subject}: no trial folders")
            for trial in trials:
                trial_images = _child(subject_images, re.escape(trial))
                if trial_images is None:
                    raise FergiError(f"{subject_images / trial}: trial folder not found")
                parts.append(
                    self._trial(labels_dir / subject / trial, trial_images, subject, trial)
                )
        return pd.concat(parts, ignore_index=True)[list(TABLE_COLUMNS)]

    def _trial(self, folder: Path, images: Path, subject: str, trial: str) -> pd.DataFrame:
        per_au = {}
        for au in DISFA_AUS:
            path = _child(folder, rf"au{au}\.txt")
            if path is None:
                raise FergiError(f"{folder / f'AU{au}.txt'}: label file not found")
            per_au[au] = (path, _parse_rows(path, _PLUS_LINE, lambda text, *_: text))
        first_path, first = per_au[DISFA_AUS[0]]
        names = list(first)
        for path, rows in per_au.values():
            for name in names:
                if name not in rows:
                    raise FergiError(f"{path}: image {name} has no label")
            for name, (_, lineno) in rows.items():
                if name not in first:
                    raise FergiError(
                        f"{first_path}: image {name} has no label (see {path}:{lineno})"
                    )
        on_disk = {p.name.lower(): p for p in images.iterdir() if p.is_file()}
        for name in names:
            if name.lower() not in on_disk:
                lineno = first[name][1]
                raise FergiError(f"{first_path}:{lineno}: image {images / name} not found")
        unlabelled = sorted(
            n
            for n in on_disk
            if n.endswith((".jpg", ".jpeg", ".png")) and n not in {x.lower() for x in names}
        )
        if unlabelled:
            raise FergiError(f"{first_path}: image {images / unlabelled[0]} has no label")
        table = pd.DataFrame(
            {
                "dataset": self.name,
                "subject": subject,
                "trial": trial,
                "frame": np.arange(1, len(names) + 1, dtype=np.int64),
                "path": [str(on_disk[n.lower()]) for n in names],
                "index": -1,
            }
        )
        for au, (_, rows) in per_au.items():
            table[f"AU{au}"] = [rows[n][0] for n in names]
        return table


def read_datasets(disfa=None, disfa_plus=None, *, subjects=None) -> pd.DataFrame:
    """The frame table of DISFA and/or DISFA+ (either may be None).

    Parameters
    ----------
    disfa, disfa_plus : str or path-like, optional
        Dataset folders (see :class:`DisfaReader`, :class:`DisfaPlusReader`).
    subjects : list of str, optional
        Keep only these subjects.

    Returns
    -------
    pandas.DataFrame
        Columns ``TABLE_COLUMNS``.
    """
    parts = []
    if disfa is not None:
        parts.append(DisfaReader(disfa).frames())
    if disfa_plus is not None:
        parts.append(DisfaPlusReader(disfa_plus).frames())
    if not parts:
        raise FergiError("--disfa/--disfa-plus: give at least one dataset folder")
    table = pd.concat(parts, ignore_index=True)
    if subjects is not None:
        table = table[table["subject"].isin(list(subjects))].reset_index(drop=True)
    return table


def subject_groups(table: pd.DataFrame) -> np.ndarray:
    """Person identity of each row for subject-independent splits.

    DISFA and DISFA+ number subjects the same way (``SN001`` ...); rows with the same
    subject name are grouped across the two datasets, so that a person who might be
    in both never lands on both sides of a split.
    """
    return table["subject"].astype(str).str.upper().to_numpy()


__all__ = [
    "DISFA_AUS",
    "TABLE_COLUMNS",
    "DisfaPlusReader",
    "DisfaReader",
    "read_datasets",
    "subject_groups",
]
