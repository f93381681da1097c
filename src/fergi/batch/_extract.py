"""``extract_videos``: videos to outputs, resume, the report and the meta file.

Planning (which videos, which output each gets, which are already done), the report
(``extract_report.csv``) and ``features_meta.json`` live here; the jobs run on an
executor (:class:`fergi.batch.LocalExecutor` by default, or
:class:`fergi.batch.RayExecutor`), which hands back one record per video.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from fergi._errors import FergiError
from fergi.au import check_preprocessing, features_provenance
from fergi.batch._jobs import ExtractionJob
from fergi.batch._local import LocalExecutor
from fergi.datasets import META_NAME, read_features_meta, write_features_meta
from fergi.face import landmark_weights_path
from fergi.video import VIDEO_SUFFIXES, find_videos

logger = logging.getLogger(__name__)

REPORT_NAME = "extract_report.csv"

REPORT_COLUMNS = [
    "video",
    "output",
    "status",
    "frames",
    "face_share",
    "seconds",
    "error",
    "neutral_reference",
    "neutral_reference_detail",
]


@dataclass
class ExtractionResult:
    """What :func:`extract_videos` did.

    Attributes
    ----------
    records : list of dict
        One report row per video, in output order (``status`` ok, skipped or failed).
    report : pathlib.Path
        The report file (``OUT/extract_report.csv``).
    wall_s : float
        Seconds spent running the jobs.
    """

    records: list[dict]
    report: Path
    wall_s: float
    extracted: int = field(init=False)
    skipped: int = field(init=False)
    failed: int = field(init=False)

    def __post_init__(self):
        count = [r["status"] for r in self.records].count
        self.extracted, self.skipped, self.failed = count("ok"), count("skipped"), count("failed")


_STUDY_CLIP = re.compile(r"^(baseline|reaction)_clip_(\d+)$")


def _baseline_partner(video: Path) -> Path | None:
    """The study baseline clip that is ``video``'s neutral face, if there is one.

    ``reaction_clip_<i>`` is paired with the ``baseline_clip_<i>`` video beside it (any
    video extension), and a baseline clip with itself, as the study's processing does.
    """
    match = _STUDY_CLIP.match(video.stem)
    if match is None:
        return None
    if match.group(1) == "baseline":
        return video
    for suffix in sorted(VIDEO_SUFFIXES):
        partner = video.with_name(f"baseline_clip_{match.group(2)}{suffix}")
        if partner.is_file():
            return partner
    return None


def _release_decimals(video) -> int:
    """The release writes baseline clips with 2 decimals and reaction clips with 3."""
    return 2 if Path(video).name.startswith("baseline") else 3


def _short_hash(path: Path, n: int = 6) -> str:
    return hashlib.sha1(str(path).encode("utf-8", "surrogateescape")).hexdigest()[:n]


def _output_paths(
    inputs: list[str], out: Path, fmt: str
) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """Map every video found in ``inputs`` to its own output file.

    The mapping depends only on the set of resolved videos and input folders, never
    on the order of the arguments, so a resumed run finds the same outputs:

    - one input folder (or files all in one folder): ``OUT/<relative path>/<stem>_features``;
    - several: ``OUT/<input folder name>/<relative path>/<stem>_features``, the folder
      name followed by a short hash of its full path when two inputs share a name;
    - videos that still collide (``x.mp4`` and ``x.webm``) get ``<stem>_<ext>_features``
      and, failing that, ``<stem>_<ext>_<hash of the video path>_features``.

    Returns ``(pairs, unmapped)``: (video, output) pairs, and (video, reason) for the
    videos that cannot get a unique output (so they are reported, never dropped).
    """
    # (resolved video, shown video path, resolved root folder, relative folder)
    found: list[tuple[Path, Path, Path, Path]] = []
    for item in inputs:
        arg = Path(item)
        for video in find_videos([arg]):
            if arg.is_dir():
                root, rel = arg.resolve(), video.parent.relative_to(arg)
            else:
                root, rel = video.parent.resolve(), Path()
            found.append((video.resolve(), video, root, rel))

    roots = sorted({root for _, _, root, _ in found})
    if len(roots) <= 1:
        prefix = {root: Path() for root in roots}
    else:
        names: dict[str, list[Path]] = {}
        for root in roots:
            names.setdefault(root.name or "root", []).append(root)
        prefix = {}
        for name, same in names.items():
            for root in same:
                prefix[root] = Path(name if len(same) == 1 else f"{name}-{_short_hash(root)}")

    def target(resolved: Path, shown: Path, root: Path, rel: Path, level: int) -> Path:
        # The name the user sees (a symlink's own name), the hash of what it points to.
        stem, ext = shown.stem, shown.suffix.lstrip(".").lower()
        name = (stem, f"{stem}_{ext}", f"{stem}_{ext}_{_short_hash(resolved, 8)}")[level]
        return out / prefix[root] / rel / f"{name}_features.{fmt}"

    # The same video reached through several inputs: keep its first target in sort
    # order, whichever argument came first.
    chosen: dict[Path, tuple[Path, Path, Path]] = {}
    for resolved, shown, root, rel in found:
        candidate = (shown, root, rel)
        if resolved not in chosen or str(target(resolved, *candidate, 0)) < str(
            target(resolved, *chosen[resolved], 0)
        ):
            chosen[resolved] = candidate

    # Raise the naming level of every video in a collision (all of them, so the
    # result does not depend on which one was met first) until none is left.
    # Case-folded: x.mp4 and X.mp4 would share a file on macOS and Windows.
    level = dict.fromkeys(chosen, 0)
    unmapped: dict[Path, str] = {}
    while True:
        by_target: dict[str, list[Path]] = {}
        for resolved, where in chosen.items():
            if resolved not in unmapped:
                key = str(target(resolved, *where, level[resolved])).casefold()
                by_target.setdefault(key, []).append(resolved)
        clashes = [group for group in by_target.values() if len(group) > 1]
        if not clashes:
            break
        for group in clashes:
            for resolved in group:
                if level[resolved] < 2:
                    level[resolved] += 1
                else:
                    unmapped[resolved] = (
                        f"{chosen[resolved][0]}: cannot be given an output file of its own "
                        f"(same name as {len(group) - 1} other video(s)); rename it"
                    )

    pairs = sorted(
        (
            (where[0], target(resolved, *where, level[resolved]))
            for resolved, where in chosen.items()
            if resolved not in unmapped
        ),
        key=lambda pair: str(pair[1]),
    )
    failed = sorted(((chosen[r][0], reason) for r, reason in unmapped.items()), key=str)
    return pairs, failed


def _write_report(records: list[dict], path: Path) -> None:
    table = pd.DataFrame(
        [{k: r.get(k) for k in REPORT_COLUMNS} for r in records], columns=REPORT_COLUMNS
    )
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        table.to_csv(tmp, index=False, float_format="%.3f")
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise FergiError(
            f"--out {path.parent}: cannot write the report {path.name} ({exc.strerror or exc})"
        ) from None


def _earlier_rows(path: Path) -> dict[Path, dict]:
    """Rows of a previous run's report with figures, by resolved output path."""
    if not path.is_file():
        return {}
    rows: dict[Path, dict] = {}
    try:
        with path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                output = row.get("output") or ""
                if not output or row.get("status") not in ("ok", "skipped"):
                    continue
                try:
                    figures = {
                        "frames": int(float(row["frames"])),
                        "face_share": float(row["face_share"]),
                        "seconds": float(row["seconds"]),
                    }
                except (KeyError, TypeError, ValueError):
                    continue  # a row without figures has nothing to carry over
                for key in ("neutral_reference", "neutral_reference_detail"):
                    if row.get(key):  # absent from reports of older fergi versions
                        figures[key] = row[key]
                rows[Path(output).resolve()] = figures
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        # An unreadable old report only loses the old figures, never the run.
        logger.warning("%s: earlier report not read (%s)", path, exc)
        return {}
    return rows


