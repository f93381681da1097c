"""A folder of AU tool outputs imported into the release layout (``fergi import-features``)."""

from __future__ import annotations

import logging
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fergi import __version__
from fergi._errors import FergiError
from fergi.au._import import _import_columns, _write_clip
from fergi.au._import_tools import AU_SCALES, SOURCES, TOOL_NAMES, _check_args, _read_columns
from fergi.datasets import (
    META_NAME,
    FeatureProvenance,
    read_features_meta,
    sha256_file,
    write_features_meta,
)
from fergi.schema import AU_NAMES

logger = logging.getLogger(__name__)


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