def _check_meta(out: Path, estimator: str, checkpoint, baseline_seconds, overwrite: bool,
                preprocessing: str | None = None):
    """This run's provenance, after checking it against an earlier run's meta file.

    Returns ``(provenance, earlier neutral reference or None)``. Files of two AU scales
    in one folder would be read as one scale downstream, so a run whose estimator,
    version or weights differ from the folder's is refused unless ``overwrite``
    recomputes everything.
    """
    if estimator == "ir50":
        neutral = "absolute"
    else:
        neutral = "baseline_seconds" if baseline_seconds is not None else "least_expressive"
    provenance = features_provenance(estimator, checkpoint, neutral_reference=neutral,
                                     preprocessing=preprocessing)
    path = out / META_NAME
    if not path.exists() or overwrite:
        return provenance, None
    earlier = read_features_meta(path)
    if earlier.scale != provenance.scale:
        raise FergiError(
            f"--out {out}: holds features of {earlier.describe()} ({META_NAME}), not "
            f"{provenance.describe()}; use another --out, or --overwrite to recompute them all"
        )
    return provenance, earlier.neutral_reference


def _write_meta(out: Path, provenance, records: list[dict], earlier_neutral) -> None:
    """Write ``OUT/features_meta.json`` with the neutral references actually used."""
    # Videos without any face have no AU values: their reference says nothing.
    used = {
        r.get("neutral_reference") or earlier_neutral
        for r in records
        if r["status"] in ("ok", "skipped") and (r.get("face_share") or 0) > 0
    }
    # Files of an earlier run stay in the folder even when this run did not list them.
    used.add(earlier_neutral)
    used.discard(None)
    if not used:  # nothing finished yet: label what this run is about to write
        neutral = provenance.neutral_reference
    else:
        neutral = used.pop() if len(used) == 1 else "mixed"
    write_features_meta(out, replace(provenance, neutral_reference=neutral))


def extract_videos(
    inputs: Sequence,
    out,
    *,
    estimator: str = "geometry",
    checkpoint=None,
    fps: float = 30.0,
    baseline_seconds: float | None = None,
    pair_baselines: bool = True,
    fmt: str = "csv",
    decimals: int | None = None,
    overwrite: bool = False,
    executor=None,
    preprocessing: str | None = None,
    landmarks=None,
) -> ExtractionResult:
    """Extract per-frame features of every video in ``inputs`` into ``out``, resumably.

    Each video gets its own features file (see ``fergi extract --help`` for the
    naming); videos whose file exists are skipped unless ``overwrite``; a video that
    fails is reported, never fatal. ``OUT/extract_report.csv`` and
    ``OUT/features_meta.json`` are written before the first job and again at the end,
    also when the run is interrupted (``KeyboardInterrupt`` is re-raised after).

    Parameters
    ----------
    inputs : sequence of str or path
        Video files or folders (searched recursively).
    out : str or path
        Output folder.
    estimator : {"geometry", "ir50"}
    checkpoint : path, optional
        Weights of ``ir50``.
    fps : float
        Standardised frame rate.
    baseline_seconds : float, optional
        Use the first seconds of each video as the neutral face (geometry).
    pair_baselines : bool, default True
        Measure ``reaction_clip_<i>`` against the ``baseline_clip_<i>`` beside it.
    fmt : {"csv", "parquet"}
    decimals : {2, 3}, optional
        Decimals in CSV; default 2 for ``baseline*`` videos and 3 for others.
    overwrite : bool
        Recompute videos whose output exists.
    executor : LocalExecutor or RayExecutor, optional
        Where the jobs run (default one local process).
    preprocessing : {"authors", "fergi"}, optional
        Face preprocessing (default ``"authors"`` for ir50, ``"fergi"`` for geometry;
        see :func:`fergi.au.extract_features`).
    landmarks : path, optional
        MobileFaceNet weights of the ``authors`` preprocessing (default: fergi's model
        folder, :func:`fergi.face.models_dir`).

    Returns
    -------
    ExtractionResult

    Raises
    ------
    fergi.FergiError
        Bad options, no videos, an unwritable ``out``, or ``out`` holding features of
        another estimator.
    """
    if fps <= 0:
        raise FergiError(f"--fps must be positive, got {fps}")
    if checkpoint is not None and estimator != "ir50":
        raise FergiError("--checkpoint is only used with --estimator ir50")
    if estimator == "ir50" and checkpoint is None:
        raise FergiError(
            "--estimator ir50 needs --checkpoint PATH (IR-50 weights; none can be downloaded)"
        )
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FergiError(f"{checkpoint}: checkpoint file not found")
    preprocessing = check_preprocessing(estimator, preprocessing)
    if preprocessing == "authors":
        # Found (or refused) once here, so that no worker starts without it.
        landmarks = str(landmark_weights_path(landmarks).resolve())
    elif landmarks is not None:
        raise FergiError("--landmarks is only used with --preprocessing authors (ir50)")
    if executor is None:
        executor = LocalExecutor()
    inputs = [str(i) for i in inputs]
    out = Path(out)
    pairs, unmapped = _output_paths(inputs, out, fmt)
    if not pairs and not unmapped:
        raise FergiError(f"{', '.join(inputs)}: no video files found")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        what = "is a file, not a folder" if out.is_file() else "cannot be created"
        raise FergiError(f"--out {out}: {what} ({exc.strerror or exc})") from None
    report = out / REPORT_NAME
    provenance, earlier_neutral = _check_meta(
        out, estimator, None if checkpoint is None else Path(checkpoint), baseline_seconds,
        overwrite, preprocessing,
    )
    earlier = _earlier_rows(report)

    records: list[dict] = [
        {"video": str(video), "output": "", "status": "failed", "error": reason}
        for video, reason in unmapped
    ]
    jobs = []
    for video, target in pairs:
        if target.exists() and not overwrite:
            records.append(
                {
                    "video": str(video),
                    "output": str(target),
                    "status": "skipped",
                    "error": "output exists",
                    **earlier.get(target.resolve(), {}),
                }
            )
            continue
        # An explicit baseline_seconds wins; ir50 needs no neutral face.
        partner = None
        if pair_baselines and baseline_seconds is None and estimator == "geometry":
            partner = _baseline_partner(Path(video))
        jobs.append(
            ExtractionJob(
                video=str(video),
                output=str(target),
                fps=fps,
                baseline_seconds=baseline_seconds,
                baseline=None if partner is None else str(partner),
                decimals=decimals or _release_decimals(video),
                preprocessing=preprocessing,
                landmarks=landmarks,
            )
        )
    order = {str(target): i for i, (_, target) in enumerate(pairs)}

    def ordered() -> list[dict]:
        return sorted(records, key=lambda r: (order.get(r["output"], len(order)), r["video"]))

    # Written first too: an unwritable --out fails now, not after hours of work. The
    # meta goes first as well, so that an interrupted run's files are labelled.
    _write_report(ordered(), report)
    _write_meta(out, provenance, records, earlier_neutral)
    checkpoint = None if checkpoint is None else str(checkpoint)
    t0 = time.perf_counter()
    finished = False
    try:
        if jobs:
            executor.run_extraction(jobs, estimator, checkpoint, records.append)
        finished = True
    finally:
        # Also on Ctrl-C / SIGTERM: the report keeps the videos finished so far.
        try:
            _write_report(ordered(), report)
            _write_meta(out, provenance, records, earlier_neutral)
        except FergiError as exc:
            if finished:
                raise
            logger.error("%s", exc)
    return ExtractionResult(ordered(), report, time.perf_counter() - t0)
